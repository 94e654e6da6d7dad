"""`convtune serve` under a bounded load on loopback: 50 uploads at once, then 200 chat
requests at once, against one server. Correctness only (no error, nothing lost, nothing mixed
up); the latencies are measured by bench/serve_load.py and recorded in BENCHMARKS.md.

The chats are generated in batches (the server's default `--max-batch`) and seeded: each reply
must be the one the serial path gives for its own question and seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from .servers import Conformance, serve
from .tiny_models import make_tiny_model

UPLOADS = 50
CHATS = 200


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def training_file(i: int, lines: int = 200) -> bytes:
    """A valid chat JSONL of about 20 kB, different for each `i` (no upload is a duplicate)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Question {n} of file {i}?"},
                {"role": "assistant", "content": f"Answer {n} of file {i}."},
            ]
        }
        for n in range(lines)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_50_uploads_then_200_chats_at_once(tmp_path, tiny):
    conformance = Conformance()
    with serve(tmp_path / "home") as served:
        uploads, files, chats = asyncio.run(_load(served, conformance, tiny))

    assert [r.status_code for r in uploads] == [200] * UPLOADS
    sent = {f"load-{i}.jsonl": training_file(i) for i in range(UPLOADS)}
    listed = {f["id"]: f for f in files}
    assert len(listed) == UPLOADS  # 50 distinct ids, nothing lost
    assert {f["filename"]: f["bytes"] for f in files} == {n: len(b) for n, b in sent.items()}
    by_name = {r.json()["filename"]: r.json()["id"] for r in uploads}
    assert set(by_name.values()) == set(listed)
    stored = {
        f.stem: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in (tmp_path / "home" / "files").glob("file-*.jsonl")
    }
    for name, data in sent.items():  # each id holds its own bytes
        assert stored[by_name[name]] == hashlib.sha256(data).hexdigest()

    assert [r.status_code for r in chats] == [200] * CHATS
    bodies = [r.json() for r in chats]
    assert len({b["id"] for b in bodies}) == CHATS
    for body in bodies:
        assert isinstance(body["choices"][0]["message"]["content"], str)
        assert 1 <= body["usage"]["completion_tokens"] <= 4
    # each reply answered its own request: the prompt token counts follow the messages sent
    lengths = {b["usage"]["prompt_tokens"] for i, b in enumerate(bodies) if i < 10}
    longer = {b["usage"]["prompt_tokens"] for i, b in enumerate(bodies) if i >= 100}
    assert max(lengths) < min(longer)
    # ... and its reply is the one its question and seed give alone, one `generate` call
    expected = serial_replies(tiny)
    got = [(b["choices"][0]["message"]["content"], b["usage"]["completion_tokens"]) for b in bodies]
    assert got == expected
    assert len(set(expected)) > CHATS // 2
    assert conformance.seen["createFile"] == UPLOADS
    assert conformance.seen["createChatCompletion"] == CHATS


def question(i: int) -> str:  # the last 100 ask much longer questions
    return f"Hello number {i}" + (" and more" * 20 if i >= 100 else "")


def serial_replies(tiny: Path) -> list[tuple[str, int]]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convtune.local.chat import LocalChat
    from convtune.service.contract import ChatRequest

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    chat = LocalChat(model, AutoTokenizer.from_pretrained(tiny), max_batch=1)
    replies = []
    for i in range(CHATS):
        message = {"role": "user", "content": question(i)}
        reply = chat.reply(ChatRequest(str(tiny), [message], 4, temperature=1.0, seed=i))
        replies.append(("".join(reply), reply.completion_tokens))
    return replies


async def _load(served, conformance: Conformance, tiny: Path):
    limits = httpx.Limits(max_connections=CHATS + 10, max_keepalive_connections=CHATS + 10)
    async with httpx.AsyncClient(
        base_url=served.url,
        headers={"Authorization": f"Bearer {served.key}"},
        limits=limits,
        timeout=600,
        event_hooks={"response": [conformance.acheck]},
    ) as client:
        uploads = await asyncio.gather(
            *(
                client.post(
                    "files",
                    data={"purpose": "fine-tune"},
                    files={"file": (f"load-{i}.jsonl", training_file(i))},
                )
                for i in range(UPLOADS)
            )
        )
        files = (await client.get("files")).json()["data"]
        chats = await asyncio.gather(
            *(
                client.post(
                    "chat/completions",
                    json={
                        "model": str(tiny),
                        "messages": [{"role": "user", "content": question(i)}],
                        "max_tokens": 4,
                        "seed": i,
                    },
                )
                for i in range(CHATS)
            )
        )
    return uploads, files, chats
