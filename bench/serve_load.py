"""Latency of `convtune serve` under a burst on loopback: N uploads at once, then M chats at once.

A fresh server (its own data folder, one key) is started as `convtune serve --port 0`; all
requests of a burst are sent at the same moment from one asyncio client (httpx, one connection
per request). Each request's latency is the time from its send to its whole response; the table
gives p50, p90, p99 and the maximum per burst, the burst's wall time, and errors (any status but
200 or a transport error). Before the bursts, one chat loads the model (not timed): the first
request to a model pays for loading it, once per server; one upload, likewise, builds the token
tables that checking a file needs.

The chat model is, by default, the tiny random Llama the tests use (tests/tiny_models.py): it
measures the server (queueing, streaming of bytes, the one-reply-at-a-time lock per model), not
the model. `--model SmolLM2-135M-Instruct` measures the real default model instead.

  .venv/bin/python bench/serve_load.py [--uploads 50] [--chats 200] [--max-tokens 4]
                                       [--upload-kb 20] [--model PATH_OR_NAME] [--threads N]
                                       [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import serve  # noqa: E402  (the tests' server runner: one way to start it)
from tests.tiny_models import make_tiny_model  # noqa: E402


def training_file(i: int, kb: int) -> bytes:
    """A valid chat JSONL of about `kb` kB, different for each `i`."""
    lines, n = [], 0
    size = 0
    while size < kb * 1024:
        line = json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {n} of file {i}?"},
                    {"role": "assistant", "content": f"Answer {n} of file {i}."},
                ]
            }
        )
        lines.append(line + "\n")
        size += len(line) + 1
        n += 1
    return "".join(lines).encode()


async def burst(client: httpx.AsyncClient, requests: list[dict]) -> tuple[list[float], int, float]:
    """Send every request at once; (latencies in seconds, errors, wall time)."""

    async def one(kw: dict) -> tuple[float, bool]:
        started = time.perf_counter()
        try:
            response = await client.request(**kw)
            await response.aread()
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok

    started = time.perf_counter()
    results = await asyncio.gather(*(one(kw) for kw in requests))
    wall = time.perf_counter() - started
    return [t for t, _ in results], sum(1 for _, ok in results if not ok), wall


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]  # nearest rank


async def run(url: str, key: str, args: argparse.Namespace, model: str) -> dict:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits, timeout=900
    ) as client:
        chat = {
            "model": model,
            "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": args.max_tokens,
        }
        warm = await client.post("chat/completions", json=chat)
        warm.raise_for_status()
        warm = await client.post(  # the first check of a process builds the token tables
            "files",
            data={"purpose": "fine-tune"},
            files={"file": ("warm.jsonl", training_file(-1, args.upload_kb))},
        )
        warm.raise_for_status()
        await client.delete(f"files/{warm.json()['id']}")
        uploads = [
            {
                "method": "POST",
                "url": "files",
                "data": {"purpose": "fine-tune"},
                "files": {"file": (f"bench-{i}.jsonl", training_file(i, args.upload_kb))},
            }
            for i in range(args.uploads)
        ]
        chats = [
            {
                "method": "POST",
                "url": "chat/completions",
                "json": {**chat, "messages": [{"role": "user", "content": f"Hello number {i}"}]},
            }
            for i in range(args.chats)
        ]
        results = {}
        for name, requests in (("uploads", uploads), ("chats", chats)):
            latencies, errors, wall = await burst(client, requests)
            results[name] = {
                "requests": len(requests),
                "errors": errors,
                "wall_s": wall,
                "p50_ms": percentile(latencies, 50) * 1000,
                "p90_ms": percentile(latencies, 90) * 1000,
                "p99_ms": percentile(latencies, 99) * 1000,
                "max_ms": max(latencies) * 1000,
            }
        listed = (await client.get("files")).json()["data"]
        results["uploads"]["listed_after"] = len(listed)
        return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--upload-kb", type=int, default=20)
    parser.add_argument("--model", default=None, help="chat model (default: the tiny test model)")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="the server's torch threads"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convtune-serve-bench-") as tmp:
        model = args.model or str(make_tiny_model(Path(tmp) / "tiny-model"))
        threads = {"OMP_NUM_THREADS": str(args.threads)}  # the tests' servers have 1
        with serve(Path(tmp) / "home", env=threads) as served:
            results = asyncio.run(run(served.url, served.key, args, model))
    print(
        f"convtune serve, {platform.machine()} {os.cpu_count()} cores, model "
        f"{args.model or 'tiny test model'}, max_tokens {args.max_tokens},"
        f" uploads of {args.upload_kb} kB, {args.threads} torch thread(s)"
    )
    print("| burst | requests | errors | wall | p50 | p90 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(
            f"| {name} | {r['requests']} | {r['errors']} | {r['wall_s']:.2f} s |"
            f" {r['p50_ms']:.0f} ms | {r['p90_ms']:.0f} ms | {r['p99_ms']:.0f} ms |"
            f" {r['max_ms']:.0f} ms |"
        )
    print(f"files listed after the uploads: {results['uploads']['listed_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    failed = any(r["errors"] for r in results.values())
    return 1 if failed or results["uploads"]["listed_after"] != args.uploads else 0


if __name__ == "__main__":
    sys.exit(main())
