"""Latency of `convtune serve` under a burst on loopback: N uploads at once, then M chats at once.

A fresh server (its own data folder, one key) is started as `convtune serve --port 0`; all
requests of a burst are sent at the same moment from one asyncio client (httpx, one connection
per request). Each request's latency is the time from its send to its whole response; the table
gives p50, p90, p99 and the maximum per burst, the burst's wall time, and errors (any status but
200 or a transport error). Before the bursts, one chat loads the model (not timed): the first
request to a model pays for loading it, once per server; one upload, likewise, builds the token
tables that checking a file needs.

After the bursts, with nothing else in flight: `--single` chats one after another (their median
latency: what batching costs a request that is alone), and one streamed chat of
`--decode-tokens` tokens, whose chunks give the single-stream decode speed (tokens per second
from the first content chunk to the last; a reply that ends early counts what it produced).

`--max-batch` (repeatable) starts one server per value, `convtune serve --max-batch N`, one
after the other, and prints them side by side with the ratios to the first; without it, one
server with its default. The machine's load average is printed with each server's figures.

The chat model is, by default, the tiny random Llama the tests use (tests/tiny_models.py): it
measures the server (queueing, streaming of bytes, batching), not the model.
`--model SmolLM2-135M-Instruct` measures the real default model instead.

  .venv/bin/python bench/serve_load.py [--uploads 50] [--chats 200] [--max-tokens 4]
                                       [--upload-kb 20] [--model PATH_OR_NAME] [--threads N]
                                       [--max-batch N ...] [--single 5] [--decode-tokens 64]
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


async def burst(
    client: httpx.AsyncClient, requests: list[dict]
) -> tuple[list[float], int, float, int]:
    """Send every request at once; (latencies in seconds, errors, wall time, completion tokens
    of the chats)."""

    async def one(kw: dict) -> tuple[float, bool, int]:
        started = time.perf_counter()
        tokens = 0
        try:
            response = await client.request(**kw)
            await response.aread()
            ok = response.status_code == 200
            if ok and kw["url"] == "chat/completions":
                tokens = response.json()["usage"]["completion_tokens"]
        except httpx.HTTPError:
            ok = False
        return time.perf_counter() - started, ok, tokens

    started = time.perf_counter()
    results = await asyncio.gather(*(one(kw) for kw in requests))
    wall = time.perf_counter() - started
    errors = sum(1 for _, ok, _ in results if not ok)
    return [t for t, _, _ in results], errors, wall, sum(n for _, _, n in results)


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
                "json": {  # seeded: every server gives the same replies, of the same lengths
                    **chat,
                    "messages": [{"role": "user", "content": f"Hello number {i}"}],
                    "seed": i,
                },
            }
            for i in range(args.chats)
        ]
        results = {}
        for name, requests in (("uploads", uploads), ("chats", chats)):
            latencies, errors, wall, tokens = await burst(client, requests)
            results[name] = figures(latencies, errors, wall, tokens)
        listed = (await client.get("files")).json()["data"]
        results["uploads"]["listed_after"] = len(listed)
        alone: list[float] = []
        errors = tokens = 0
        for i in range(args.single):  # the burst's first chats again, one at a time
            latencies, failed, _, produced = await burst(client, [chats[i]])
            alone.append(latencies[0])
            errors, tokens = errors + failed, tokens + produced
        results["single chats"] = figures(alone, errors, sum(alone), tokens)
        results["decode"] = await decode_speed(client, model, args.decode_tokens)
        return results


def figures(latencies: list[float], errors: int, wall: float, tokens: int) -> dict:
    return {
        "requests": len(latencies),
        "errors": errors,
        "wall_s": wall,
        "completion_tokens": tokens,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p90_ms": percentile(latencies, 90) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


async def decode_speed(client: httpx.AsyncClient, model: str, tokens: int) -> dict:
    """One streamed greedy chat alone: tokens per second from its first content chunk to its
    last (the prompt's prefill and the first token are left out)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Tell me a long story about a cat and a boat."}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    stamps: list[float] = []
    usage = None
    async with client.stream("POST", "chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                stamps.append(time.perf_counter())
    produced = usage["completion_tokens"] if usage else 0
    # chunks carry whole words: the tokens after the first chunk's, over the time after it
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
    rate = (produced - produced / max(len(stamps), 1)) / span if span > 0 else 0.0
    return {"completion_tokens": produced, "chunks": len(stamps), "tokens_per_s": rate}


def serve_args(max_batch: int | None) -> list[str]:
    return [] if max_batch is None else ["--max-batch", str(max_batch)]


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
    parser.add_argument(
        "--max-batch",
        type=int,
        action="append",
        default=None,
        help="the server's --max-batch; repeat it to compare servers (default: its default)",
    )
    parser.add_argument("--single", type=int, default=5, help="chats asked alone, one by one")
    parser.add_argument(
        "--decode-tokens", type=int, default=64, help="tokens of the single-stream decode test"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="convtune-serve-bench-") as tmp:
        model = args.model or str(make_tiny_model(Path(tmp) / "tiny-model"))
        threads = {"OMP_NUM_THREADS": str(args.threads)}  # the tests' servers have 1
        for max_batch in args.max_batch or [None]:
            name = "default" if max_batch is None else str(max_batch)
            load_before = os.getloadavg()
            home = Path(tmp) / f"home-{name}"
            with serve(home, *serve_args(max_batch), env=threads, timeout=300) as served:
                results = asyncio.run(run(served.url, served.key, args, model))
            results["load"] = {"before": load_before, "after": os.getloadavg()}
            runs[name] = results
    print(
        f"convtune serve, {platform.machine()} {os.cpu_count()} cores, model "
        f"{args.model or 'tiny test model'}, max_tokens {args.max_tokens},"
        f" uploads of {args.upload_kb} kB, {args.threads} torch thread(s)"
    )
    print("| --max-batch | burst | requests | errors | wall | p50 | p90 | p99 | max | tokens |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, results in runs.items():
        for burst_name in ("uploads", "chats", "single chats"):
            r = results[burst_name]
            print(
                f"| {name} | {burst_name} | {r['requests']} | {r['errors']} | {r['wall_s']:.2f} s |"
                f" {r['p50_ms']:,.0f} ms | {r['p90_ms']:,.0f} ms | {r['p99_ms']:,.0f} ms |"
                f" {r['max_ms']:,.0f} ms | {r['completion_tokens'] or ''} |"
            )
    first_name, first = next(iter(runs.items()))
    for name, results in runs.items():
        decode = results["decode"]
        load = results["load"]
        line = (
            f"--max-batch {name}: decode alone {decode['tokens_per_s']:.1f} tokens/s"
            f" ({decode['completion_tokens']} tokens); load average"
            f" {load['before'][0]:.2f} before, {load['after'][0]:.2f} after"
            f"; files listed after the uploads: {results['uploads']['listed_after']}"
        )
        if name != first_name:
            burst_speedup = first["chats"]["wall_s"] / results["chats"]["wall_s"]
            single = results["single chats"]["p50_ms"] / first["single chats"]["p50_ms"]
            line += (
                f"; chat burst {burst_speedup:.2f}x faster than --max-batch {first_name},"
                f" a chat alone {single:.2f}x its time"
            )
        print(line)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    failed = any(
        r["errors"] for results in runs.values() for k, r in results.items() if "errors" in r
    )
    lost = any(results["uploads"]["listed_after"] != args.uploads for results in runs.values())
    return 1 if failed or lost else 0


if __name__ == "__main__":
    sys.exit(main())
