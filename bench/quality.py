"""What the fine-tune answers: the base model against training recipes, on four data sets.

The model is the product, so a recipe is judged by its answers, not its loss. For each data set
and recipe this runs a real local job (`convtune train`'s path: the worker process, with the
recipe's options), then `convtune eval` (in this process, its graders and 95% bootstrap
intervals, greedy answers of up to 48 tokens):

- on the validation file: the base model and the fine-tune, fuzzy_match, rouge_l and bleu, and
  the fine-tune's paired difference to the base with its interval;
- on up to 24 training prompts: the fine-tune against its own training references (did it learn
  its own data?), the median fuzzy_match;
- for the fact set, the share of its questions whose answer contains the fact
  (`string_check:ilike` against the fact itself), for the base model and each recipe.

The data sets:

- `example`: the bundled example (examples/conversations.csv), prepared with the defaults;
- `facts`: bench/data/fernhill_facts.csv, an invented pottery studio: 12 facts (prices, hours, a
  name, a phone number, an address...), each stated in 3 training conversations worded
  differently; bench/data/fernhill_questions.jsonl asks each fact a 4th way, its reference being
  the fact itself;
- `sgd` and `tm4`: the first conversations of the real dialogue files in tests/data
  (Schema-Guided Dialogue: 16, Taskmaster-4's coffee orders: 40; about 100 training examples
  each), a quarter of them for validation.

Recipes (`--recipes`): `default` (every option auto, as `convtune train` with no flag), `before`
(the previous default, as `make demo` trained: 3 epochs at the base learning rate, batch 4, the
last epoch kept), `full` (a full fine-tune, auto epochs and batch, 5x the full base rate),
`6-epochs` (the default with 6 epochs: what more time buys). Wall time is the job's, from
its creation to its end, the answer check included; the training time is the trainer's own.

  .venv/bin/python bench/quality.py [--datasets example,facts,sgd,tm4] [--recipes default,before]
                                    [--write]

`--write` puts the tables in BENCHMARKS.md between this script's markers. Runs with
OMP_NUM_THREADS unset: the job uses both cores, as a user's would.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
RESULTS = ROOT / "bench" / "results"
BASE = "SmolLM2-135M-Instruct"
MAX_TOKENS = 48
TRAIN_PROMPTS = 24
# the first conversations of each real dialogue file: about 100 training examples each (SGD's
# conversations are long: 16 give 101; Taskmaster's coffee orders are short: 40 give 62)
SUBSETS = {"sgd": 16, "tm4": 40}
MARK_START = "<!-- bench/quality.py: start -->"
MARK_END = "<!-- bench/quality.py: end -->"
SERVICE: list = []  # the run's LocalService, once made (CONVTUNE_HOME is set first)


def recipes() -> dict[str, dict]:
    """Each recipe's TrainOptions fields (what `convtune train` flags would set)."""
    return {
        "default": {},
        "before": {
            "n_epochs": 3,
            "batch_size": 4,
            "learning_rate_multiplier": 1.0,
            "keep_last": True,
        },
        "full": {"full": True, "learning_rate_multiplier": 5.0},
        "6-epochs": {"n_epochs": 6},  # the default's rate and batch, half again as long
    }


@dataclass
class DataSet:
    name: str
    train: Path
    valid: Path
    facts: Path | None = None  # questions whose reference is the fact itself


@dataclass
class Outcome:
    dataset: str
    recipe: str
    job_seconds: float = 0.0
    train_seconds: float | None = None
    hyperparameters: dict = field(default_factory=dict)
    valid: dict = field(default_factory=dict)  # eval JSON on the validation file
    train_median: float | None = None  # the fine-tune's median fuzzy_match on training prompts
    recall: float | None = None  # facts: the share of answers that contain the fact
    verdict: str | None = None  # the job's own "Did it learn?" line
    kept: str | None = None  # which epoch the job kept
    model: str = ""  # the fine-tuned model


def subset(src: Path, dst: Path, conversations: int) -> Path:
    """The first `conversations` conversations of a spreadsheet, as a new CSV (same delimiter)."""
    text = src.read_text(encoding="utf-8-sig")
    delimiter = ";" if text.split("\n", 1)[0].count(";") else ","
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    out, seen = [rows[0]], 0
    for row in rows[1:]:
        if row and all(c.strip() in ("###", "") for c in row) and any(c.strip() for c in row):
            seen += 1
            if seen == conversations:
                break
        out.append(row)
    buffer = io.StringIO()
    csv.writer(buffer, delimiter=delimiter, lineterminator="\n").writerows(out)
    dst.write_text(buffer.getvalue(), encoding="utf-8")
    return dst


def datasets(work: Path, names: list[str]) -> list[DataSet]:
    from convtune import PrepareOptions, prepare

    found = []
    for name in names:
        folder = work / "data" / name
        if name == "example":
            report = prepare(ROOT / "examples" / "conversations.csv", folder, PrepareOptions())
            train, valid = (Path(p) for p in report.outputs)
            found.append(DataSet(name, train, valid))
        elif name == "facts":
            report = prepare(DATA / "fernhill_facts.csv", folder, PrepareOptions(valid_ratio=0))
            train = Path(report.outputs[0])
            found.append(
                DataSet(
                    name,
                    train,
                    DATA / "fernhill_questions.jsonl",
                    facts=DATA / "fernhill_questions.jsonl",
                )
            )
        else:
            source = {"sgd": "sgd_taskoriented_small.csv", "tm4": "tm4_coffee_small.csv"}[name]
            folder.mkdir(parents=True, exist_ok=True)
            sheet = subset(ROOT / "tests" / "data" / source, folder / f"{name}.csv", SUBSETS[name])
            report = prepare(sheet, folder, PrepareOptions(valid_ratio=0.25))
            train, valid = (Path(p) for p in report.outputs)
            found.append(DataSet(name, train, valid))
    return found


def eval_json(models: list[str], data: Path, graders: list[str], limit: int | None = None) -> dict:
    """`convtune eval MODELS --data DATA --json` in this process."""
    from convtune.cli.main import main

    args = ["eval", *models, "--data", str(data), "--json", "--no-cache",
            "--max-tokens", str(MAX_TOKENS), "--no-teacher-forcing", "--concurrency", "16"]  # fmt: skip
    for g in graders:
        args += ["--grader", g]
    if limit:
        args += ["--limit", str(limit)]
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    if code != 0:
        raise SystemExit(f"eval failed ({code}) on {data}")
    return json.loads(buffer.getvalue())


def sampled(path: Path, dst: Path, n: int) -> Path:
    """Every k-th line of a JSONL file, n lines at most (training prompts spread over the file)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    step = max(1, len(lines) // n)
    dst.write_text("".join(line + "\n" for line in lines[::step][:n]), encoding="utf-8")
    return dst


def train(service, data: DataSet, recipe: str) -> Outcome:
    from convtune.service.contract import JobRequest
    from convtune.service.training_options import TrainOptions

    outcome = Outcome(data.name, recipe)
    request = JobRequest(
        model=BASE,
        training_file=service.files.upload(data.train).id,
        validation_file=None if data.facts else service.files.upload(data.valid).id,
        suffix=f"{data.name}-{recipe}",
        seed=0,
        options=TrainOptions(**recipes()[recipe]),
    )
    started = time.perf_counter()
    job = service.jobs.create(request)
    while not (job := service.jobs.get(job.id)).done:
        time.sleep(2)
    outcome.job_seconds = time.perf_counter() - started
    if job.status != "succeeded":
        raise SystemExit(f"{data.name}/{recipe}: the job {job.status}: {job.error}")
    outcome.hyperparameters = dict(job.hyperparameters)
    events = list(reversed(service.jobs.list_events(job.id, limit=10_000)))
    begun = next(e.created_at for e in events if e.message.startswith("Training "))
    ended = max(e.created_at for e in events if e.type == "metrics")
    outcome.train_seconds = ended - begun
    for e in events:
        if "verdict" in e.data:
            outcome.verdict = e.message.split(": ", 1)[-1]
        if e.message.startswith("Keeping"):
            outcome.kept = e.message.split(":")[0].removeprefix("Keeping the ")
    outcome.model = job.fine_tuned_model
    return outcome


def fmt_interval(d: dict | None) -> str:
    if d is None:
        return "—"
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def difference(result: dict, metric: str) -> dict | None:
    return next((d for d in result.get("differences", []) if d["metric"] == metric), None)


def table(outcomes: list[Outcome], base_recall: dict[str, float]) -> str:
    lines = [
        "| data set | recipe | hyperparameters | job (training) | fuzzy_match vs base | rouge_l vs base"
        " | bleu vs base | training prompts' median fuzzy_match | facts recalled | the job's own verdict |",
        "|---|---|---|---:|---|---|---|---:|---:|---|",
    ]
    for o in outcomes:
        hp = ", ".join(
            f"{k.replace('learning_rate_multiplier', 'lr x')} {v}"
            for k, v in o.hyperparameters.items()
        )
        timing = f"{o.job_seconds / 60:.1f} min ({(o.train_seconds or 0) / 60:.1f})"
        if o.recall is not None:
            cells = ["—", "—", "—"]
            recall = (
                f"{round(o.recall * 12)} / 12 (base {round(base_recall.get(o.dataset, 0) * 12)})"
            )
        else:
            cells = [
                fmt_interval(difference(o.valid, m)) for m in ("fuzzy_match", "rouge_l", "bleu")
            ]
            recall = "—"
        median = "—" if o.train_median is None else f"{o.train_median:.2f}"
        verdict = o.verdict or "—"
        lines.append(
            f"| {o.dataset} | {o.recipe} | {hp} | {timing} | {' | '.join(cells)} | {median} | {recall} | {verdict} |"
        )
    return "\n".join(lines)


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="example,facts,sgd,tm4")
    ap.add_argument("--recipes", default="default,before")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args(argv)
    names = args.datasets.split(",")
    chosen = args.recipes.split(",")
    unknown = [r for r in chosen if r not in recipes()]
    if unknown:
        ap.error(f"unknown recipe(s): {', '.join(unknown)}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quality-", dir=RESULTS))
    os.environ["CONVTUNE_HOME"] = str(work / "home")
    from convtune.local.local_service import LocalService

    service = LocalService()
    SERVICE.append(service)
    outcomes: list[Outcome] = []
    base_recall: dict[str, float] = {}
    started = time.perf_counter()
    for data in datasets(work, names):
        if data.facts is not None:
            result = eval_json([BASE], data.facts, ["string_check:ilike"])
            base_recall[data.name] = result["models"][0]["metrics"]["string_check_ilike"]["mean"]
        for recipe in chosen:
            print(f"{data.name} / {recipe}: training ...", file=sys.stderr, flush=True)
            outcome = train(service, data, recipe)
            print(f"  job {outcome.job_seconds:.0f} s; evaluating ...", file=sys.stderr, flush=True)
            evaluate(data, outcome, work)
            outcomes.append(outcome)
            print(
                "  " + table([outcome], base_recall).splitlines()[-1], file=sys.stderr, flush=True
            )
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--write"]
    command = " ".join([".venv/bin/python bench/quality.py", *given])
    section = "\n".join([
        f"Produced by `{command}` on {datetime.date.today().isoformat()} ({platform.machine()},"
        f" {os.cpu_count()} cores, Python {platform.python_version()}; convtune at {git_state()});"
        f" {(time.perf_counter() - started) / 60:.0f} minutes in all.",
        "",
        table(outcomes, base_recall),
    ])  # fmt: skip
    print(section)
    (RESULTS / "quality.json").write_text(
        json.dumps([o.__dict__ for o in outcomes], indent=1, default=str), encoding="utf-8"
    )
    if args.write:
        path = ROOT / "BENCHMARKS.md"
        text = path.read_text(encoding="utf-8")
        if MARK_START in text:
            head, rest = text.split(MARK_START, 1)
            text = head + MARK_START + "\n" + section + "\n" + MARK_END + rest.split(MARK_END, 1)[1]
        else:
            text += f"\n{MARK_START}\n{section}\n{MARK_END}\n"
        path.write_text(text, encoding="utf-8")
    return 0


def evaluate(data: DataSet, outcome: Outcome, work: Path) -> None:
    """The fine-tune's answers: on the validation file against the base (or the facts), and on
    training prompts against their own references."""
    model = outcome.model
    if data.facts is not None:
        result = eval_json([model], data.facts, ["string_check:ilike"])
        outcome.recall = result["models"][0]["metrics"]["string_check_ilike"]["mean"]
    else:
        outcome.valid = eval_json([BASE, model], data.valid, ["fuzzy_match", "rouge_l", "bleu"])
    prompts = sampled(
        data.train, work / f"{data.name}-{outcome.recipe}-prompts.jsonl", TRAIN_PROMPTS
    )
    result = eval_json_examples([model], prompts)
    scores = [r["answers"][model]["scores"]["fuzzy_match"] for r in result["results"]]
    outcome.train_median = statistics.median(scores)


def eval_json_examples(models: list[str], data: Path) -> dict:
    """Like `eval_json` with fuzzy_match, with every example's answers and scores."""
    from convtune.evaluation import (
        AnswerCache,
        Settings,
        Target,
        evaluate,
        parse_graders,
        read_prompts,
    )

    service = SERVICE[0]
    result = evaluate(
        read_prompts(data),
        [Target(m, m) for m in models],
        parse_graders(["fuzzy_match"]),
        lambda target: service,
        AnswerCache(None),
        settings=Settings(max_tokens=MAX_TOKENS),
        concurrency=16,
        teacher_forcing=False,
    )
    return result.to_json(examples=True)


if __name__ == "__main__":
    sys.exit(main())
