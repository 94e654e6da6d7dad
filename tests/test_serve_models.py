"""Base models beside the fine-tuned ones: `LocalService.list_models`, the CLI, and
`GET /v1/models` of `convtune serve`.

The base models listed are the default (SmolLM2-135M-Instruct), those jobs trained from and the
converted copies in the data folder, one entry per source, each with an id that a job and a chat
take; they are `owned_by: "system"`, as OpenAI lists its own, and never deleted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import openai
import pytest

from convtune.errors import Conflict, NotFound
from convtune.local.base_models import STAMP
from convtune.local.job_spec import JobSpec
from convtune.local.local_models import BASE_OWNER
from convtune.local.local_service import LocalService
from convtune.local.store import new_id, now
from convtune.service.contract import ChatRequest
from convtune.service.objects import Job

from .servers import Conformance, serve, wait_for
from .tiny_models import make_tiny_model

DEFAULT = "SmolLM2-135M-Instruct"
GOOD = (
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}\n'
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def folder(path: Path) -> Path:
    """A model folder as far as resolving goes: a config.json."""
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def add_job(service: LocalService, model: str, source: str, name: str) -> str:
    """A job's row as create_job writes it, without a worker."""
    job = Job(id=new_id("ftjob-"), created_at=now(), model=model, training_file="file-x")
    service.store.add_job(job, JobSpec(model_source=source, base_name=name))
    service.store.update_job(job.id, status="succeeded", launching_until=None)
    return job.id


def base_ids(service: LocalService) -> list[str]:
    return [m.id for m in service.models.list() if m.owned_by == BASE_OWNER]


def test_the_default_is_always_listed_and_never_deleted(isolated_home):
    service = LocalService()
    assert service.capabilities.lists_base_models
    [default] = service.models.list()
    assert default.id == DEFAULT and default.owned_by == "system" and default.object == "model"
    assert service.models.get(DEFAULT) == default
    with pytest.raises(Conflict, match="is a base model"):
        service.models.delete(DEFAULT)
    with pytest.raises(Conflict, match="is a base model"):
        service.models.delete("smollm2")  # any name of a base model
    with pytest.raises(NotFound):
        service.models.get("no-such-model")
    with pytest.raises(NotFound):
        service.models.delete("ft:x:y:ftjob-none")


def test_sources_of_jobs_and_converted_copies_once_each(isolated_home, tmp_path):
    service = LocalService()
    first = folder(tmp_path / "a" / "model")
    other = folder(tmp_path / "b" / "model")  # the same name, another model
    gone = folder(tmp_path / "gone")
    add_job(service, "model", str(first), "model")
    add_job(
        service, "model", f"{tmp_path}/a//model/.", "model"
    )  # the same folder, spelled otherwise
    add_job(service, "model", str(other), "model")
    add_job(service, "gone", str(gone), "gone")
    add_job(service, "ft:model::ftjob-abc", str(isolated_home / "models" / "x"), "model")
    add_job(service, "SmolLM2-135M-Instruct", service.models.base_model(DEFAULT).source, DEFAULT)
    shutil.rmtree(gone)
    converted = isolated_home / "base-models"
    converted.mkdir(exist_ok=True)
    lost = folder(converted / "lost-1a2b3c4d5e")  # converted from a GGUF since removed
    (lost / STAMP).write_text(json.dumps({"file": str(tmp_path / "lost.gguf")}))
    folder(converted / ".staging-x")  # a conversion under way
    folder(converted / DEFAULT)  # the default's own copy

    ids = base_ids(service)
    assert ids[:2] == [DEFAULT, "model"] and len(ids) == 4, ids
    second = ids[2]
    assert second.startswith("model-") and len(second) == len("model-") + 10
    assert ids[3] == "lost-1a2b3c4d5e"
    assert Path(service.models.base_model("model").source) == first.resolve()
    assert Path(service.models.base_model(second).source) == other.resolve()
    assert service.models.base_model("lost-1a2b3c4d5e").kind == "folder"
    for model_id in ids:  # each is a name a job and a chat take, and the server's URLs too
        assert service.models.knows(model_id) and service.models.get(model_id).owned_by == "system"
        with pytest.raises(Conflict):
            service.models.delete(model_id)
    assert not service.models.knows("gone")
    assert base_ids(service) == ids  # the same ids at every look


def test_the_cli_lists_base_models_only_when_asked(isolated_home, capsys):
    from convtune.cli.main import main

    assert main(["models", "list"]) == 0
    assert "No fine-tuned models yet." in capsys.readouterr().out
    assert main(["models", "list", "--include-base", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["data"]
    assert [(m["id"], m["owned_by"]) for m in listed] == [(DEFAULT, "system")]
    assert main(["models", "list", "--include-base"]) == 0
    assert DEFAULT in capsys.readouterr().out
    assert main(["models", "delete", DEFAULT, "--yes"]) == 1
    err = capsys.readouterr().err
    assert "is a base model" in err and len(err.strip().splitlines()) == 1
    assert main(["models", "delete", "--all", "--yes"]) == 0
    assert "No models to delete." in capsys.readouterr().out


def test_a_base_model_answers_a_chat_by_its_id(isolated_home, tiny):
    copy = isolated_home / "base-models" / "tiny-converted"
    shutil.copytree(tiny, copy)
    service = LocalService()
    assert "tiny-converted" in base_ids(service)
    request = ChatRequest("tiny-converted", [{"role": "user", "content": "Hi"}], max_tokens=3)
    reply = service.chat.create(request)
    assert isinstance("".join(reply), str) and 0 < reply.completion_tokens <= 3


# -- the server ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny):
    home = tmp_path_factory.mktemp("serve-home")
    shutil.copytree(tiny, home / "base-models" / "tiny-converted")
    with serve(home) as server:
        yield server


def test_models_lists_base_models_and_they_chat_and_train(served, conformance):
    client = conformance.openai(served)
    listed = {m.id: m for m in client.models.list()}
    assert set(listed) == {DEFAULT, "tiny-converted"}
    assert {m.owned_by for m in listed.values()} == {"system"}
    assert client.models.retrieve("tiny-converted").owned_by == "system"
    with pytest.raises(openai.ConflictError) as refused:
        client.models.delete(DEFAULT)
    assert refused.value.status_code == 409 and "base model" in refused.value.message
    assert refused.value.param == "model" and refused.value.code == "conflict"
    assert refused.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-base")

    messages = [{"role": "user", "content": "Hello"}]
    before = client.chat.completions.create(
        model="tiny-converted", messages=messages, max_tokens=4, temperature=0
    )
    assert before.model == "tiny-converted" and 0 < before.usage.completion_tokens <= 4

    train = client.files.create(file=("t.jsonl", (GOOD * 4).encode()), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny-converted",
        training_file=train.id,
        hyperparameters={"n_epochs": 1},
        extra_body={"convtune": {"max_steps": 2}},
    )
    assert job.model == "tiny-converted"
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).finished_at and j)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-converted::{job.id}"

    after = [m.id for m in client.models.list()]
    assert after == [done.fine_tuned_model, DEFAULT, "tiny-converted"]  # the base once
    for model in ("tiny-converted", done.fine_tuned_model):  # before and after, side by side
        reply = client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, temperature=0
        )
        assert reply.model == model and reply.choices[0].message.content is not None
