"""`convtune migrate`: an OpenAI fine-tune moved to an open model, in one command.

Inventory, record, retrain, eval, report (`migration/steps.py`), for one model or `--all` of
them; every step resumable, a step already done skipped, nothing on OpenAI deleted.
"""

from __future__ import annotations

from pathlib import Path

import click

from .. import backends
from ..dataset.modelinfo import SMOLLM2
from ..errors import ConvtuneError
from ..evaluation import Settings
from . import render
from .backend import Backend, backend_option, service_for


@click.command(
    short_help="Move OpenAI fine-tunes to an open model: record, retrain, eval, report.",
    epilog="""
\b
Examples:
  convtune migrate ft:gpt-4o-mini-2024-07-18:acme:support:AbC123 --data valid.jsonl
  convtune migrate --all --data golden-prompts.jsonl --model ./Qwen2.5-0.5B-Instruct
  convtune migrate ft:... --data valid.jsonl --train support.train.jsonl --recipe auto
""",
)
@click.argument("models", nargs=-1, metavar="[FT_MODEL]...")
@click.option("--all", "every", is_flag=True, help="Every fine-tuned model of the account.")
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The prompts both models answer: your validation or golden file (chat,"
    " prompt-completion or sharegpt JSONL); its replies, if any, are the references.",
)
@click.option(
    "--model",
    "open_model",
    default=SMOLLM2,
    show_default=True,
    help="The open model trained: SmolLM2-135M-Instruct, a model folder, a .gguf or a hub id.",
)
@click.option(
    "--train",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="The data the fine-tune was trained on, where the service does not let it be"
    " downloaded and convtune did not upload it from this machine (OpenAI's files: the former).",
)
@click.option(
    "--recipe",
    type=click.Choice(["openai", "auto"]),
    default="openai",
    show_default=True,
    help="openai: the job's epochs and batch size (the learning rate stays auto: OpenAI's"
    " multiplier is relative to its own base rate); auto: convtune's default recipe.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("migrations"),
    show_default=True,
    help="A folder per model: its state, the recorded answers, the evaluations, the report.",
)
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N prompts.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True)
@backend_option(mixed=True)
def migrate(
    models: tuple[str, ...],
    every: bool,
    data: Path,
    open_model: str,
    train: Path | None,
    recipe: str,
    out: Path,
    max_tokens: int,
    limit: int | None,
    concurrency: int,
    backend: Backend,
) -> None:
    """Move OpenAI fine-tunes to an open model that learned the same data.

    For each FT_MODEL (or --all): find its job and days left; record its answers to --data
    (cached: a rerun after the shutdown still has them); retrain its data on --model here;
    evaluate the new model against the recorded answers and the references; write a report with
    the commands to export and serve it. A step already done is skipped; nothing is deleted.
    """
    from ..migration.report import commands
    from ..migration.state import Migration
    from ..migration.steps import MigrateOptions, fine_tuned_models
    from .follow_view import follow_job

    if backend.name == "local":  # the fine-tunes to move are on OpenAI (or --base-url)
        backend = Backend("openai", backend.base_url, backend.api_key)
    if bool(models) == every:
        raise click.UsageError("name the fine-tuned models to move, or give --all")
    if train is not None and (every or len(models) > 1):
        raise click.UsageError("--train is the data of one fine-tune: name one model with it")
    source = service_for(backend)
    local = backends.connect("local")
    # the key and the address, checked once before anything is said or written: a refused key
    # is one line, not one per model
    if every:
        models = tuple(fine_tuned_models(source))
    else:
        source.jobs.list(limit=1)
    if not models:
        render.out.print("No fine-tuned models on this account.")
        return
    opts = MigrateOptions(
        data=data,
        model=open_model,
        train=train,
        recipe=recipe,
        settings=Settings(temperature=0.0, max_tokens=max_tokens),
        limit=limit,
        concurrency=concurrency,
    )
    say = render.out.print

    def follow(service, job_id):
        finished = follow_job(service, job_id)
        if finished is None:  # Ctrl-C: the job goes on; the next run follows it again
            raise click.exceptions.Exit(130)
        return finished

    failed = 0
    for model in models:
        m = Migration.open(out, model)
        say(f"[bold]{model}[/]  ({m.folder})", highlight=False)
        try:
            _run_steps(m, source, local, opts, say, follow)
        except ConvtuneError as exc:
            if len(models) == 1:
                raise
            failed += 1
            say(f"  [red]stopped[/]: {exc}", highlight=False)
            continue
        made = m.done["retrain"]["model"]
        say(f"  report: {m.folder / 'report.html'}", highlight=False)
        say("  run it: " + commands(m, made)["export"].splitlines()[0], highlight=False)
    if failed:
        raise click.exceptions.Exit(1)


def _run_steps(m, source, local, opts, say, follow) -> None:
    """The five steps of one model, each skipped if done earlier (the report is always
    written again: it shows the latest)."""
    from ..migration.report import write_report
    from ..migration.steps import inventory, record, retrain, run_eval

    steps = [
        ("inventory", lambda: inventory(m, source)),
        ("record", lambda: record(m, source, opts, say)),
        ("retrain", lambda: retrain(m, source, local, opts, say, follow)),
        ("eval", lambda: run_eval(m, source, local, opts)),
        ("report", lambda: write_report(m)),
    ]
    for step, run in steps:
        if m.has(step) and step != "report":
            say(f"  {step}: done earlier")
            continue
        run()
        say(f"  {step}: {_made(m, step)}", highlight=False)


def _made(m, step: str) -> str:
    done = m.done[step]
    if step == "inventory":
        days = done.get("days_left")
        left = f", {days} days left" if days is not None else ", no shutdown date known"
        return f"job {done['job']} on {done['base_model']}{left}"
    if step == "record":
        return f"{done['examples']} answers in {done['file']}"
    if step == "retrain":
        return f"{done['model']} (local job {done['job']})"
    if step == "eval":
        agreement = done["agreement"]["models"][0]["metrics"].get("fuzzy_match")
        said = f"fuzzy_match {agreement['mean']:.2f} against the old answers" if agreement else ""
        for d in done.get("references", {}).get("differences", []):
            if d["metric"] == "fuzzy_match":
                said += (
                    f"; against the references {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"
                )
        return said or "done"
    return str(done.get("file", "done"))
