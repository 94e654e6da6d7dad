"""`convtune eval` and `convtune record`: does the fine-tune work, and keep what a model said."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from ..errors import OptionError, OutputExistsError
from ..evaluation.answers import AnswerCache, Settings, ask, default_cache_path
from ..evaluation.golden import write_golden
from ..evaluation.graders import DEFAULT_GRADERS, parse_graders
from ..evaluation.prompts import read_prompts
from ..evaluation.run import CachedJudge, evaluate, with_references
from ..evaluation.targets import Target, parse_target
from ..service.contract import FineTuningService
from ..state.home import data_dir
from . import render
from .backend import Backend, backend_option, service_for
from .eval_view import EvalProgressBar, show_result


def generation_options(f):
    """How answers are asked, shared by eval and record: deterministic by default."""
    f = click.option(
        "--cache",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Answers file (default: $CONVTUNE_HOME/eval/answers.jsonl, in convtune's own data"
        " folder); every answer is appended as it arrives, so a rerun or a resumed run asks"
        " nothing twice. Never the --data file, nor a file that is not such a cache.",
    )(f)
    f = click.option("--no-cache", is_flag=True, help="Ask every prompt again.")(f)
    f = click.option(
        "--concurrency",
        type=click.IntRange(1, 64),
        default=4,
        show_default=True,
        help="Prompts asked at once (a local model answers them in one batch).",
    )(f)
    f = click.option("--seed", type=int, default=0, show_default=True)(f)
    f = click.option(
        "--limit", type=click.IntRange(min=1), default=None, help="Only the first N examples."
    )(f)
    f = click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)(f)
    f = click.option(
        "--temperature",
        type=click.FloatRange(0, 2),
        default=0.0,
        show_default=True,
        help="0: greedy, the same answers every run.",
    )(f)
    return f


def _cache(path: Path | None, no_cache: bool, inputs: dict[str, Path | None]) -> AnswerCache:
    """The answers cache; never one of the command's input files (`inputs`, by option)."""
    if no_cache:
        return AnswerCache(None)
    path = _cache_path(path)
    for option, given in inputs.items():
        if given is not None and _same_file(path, given):
            raise OptionError(
                f"--cache {path} is the {option} file: answers would be appended to it",
                hint="give --cache a file of its own, or leave it out",
            )
    return AnswerCache(path)


def _cache_path(given: Path | None) -> Path:
    """--cache, or the default one in convtune's data folder."""
    return given or default_cache_path(data_dir())


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, `..` and other spellings)."""
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def _services(backend: Backend):
    """One service per backend and address, made on first use (a service on this machine
    needs no key from the user: `OpenAIService` sends a placeholder)."""

    @functools.cache
    def service(name: str, base_url: str | None) -> FineTuningService:
        return service_for(Backend(name, base_url, backend.api_key, backend.engine))

    return lambda target: service(target.backend, target.base_url)


def _targets(models: tuple[str, ...], backend: Backend) -> list[Target]:
    return [parse_target(m, backend=backend.name, base_url=backend.base_url) for m in models]


@click.command(
    "eval",
    short_help="Score models' answers against a validation file, with confidence intervals.",
    epilog="""
\b
Examples:
  convtune eval SmolLM2-135M-Instruct ft:SmolLM2-135M-Instruct::ftjob-abc --data out/x.valid.jsonl
  convtune eval ft:gpt-4o-mini-2024-07-18:acme::AbC@openai ft:SmolLM2-135M-Instruct::ftjob-abc@local \\
      --data out/x.valid.jsonl --report eval.html
  convtune eval ft:SmolLM2-135M-Instruct::ftjob-abc --reference golden.jsonl --json
  convtune eval m1 m2 --data v.jsonl --grader string_check:ilike --grader score_model:rubric.txt --judge gpt-4.1-mini@openai
""",
)
@click.argument("models", nargs=-1, required=True, metavar="MODEL[@BACKEND]...")
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Chat, prompt-completion or sharegpt JSONL: each example's last trained reply is the"
    " reference, everything before it the prompt; preference JSONL: the input is the prompt,"
    " the preferred output the reference.",
)
@click.option(
    "--reference",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="A golden file from `convtune record`: its answers are the references (its prompts"
    " too, without --data).",
)
@click.option(
    "--grader",
    "graders",
    multiple=True,
    metavar="GRADER",
    help="One grader; repeat the option for more (--grader bleu --grader rouge_l): fuzzy_match,"
    " bleu, gleu, rouge_1..rouge_5, rouge_l, string_check:eq|ne|like|ilike,"
    " score_model:RUBRIC_FILE (default: fuzzy_match, bleu, rouge_l).",
)
@click.option(
    "--judge",
    default=None,
    metavar="MODEL[@BACKEND]",
    help="The model that grades a score_model grader (needed by it, refused without it).",
)
@generation_options
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (shape in the README)."
)
@click.option(
    "--report",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write a self-contained HTML page: summary, chart, every example side by side.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing --report file.")
@click.option(
    "--no-teacher-forcing", is_flag=True, help="Skip the validation loss of local models."
)
@backend_option(mixed=True, engine=True)
def eval_command(
    models: tuple[str, ...],
    data: Path | None,
    reference: Path | None,
    graders: tuple[str, ...],
    judge: str | None,
    temperature: float,
    max_tokens: int,
    limit: int | None,
    seed: int,
    concurrency: int,
    no_cache: bool,
    cache: Path | None,
    as_json: bool,
    report: Path | None,
    force: bool,
    no_teacher_forcing: bool,
    backend: Backend,
) -> None:
    """Score every model's answer to every prompt of a validation file.

    Each metric comes with a 95% bootstrap interval, and each model after the first with its
    difference to the first: an interval that excludes 0 is a real difference. Models may come
    from different backends: MODEL@local, MODEL@openai, MODEL@http://host:port/v1.
    """
    if data is None and reference is None:
        raise click.UsageError("give --data FILE (or --reference GOLDEN.jsonl)")
    for spec in graders:
        if "," in spec and not spec.lower().startswith("score_model:"):
            raise click.UsageError(
                f"--grader {spec}: one grader per --grader; repeat the option"
                f" (--grader {' --grader '.join(s.strip() for s in spec.split(','))})"
            )
    if judge is not None and not any(g.lower().startswith("score_model") for g in graders):
        raise click.UsageError(
            "--judge grades a score_model grader, and none was given"
            " (add --grader score_model:RUBRIC_FILE, or leave --judge out)"
        )
    targets = _targets(models, backend)
    if report is not None:
        _check_output(report, force, ".html", {"--data": data, "--reference": reference})
    settings = Settings(temperature=temperature, max_tokens=max_tokens, seed=seed)
    answers = _cache(cache, no_cache, {"--data": data, "--reference": reference})
    services = _services(backend)
    judge_fn = None
    if judge is not None:
        judge_target = parse_target(judge, backend=backend.name, base_url=backend.base_url)
        judge_fn = CachedJudge(judge_target, services, answers)
    chosen = parse_graders(graders or DEFAULT_GRADERS, judge=judge_fn)
    prompts = read_prompts(data or reference, limit=limit)  # type: ignore[arg-type]
    if reference is not None and data is not None:
        prompts = with_references(prompts, reference)
    with EvalProgressBar() as progress:
        result = evaluate(
            prompts,
            targets,
            chosen,
            services,
            answers,
            settings=settings,
            concurrency=concurrency,
            seed=seed,
            teacher_forcing=not no_teacher_forcing,
            progress=progress,
            judge=judge_fn,
        )
    if report is not None:
        from ..dataset.jsonl import AtomicWriter
        from ..evaluation.report_html import render_html

        with AtomicWriter(report, force=force) as out:
            out.write(render_html(result))
    if as_json:
        render.print_json(result.to_json())
    else:
        show_result(result)
        if report is not None:
            render.out.print(f"\nwrote {report}", highlight=False)
    _report_unasked(prompts.path, prompts.unasked)
    failed = False
    for model in result.models:
        failed |= _report_errors(
            model.model,
            model.errors,
            model.error_messages,
            len(prompts.prompts),
            "--json lists them",
        )
    if failed:
        raise click.exceptions.Exit(1)


def _report_unasked(path: Path, lines: list[int]) -> None:
    if lines:
        click.echo(
            f"{path}: {_count(len(lines), 'example')} asked nothing (no user message or prompt"
            f" text before the reply), not asked: lines {', '.join(map(str, lines[:5]))}"
            + (", ..." if len(lines) > 5 else ""),
            err=True,
        )


SHOWN_REASONS = 5  # distinct reasons printed per model; the JSON and the report have them all


def _report_errors(
    model: str, errors: int, reasons: list[tuple[str, int]], total: int, more: str = ""
) -> bool:
    """One line on stderr per distinct reason a model failed for; True when it failed at all.
    `more`: where the reasons not shown are listed (eval's --json; record has no such place)."""
    if not errors:
        return False
    click.echo(f"convtune: {model}: {errors} of {_count(total, 'example')} failed:", err=True)
    for message, count in reasons[:SHOWN_REASONS]:
        click.echo(f"  {_count(count, 'example')}: {message}", err=True)
    if len(reasons) > SHOWN_REASONS:
        where = f" ({more})" if more else ""
        click.echo(f"  and {len(reasons) - SHOWN_REASONS} other reasons{where}", err=True)
    return True


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@click.command(
    "record",
    short_help="Write a model's answers as a chat fine-tuning file (a golden set).",
    epilog="""
\b
Examples:
  convtune record ft:gpt-4o-mini-2024-07-18:acme::AbC --backend openai --data out/x.valid.jsonl -o golden.jsonl
  convtune record ft:SmolLM2-135M-Instruct::ftjob-abc --data out/x.valid.jsonl -o golden.jsonl
""",
)
@click.argument("model", metavar="MODEL[@BACKEND]")
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The prompts: a chat, prompt-completion or sharegpt JSONL.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="The golden chat JSONL to write.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@generation_options
@backend_option(engine=True)
def record(
    model: str,
    data: Path,
    output: Path,
    force: bool,
    temperature: float,
    max_tokens: int,
    limit: int | None,
    seed: int,
    concurrency: int,
    no_cache: bool,
    cache: Path | None,
    backend: Backend,
) -> None:
    """Write MODEL's answers to every prompt of --data as chat examples.

    The file passes `convtune check`, is the reference of `eval --reference`, and trains an open
    model on what this one said. Answers are cached as they arrive: a rerun asks only the rest.
    """
    cache_file = None if no_cache else _cache_path(cache)  # the default one too
    _check_output(output, force, ".jsonl", {"--data": data, "--cache": cache_file})
    target = parse_target(model, backend=backend.name, base_url=backend.base_url)
    prompts = read_prompts(data, limit=limit, purpose="record")
    settings = Settings(temperature=temperature, max_tokens=max_tokens, seed=seed)
    answers_cache = _cache(cache, no_cache, {"--data": data})
    with EvalProgressBar() as progress:
        progress.model(target, len(prompts.prompts))
        answers = ask(
            _services(backend)(target),
            target,
            prompts.prompts,
            settings,
            answers_cache,
            concurrency=concurrency,
            on_answer=lambda prompt, answer: progress.answer(target, prompt, answer),
            on_retry=progress.retry,
        )
    _report_unasked(prompts.path, prompts.unasked)
    reasons: dict[str, int] = {}
    for answer in answers:
        if answer.error:
            reasons[answer.error] = reasons.get(answer.error, 0) + 1
    _report_errors(target.label, sum(reasons.values()), list(reasons.items()), len(answers))
    written = write_golden(output, prompts.prompts, answers, force=force)
    render.out.print(
        f"wrote {written.path}: {_count(written.examples, 'example')}"
        + (f" ({_count(written.cached, 'answer')} from the cache)" if written.cached else ""),
        highlight=False,
    )
    cut = [
        p.line for p, a in zip(prompts.prompts, answers, strict=True) if a.finish_reason == "length"
    ]
    if cut:
        click.echo(
            f"warning: {_count(len(cut), 'answer')} of {len(answers)} stopped at --max-tokens"
            f" {max_tokens} before the model finished (data lines"
            f" {', '.join(map(str, cut[:5]))}{', ...' if len(cut) > 5 else ''}): the golden file"
            " holds them cut short; record again with a larger --max-tokens to have them whole",
            err=True,
        )


def _check_output(
    path: Path, force: bool, suffix: str, inputs: dict[str, Path | None] | None = None
) -> None:
    """Before anything is asked (or paid for): the output must be writable as asked, and never
    one of the command's own files (`inputs`, by option), --force or not."""
    if path.suffix.lower() != suffix:
        raise OptionError(f"{path} should end in {suffix}")
    for option, given in (inputs or {}).items():
        if given is not None and _same_file(path, given):
            raise OptionError(
                f"{path} is the {option} file: writing there would replace it",
                hint="write to another file",
            )
    if path.exists() and not force:
        raise OutputExistsError("already exists", path=path, hint="use --force to overwrite it")
    if not path.parent.exists():
        raise OptionError(f"the folder {path.parent} does not exist")
