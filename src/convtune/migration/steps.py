"""Moving one OpenAI fine-tune to an open model: inventory, record, retrain, eval, report.

Each step reads what the earlier ones recorded in the migration's state (`state.Migration`) and
records what it made; a step already done is skipped. Nothing on the source service is deleted
or changed: the migration reads its job and files and asks its model, nothing else.

- **inventory**: the job behind the model (found by listing the account's jobs), its base
  model, hyperparameters, training and validation files, and the days left before OpenAI shuts
  the model down (`openai_backend.catalog`).
- **record**: the old model's answers to the prompts of `--data`, asked once and cached in the
  migration's folder (`answers.jsonl`) as they arrive, then written as a golden chat file
  (`recorded.jsonl`): after the shutdown they are still there.
- **retrain**: the job's training data (downloaded where the service allows it, else the copy
  convtune uploaded it from, else `--train`), trained on the open model with the job's epochs and
  batch size (OpenAI's learning rate multiplier is relative to its own base rate and models: the
  local auto rate is kept), and followed to its end. A stopped job is resumed.
- **eval**: the new model against the recorded answers (how close it answers to the old one), and,
  where `--data` has references, the old model's recorded answers and the new model's against
  them, with paired intervals (`convtune eval`'s graders and statistics).
- **report**: one HTML page with all of it and the commands to export and serve the new model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..dataset.modelinfo import SMOLLM2
from ..errors import ConvtuneError, NotFound
from ..evaluation import (
    AnswerCache,
    Settings,
    ask,
    evaluate,
    parse_graders,
    read_prompts,
    render_html,
    with_references,
    write_golden,
)
from ..evaluation.targets import Target
from ..service.contract import FineTuningService, JobRequest
from ..service.objects import Job
from ..service.training_options import AUTO, TrainOptions
from .state import Migration

Say = Callable[[str], None]


@dataclass
class MigrateOptions:
    data: Path  # the prompts asked of both models (a validation or golden file)
    model: str = SMOLLM2  # the open model trained
    train: Path | None = None  # the training data, where the service does not let it be read
    recipe: str = "openai"  # "openai": the job's epochs and batch size; "auto": convtune's
    graders: tuple[str, ...] = ("fuzzy_match", "rouge_l", "bleu")
    settings: Settings = field(default_factory=lambda: Settings(temperature=0.0))
    limit: int | None = None
    concurrency: int = 4


def inventory(m: Migration, source: FineTuningService) -> dict[str, Any]:
    """The job behind the model, and when the model shuts down."""
    from ..openai_backend.catalog import retirement

    job = find_job(source, m.model)
    when = retirement(m.model)
    made = {
        "service": source.base_url,
        "job": job.id,
        "base_model": job.model,
        "hyperparameters": dict(job.hyperparameters),
        "method": job.method,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "suffix": job.suffix,
        "seed": job.seed,
        **when.to_dict(),
    }
    m.mark("inventory", **made)
    return made


def find_job(source: FineTuningService, model: str) -> Job:
    """The job whose fine-tuned model is `model`, listing the account's jobs page by page."""
    after = None
    while True:
        jobs = source.jobs.list(after=after, limit=100)
        for job in jobs:
            if job.fine_tuned_model == model:
                return job
        if len(jobs) < 100:
            raise NotFound(
                f"no fine-tuning job on {source.base_url} made {model}",
                hint="`convtune models list --backend openai` lists the fine-tuned models",
            )
        after = jobs[-1].id


def fine_tuned_models(source: FineTuningService) -> list[str]:
    """`--all`: every fine-tuned model the account's succeeded jobs made, newest first."""
    found, after = [], None
    while True:
        jobs = source.jobs.list(after=after, limit=100)
        found += [
            j.fine_tuned_model for j in jobs if j.status == "succeeded" and j.fine_tuned_model
        ]
        if len(jobs) < 100:
            return list(dict.fromkeys(found))
        after = jobs[-1].id


def old_target(m: Migration, source: FineTuningService) -> Target:
    return Target(m.model, m.model, "openai", source.base_url)


def record(m: Migration, source: FineTuningService, opts: MigrateOptions, say: Say) -> None:
    """The old model's answers, cached as they arrive, then the golden file."""
    prompts = read_prompts(opts.data, limit=opts.limit, purpose="record")
    cache = AnswerCache(m.folder / "answers.jsonl")
    answers = ask(
        source,
        old_target(m, source),
        prompts.prompts,
        opts.settings,
        cache,
        concurrency=opts.concurrency,
        on_retry=lambda exc, wait: say(f"  retrying in {wait:.0f} s: {exc.message}"),
    )
    # an empty answer is what the model said, but no example a golden file can hold: it is left
    # out of the file, and said (a failed answer stops the step: a rerun asks it again)
    empty = [
        p.line for p, a in zip(prompts.prompts, answers, strict=True) if not a.error and not a.text
    ]
    kept = [(p, a) for p, a in zip(prompts.prompts, answers, strict=True) if a.error or a.text]
    if not kept:
        raise ConvtuneError(f"{m.model} answered every prompt of {opts.data} with nothing")
    written = write_golden(m.folder / "recorded.jsonl", *map(list, zip(*kept, strict=True)),
                           force=True)  # fmt: skip
    if empty:
        lines = ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else "")
        say(f"  {len(empty)} empty answers (data lines {lines}): left out of {written.path.name}")
    m.mark("record", file=written.path, examples=written.examples, cached=written.cached,
           empty_lines=empty)  # fmt: skip


def fetch_file(
    source: FineTuningService, file_id: str, given: Path | None, target: Path
) -> tuple[Path, str]:
    """The bytes of one of the job's files on this machine, and where they came from: `given`
    (the user's), the service's download (`target`), or the copy convtune uploaded it from."""
    if given is not None:
        if not given.is_file():
            raise ConvtuneError("no such file", path=given)
        return given, "given"
    if target.is_file():
        return target, "downloaded earlier"
    try:
        content = source.files.content(file_id)
    except NotFound:
        content = None
        reason = f"{file_id} is gone from the service"
    except ConvtuneError as exc:
        content = None
        reason = f"the service does not let {file_id} be downloaded ({exc.message})"
    if content is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        return target, "downloaded"
    uploaded = source.files.uploaded_from(file_id)
    if uploaded is not None:
        return uploaded, "the file convtune uploaded"
    raise ConvtuneError(
        f"cannot read the job's training data: {reason}",
        hint="give the file it was trained on with --train FILE",
    )


def mapped_options(
    hyperparameters: dict[str, Any], recipe: str, method: str = "supervised"
) -> TrainOptions:
    """The job's method (a DPO fine-tune is retrained with DPO), and with `recipe` "openai" its
    epochs, batch size and DPO's beta where they are numbers, else auto; the learning rate
    multiplier stays auto: OpenAI's is relative to its own base rate."""
    if recipe == "auto":
        return TrainOptions(method=method)
    names = ("n_epochs", "batch_size", "beta") if method == "dpo" else ("n_epochs", "batch_size")
    kept = {
        k: v
        for k, v in hyperparameters.items()
        if k in names and isinstance(v, int | float) and not isinstance(v, bool)
    }
    if "beta" in kept:
        kept["beta"] = float(kept["beta"])
    for name in ("n_epochs", "batch_size"):
        if name in kept and not isinstance(kept[name], int):
            del kept[name]
    return TrainOptions(method=method, **{k: kept.get(k, AUTO) for k in names})


def retrain(
    m: Migration,
    source: FineTuningService,
    local: FineTuningService,
    opts: MigrateOptions,
    say: Say,
    follow_job: Callable[[FineTuningService, str], Job],
) -> None:
    """The same data on the open model, followed to its end (a stopped job resumed)."""
    found = m.done["inventory"]
    started = m.done.get("retrain_started")
    if started is None:
        train, where = fetch_file(
            source, found["training_file"], opts.train, m.folder / "train.jsonl"
        )
        say(f"  training data: {train} ({where})")
        valid_id = None
        if found.get("validation_file"):
            try:
                valid, _ = fetch_file(
                    source, found["validation_file"], None, m.folder / "valid.jsonl"
                )
            except ConvtuneError:
                say("  the job's validation file cannot be read: training without one")
            else:
                valid_id = local.files.upload(valid).id
        options = mapped_options(
            found.get("hyperparameters") or {}, opts.recipe, found.get("method") or "supervised"
        )
        job = local.jobs.create(
            JobRequest(
                model=opts.model,
                training_file=local.files.upload(train).id,
                validation_file=valid_id,
                suffix=found.get("suffix") or None,
                seed=found.get("seed"),
                metadata={"migrated_from": m.model[:512]},
                options=options,
            )
        )
        m.mark("retrain_started", job=job.id)
        job_id = job.id
    else:
        job_id = started["job"]
        job = local.jobs.get(job_id)
        if job.status in ("failed", "cancelled", "paused"):
            say(f"  resuming {job_id} ({job.status})")
            local.jobs.resume(job_id)
    finished = follow_job(local, job_id)
    if finished.status != "succeeded" or not finished.fine_tuned_model:
        why = finished.error.message if finished.error else finished.status
        raise ConvtuneError(
            f"the local job {job_id} ended {finished.status}: {why}",
            hint="run the same command again to resume it",
        )
    m.mark("retrain", job=job_id, model=finished.fine_tuned_model, base=opts.model)


def run_eval(
    m: Migration,
    source: FineTuningService,
    local: FineTuningService,
    opts: MigrateOptions,
) -> None:
    """The new model against the recorded answers; and where the data has references, the old
    model's recorded answers and the new model's against them."""
    data = read_prompts(opts.data, limit=opts.limit)
    new = Target(m.done["retrain"]["model"], m.done["retrain"]["model"], "local")
    old = old_target(m, source)
    graders = parse_graders(list(opts.graders))
    cache = AnswerCache(m.folder / "answers.jsonl")  # the recorded answers are there

    def services(target: Target) -> FineTuningService:
        return local if target.backend == "local" else source

    made: dict[str, Any] = {}
    empty = set(m.done["record"].get("empty_lines") or ())
    answered = replace(data, prompts=[p for p in data.prompts if p.line not in empty])
    recorded = with_references(answered, m.done["record"]["file"])
    agreement = evaluate(recorded, [new], graders, services, cache, settings=opts.settings,
                         concurrency=opts.concurrency, teacher_forcing=False)  # fmt: skip
    made["agreement"] = _save(m.folder / "eval-recorded", agreement)
    if all(p.reference for p in data.prompts):
        both = evaluate(data, [old, new], graders, services, cache, settings=opts.settings,
                        concurrency=opts.concurrency, teacher_forcing=False)  # fmt: skip
        made["references"] = _save(m.folder / "eval-references", both)
    m.mark("eval", **made)


def _save(stem: Path, result: Any) -> dict[str, Any]:
    """The result's JSON and page beside each other; its summary for the report."""
    summary = result.to_json()
    stem.with_suffix(".json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    stem.with_suffix(".html").write_text(render_html(result), encoding="utf-8")
    return {"json": str(stem.with_suffix(".json")), "html": str(stem.with_suffix(".html")),
            "models": summary["models"], "differences": summary["differences"]}  # fmt: skip
