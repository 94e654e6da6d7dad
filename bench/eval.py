"""How fast `convtune eval` goes: examples per second on SmolLM2, locally and through serve.

The validation file of the bundled example (prepared here) is evaluated twice with the default
graders and no cache: once with the model on the local backend (`--concurrency` prompts in one
batch, plus the teacher-forced validation loss), once through a fresh `convtune serve` on
loopback (`MODEL@http://127.0.0.1:PORT/v1`, `--concurrency` answers in flight, which the server
batches). Both start warm: an untimed one-example eval converts the base model and loads it in
this process, and a first chat loads it in the server. Each run is timed from start to result.

  .venv/bin/python bench/eval.py [--model SmolLM2-135M-Instruct] [--limit 20] [--max-tokens 32]
                                 [--concurrency 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import serve  # noqa: E402  (the tests' server runner: one way to start it)


def run(args: list[str]) -> tuple[float, dict]:
    """`convtune eval ARGS --json --no-cache` in this process: (wall seconds, the JSON)."""
    from convtune.cli.main import main

    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main([*args, "--json", "--no-cache"])
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"eval failed ({code}): {buffer.getvalue()[-500:]}")
    return seconds, json.loads(buffer.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from convtune import PrepareOptions, prepare

    work = Path(tempfile.mkdtemp(prefix="convtune-bench-eval-"))
    os.environ.setdefault("CONVTUNE_HOME", str(work / "home"))
    valid = Path(
        prepare(ROOT / "examples" / "conversations.csv", work, PrepareOptions()).outputs[1]
    )
    common = [
        "--data",
        str(valid),
        "--limit",
        str(args.limit),
        "--max-tokens",
        str(args.max_tokens),
    ]

    run(["eval", args.model, "--data", str(valid), "--limit", "1", "--max-tokens", "1"])  # warm
    local_s, local = run(["eval", args.model, *common, "--concurrency", str(args.concurrency)])
    with serve(Path(os.environ["CONVTUNE_HOME"]) / "serve") as served:
        from openai import OpenAI

        client = OpenAI(base_url=served.url, api_key=served.key)
        client.chat.completions.create(  # load the model in the server, untimed
            model=args.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        remote = f"{args.model}@{served.url}"
        served_s, through = run(
            ["eval", remote, *common, "--api-key", served.key,
             "--concurrency", str(args.concurrency)]
        )  # fmt: skip

    n = local["examples"]
    rows = [
        ("local backend", local_s, local["models"][0]),
        (
            f"through convtune serve (concurrency {args.concurrency})",
            served_s,
            through["models"][0],
        ),
    ]
    print(f"{n} examples of {valid.name}, {args.model}, --max-tokens {args.max_tokens}")
    print(f"{'path':48} {'wall s':>8} {'examples/s':>11} {'p50 s':>7} {'p90 s':>7} {'tok/s':>7}")
    for name, seconds, model in rows:
        latency = model["latency"]
        print(
            f"{name:48} {seconds:8.1f} {n / seconds:11.2f} {latency['p50']:7.2f}"
            f" {latency['p90']:7.2f} {model['tokens_per_second'] or 0:7.1f}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": platform.platform(),
                    "cpus": os.cpu_count(),
                    "examples": n,
                    "runs": [
                        {"path": name, "seconds": s, "examples_per_second": n / s, "model": m}
                        for name, s, m in rows
                    ],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
