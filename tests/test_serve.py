"""`convtune serve` end to end: the real openai SDK against a real server process on 127.0.0.1.

Upload, fine-tune a tiny model, follow the job, chat with the result (streaming included), pause,
resume, cancel, delete; every response is validated against OpenAI's published schemas as it
arrives (tests/servers.py, `Conformance`), and the first test checks that every operation of
the spec subset was exercised that way.
"""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from convtune import PrepareOptions, prepare

from .conftest import EXAMPLE
from .servers import Conformance, load_spec, operations, serve, wait_for
from .tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("data")
    chat = prepare(EXAMPLE, out / "chat", PrepareOptions(force=True))
    return {"train": Path(chat.outputs[0]), "valid": Path(chat.outputs[1])}


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-home"), "--concurrency", "2") as server:
        yield server


def test_openai_sdk_end_to_end_every_operation(served, conformance, tiny, data):
    client = conformance.openai(served)

    # files
    with data["train"].open("rb") as f:
        train = client.files.create(file=f, purpose="fine-tune")
    with data["valid"].open("rb") as f:
        valid = client.files.create(file=(data["valid"].name, f.read()), purpose="fine-tune")
    assert train.bytes == data["train"].stat().st_size and train.filename == data["train"].name
    assert client.files.retrieve(train.id).id == train.id
    assert {train.id, valid.id} <= {f.id for f in client.files.list()}
    assert client.files.content(train.id).content == data["train"].read_bytes()

    # a job, followed to the end
    job = client.fine_tuning.jobs.create(
        model=str(tiny),
        training_file=train.id,
        validation_file=valid.id,
        suffix="served",
        seed=7,
        metadata={"run": "e2e"},
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 8}},
        },
    )
    assert job.status in ("validating_files", "queued", "running")
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status
                    in ("succeeded", "failed", "cancelled") and j)  # fmt: skip
    assert done.status == "succeeded", done.error
    model = done.fine_tuned_model
    assert model == f"ft:{tiny.name}:served:{job.id}" and done.trained_tokens
    # a second job trains on top of the fine-tuned model (its worker starts while the checks
    # below run; it is paused, resumed and cancelled further down)
    second = client.fine_tuning.jobs.create(
        model=model, training_file=train.id, hyperparameters={"n_epochs": 50}
    )
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"run": "e2e"})] == [job.id]
    assert client.fine_tuning.jobs.list(metadata={"run": "other"}).data == []

    # events: pages of 3 (the SDK follows `after`) give the same events as one page
    everything = client.fine_tuning.jobs.list_events(job.id, limit=1000)
    assert not everything.has_more
    paged = [e.id for e in client.fine_tuning.jobs.list_events(job.id, limit=3)]
    assert paged == [e.id for e in everything.data] and len(paged) > 5
    assert any(e.type == "metrics" for e in everything.data)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id)
    assert len(checkpoints.data) == 2 and checkpoints.data[0].step_number > 0

    results = client.files.content(done.result_files[0]).text
    assert results.startswith("step,train_loss")

    # models and chat: the fine-tuned model, and the base models beside it (marked as OpenAI
    # marks its own), each of which answers a chat
    listed = {m.id: m.owned_by for m in client.models.list()}
    assert listed[model] == "convtune" and next(iter(listed)) == model  # fine-tuned first
    assert listed[tiny.name] == "system" and listed["SmolLM2-135M-Instruct"] == "system"
    assert client.models.retrieve(model).owned_by == "convtune"
    assert client.models.retrieve(tiny.name).owned_by == "system"
    messages = [{"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0
    )
    text = whole.choices[0].message.content
    assert isinstance(text, str) and whole.choices[0].finish_reason in ("stop", "length")
    usage = whole.usage
    assert usage.prompt_tokens > 5 and 0 < usage.completion_tokens <= 12
    before = client.chat.completions.create(  # the base model, to compare before and after
        model=tiny.name, messages=messages, max_tokens=12, temperature=0
    )
    assert before.model == tiny.name and isinstance(before.choices[0].message.content, str)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy decoding: the same reply, whole or streamed
    assert (
        chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == usage.completion_tokens
    )
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == (
        whole.choices[0].finish_reason
    )

    stored = client.chat.completions.create(
        model=model, messages=messages, max_tokens=4, store=True, metadata={"case": "kept"}
    )
    kept = client.chat.completions.list(metadata={"case": "kept"})
    assert [c.id for c in kept] == [stored.id]
    assert kept.data[0].choices[0].message.content == stored.choices[0].message.content

    # the second job, training on top of the fine-tuned model: pause, resume, cancel, and the
    # model cannot be deleted while it is in use
    wait_for(
        lambda: any(
            e.type == "metrics" for e in client.fine_tuning.jobs.list_events(second.id, limit=100)
        )
    )
    with pytest.raises(openai.ConflictError) as in_use:
        client.models.delete(model)
    assert in_use.value.status_code == 409 and "in use" in in_use.value.message
    assert in_use.value.response.headers["x-should-retry"] == "false"  # the SDK asked once
    paused = client.fine_tuning.jobs.pause(second.id)
    assert paused.status == "paused"
    resumed = client.fine_tuning.jobs.resume(second.id)
    assert resumed.status in ("validating_files", "queued", "running")
    cancelled = client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.cancel(second.id)

    deleted = client.models.delete(model)
    assert deleted.deleted and deleted.id == model
    with pytest.raises(openai.ConflictError):  # base models are never deleted
        client.models.delete(tiny.name)
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve(model)
    assert missing.value.code == "model_not_found"
    assert client.files.delete(valid.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(valid.id)

    every = set(operations(load_spec()))
    assert len(every) == 18
    assert set(conformance.seen) == every, f"not exercised: {every - set(conformance.seen)}"
