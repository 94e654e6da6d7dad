"""How fast each engine answers, and how often it answers as transformers does.

    .venv/bin/python bench/engines.py [--model SmolLM2-135M-Instruct] [--threads 1]

Each engine runs in a process of its own (its own threads, nothing shared but the data folder
where CTranslate2's conversions are kept), on the bundled example's validation prompts:

- conversion: the first load of the model by the engine, converting it (CTranslate2), then the
  second (read from the data folder);
- single stream: one greedy reply of up to 128 tokens, alone, warm: tokens per second;
- 32 at once: 32 different prompts asked together (threads, `max_batch` 32), 16 tokens each,
  greedy: the wall time, against the transformers path's continuous batching;
- agreement: the greedy answers (48 tokens) identical to transformers', and the top-1 agreement:
  on each prompt followed by transformers' answer, the share of positions where the engine's
  most likely next token is transformers' (teacher forcing, the whole vocabulary).

Prints a Markdown table and writes the figures as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("transformers", "ctranslate2-float32", "ctranslate2")
LONG = "Tell me, in detail, how to look after an e-bike battery through the year."


def prompts() -> list[list[dict[str, str]]]:
    from convtune import PrepareOptions, prepare

    out = Path(tempfile.mkdtemp(prefix="engines-data-"))
    report = prepare(ROOT / "examples" / "conversations.csv", out, PrepareOptions(force=True))
    lines = Path(report.outputs[1]).read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines]
    return [m[:-1] if m[-1]["role"] == "assistant" else m for m in conversations]


def measure(engine: str, model: str, home: Path, sequences: list[list[int]] | None) -> dict:
    """One engine's figures (run in a process of its own)."""
    from convtune.local.local_service import LocalService
    from convtune.service.contract import ChatRequest

    asked = prompts()
    service = LocalService(home, engine=engine, max_batch=32)
    started = time.perf_counter()
    chat = service.chat.model(model)
    first_load = time.perf_counter() - started
    service.close()
    service = LocalService(home, engine=engine, max_batch=32)
    started = time.perf_counter()
    chat = service.chat.model(model)
    second_load = time.perf_counter() - started

    def ask(messages, max_tokens: int) -> tuple[str, int, float]:
        began = time.perf_counter()
        reply = chat.reply(ChatRequest(model, messages, max_tokens, 0.0))
        text = "".join(reply)
        return text, reply.completion_tokens, time.perf_counter() - began

    ask([{"role": "user", "content": "Hi"}], 4)  # warm
    speeds = []
    for _ in range(3):
        _, tokens, seconds = ask([{"role": "user", "content": LONG}], 128)
        speeds.append(tokens / seconds)
    answers = [ask(m, 48)[0] for m in asked]
    together: dict[int, float] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: together.__setitem__(i, ask(asked[i % len(asked)], 16)[2])
        )
        for i in range(32)
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    burst = time.perf_counter() - began
    return {
        "engine": engine,
        "label": chat.engine.label,
        "first_load_s": round(first_load, 2),
        "load_s": round(second_load, 2),
        "single_stream_tok_s": round(max(speeds), 1),
        "burst_32x16_s": round(burst, 2),
        "answers": answers,
        "top1": top1(chat, sequences) if sequences else None,
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }


def top1(chat, sequences: list[list[int]]) -> list[list[int]]:
    """The engine's most likely next token at every position of each sequence."""
    import numpy as np

    if chat._ct2 is not None:
        generator = chat._ct2.generator
        tokens = [chat.tokenizer.convert_ids_to_tokens(s) for s in sequences]
        found = []
        for row in tokens:
            logits = np.array(generator.forward_batch([row]))
            found.append(logits[0].argmax(-1).tolist())
        return found
    import torch

    with torch.no_grad():
        return [chat.model(torch.tensor([s])).logits[0].argmax(-1).tolist() for s in sequences]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of each engine")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # an engine, in its own process
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sequences", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        sequences = json.loads(args.sequences.read_text()) if args.sequences else None
        print(json.dumps(measure(args.one, args.model, args.home, sequences)))
        return
    home = Path(tempfile.mkdtemp(prefix="engines-home-"))
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "CONVTUNE_HOME": str(home)}
    results: dict[str, dict] = {}
    sequences_file = home / "sequences.json"
    for engine in ENGINES:
        command = [sys.executable, __file__, "--one", engine, "--model", args.model]
        command += ["--home", str(home)]
        if engine != "transformers":
            command += ["--sequences", str(sequences_file)]
        ran = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if ran.returncode != 0:
            raise SystemExit(f"{engine} failed:\n{ran.stderr[-2000:]}")
        results[engine] = json.loads(ran.stdout.strip().splitlines()[-1])
        if engine == "transformers":
            write_sequences(results[engine]["answers"], sequences_file, args.model, home)
    reference = results["transformers"]
    base = json.loads(sequences_file.read_text())
    ref_top = top1_reference(base, args.model, home, env)
    print(
        "| engine | first load (converting) | load | single stream | 32 x 16 tokens at once"
        " | greedy answers as transformers' | top-1 agreement |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results.values():
        same = sum(a == b for a, b in zip(r["answers"], reference["answers"], strict=True))
        agreement = "—"
        if r["top1"]:
            pairs = [
                (x, y)
                for a, b in zip(r["top1"], ref_top, strict=True)
                for x, y in zip(a, b, strict=True)
            ]
            agreement = f"{100 * sum(x == y for x, y in pairs) / len(pairs):.2f}% of {len(pairs):,}"
        print(
            f"| {r['label']} | {r['first_load_s']} s | {r['load_s']} s |"
            f" {r['single_stream_tok_s']} tok/s | {r['burst_32x16_s']} s |"
            f" {same} of {len(reference['answers'])} | {agreement} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")


def write_sequences(answers: list[str], path: Path, model: str, home: Path) -> None:
    """Each validation prompt followed by transformers' answer, as token ids."""
    from convtune.local.local_service import LocalService

    chat = LocalService(home, engine="transformers").chat.model(model)
    sequences = []
    for messages, text in zip(prompts(), answers, strict=True):
        prompt, _ = chat.prompt(messages)
        sequences.append(chat.tokenizer(prompt + text, add_special_tokens=False)["input_ids"])
    path.write_text(json.dumps(sequences))


def top1_reference(sequences: list[list[int]], model: str, home: Path, env: dict) -> list:
    from convtune.local.local_service import LocalService

    chat = LocalService(home, engine="transformers").chat.model(model)
    return top1(chat, sequences)


if __name__ == "__main__":
    main()
