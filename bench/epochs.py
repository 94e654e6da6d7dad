"""What a recipe's model answers after each epoch: the measurements behind the default recipe.

One training run in this process (convtune's trainer, no job: no held-out probe, no checkpoints),
and at the end of every `--every`-th epoch the model as it is answers, greedy, up to 48 tokens:

- `example`: the bundled example's 25 validation prompts and every 8th of its 103 training
  prompts, scored by fuzzy_match (mean, median) and rouge_l (mean) against their references, and
  three questions whose answers are facts of the training data (the standard service's price,
  the Saturday opening, the day's rental), counted when the answer holds the fact;
- `facts`: bench/data/fernhill_questions.jsonl (each of 12 facts asked a 4th way), counted when
  the answer holds the fact, and 12 of the training prompts.

  .venv/bin/python bench/epochs.py --data example --epochs 4 --batch-size 4 --lr 2e-3 [--base]
        [--full] [--lora-r 16] [--lora-alpha 32] [--every 1]

Prints one JSON line per probed epoch: the epoch, the training seconds so far (answers not
counted), and the scores. `--base` scores the base model first. OMP_NUM_THREADS is the caller's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FACT_CHECKS = [  # in the bundled example's training conversations; asked as they are there
    ("How much is a standard service?", "89 EUR"),
    ("What time do you open on Saturday?", "9:00"),
    ("How much does it cost to rent an e-bike?", "25 EUR"),
]


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def prompts_of(recs: list[dict]) -> list[tuple[list[dict], str]]:
    out = []
    for r in recs:
        messages = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
        out.append((messages[:-1], messages[-1]["content"]))
    return out


def answer(model, tokenizer, prompts, max_tokens: int = 48) -> list[str]:
    """Every prompt's greedy answer, generated together by the chat's batch engine."""
    from convtune.local.chat import LocalChat
    from convtune.service.contract import ChatRequest

    chat = LocalChat(model, tokenizer, "chat", None, max_batch=32)
    try:
        replies = [
            chat.reply(ChatRequest("m", p, max_tokens=max_tokens, temperature=0))
            for p, _ in prompts
        ]
        return ["".join(r).strip() for r in replies]
    finally:
        chat.close()


def score(model, tokenizer, sets: dict) -> dict:
    from convtune.evaluation.graders import parse_graders

    fuzzy, rouge = parse_graders(["fuzzy_match", "rouge_l"])
    out = {}
    for name, (prompts, kind) in sets.items():
        answers = answer(model, tokenizer, prompts)
        if kind == "fact":
            held = [ref.lower() in a.lower() for a, (_, ref) in zip(answers, prompts, strict=True)]
            out[name] = f"{sum(held)}/{len(held)}"
            out[name + "_answers"] = answers[:3]
        else:
            f = [fuzzy.score(a, r, p) for a, (p, r) in zip(answers, prompts, strict=True)]
            g = [rouge.score(a, r, p) for a, (p, r) in zip(answers, prompts, strict=True)]
            out[name] = {
                "fuzzy_mean": round(statistics.mean(f), 3),
                "fuzzy_median": round(statistics.median(f), 3),
                "rouge_l": round(statistics.mean(g), 3),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=("example", "facts"), default="example")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--lora-alpha", type=int, default=32)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--base", action="store_true")
    args = ap.parse_args()

    import torch

    from convtune import PrepareOptions, prepare
    from convtune.local.base_models import load_base_model, resolve_base_model
    from convtune.local.loss_masks import tokenize_records
    from convtune.local.training import TrainConfig, train

    work = Path(tempfile.mkdtemp(prefix="convtune-epochs-"))
    if args.data == "example":
        report = prepare(ROOT / "examples" / "conversations.csv", work, PrepareOptions())
        train_recs = records(Path(report.outputs[0]))
        sets = {
            "valid": (prompts_of(records(Path(report.outputs[1]))), "text"),
            "train": (prompts_of(train_recs[::8]), "text"),
            "facts": ([([{"role": "user", "content": q}], k) for q, k in FACT_CHECKS], "fact"),
        }
    else:
        sheet = ROOT / "bench" / "data" / "fernhill_facts.csv"
        report = prepare(sheet, work, PrepareOptions(valid_ratio=0))
        train_recs = records(Path(report.outputs[0]))
        questions = records(ROOT / "bench" / "data" / "fernhill_questions.jsonl")
        sets = {
            "facts": (prompts_of(questions), "fact"),
            "train": (prompts_of(train_recs[:12]), "text"),
        }

    torch.manual_seed(0)
    model, tokenizer, _ = load_base_model(resolve_base_model("SmolLM2-135M-Instruct"))
    examples, _ = tokenize_records(list(enumerate(train_recs, 1)), tokenizer, max_length=1024)
    if args.base:
        model.eval()
        with torch.no_grad():
            print(json.dumps({"epoch": 0, "scores": score(model, tokenizer, sets)}), flush=True)
    config = TrainConfig(
        n_epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lora=not args.full,
        lora_r=args.lora_r,
        lora_alpha=args.lora_alpha,
        eval_every=10**9,
    )
    started = time.perf_counter()
    answering_seconds = [0.0]

    def on_epoch_end(epoch, step, save, answering) -> None:
        if epoch % args.every and epoch != args.epochs:
            return
        began = time.perf_counter()
        with answering() as trained:
            scores = score(trained, tokenizer, sets)
        answering_seconds[0] += time.perf_counter() - began
        seconds = began - started - (answering_seconds[0] - (time.perf_counter() - began))
        print(json.dumps({"epoch": epoch, "step": step, "train_seconds": round(seconds),
                          "scores": scores}), flush=True)  # fmt: skip

    train(model, tokenizer, examples, None, config, on_epoch_end=on_epoch_end)


if __name__ == "__main__":
    sys.exit(main())
