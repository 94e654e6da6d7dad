"""The web page's side of `convtune serve`: its files without a key, the `/v1/convtune/...`
endpoints (options, prepare, compare) against a real server, and `convtune ui`.

Errors are checked against OpenAI's `ErrorResponse` schema, as the rest of the API's are.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from convtune import PrepareOptions, prepare
from convtune.cli import ui_cmd
from convtune.dataset.examples import FORMATS, LAYOUTS, ExampleOptions
from convtune.service.training_options import default, specs

from .conftest import EXAMPLE
from .servers import ERROR_SCHEMA, Conformance, serve, stop, wait_for
from .tiny_models import make_tiny_model

BAD_QUOTE = 'Human;AI\nHello;Hi there\n"Broken;oops\nGood;Fine\n'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("ui-home"), "--max-upload-mb", "0.1") as server:
        yield server


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture
def api(served):
    headers = {"Authorization": f"Bearer {served.key}"}
    with httpx.Client(base_url=served.url, headers=headers, timeout=120) as client:
        yield client


@pytest.fixture
def error(conformance):
    def check(response: httpx.Response, status: int) -> dict:
        assert response.status_code == status, response.text
        body = response.json()
        conformance.validate(body, {"$ref": ERROR_SCHEMA}, f"{response.request.url.path}")
        return body["error"]

    return check


def post_sheet(api, content: bytes, name="conversations.csv", options=None, **fields):
    files = {"file": (name, content)}
    data = {**fields}
    if options is not None:
        data["options"] = json.dumps(options)
    return api.post("convtune/prepare", files=files, data=data)


# -- the page's files ----------------------------------------------------------------------------


def test_the_page_needs_no_key_and_the_api_behind_it_does(served, error):
    base = served.url.removesuffix("/v1")
    with httpx.Client(base_url=base) as anonymous:
        page = anonymous.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
            asset = anonymous.get(f"/ui/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind)
        # offline: nothing the page loads comes from elsewhere
        for name in ("index.html", "app.css", "app.js", "api.js", "data.js", "train.js"):
            text = anonymous.get(f"/ui/{name}").text
            assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
            assert "https://" not in text
        # only the page's own files are public: an unknown one, a path out, a POST, the API
        for method, path in (
            ("GET", "/ui/nope.js"),
            ("GET", "/ui/../v1/models"),
            ("GET", "/ui/%2e%2e/v1/models"),
            ("POST", "/"),
            ("GET", "/v1/convtune/options"),
            ("POST", "/v1/convtune/prepare"),
            ("GET", "/v1/convtune/comparisons/cmp-000000000000000000000000"),
        ):
            body = error(anonymous.request(method, path), 401)
            assert body["code"] == "invalid_api_key", path


# -- options ---------------------------------------------------------------------------------------


def test_the_options_are_described_from_their_one_definition(api):
    described = api.get("convtune/options").json()
    training = {o["name"]: o for o in described["training"]}
    assert list(training) == list(specs())  # every option, in declaration order
    for name, spec in specs().items():
        option = training[name]
        assert option["help"] == spec.help and option["kind"] == spec.kind.__name__
        assert (option["low"], option["high"]) == (spec.low, spec.high)
        assert option["choices"] == list(spec.choices) and option["auto"] == spec.auto
        assert option["api"] == spec.api and option["default"] == default(name)
        where = "method" if spec.method else "hyperparameters" if spec.hyperparameter else "convtune"
        assert option["field"] == where and option["only_for"] == spec.only_for
    assert training["nproc_per_node"]["api"] is False  # shown to no client
    assert training["n_epochs"]["expected"] == "'auto' or an integer from 1 to 50"
    prepare_options = described["prepare"]
    assert prepare_options["format"]["choices"] == list(FORMATS)
    assert prepare_options["format"]["default"] == "chat"
    assert prepare_options["model"]["format_defaults"]["prompt-completion"] == "davinci-002"
    assert prepare_options["layout"]["choices"] == list(LAYOUTS)
    assert prepare_options["context"]["default"] == ExampleOptions().context
    assert prepare_options["valid_ratio"]["default"] == PrepareOptions().valid_ratio
    assert described["max_upload_bytes"] == int(0.1 * (1 << 20))


# -- prepare ---------------------------------------------------------------------------------------


def test_prepare_reports_as_the_library_does_and_saves_nothing(api, served, tmp_path):
    options = {"context": 3, "valid_ratio": 0.25, "seed": 4}
    response = post_sheet(api, EXAMPLE.read_bytes(), options=options)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = prepare(
        EXAMPLE,
        tmp_path,
        PrepareOptions(examples=ExampleOptions(context=3), valid_ratio=0.25, seed=4),
    )
    report = result["report"]
    for key in ("conversations", "replies", "examples", "train_conversations", "dropped"):
        assert report[key] == getattr(expected, key), key
    assert report["findings"] == [f.to_dict() for f in expected.findings]  # spreadsheet lines
    assert report["train"]["histogram"] == expected.train.to_dict()["histogram"]
    assert report["train"]["cost"] == expected.train.cost and report["train"]["cost"] > 0
    assert report["input"] == "conversations.csv"
    assert report["outputs"] == ["conversations.train.jsonl", "conversations.valid.jsonl"]
    assert result["check"]["train"]["errors"] == 0 and result["check"]["valid"]["errors"] == 0
    # the first examples exactly as written, each with its reply's spreadsheet line
    written = Path(expected.outputs[0]).read_text(encoding="utf-8").splitlines()
    preview = result["preview"]
    assert [p["text"] for p in preview] == written[:5]
    rows = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for item in preview:  # the line of the reply the example teaches
        assert item["record"]["messages"][-1]["content"] in rows[item["line"] - 1]
    assert preview[0]["record"] == json.loads(written[0])
    assert result["files"] is None and result["sheets"] == []
    assert api.get("files").json()["data"] == []  # nothing uploaded without save
    assert str(served.home) not in response.text  # no path of the server's in the answer
    assert list((served.home / "uploads").iterdir()) == []  # the temporary folder is gone


def test_save_uploads_the_files_through_the_service(api, tmp_path):
    response = post_sheet(
        api,
        EXAMPLE.read_bytes(),
        options={"save": True},
        system="You are Nimbus, the shop's helper.",
    )
    assert response.status_code == 200, response.text
    files = response.json()["files"]
    assert files["train"]["filename"] == "conversations.train.jsonl"
    assert files["valid"]["filename"] == "conversations.valid.jsonl"
    expected = prepare(
        EXAMPLE,
        tmp_path,
        PrepareOptions(examples=ExampleOptions(system="You are Nimbus, the shop's helper.")),
    )
    for side, path in zip(("train", "valid"), expected.outputs, strict=True):
        content = api.get(f"files/{files[side]['id']}/content").content
        assert content == Path(path).read_bytes()
        assert files[side]["purpose"] == "fine-tune"
    listed = {f["id"] for f in api.get("files").json()["data"]}
    assert {files["train"]["id"], files["valid"]["id"]} <= listed


def test_a_broken_spreadsheet_is_refused_with_its_name_and_line(api, error):
    body = error(post_sheet(api, BAD_QUOTE.encode(), name="support.csv"), 400)
    assert body["param"] == "file" and body["code"] == "invalid_file"
    assert body["message"].startswith("support.csv, line 3: a quote opens a cell here")
    assert "/" not in body["message"].split(":")[0]  # the file's name, not a temporary path


def test_options_are_refused_with_the_parameter_they_belong_to(api, error):
    sheet = EXAMPLE.read_bytes()
    cases = [
        ({"valid_ratio": 1.5}, "valid_ratio"),
        ({"context": -1}, "context"),
        ({"format": "alpaca"}, "format"),
        ({"format": "prompt-completion", "layout": "conversation"}, "layout"),
        ({"encoding": "klingon"}, "encoding"),  # an OptionError of the reader, named
        ({"no_such_option": 1}, "no_such_option"),
        ({"model": "/etc/passwd"}, "model"),  # token counts for OpenAI's models only, not paths
    ]
    for options, param in cases:
        body = error(post_sheet(api, sheet, options=options), 400)
        assert body["param"] == param, (options, body)
    body = error(
        post_sheet(api, sheet, options={"layout": "conversation", "format": "prompt-completion"}),
        400,
    )
    assert "--" not in body["message"]  # the page has no flags: `layout`, not `--layout`
    assert (
        "'system' is too long" in error(post_sheet(api, sheet, system="x" * 2000), 400)["message"]
    )
    assert error(post_sheet(api, sheet, options=None, other="1"), 400)["param"] == "other"
    assert error(api.post("convtune/prepare", data={"options": "{}"}, files={"x": ("a", b"")}), 400)
    bad_json = api.post("convtune/prepare", files={"file": ("a.csv", sheet)}, data={"options": "{"})
    assert error(bad_json, 400)["param"] == "options"


def test_a_spreadsheet_past_the_upload_limit_is_413(api, error):
    body = error(post_sheet(api, b"Human;AI\n" + b"Hello;Hi\n" * 20_000), 413)
    assert body["code"] == "file_too_large"


def test_a_workbook_lists_its_sheets_and_one_is_chosen(api, tmp_path):
    from openpyxl import Workbook

    book = Workbook()
    first = book.active
    first.title = "Notes"
    first.append(["Human", "AI"])
    first.append(["What is this?", "A list of notes."])
    support = book.create_sheet("Support")
    support.append(["Customer", "Agent"])
    for message, reply in (("Hi", "Hello!"), ("Where is my order?", "On its way.")):
        support.append([message, reply])
    book.save(tmp_path / "book.xlsx")
    content = (tmp_path / "book.xlsx").read_bytes()
    whole = post_sheet(api, content, name="book.xlsx", options={"valid_ratio": 0})
    assert whole.status_code == 200, whole.text
    assert whole.json()["sheets"] == ["Notes", "Support"]
    assert whole.json()["report"]["actors"] == ["Human", "AI"]
    chosen = post_sheet(
        api, content, name="book.xlsx", options={"sheet": "Support", "valid_ratio": 0}
    )
    assert chosen.json()["report"]["actors"] == ["Customer", "Agent"]
    assert chosen.json()["report"]["replies"] == 2


# -- compare ---------------------------------------------------------------------------------------


def test_compare_runs_eval_on_a_file_and_serves_its_report(api, served, error, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    first = make_tiny_model(folder / "tiny-a", tied=False)
    second = make_tiny_model(folder / "tiny-b")
    saved = post_sheet(api, EXAMPLE.read_bytes(), options={"save": True}).json()["files"]
    body = {
        "models": [str(first), str(second)],
        "file": saved["valid"]["id"],
        "limit": 2,
        "max_tokens": 8,
    }
    response = api.post("convtune/compare", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["object"] == "convtune.comparison" and result["id"].startswith("cmp-")
    summary = result["summary"]
    assert summary["examples"] == 2 and [m["model"] for m in summary["models"]] == body["models"]
    assert summary["data"] == f"conversations.valid.jsonl ({saved['valid']['id']})"
    page = api.get(result["report"].removeprefix("/v1/"))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<h1>convtune eval: conversations.valid.jsonl" in page.text
    assert page.headers["content-security-policy"] == "sandbox allow-scripts"
    assert api.post("convtune/compare", json=body).json() == result  # cached: the same answer
    assert (
        served.home / "eval" / "answers.jsonl"
    ).is_file()  # the answers kept, as eval keeps them

    missing = error(
        api.post("convtune/compare", json={**body, "models": [str(first), "nope"]}), 404
    )
    assert missing["code"] == "model_not_found" and missing["param"] == "models"
    twice = error(api.post("convtune/compare", json={**body, "models": [str(first)] * 2}), 400)
    assert twice["param"] == "models"
    assert (
        error(api.post("convtune/compare", json={**body, "file": "../x"}), 400)["param"] == "file"
    )
    assert (
        error(api.post("convtune/compare", json={**body, "file": "file-nope"}), 404)["param"]
        == "file"
    )
    assert error(api.post("convtune/compare", json={**body, "limit": 0}), 400)["param"] == "limit"
    # a model on another service is not a target here: MODEL@URL is a model name like any other
    remote = error(
        api.post(
            "convtune/compare", json={**body, "models": [str(first), "x@http://127.0.0.1:9/v1"]}
        ),
        404,
    )
    assert remote["code"] == "model_not_found"
    for bad in ("cmp-../../x", "cmp-0000", result["id"][:-1] + "z"):
        assert error(api.get(f"convtune/comparisons/{bad}"), 404)


# -- convtune ui ---------------------------------------------------------------------------------


def test_convtune_ui_serves_the_page_with_a_fresh_key(tmp_path):
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(
        os.environ, CONVTUNE_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1", TMPDIR=str(temporary)
    )
    env.pop("CONVTUNE_API_KEYS", None)
    out = tmp_path / "ui.out"
    code = "from convtune.cli.ui_cmd import ui; ui(prog_name='convtune ui')"
    with open(out, "wb") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-c", code, "--no-open"],
            stdout=stdout,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        text = wait_for(lambda: "listening on" in (t := out.read_text()) and t, timeout=60)
        lines = text.splitlines()
        url = lines[1].removeprefix("convtune ui: open ")
        assert url.startswith("http://127.0.0.1:") and "#key=sk-ui-" in url
        page, key = url.split("#key=")
        assert key in lines[0] and lines[2].startswith("convtune serve: listening on")
        assert httpx.get(page).status_code == 200
        models = httpx.get(page + "v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200
        assert httpx.get(page + "v1/models").status_code == 401
        # the key file is gone once the server listens: the key lives in its memory only
        assert not list(temporary.glob("convtune-ui-*"))
    finally:
        assert stop(process) == -signal.SIGTERM  # stopped by the signal, as serve is


def test_the_page_opens_once_the_server_listens(tmp_path, monkeypatch):
    opened = []
    monkeypatch.setattr(ui_cmd.webbrowser, "open", opened.append)
    folder = tmp_path / "keys"
    folder.mkdir()
    (folder / "keys.txt").write_text("sk-ui-x\n")
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        thread = threading.Thread(
            target=ui_cmd._when_listening, args=(port, folder, f"http://127.0.0.1:{port}/#key=k")
        )
        thread.start()
        thread.join(10)
    assert opened == [f"http://127.0.0.1:{port}/#key=k"] and not folder.exists()


def test_convtune_ui_refuses_a_port_in_use():
    from click.testing import CliRunner

    from convtune.errors import ConvtuneError

    with socket.create_server(("127.0.0.1", 0)) as sock:
        port = sock.getsockname()[1]
        result = CliRunner().invoke(ui_cmd.ui, ["--port", str(port), "--no-open"])
    assert isinstance(result.exception, ConvtuneError)
    assert f"cannot listen on 127.0.0.1:{port}" in str(result.exception)
    help_text = CliRunner().invoke(ui_cmd.ui, ["--help"]).output
    assert "convtune ui --port 8000 --no-open" in help_text
