"""Chat replies generated together (continuous batching, `local/generation.py`) are the replies
the serial path gives: greedy and seeded ones, with their own stop strings, lengths, usage counts
and early ends, whether they start together or join a batch already under way; and through
`convtune serve --max-batch 8` with the openai SDK streaming several at once.

The model is the tiny random Llama with an untied output layer (it says something); the serial
path (`max_batch=1`) is one `generate` call per reply.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from convtune.errors import ConvtuneError, OptionError
from convtune.local.chat import LocalChat
from convtune.local.local_service import LocalService
from convtune.service.contract import ChatRequest

from .servers import serve
from .tiny_models import make_tiny_model

QUESTIONS = [
    "Hello",
    "Can you read me the news?",
    "Open the pod bay doors please",
    "What is the capital of France? " * 3,
    "Hey",
    "Is there something you can do? You should know.",
    "Good morning",
    "No",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-untied"), tied=False)


@pytest.fixture(scope="module")
def loaded(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def serial(loaded) -> LocalChat:
    return LocalChat(*loaded, max_batch=1)


@pytest.fixture
def batched(loaded):
    chat = LocalChat(*loaded, max_batch=4)
    assert chat.batched
    yield chat
    chat.close()


def request(i: int, **kw) -> ChatRequest:
    kw.setdefault("max_tokens", 6 + 3 * (i % 4))  # rows leave the batch at different steps
    kw.setdefault("temperature", 0.0)
    return ChatRequest("tiny", [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], **kw)


def answer(chat: LocalChat, req: ChatRequest) -> tuple:
    reply = chat.reply(req)
    text = "".join(reply)
    return text, reply.prompt_tokens, reply.completion_tokens, reply.finish_reason


def at_once(chat: LocalChat, requests: list[ChatRequest]) -> list[tuple]:
    """All the requests sent at the same moment, each read by a thread of its own."""
    start = threading.Barrier(len(requests))

    def one(req: ChatRequest) -> tuple:
        start.wait()
        return answer(chat, req)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_greedy_replies_in_a_batch_are_the_serial_ones(serial, batched):
    requests = [request(i) for i in range(10)]  # more than max_batch: some wait, then join
    alone = [answer(serial, r) for r in requests]
    together = at_once(batched, requests)
    assert together == alone
    assert len({text for text, *_ in alone}) > 3  # the replies differ: each is its own
    assert {finish for *_, finish in alone} <= {"stop", "length"}
    for req, (_, prompt_tokens, completion, finish) in zip(requests, together, strict=True):
        text, _ = batched.prompt(req.messages)
        assert prompt_tokens == len(batched.tokenizer(text, add_special_tokens=False)["input_ids"])
        assert completion <= req.max_tokens
        assert finish == "stop" or completion == req.max_tokens


def test_a_request_joins_a_batch_under_way(serial, batched):
    long = request(3, max_tokens=40)
    first = batched.reply(long)
    pieces = [next(first)]  # the long one generates: the others join it between two steps
    others = at_once(batched, [request(i) for i in range(4)])
    pieces.extend(first)
    assert others == [answer(serial, request(i)) for i in range(4)]
    assert ("".join(pieces), first.completion_tokens) == answer(serial, long)[::2]


def test_seeded_sampling_is_the_same_alone_in_a_batch_and_serially(serial, batched):
    requests = [request(i, temperature=0.9, top_p=0.95, seed=10 + i) for i in range(6)]
    in_batch = at_once(batched, requests)
    assert in_batch == [answer(batched, r) for r in requests]  # one at a time
    assert in_batch == [answer(serial, r) for r in requests]  # generate(), torch.manual_seed
    other_seed = answer(batched, request(0, temperature=0.9, top_p=0.95, seed=99))
    assert other_seed != in_batch[0]


def test_stop_strings_and_max_tokens_are_per_request(serial, batched):
    full = answer(serial, request(1, max_tokens=20))[0]
    stop = full.strip()[len(full.strip()) // 2 :][:3]
    assert stop
    requests = [
        request(1, max_tokens=20, stop=[stop]),
        request(1, max_tokens=2),
        request(1, max_tokens=20),
        request(2, max_tokens=1),
    ]
    cut, short, whole, one = at_once(batched, requests)
    assert cut[0] == full[: full.index(stop)] and cut[3] == "stop"
    assert short[2:] == (2, "length") and full.startswith(short[0])
    assert whole[0] == full
    assert one[2:] == (1, "length")
    assert [r[:3] for r in (cut, short, whole, one)] == [answer(serial, r)[:3] for r in requests]


def test_a_closed_reply_ends_without_stalling_the_others(serial, batched):
    requests = [request(i, max_tokens=30) for i in range(4)]
    gone = batched.reply(requests[0])
    next(gone)
    results = []
    finished: list[float] = []  # when each other reply ended (an order, not a speed)

    def read(r) -> None:
        results.append(answer(batched, r))
        finished.append(time.monotonic())

    readers = [threading.Thread(target=read, args=(r,)) for r in requests[1:]]
    for reader in readers:
        reader.start()
    gone.close()  # the reader went away: its row leaves the batch
    closed = time.monotonic()
    assert gone.completion_tokens < 30
    for reader in readers:
        reader.join(timeout=60)
    assert sorted(results) == sorted(answer(serial, r) for r in requests[1:])
    # close() returned as soon as its row left, without waiting for the others' 30 tokens
    assert len(finished) == 3 and closed < min(finished)


def test_a_reply_closed_before_its_turn_generates_nothing(batched):
    busy = [batched.reply(request(i, max_tokens=1000)) for i in range(4)]  # the whole batch
    for reply in busy:
        next(reply)
    waiting = batched.reply(request(5))
    waiting.close()
    assert waiting.completion_tokens == 0 and "".join(waiting) == ""
    for reply in busy:
        reply.close()
        assert 1 <= reply.completion_tokens < 1000


def test_a_failed_pass_fails_its_replies_and_the_engine_goes_on(batched, serial, monkeypatch):
    engine = batched._engine
    real = engine._forward
    calls = []

    def broken(*args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return real(*args)

    monkeypatch.setattr(engine, "_forward", broken)  # the prefill passes, the first step fails
    reply = batched.reply(request(0, max_tokens=30))
    with pytest.raises(ConvtuneError, match="generation failed: out of memory"):
        "".join(reply)
    assert answer(batched, request(1)) == answer(serial, request(1))


def test_legacy_models_stop_at_their_separator_in_a_batch(loaded):
    serial = LocalChat(*loaded, "prompt-completion", ("Human", "AI"), max_batch=1)
    batched = LocalChat(*loaded, "prompt-completion", ("Human", "AI"), max_batch=4)
    requests = [request(i, max_tokens=12) for i in range(4)]
    assert at_once(batched, requests) == [answer(serial, r) for r in requests]
    batched.close()


def test_smollm2_replies_in_a_batch_are_its_serial_ones(smollm2_converted):
    """The real model, where positions, padding and rounding matter: prompts of different
    lengths, greedy and seeded, together and one by one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_converted, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_converted)
    serial = LocalChat(model, tokenizer, max_batch=1)
    batched = LocalChat(model, tokenizer, max_batch=4)
    greedy = [request(i, max_tokens=6) for i in (0, 3, 5)]
    seeded = [request(i, max_tokens=6, temperature=0.8, seed=i) for i in (2, 4)]
    alone = [answer(serial, r) for r in greedy + seeded]
    assert at_once(batched, greedy + seeded) == alone
    assert len({text for text, *_ in alone}) == len(alone)
    batched.close()


def test_a_model_the_engine_cannot_batch_answers_one_at_a_time(loaded):
    """A sliding-window cache cannot be padded and merged: such a model takes the serial path."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    _, tokenizer = loaded
    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=4,
        eos_token_id=2,
        pad_token_id=2,
    )
    chat = LocalChat(MistralForCausalLM(config).eval(), tokenizer, max_batch=8)
    assert not chat.batched
    replies = at_once(chat, [request(i, max_tokens=3) for i in range(3)])
    assert [r[3] in ("stop", "length") and r[2] <= 3 for r in replies] == [True] * 3


def test_the_roomy_cache_holds_what_plain_tensors_would():
    """RoomyLayer against a plain [rows, heads, columns, dim] tensor, through tokens, rows that
    join (shorter and longer than the batch), rows that leave and columns dropped."""
    import random

    import torch

    from convtune.local.kv_cache import RoomyLayer

    def left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
        return torch.cat([t.new_zeros(*t.shape[:2], width - t.shape[2], t.shape[3]), t], dim=2)

    rng = random.Random(0)
    layer, plain = RoomyLayer(), torch.randn(3, 2, 5, 4)
    layer.update(plain, plain.clone())
    for _ in range(300):
        action = rng.choice(["token", "token", "join", "leave", "drop"])
        rows, width = plain.shape[0], plain.shape[2]
        if action == "token":
            new = torch.randn(rows, 2, 1, 4)
            layer.update(new, new.clone())
            plain = torch.cat([plain, new], dim=2)
        elif action == "join":
            new = torch.randn(rng.randint(1, 5), 2, rng.randint(1, width + 70), 4)
            layer.add_rows(new, new.clone())
            grown = max(width, new.shape[2])
            plain = torch.cat([left_pad(plain, grown), left_pad(new, grown)])
        elif action == "leave" and rows > 1:
            keep = sorted(rng.sample(range(rows), rng.randint(1, rows - 1)))
            count = len(keep)
            places = [i for i in range(count) if i not in set(keep)]
            movers = [i for i in keep if i >= count]
            order = list(range(count))
            for place, row in zip(places, movers, strict=True):
                order[place] = row
            layer.move_rows(places, movers, count)
            plain = plain[order]
        elif action == "drop" and width > 1:
            count = rng.randint(1, width - 1)
            layer.drop_columns(count)
            plain = plain[:, :, count:]
        assert torch.equal(layer.keys, plain) and torch.equal(layer.values, plain)


def test_the_service_takes_max_batch(isolated_home):
    assert LocalService.capabilities.batches_chat
    with pytest.raises(OptionError, match="1 or more"):
        LocalService(max_batch=0)
    service = LocalService(max_batch=3)
    assert service.max_batch == 3
    service.close()


def test_serve_refuses_a_max_batch_below_one(capsys):
    from convtune.cli.main import main

    assert main(["serve", "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


def test_serve_max_batch_streams_several_replies_at_once(tmp_path, tiny, serial):
    """The real server and the openai SDK: four streamed greedy replies at once, each the
    serial one, with its usage."""
    from openai import OpenAI

    requests = [request(i, max_tokens=12) for i in range(4)]
    expected = [answer(serial, r) for r in requests]
    with serve(tmp_path / "home", "--max-batch", "8") as served:
        client = OpenAI(base_url=served.url, api_key=served.key, max_retries=0)
        warm = client.chat.completions.create(
            model=str(tiny), messages=[{"role": "user", "content": "Hi"}], max_tokens=1
        )
        assert warm.choices[0].finish_reason in ("stop", "length")

        def stream(req: ChatRequest) -> tuple:
            chunks = list(
                client.chat.completions.create(
                    model=str(tiny),
                    messages=req.messages,
                    max_tokens=req.max_tokens,
                    temperature=0,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            usage = chunks[-1].usage
            return text, usage.prompt_tokens, usage.completion_tokens, finish, len(chunks)

        with ThreadPoolExecutor(len(requests)) as pool:
            got = list(pool.map(stream, requests))
        log = served.log()
    assert [g[:4] for g in got] == expected
    assert all(g[4] > 3 for g in got)  # role, content pieces, finish, usage: streamed
    assert "Traceback" not in log
