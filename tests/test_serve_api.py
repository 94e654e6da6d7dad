"""`convtune serve` at its edges: keys on every route, ids, uploads, request checks, chat
options, SSE on the wire, pagination, and the command itself.

One server process serves the module; every response is validated against OpenAI's schemas as
it arrives (`Conformance`), errors included.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from convtune.server import create_app

from .servers import CONVTUNE, Conformance, load_spec, operations, serve, wait_for
from .tiny_models import make_tiny_model

GOOD = (
    '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}\n'
)
SECRET = "sk-wrong-S3CRET-never-logged"

# a value for each path parameter of the spec, so that every operation can be called
SAMPLE = {
    "file_id": "file-abc123",
    "fine_tuning_job_id": "ftjob-abc123",
    "model": "ft:tiny:x:ftjob-abc123",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-home"), keys=("sk-test", "sk-second")) as server:
        yield server


@pytest.fixture
def api(served, conformance):
    with conformance.client(served) as client:
        yield client


def call(client: httpx.Client, method: str, path: str, **kw) -> httpx.Response:
    for name, value in SAMPLE.items():
        path = path.replace("{" + name + "}", value)
    if method == "POST" and path == "/files":
        kw.setdefault("files", {"file": ("a.jsonl", GOOD.encode())})
        kw.setdefault("data", {"purpose": "fine-tune"})
    elif method == "POST":
        kw.setdefault("json", {})
    return client.request(method, path.lstrip("/"), **kw)


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_the_app_routes_exactly_the_specs_operations(tmp_path):
    """The app's own OpenAPI description (FastAPI's, from its routes) against the spec's."""
    app = create_app(SimpleNamespace(home=tmp_path), ["k"])
    routed = {
        op["operationId"]: (method.upper(), path.removeprefix("/v1"))
        for path, item in app.openapi()["paths"].items()
        for method, op in item.items()
    }
    assert routed == operations(load_spec())  # all 18, same methods, same paths


def test_a_bug_is_a_500_without_its_details(tmp_path, conformance):
    from fastapi.testclient import TestClient

    def broken():
        raise RuntimeError("boom in /secret/place")

    service = SimpleNamespace(home=tmp_path, list_models=broken)
    app = create_app(service, ["sk-test"])
    with TestClient(app, raise_server_exceptions=False) as client:
        client.event_hooks = {"response": [conformance.check], "request": []}
        response = client.get("/v1/models", headers={"Authorization": "Bearer sk-test"})
    body = error(response, 500)
    assert body["type"] == "server_error" and body["code"] == "internal_error"
    assert "boom" not in response.text and "Traceback" not in response.text


def test_every_route_wants_a_known_key(served, conformance):
    spec_ops = operations(load_spec())
    routes = [*spec_ops.values(), ("GET", "/no/such/route"), ("PUT", "/files")]
    for headers in (
        {},
        {"Authorization": f"Bearer {SECRET}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic c2stdGVzdDo="},
        {"Authorization": "sk-test"},
    ):
        with httpx.Client(
            base_url=served.url, headers=headers, event_hooks={"response": [conformance.check]}
        ) as client:
            for method, path in routes:
                response = call(client, method, path)
                body = error(response, 401)
                assert body["code"] == "invalid_api_key", (method, path)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert SECRET not in response.text and "sk-test" not in response.text
    for key in ("sk-test", "sk-second"):  # every configured key works
        with conformance.client(served, key=key) as client:
            assert client.get("models").status_code == 200
    with conformance.client(served) as client:  # known key, unknown URL: 404, same envelope
        assert error(client.get("no/such/route"), 404)["code"] == "unknown_url"
    log = served.log()
    assert SECRET not in log and "sk-test" not in log and "sk-second" not in log


@pytest.mark.parametrize(
    "path",
    [
        "files/..%2F..%2Fconvtune.db",
        "files/file-abc%2F..%2F..",
        "files/file-..",
        "files/file-abc%00",
        "files/" + "file-" + "a" * 5000,
        "files/%2e%2e/content",
        "fine_tuning/jobs/ftjob-%2e%2e%2fx",
        "fine_tuning/jobs/..%2Fjobs/events",
        "models/..",
        "models/ft:x:%2F..%2F:ftjob-a",
    ],
)
def test_ids_are_checked_before_any_lookup(api, path):
    response = api.get(path)
    assert response.status_code in (404, 405), response.text  # the validator checked the body


def test_missing_objects_are_404_in_openais_shape(api):
    assert error(api.get("files/file-doesnotexist"), 404)["code"] == "not_found"
    assert error(api.delete("files/file-doesnotexist"), 404)["code"] == "not_found"
    assert error(api.get("fine_tuning/jobs/ftjob-doesnotexist/events"), 404)["param"] is None
    assert error(api.post("fine_tuning/jobs/ftjob-doesnotexist/cancel"), 404)
    gone = error(api.delete("models/ft:tiny:x:ftjob-doesnotexist"), 404)
    assert gone["code"] == "model_not_found" and gone["param"] == "model"


def test_a_bad_upload_is_refused_with_its_line(api):
    bad = GOOD + '{"messages": [{"role": "robot", "content": "beep"}]}\n' + GOOD + "not json\n"
    refused = error(
        api.post("files", data={"purpose": "fine-tune"}, files={"file": ("x.jsonl", bad)}), 400
    )
    assert "line 2" in refused["message"] and "role" in refused["message"]
    assert refused["param"] == "file" and refused["code"] == "invalid_file_format"
    assert "2 more errors" in refused["message"]  # line 2 has no assistant; line 4, not JSON

    latin1 = GOOD.encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1")
    refused = error(
        api.post("files", data={"purpose": "fine-tune"}, files={"file": ("x.jsonl", latin1)}), 400
    )
    assert "line 2" in refused["message"] and "UTF-8" in refused["message"]

    empty = error(
        api.post("files", data={"purpose": "fine-tune"}, files={"file": ("x.jsonl", b"")}), 400
    )
    assert "no examples" in empty["message"]
    for data, files, param in (
        ({"purpose": "assistants"}, {"file": ("x.jsonl", GOOD)}, "purpose"),
        ({}, {"file": ("x.jsonl", GOOD)}, "purpose"),
        ({}, {"purpose": (None, "fine-tune")}, "file"),  # multipart, no file part
        ({"purpose": "fine-tune", "color": "red"}, {"file": ("x.jsonl", GOOD)}, "color"),
    ):
        assert error(api.post("files", data=data, files=files), 400)["param"] == param
    not_multipart = error(api.post("files", json={"purpose": "fine-tune"}), 400)
    assert "multipart" in not_multipart["message"]
    assert api.get("files").json()["data"] == []  # nothing refused was kept


def test_file_list_pagination_and_names(api):
    made = []
    for i in range(5):
        line = GOOD.replace("Hey", f"Hey {i}")
        response = api.post(
            "files",
            data={"purpose": "fine-tune"},
            files={"file": (f"../../etc/{i}.jsonl", line.encode())},
        )
        assert response.status_code == 200, response.text
        made.append(response.json())
    assert {f["filename"] for f in made} == {f"{i}.jsonl" for i in range(5)}  # no path kept
    newest_first = [f["id"] for f in api.get("files").json()["data"]]
    page = api.get("files", params={"limit": 2}).json()
    assert page["has_more"] and [f["id"] for f in page["data"]] == newest_first[:2]
    assert page["first_id"] == newest_first[0] and page["last_id"] == newest_first[1]
    rest = api.get("files", params={"limit": 10, "after": page["last_id"]}).json()
    assert not rest["has_more"] and [f["id"] for f in rest["data"]] == newest_first[2:]
    ascending = api.get("files", params={"order": "asc"}).json()["data"]
    assert [f["id"] for f in ascending] == newest_first[::-1]
    assert api.get("files", params={"purpose": "batch"}).json()["data"] == []
    assert error(api.get("files", params={"limit": 0}), 400)["param"] == "limit"
    assert error(api.get("files", params={"after": "file-gone"}), 400)["param"] == "after"
    assert error(api.get("files", params={"order": "sideways"}), 400)["param"] == "order"
    again = api.post(
        "files",
        data={"purpose": "fine-tune"},
        files={"file": ("0.jsonl", GOOD.replace("Hey", "Hey 0"))},
    )
    assert again.json()["id"] == made[0]["id"]  # the same bytes and name: the same file
    for f in made:
        assert api.delete(f"files/{f['id']}").json() == {
            "id": f["id"],
            "object": "file",
            "deleted": True,
        }


def test_job_requests_are_checked_field_by_field(api, tiny):
    file_id = api.post(
        "files", data={"purpose": "fine-tune"}, files={"file": ("t.jsonl", GOOD * 4)}
    ).json()["id"]
    base = {"model": str(tiny), "training_file": file_id}
    for body, param in (
        ({**base, "colour": "red"}, "colour"),
        ({"model": str(tiny)}, "training_file"),
        ({**base, "training_file": "file-missing"}, "training_file"),
        ({**base, "training_file": "../../etc/passwd"}, "training_file"),
        ({**base, "method": {"type": "reinforcement"}}, "method.type"),
        ({**base, "method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        (
            {
                **base,
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}},
            },
            "method.supervised.hyperparameters.beta",
        ),
        ({**base, "hyperparameters": {"n_epochs": "many"}}, "hyperparameters.n_epochs"),
        ({**base, "integrations": [{"type": "wandb", "wandb": {"project": "p"}}]}, "integrations"),
        ({**base, "convtune": {"model_source": "/etc"}}, "convtune.model_source"),
        ({**base, "convtune": {"nproc_per_node": 8}}, "convtune.nproc_per_node"),
        ({**base, "convtune": {"max_steps": 0}}, "convtune.max_steps"),
        ({**base, "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ):
        assert error(api.post("fine_tuning/jobs", json=body), 400)["param"] == param, body
    unknown_model = error(
        api.post("fine_tuning/jobs", json={**base, "model": "no-such-base-model"}), 400
    )
    assert "unknown base model" in unknown_model["message"]
    assert error(api.post("fine_tuning/jobs", content=b"{not json"), 400)["param"] is None

    # convtune's own options reach the trainer: 2 steps, then done
    job = api.post(
        "fine_tuning/jobs",
        json={**base, "hyperparameters": {"n_epochs": 1}, "convtune": {"max_steps": 2}},
    ).json()
    assert job["object"] == "fine_tuning.job"
    listed = api.get("fine_tuning/jobs", params={"limit": 1}).json()
    assert [j["id"] for j in listed["data"]] == [job["id"]]
    assert api.get("fine_tuning/jobs", params={"metadata": "null"}).json()["data"]
    assert error(api.get("fine_tuning/jobs", params={"after": "ftjob-gone"}), 400)
    done = wait_for(
        lambda: (j := api.get(f"fine_tuning/jobs/{job['id']}").json())["finished_at"] and j
    )
    assert done["status"] == "succeeded", done["error"]
    events = api.get(f"fine_tuning/jobs/{job['id']}/events", params={"limit": 100}).json()
    steps = [e["data"]["step"] for e in events["data"] if e["type"] == "metrics"]
    assert steps and max(steps) == 2


def test_chat_requests_are_checked(api, tiny):
    base = {"model": str(tiny), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    for body, param in (
        ({**base, "temperatur": 0.5}, "temperatur"),
        ({**base, "n": 2}, "n"),
        ({**base, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({**base, "logprobs": True}, "logprobs"),
        ({**base, "presence_penalty": 0.5}, "presence_penalty"),
        ({**base, "response_format": {"type": "json_object"}}, "response_format"),
        ({**base, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**base, "temperature": 3}, "temperature"),
        ({**base, "max_tokens": 100000}, "max_tokens"),
        ({**base, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**base, "messages": []}, "messages"),
        ({**base, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        (
            {**base, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
    ):
        assert error(api.post("chat/completions", json=body), 400)["param"] == param, body
    missing = error(api.post("chat/completions", json={**base, "model": "ft:x:y:ftjob-none"}), 404)
    assert missing["code"] == "model_not_found"
    parts = {
        "role": "user",
        "content": [{"type": "text", "text": "H"}, {"type": "text", "text": "i"}],
    }
    developer = {"role": "developer", "content": "Be brief."}
    ok = api.post("chat/completions", json={**base, "messages": [developer, parts], "user": "u"})
    assert ok.status_code == 200, ok.text


def test_chat_stops_where_asked_and_says_why(api, tiny):
    def ask(**kw) -> dict:
        body = {"model": str(tiny), "messages": [{"role": "user", "content": "Hello"}], **kw}
        # seeded sampling: repeatable, and varied (greedy, a random model repeats one token)
        response = api.post("chat/completions", json={"temperature": 1.0, "seed": 3, **body})
        assert response.status_code == 200, response.text
        return response.json()

    free = ask(max_tokens=24)
    text = free["choices"][0]["message"]["content"]
    assert free["usage"]["completion_tokens"] <= 24
    if free["choices"][0]["finish_reason"] == "length":
        assert free["usage"]["completion_tokens"] == 24
    short = ask(max_tokens=3)
    assert short["choices"][0]["finish_reason"] == "length"  # a random model rarely ends at 3
    assert short["usage"]["completion_tokens"] == 3 and text.startswith(
        short["choices"][0]["message"]["content"]
    )
    stop = text.strip()[len(text.strip()) // 2 :][:3]
    assert stop
    cut = ask(max_tokens=24, stop=[stop])
    assert cut["choices"][0]["finish_reason"] == "stop"
    assert cut["choices"][0]["message"]["content"] == text[: text.index(stop)]
    assert ask(max_tokens=24)["choices"][0]["message"]["content"] == text  # the seed holds
    assert ask(max_tokens=24, seed=4)["choices"][0]["message"]["content"] != text


def test_streaming_on_the_wire(served, conformance, tiny):
    body = {
        "model": str(tiny),
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with conformance.client(served) as client:
        response = client.post("chat/completions", json=body)  # the hook validates each event
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 6
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert len({c["id"] for c in chunks}) == 1

    # a client that leaves mid-stream: the server ends that generation and carries on (no
    # validating hook here: it would read the whole stream before the test could leave)
    headers = {"Authorization": f"Bearer {served.key}"}
    with (
        httpx.Client(base_url=served.url, headers=headers) as raw,
        raw.stream("POST", "chat/completions", json={**body, "max_tokens": 2000}) as stream,
    ):
        for _line in stream.iter_lines():
            break
    whole = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    with conformance.client(served) as client:
        assert client.post("chat/completions", json=whole).status_code == 200


def test_upload_limit_is_413(tmp_path, conformance):
    with serve(tmp_path / "home", "--max-upload-mb", "0.01") as small:  # 10 kB
        with conformance.client(small) as client:
            fits = GOOD * (10_000 // len(GOOD))
            ok = client.post(
                "files", data={"purpose": "fine-tune"}, files={"file": ("a.jsonl", fits)}
            )
            assert ok.status_code == 200, ok.text
            big = (GOOD * 2000).encode()  # 170 kB
            refused = client.post(
                "files", data={"purpose": "fine-tune"}, files={"file": ("b.jsonl", big)}
            )
            body = error(refused, 413)
            assert body["code"] == "file_too_large" and "--max-upload-mb" in body["message"]
            assert [f["filename"] for f in client.get("files").json()["data"]] == ["a.jsonl"]
        assert not list((tmp_path / "home" / "uploads").iterdir())  # no temporary file left


def test_serve_needs_a_key_and_says_so(tmp_path):
    env = {"CONVTUNE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [CONVTUNE, "serve", "--port", "0"], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().count("\n") == 0  # one line
    assert "no API key configured" in result.stderr and "--api-key-file" in result.stderr
    comments_only = tmp_path / "keys.txt"
    comments_only.write_text("# nobody yet\n\n")
    result = subprocess.run(
        [CONVTUNE, "serve", "--api-key-file", str(comments_only)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1 and "no API key configured" in result.stderr
    shown = subprocess.run([CONVTUNE, "serve", "--help"], capture_output=True, text=True)
    assert "--concurrency" in shown.stdout and "convtune serve --port 8000" in shown.stdout


def test_keys_from_the_environment_and_a_warning_off_loopback(tmp_path, conformance):
    env = {"CONVTUNE_API_KEYS": "sk-env-1, sk-env-2"}
    with serve(tmp_path / "home", "--host", "0.0.0.0", keys=("sk-file",), env=env) as server:
        assert server.url.startswith("http://0.0.0.0:")
        local = SimpleNamespace(url=f"http://127.0.0.1:{server.port}/v1", key="sk-file")
        for key in ("sk-file", "sk-env-1", "sk-env-2"):
            with conformance.client(local, key=key) as client:
                assert client.get("models").status_code == 200
        assert "warning: listening on 0.0.0.0, not loopback" in server.log()
    # SIGTERM: a graceful stop, then uvicorn exits by the signal, so that a supervisor sees it
    assert server.process.returncode == -signal.SIGTERM
    assert "Application shutdown complete" in server.log() and "Traceback" not in server.log()
