"""`OpenAIService` through the real openai SDK, against a fake OpenAI on 127.0.0.1.

The fake (tests/fake_openai.py) is a real HTTP server: what is tested is what goes over the wire
(only the options that were set, the convtune tag, multipart uploads) and what comes back (errors
with the key redacted, transient errors the follow loop survives). The same service against a
real `convtune serve` is in test_openai_serve.py.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from convtune.errors import (
    Conflict,
    ConvtuneError,
    InputError,
    NotFound,
    OptionError,
    TransientError,
)
from convtune.openai_backend import OpenAIService, wind_down_warning
from convtune.service.backoff import MAX_BACKOFF
from convtune.service.contract import ChatRequest, JobRequest
from convtune.service.follow import follow
from convtune.service.objects import Job
from convtune.service.training_options import TrainOptions

from .fake_openai import FakeOpenAI

MODEL = "gpt-4.1-mini-2025-04-14"


def tag(**extra: str) -> dict[str, str]:
    """The metadata convtune sends: the user's, its tag and this data directory's id."""
    from convtune.state.home import installation_id

    return {**extra, "created_by": "convtune", "convtune_installation": installation_id()}


def chat_lines(n: int, reply: str = "Sure") -> str:
    return "".join(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}"},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
        + "\n"
        for i in range(n)
    )


@pytest.fixture
def train(tmp_path) -> Path:
    path = tmp_path / "support.train.jsonl"
    path.write_text(chat_lines(12), encoding="utf-8")
    return path


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        yield server


def service_for(fake: FakeOpenAI, **kw) -> OpenAIService:
    kw.setdefault("max_retries", 0)
    return OpenAIService(api_key=fake.key, base_url=fake.url, **kw)


def posts(fake: FakeOpenAI, path: str) -> list[dict]:
    return [r for r in fake.requests if r["method"] == "POST" and r["path"] == path]


# -- files -------------------------------------------------------------------------------------


def test_upload_reports_progress_waits_until_processed_and_reuses(fake, train, tmp_path):
    fake.processing_reads = 2
    service = service_for(fake, sleep=lambda s: None)
    big = tmp_path / "big.jsonl"
    big.write_text(chat_lines(3000), encoding="utf-8")  # several of httpx's 64 KiB chunks
    seen: list[tuple[int, int]] = []
    uploaded = service.files.upload(big, progress=lambda done, total: seen.append((done, total)))
    size = big.stat().st_size
    assert uploaded.status == "processed" and uploaded.bytes == size
    assert fake.reads[uploaded.id] >= 2  # it waited for "processed"
    assert len(seen) > 3 and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    first = service.files.upload(train)
    again = service.files.upload(train)
    assert again.id == first.id and len(posts(fake, "/files")) == 2  # reused, not re-sent
    assert service.files.upload(train, reuse=False).id != first.id


def test_same_name_and_size_with_other_content_is_uploaded_again(fake, train):
    service = service_for(fake)
    first = service.files.upload(train)
    train.write_text(train.read_text().replace("Sure", "Okay"), encoding="utf-8")  # same size
    second = service.files.upload(train)
    assert second.id != first.id and second.bytes == first.bytes


def test_foreign_identical_file_is_reused_unless_its_content_differs(fake, train):
    content = train.read_bytes()
    other = fake.add_file(train.name, content.replace(b"Sure", b"Nope"))
    same = fake.add_file(train.name, content)
    service = service_for(fake)
    assert service.files.upload(train).id == same["id"]  # read back and compared
    assert other["id"] != same["id"]
    assert not posts(fake, "/files")
    assert service.ownership().files == set()  # reused, but not convtune's

    # OpenAI does not let fine-tune files be read back: name, size and purpose decide
    fake.downloadable = False
    del fake.files[same["id"]]
    assert service.files.upload(train).id == other["id"]


def test_a_file_with_errors_is_refused_before_upload(fake, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        chat_lines(2) + '{"messages": [{"role": "robot", "content": "beep"}]}\n', encoding="utf-8"
    )
    with pytest.raises(ConvtuneError) as caught:
        service_for(fake).files.upload(bad)
    assert str(caught.value).startswith(f"{bad}:3: ")
    assert "role" in str(caught.value)
    assert not posts(fake, "/files")


def test_processing_timeout_and_error(fake, train):
    fake.processing_reads = 10**6
    service = service_for(fake, processing_timeout=0.3, sleep=lambda s: None)
    with pytest.raises(ConvtuneError, match="still uploaded after"):
        service.files.upload(train)


def test_file_listing_download_and_delete(fake, train):
    service = service_for(fake)
    uploaded = service.files.upload(train)
    assert [f.id for f in service.files.list()] == [uploaded.id]
    assert service.files.content(uploaded.id) == train.read_bytes()
    service.files.delete(uploaded.id)
    assert service.files.list() == []
    with pytest.raises(NotFound):
        service.files.get(uploaded.id)


# -- jobs --------------------------------------------------------------------------------------


def test_options_not_set_are_never_sent(fake, train):
    service = service_for(fake)
    file = service.files.upload(train)
    job = service.jobs.create(JobRequest(model=MODEL, training_file=file.id))
    [sent] = [r["json"] for r in posts(fake, "/fine_tuning/jobs")]
    assert sent == {
        "model": MODEL,
        "training_file": file.id,
        "metadata": tag(),
    }
    assert job.status == "validating_files" and job.metadata == tag()


def test_openai_parameters_are_sent_as_openai_names_them(fake, train, tmp_path):
    valid = tmp_path / "support.valid.jsonl"
    valid.write_text(chat_lines(3), encoding="utf-8")
    service = service_for(fake)
    request = JobRequest(
        model=MODEL,
        training_file=service.files.upload(train).id,
        validation_file=service.files.upload(valid).id,
        suffix="support",
        seed=7,
        metadata={"team": "care"},
        options=TrainOptions(n_epochs=3, batch_size=4, learning_rate_multiplier=0.5),
    )
    job = service.jobs.create(request)
    [sent] = [r["json"] for r in posts(fake, "/fine_tuning/jobs")]
    assert sent["method"] == {
        "type": "supervised",
        "supervised": {
            "hyperparameters": {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}
        },
    }
    assert "hyperparameters" not in sent  # the deprecated top-level field
    assert sent["suffix"] == "support" and sent["seed"] == 7
    assert sent["validation_file"] == request.validation_file
    assert sent["metadata"] == tag(team="care")
    assert job.hyperparameters == {"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5}
    assert job.suffix == "support" and job.seed == 7


def test_dpo_is_sent_as_openai_names_it_and_a_chat_file_is_refused(fake, train, tmp_path):
    from convtune.dataset.preference import pair_record

    pairs = tmp_path / "prefs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps(pair_record([{"role": "user", "content": f"q{i}"}], "Gladly!", "No.")) + "\n"
            for i in range(12)
        ),
        encoding="utf-8",
    )
    service = service_for(fake)
    file_id = service.files.upload(pairs).id
    job = service.jobs.create(
        JobRequest(MODEL, file_id, options=TrainOptions(method="dpo", beta=0.25, n_epochs=2))
    )
    [sent] = [r["json"] for r in posts(fake, "/fine_tuning/jobs")]
    assert sent["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}},
    }
    assert job.method == "dpo" and job.to_dict()["method"]["dpo"]["hyperparameters"]["beta"] == 0.25
    chat_id = service.files.upload(train).id
    with pytest.raises(InputError, match="DPO trains on preference pairs, not chat examples"):
        service.jobs.create(JobRequest(MODEL, chat_id, options=TrainOptions(method="dpo")))
    assert len(posts(fake, "/fine_tuning/jobs")) == 1  # refused before anything was sent


def test_create_job_refuses_what_openai_would(fake, train, tmp_path):
    service = service_for(fake)
    file = service.files.upload(train)
    with pytest.raises(OptionError, match="lora_r"):
        service.jobs.create(JobRequest(MODEL, file.id, options=TrainOptions(lora_r=8)))
    with pytest.raises(OptionError, match="created_by"):
        service.jobs.create(JobRequest(MODEL, file.id, metadata={"created_by": "me"}))

    # a file changed after its upload is checked again, from the service's copy
    fake.contents[file.id] = b'{"messages": []}\n' + train.read_bytes()
    train.write_text(chat_lines(12) + "\n", encoding="utf-8")
    with pytest.raises(ConvtuneError) as caught:
        service.jobs.create(JobRequest(MODEL, file.id))
    assert str(caught.value).startswith(f"{train.name}:1: 'messages' must be a non-empty list")

    # OpenAI refuses fewer than 10 training examples; other services may not
    few = tmp_path / "few.jsonl"
    few.write_text(chat_lines(3), encoding="utf-8")
    small = service.files.upload(few)
    service.jobs.create(JobRequest(MODEL, small.id))
    service.is_openai = True
    with pytest.raises(ConvtuneError, match="fewer than 10"):
        service.jobs.create(JobRequest(MODEL, small.id))
    assert len(posts(fake, "/fine_tuning/jobs")) == 1
    single = tmp_path / "single.jsonl"
    single.write_text(chat_lines(1), encoding="utf-8")
    with pytest.raises(ConvtuneError) as caught:
        service.jobs.create(JobRequest(MODEL, service.files.upload(single).id))
    assert "single.jsonl: 1 example: OpenAI refuses to train on fewer than 10" in str(caught.value)


def test_follow_to_succeeded_checkpoints_results_and_chat(fake, train):
    fake.events_per_step = 60  # 240 metrics events: the newest-first pages must be walked back
    fake.advance = 4
    service = service_for(fake)
    job = service.jobs.create(JobRequest(MODEL, service.files.upload(train).id, suffix="nimbus"))
    items = list(follow(service, job.id, poll=0, sleep=lambda s: None))
    events, finished = items[:-1], items[-1]
    assert isinstance(finished, Job) and finished.status == "succeeded"
    ids = [e.id for e in events]
    assert len(ids) == len(set(ids)) == len(fake.jobs[job.id].events)
    assert ids == sorted(ids)  # oldest first (the fake's ids grow with time)
    assert sum(e.type == "metrics" for e in events) == 240
    assert events[0].message.startswith("Created fine-tuning job")

    model = finished.fine_tuned_model
    assert model.startswith(f"ft:{MODEL}:fake:nimbus:")
    [checkpoint] = service.jobs.list_checkpoints(job.id)
    assert checkpoint.step_number == 2 and checkpoint.metrics["train_loss"] == 1.0
    # OpenAI serves the results file base64-encoded; file_content gives the CSV
    csv = service.files.content(finished.result_files[0]).decode()
    assert csv.startswith("step,train_loss,train_accuracy,valid_loss")
    pieces = list(
        service.chat.create(ChatRequest(model, [{"role": "user", "content": "Hi"}], seed=3))
    )
    assert len(pieces) == 5 and "".join(pieces) == "Hello from the fake service"
    [sent] = [r["json"] for r in posts(fake, "/chat/completions")]
    assert sent["stream"] is True and sent["seed"] == 3 and "top_p" not in sent


def test_job_actions_and_their_errors(fake, train):
    service = service_for(fake)
    job = service.jobs.create(JobRequest(MODEL, service.files.upload(train).id))
    assert service.jobs.get(job.id).status == "running"
    assert service.jobs.pause(job.id).status == "paused"
    with pytest.raises(Conflict, match="paused"):
        service.jobs.pause(job.id)
    assert service.jobs.resume(job.id).status == "running"
    assert service.jobs.cancel(job.id).status == "cancelled"
    with pytest.raises(Conflict):
        service.jobs.cancel(job.id)
    with pytest.raises(NotFound, match="ftjob-nope"):
        service.jobs.get("ftjob-nope")
    assert [j.id for j in service.jobs.list(limit=5)] == [job.id]
    assert service.jobs.list(metadata={"created_by": "someone"}) == []
    [listing] = [r for r in fake.requests if r["query"].get("metadata[created_by]")]
    assert listing["query"]["metadata[created_by]"] == ["someone"]


# -- models and ownership ----------------------------------------------------------------------


def test_ownership_and_base_models_are_never_deleted(fake, train):
    service = service_for(fake)
    ours = service.jobs.create(JobRequest(MODEL, service.files.upload(train).id))
    fake.finish_job(fake.jobs[ours.id], "ft:gpt-4.1-mini-2025-04-14:fake::ours")
    theirs = fake.add_job(MODEL, fake.add_file("x.jsonl", b"{}")["id"])
    fake.finish_job(theirs, "ft:gpt-4.1-mini-2025-04-14:fake::theirs")
    # convtune's tag with this data directory's id counts, even for a job it did not record;
    # a teammate's convtune (another id, or none) on the same account does not
    unrecorded = fake.add_job(MODEL, "file-x", metadata=tag())
    fake.finish_job(unrecorded, "ft:gpt-4.1-mini-2025-04-14:fake::unrecorded")
    teammate = fake.add_job(
        MODEL, "file-x", metadata={"created_by": "convtune", "convtune_installation": "0123abcd"}
    )
    fake.finish_job(teammate, "ft:gpt-4.1-mini-2025-04-14:fake::teammate")

    owned = service.ownership()
    assert owned.jobs == {ours.id, unrecorded.data["id"]}
    assert not owned.has_model("ft:gpt-4.1-mini-2025-04-14:fake::teammate")
    assert owned.has_model("ft:gpt-4.1-mini-2025-04-14:fake::ours")
    assert owned.has_model("ft:gpt-4.1-mini-2025-04-14:fake::ours:ckpt-step-2")
    assert not owned.has_model("ft:gpt-4.1-mini-2025-04-14:fake::theirs")
    assert fake.jobs[ours.id].data["result_files"][0] in owned.files
    assert not set(theirs.data["result_files"]) & owned.files

    ids = [m.id for m in service.models.list()]
    assert MODEL in ids and "ft:gpt-4.1-mini-2025-04-14:fake::ours" in ids
    requests = len(fake.requests)
    with pytest.raises(Conflict, match="base model"):
        service.models.delete(MODEL)
    assert len(fake.requests) == requests  # refused before anything was sent
    service.models.delete("ft:gpt-4.1-mini-2025-04-14:fake::ours")
    with pytest.raises(NotFound):
        service.models.get("ft:gpt-4.1-mini-2025-04-14:fake::ours")


# -- errors, keys, transient failures ----------------------------------------------------------


def test_the_key_is_needed_and_never_shown(fake, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConvtuneError, match="OPENAI_API_KEY or pass --api-key"):
        OpenAIService(base_url="https://api.openai.com/v1")
    # a service on this machine may need no key (llama-server, vLLM): a placeholder is sent, and
    # one that needs a key (as the fake does, and convtune serve) refuses it saying which to give
    keyless = OpenAIService(base_url=fake.url, max_retries=0)
    with pytest.raises(ConvtuneError, match=r"refused the API key \(401.*OPENAI_API_KEY"):
        keyless.files.list()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-environment-123456")
    assert OpenAIService(base_url=fake.url).client.api_key == "sk-from-the-environment-123456"
    with pytest.raises(ConvtuneError, match="cannot be sent"):
        OpenAIService(api_key="sk-é-1234", base_url=fake.url)
    with pytest.raises(OptionError, match="http"):
        OpenAIService(api_key="k", base_url="127.0.0.1:8000/v1")

    wrong = "sk-wrong-5f3c9a7e21-do-not-print"
    service = OpenAIService(api_key=wrong, base_url=fake.url, max_retries=0)
    with pytest.raises(ConvtuneError) as caught:
        service.files.list()
    message = str(caught.value)
    assert "401" in message and "--api-key" in message  # the fake echoes the key it got
    assert wrong not in message and "5f3c9a7e21" not in message
    assert wrong not in repr(service)


@pytest.mark.parametrize(
    ("fault", "kind"),
    [(503, TransientError), (500, TransientError), (429, TransientError), ("drop", TransientError)],
)
def test_transient_failures_are_transient_errors(fake, fault, kind):
    fake.fail("/files", fault)
    with pytest.raises(kind) as caught:
        service_for(fake).files.list()
    assert type(caught.value) is kind


def test_quota_and_unreachable(fake):
    fake.fail("/files", 4290)  # 429 with code insufficient_quota: waiting does not help
    with pytest.raises(ConvtuneError) as caught:
        service_for(fake).files.list()
    assert not isinstance(caught.value, TransientError) and "quota" in str(caught.value)
    closed = OpenAIService(api_key="k", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(TransientError, match=r"cannot reach http://127\.0\.0\.1:9/v1"):
        closed.files.list()


def test_the_sdk_retries_transient_failures_itself_first(fake):
    fake.fail("/files", 503, times=2)
    assert service_for(fake, max_retries=2).files.list() == []  # retry-after-ms: 10


def test_follow_survives_dropped_connections_429_and_5xx(fake, train):
    service = service_for(fake)
    job = service.jobs.create(JobRequest(MODEL, service.files.upload(train).id))
    fake.fail(f"/fine_tuning/jobs/{job.id}", 503, times=2, method="GET")
    fake.fail(f"/fine_tuning/jobs/{job.id}/events", "drop")
    fake.fail(f"/fine_tuning/jobs/{job.id}/events", 429)
    slept: list[float] = []
    retries: list[tuple[str, float]] = []
    items = list(
        follow(
            service,
            job.id,
            poll=0.5,
            sleep=slept.append,
            on_retry=lambda error, delay: retries.append((str(error), delay)),
        )
    )
    assert items[-1].status == "succeeded"
    ids = [e.id for e in items[:-1]]
    assert len(ids) == len(set(ids)) == len(fake.jobs[job.id].events)
    assert [d for _, d in retries] == [1.0, 2.0, 4.0, 8.0]  # back to back: doubling
    assert "503" in retries[0][0] and "429" in retries[3][0]


def test_follow_backoff_is_capped_and_gives_up_after_its_patience(fake, train):
    service = service_for(fake)
    job = service.jobs.create(JobRequest(MODEL, service.files.upload(train).id))
    fake.fail(f"/fine_tuning/jobs/{job.id}", 502, times=100, method="GET")
    clock = [0.0]
    delays: list[float] = []

    def sleep(seconds: float) -> None:
        delays.append(seconds)
        clock[0] += seconds

    with pytest.raises(TransientError, match="502"):
        list(follow(service, job.id, sleep=sleep, clock=lambda: clock[0], patience=600))
    assert max(delays) == MAX_BACKOFF and delays[:3] == [1.0, 2.0, 4.0]
    assert 600 <= sum(delays) < 600 + MAX_BACKOFF


def test_wind_down_warning():
    assert "2027-01-06" in wind_down_warning(date(2026, 12, 1))
    assert "36 days" in wind_down_warning(date(2026, 12, 1))
    assert "stopped" in wind_down_warning(date(2027, 2, 1))
    assert OpenAIService(api_key="k").is_openai
    assert not OpenAIService(api_key="k", base_url="http://127.0.0.1:8000/v1").is_openai


def test_a_base_url_without_v1_gets_a_hint(fake):
    service = OpenAIService(
        api_key=fake.key, base_url=fake.url.replace("/v1", "/api"), max_retries=0
    )
    with pytest.raises(NotFound) as caught:
        service.jobs.list()
    assert "does --base-url end in /v1?" in str(caught.value)
    with pytest.raises(NotFound) as caught:
        service_for(fake).jobs.get("ftjob-missing")
    assert "/v1" not in str(caught.value)  # the right address: no such hint


def test_a_file_checked_at_upload_is_not_read_again_at_create(fake, train, monkeypatch):
    import convtune.openai_backend.openai_files as backend

    reads: list[Path] = []
    real = backend.check_file
    monkeypatch.setattr(backend, "check_file", lambda p, **kw: reads.append(p) or real(p, **kw))
    service = service_for(fake)
    file = service.files.upload(train)
    service.jobs.create(JobRequest(MODEL, file.id))
    assert reads == [train]  # once: the upload's report serves the job's check
    train.write_text(train.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    other = service_for(fake)  # another process: nothing remembered, the file is read again
    other.jobs.create(JobRequest(MODEL, file.id))
    assert len(reads) == 2
