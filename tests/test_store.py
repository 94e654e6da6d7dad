"""The local store: a real SQLite file, migrations, pagination and ordering as OpenAI has them."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from convtune.errors import ConvtuneError
from convtune.local.database import MIGRATIONS
from convtune.local.job_spec import JobSpec
from convtune.local.store import Store, new_id
from convtune.service.objects import Job, JobError
from convtune.service.training_options import TrainOptions


def make_job(store: Store, **kw) -> Job:
    job = Job(
        id=new_id("ftjob-"),
        created_at=1,
        model="SmolLM2-135M-Instruct",
        training_file="file-x",
        **kw,
    )
    store.add_job(job, JobSpec(TrainOptions(lora_r=8)))
    return job


def test_schema_and_migrations_are_recorded(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"files", "jobs", "events", "checkpoints", "models", "migrations"} <= tables
    assert [r[0] for r in store.db.execute("SELECT name FROM migrations")] == [
        m[0] for m in MIGRATIONS
    ]
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    Store(tmp_path / "db.sqlite").close()  # opening again applies nothing twice


def test_ids_look_like_openai_ids():
    ids = {new_id("ftjob-") for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("ftjob-") and len(i) == 30 and i[6:].isalnum() for i in ids)


def test_jobs_newest_first_with_after_and_metadata(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    jobs = [make_job(store, metadata={"team": "a" if i % 2 else "b"}) for i in range(5)]
    listed, more = store.list_jobs(limit=2)
    assert [j.id for j in listed] == [jobs[4].id, jobs[3].id] and more
    listed, more = store.list_jobs(after=jobs[3].id, limit=10)
    assert [j.id for j in listed] == [jobs[2].id, jobs[1].id, jobs[0].id] and not more
    listed, _ = store.list_jobs(metadata={"team": "a"})
    assert {j.id for j in listed} == {jobs[1].id, jobs[3].id}


def test_job_round_trip_and_status_guard(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = make_job(store, seed=7, suffix="support")
    store.update_job(
        job.id, error=JobError("bad", "line 3: broken", "training_file"), trained_tokens=12
    )
    back = store.get_job(job.id)
    assert back.error == JobError("bad", "line 3: broken", "training_file")
    assert back.seed == 7 and back.suffix == "support" and back.trained_tokens == 12
    assert store.job_spec(job.id).options == TrainOptions(lora_r=8)
    assert store.advance(job.id, "running")
    assert store.mark_succeeded(job.id)
    assert not store.advance(job.id, "running")  # an ended job stays ended
    assert not store.mark_cancelled(job.id) and not store.mark_paused(job.id)
    assert store.get_job(job.id).status == "succeeded" and store.get_job(job.id).finished_at
    assert store.list_events(job.id)[0][0].message == "The job has successfully completed"
    # a resume moves only a job in one of the given states (compare and set)
    assert not store.requeue(job.id, "resume", only_from=("paused",))
    failed = make_job(store)
    assert store.mark_failed(failed.id, JobError("worker_died", "killed"))
    assert store.requeue(failed.id, "Resuming", only_from=("failed",))
    again = store.get_job(failed.id)
    assert again.status == "queued" and again.error is None and again.finished_at is None
    assert store.job_runtime(failed.id)["launching_until"]  # no one takes it for crashed yet
    d = back.to_dict()
    assert d["object"] == "fine_tuning.job" and d["method"]["type"] == "supervised"
    assert "suffix" not in d


def test_events_newest_first_pages_and_since(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = make_job(store)
    events = [
        store.add_event(job.id, f"e{i}", type="metrics" if i % 2 else "message", data={"step": i})
        for i in range(7)
    ]
    page, more = store.list_events(job.id, limit=3)
    assert [e.message for e in page] == ["e6", "e5", "e4"] and more
    page, more = store.list_events(job.id, after=page[-1].id, limit=10)
    assert [e.message for e in page] == ["e3", "e2", "e1", "e0"] and not more
    since = store.events_since(job.id)
    assert [e.message for _, e in since] == [f"e{i}" for i in range(7)]
    assert store.events_since(job.id, since[4][0])[0][1].data == {"step": 5}
    assert events[1].to_dict()["object"] == "fine_tuning.job.event"


def test_a_second_process_can_write_while_one_reads(tmp_path):
    """WAL: a worker appends events while a follower reads, each with its own connection."""
    path = tmp_path / "db.sqlite"
    store = Store(path)
    job = make_job(store)

    def writer() -> None:
        own = Store(path)
        for i in range(200):
            own.add_event(job.id, f"w{i}")
        own.close()

    thread = threading.Thread(target=writer)
    thread.start()
    seen = 0
    while thread.is_alive() or seen < 200:
        seen = len(store.events_since(job.id))
        if not thread.is_alive() and seen < 200:
            break
    thread.join()
    assert len(store.events_since(job.id)) == 200


def test_checkpoints_and_models(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = make_job(store)
    store.add_checkpoint(
        job.id, 10, 1, {"train_loss": 1.5}, "ft:m::j:ckpt-step-10", tmp_path / "c10"
    )
    store.add_checkpoint(
        job.id, 20, 2, {"train_loss": 1.0}, "ft:m::j:ckpt-step-20", tmp_path / "c20"
    )
    (latest, folder, epoch), _ = store.list_checkpoints(job.id)
    assert latest.step_number == 20 and folder == tmp_path / "c20" and epoch == 2
    assert latest.to_dict()["object"] == "fine_tuning.job.checkpoint"
    store.add_model(
        "ft:m:s:j", "m", job.id, tmp_path / "merged", None, "prompt-completion", ("Human", "AI")
    )
    assert store.get_model("ft:m:s:j")["actors"] == ("Human", "AI")
    assert [m.id for m in store.list_models()] == ["ft:m:s:j"]
    store.delete_model("ft:m:s:j")
    assert store.get_model("ft:m:s:j") is None
    with sqlite3.connect(
        tmp_path / "db.sqlite"
    ) as raw:  # cascades: deleting a job removes its rows
        raw.execute("PRAGMA foreign_keys=ON")
        raw.execute("DELETE FROM jobs WHERE id = ?", (job.id,))
    assert store.list_checkpoints(job.id) == []


def test_threads_share_a_store_without_mixing_transactions(tmp_path):
    """The server calls one store from many threads: each has its own connection, so status
    changes (read then write, in one transaction) never interleave and nothing is lost."""
    store = Store(tmp_path / "convtune.db")
    jobs = [make_job(store) for _ in range(4)]

    def work(job: Job) -> None:
        for i in range(50):
            store.add_event(job.id, f"event {i}")
            store.requeue(job.id, f"status {i}")  # a status change and its event, together
            store.advance(job.id, "running")

    threads = [threading.Thread(target=work, args=(job,)) for job in jobs for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for job in jobs:
        assert len(store.events_since(job.id)) == 2 * 2 * 50
    assert len(store._connections) == len(threads) + 1  # one per thread, and the main thread's
    store.close()  # from the main thread, connections opened by the others included
    assert store._connections == []


def test_a_job_spec_keeps_the_options_as_given_and_what_auto_became(tmp_path):
    """The spec is what crosses to the worker: "auto" stays "auto" beside the resolved values,
    and the same document comes back from a real SQLite file opened again."""
    path = tmp_path / "db.sqlite"
    store = Store(path)
    job = Job(id=new_id("ftjob-"), created_at=1, model="m", training_file="file-x")
    spec = JobSpec(TrainOptions(lora_r=8), model_source="/models/base", base_name="base")
    store.add_job(job, spec)
    resolved = {"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 10.0}
    store.save_spec(job.id, spec.with_(resolved=resolved))
    store.close()
    back = Store(path).job_spec(job.id)
    assert back.options.n_epochs == "auto" and back.options.lora_r == 8
    assert back.resolved == resolved and back.model_source == "/models/base"
    assert back.base_name == "base" and back.max_running is None


@pytest.mark.parametrize(
    "stored, hyperparameters, want",
    [
        (  # version 0: the trainer's options under "training", OpenAI's three in the job's row
            {"training": {"lora_r": 4, "max_length": 512}, "model_source": "/m", "base_name": "b",
             "max_running": 2},
            {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": "auto"},
            TrainOptions(n_epochs=3, lora_r=4, max_length=512),
        ),
        (  # before 0.2: the trainer's options flat beside the rest
            {"lora_r": 4, "model_source": "/m", "base_name": "b", "max_running": 2},
            {"n_epochs": "auto", "batch_size": 2, "learning_rate_multiplier": "auto"},
            TrainOptions(batch_size=2, lora_r=4),
        ),
    ],
)  # fmt: skip
def test_jobs_stored_by_earlier_versions_still_load(tmp_path, stored, hyperparameters, want):
    store = Store(tmp_path / "db.sqlite")
    job = Job(id=new_id("ftjob-"), created_at=1, model="m", training_file="file-x")
    store.add_job(job, JobSpec())
    store.db.execute(  # the row as the earlier version wrote it
        "UPDATE jobs SET options = ?, hyperparameters = ? WHERE id = ?",
        (json.dumps(stored), json.dumps(hyperparameters), job.id),
    )
    spec = store.job_spec(job.id)
    assert spec.options == want
    assert (spec.model_source, spec.base_name, spec.max_running) == ("/m", "b", 2)


def test_a_spec_from_a_newer_convtune_is_refused_in_one_line(tmp_path):
    store = Store(tmp_path / "db.sqlite")
    job = Job(id=new_id("ftjob-"), created_at=1, model="m", training_file="file-x")
    store.add_job(job, JobSpec())
    store.db.execute("UPDATE jobs SET options = ? WHERE id = ?", ('{"version": 99}', job.id))
    with pytest.raises(ConvtuneError, match="stored by a newer convtune"):
        store.job_spec(job.id)
