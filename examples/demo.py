"""The whole flow on the bundled example, as `make demo` runs it.

Prepare the spreadsheet, check the result, fine-tune SmolLM2-135M-Instruct locally with the
default recipe (every option auto; the job ends by saying whether it learned), ask the base model
and the fine-tuned one three validation questions and three questions whose answers are facts of
the training data (two asked as the training data asks them, one in new words), side by side, then evaluate both on the whole validation file (`convtune
eval`: scores with their intervals, and a report page). Everything goes through the library; the
CLI would do the same in five commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

import convtune
from convtune.cli.eval_cmd import show_result
from convtune.cli.follow_view import follow_job, summary
from convtune.dataset.jsonl import AtomicWriter
from convtune.evaluation import (
    DEFAULT_GRADERS,
    AnswerCache,
    Settings,
    Target,
    evaluate,
    parse_graders,
    read_prompts,
    render_html,
)
from convtune.evaluation.answers import default_cache_path
from convtune.local.local_service import LocalService
from convtune.service.contract import ChatRequest, JobRequest
from convtune.service.training_options import TrainOptions

ROOT = Path(__file__).resolve().parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/demo")
console = Console(soft_wrap=True)  # paths and ids stay whole


# Facts the training conversations state several times: two asked as a training conversation
# asks them (did it learn its data?), one in words of our own (does it carry over? on a 135M
# model, often not: the README says what it answers).
FACT_QUESTIONS = [
    (
        "What time do you open on Saturday?",
        "as in training",
        "9:00 (We're open Monday to Saturday from 9:00 to 18:00)",
    ),
    (
        "How much does it cost to rent an e-bike?",
        "as in training",
        "25 EUR per day (Rentals are 25 EUR per day)",
    ),
    ("Are you open on Sundays?", "in new words", "No (We're closed on Sundays)"),
]


def questions(valid: Path, n: int = 3) -> list[tuple[list[dict], str]]:
    """The first `n` validation examples: their context, and the reply the data gives."""
    found = []
    for line in valid.read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        context = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        if len(context) == 1:  # the opening question of a conversation
            found.append((context, messages[-1]["content"]))
        if len(found) == n:
            break
    return found


def main() -> None:
    console.rule("1. prepare")
    report = convtune.prepare(
        ROOT / "conversations.csv",
        OUT,
        convtune.PrepareOptions(force=True, model="SmolLM2-135M-Instruct"),
    )
    train, valid = (Path(p) for p in report.outputs)
    console.print(
        f"{report.conversations} conversations, {report.examples} examples → {train}, {valid}"
    )

    console.rule("2. check")
    checked = convtune.check_file(train, model="SmolLM2-135M-Instruct")
    console.print(
        f"{checked.examples} examples, {checked.tokens.total:,} tokens, {checked.errors} errors"
    )

    console.rule("3. fine-tune SmolLM2-135M-Instruct on this CPU")
    service = LocalService()
    job = service.jobs.create(
        JobRequest(
            model="SmolLM2-135M-Instruct",
            training_file=service.files.upload(train).id,
            validation_file=service.files.upload(valid).id,
            suffix="nimbus",
            seed=0,
            options=TrainOptions(),  # the default recipe: every option auto
        )
    )
    console.print(f"job {job.id}")
    finished = follow_job(service, job.id)
    if finished is None:
        return
    summary(finished, service)
    if finished.status != "succeeded":
        sys.exit(1)

    console.rule(
        "4. base model vs fine-tuned: validation questions, then facts of the training data"
    )
    table = Table(show_lines=True)
    table.add_column("question", ratio=2)
    table.add_column("SmolLM2-135M-Instruct", ratio=3)
    table.add_column("fine-tuned", ratio=3)
    table.add_column("in the data", ratio=3)
    asked = questions(valid)
    asked += [([{"role": "user", "content": q}], fact) for q, _, fact in FACT_QUESTIONS]
    how = {q: how for q, how, _ in FACT_QUESTIONS}
    models = ("SmolLM2-135M-Instruct", finished.fine_tuned_model)
    # every question at once: a local model answers concurrent chats in one batch
    replies = [
        [service.chat.create(ChatRequest(m, context, max_tokens=80, temperature=0)) for m in models]
        for context, _ in asked
    ]
    for (context, expected), pair in zip(asked, replies, strict=True):
        question = context[-1]["content"]
        shown = f"{question} ({how[question]})" if question in how else question
        table.add_row(shown, *("".join(r).strip() for r in pair), expected)
    console.print(table)

    console.rule("5. does the fine-tune work? base vs fine-tuned on the validation file")
    data = read_prompts(valid)
    graders = parse_graders(DEFAULT_GRADERS)
    targets = [Target(m, m) for m in ("SmolLM2-135M-Instruct", finished.fine_tuned_model)]
    result = evaluate(
        data,
        targets,
        graders,
        lambda target: service,
        # the data folder's cache, where the job left its own answers to these prompts (asked
        # the same way: greedy, 48 tokens): only what the job did not ask is asked here
        AnswerCache(default_cache_path(service.home)),
        settings=Settings(max_tokens=48),
        concurrency=len(data.prompts),  # every prompt in one batch
    )
    show_result(result)
    page = OUT / "eval.html"
    with AtomicWriter(page, force=True) as out:
        out.write(render_html(result))
    console.print(f"\nevery answer side by side: {page}")

    console.rule("where everything is")
    console.print(f"datasets:         {train}\n                  {valid}")
    console.print(f"data directory:   {service.home}  (CONVTUNE_HOME)")
    model = service.models.record(finished.fine_tuned_model)
    console.print(f"fine-tuned model: {model['path']}  (merged, loads with transformers)")
    console.print(f"LoRA adapter:     {model['adapter_path']}")
    console.print(f"\nChat with it:     convtune chat {finished.fine_tuned_model}")


if __name__ == "__main__":
    main()
