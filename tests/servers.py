"""A real `convtune serve` process for tests: started on a free loopback port, stopped at exit.

Usage::

    with serve(tmp_path / "home") as served:
        client = OpenAI(base_url=served.url, api_key=served.key)

The server's stdout and stderr go to files in `home` (`serve.out`, `serve.err`), not to pipes:
a server that logs every request would otherwise block once a pipe nobody reads is full.

`Conformance` checks responses against OpenAI's published schemas (tests/data/openai-openapi-subset.yaml)
as a side effect of making requests: `conformance.openai(served)` is an openai SDK client, and
`conformance.client(served)` an httpx client, whose every response is validated on arrival.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conftest import ROOT

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
SPEC = ROOT / "tests" / "data" / "openai-openapi-subset.yaml"
LISTENING = re.compile(r"^convtune serve: listening on (http://\S+:(\d+)/v1)$")


@dataclass
class Served:
    url: str  # http://127.0.0.1:PORT/v1, what OpenAI(base_url=...) takes
    key: str  # the first key, for Authorization: Bearer
    process: subprocess.Popen
    home: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def log(self) -> str:
        """What the server wrote to stderr so far (uvicorn's log, warnings, tracebacks)."""
        return (self.home / "serve.err").read_text(errors="replace")


@contextmanager
def serve(
    home: Path,
    *args: str,
    keys: tuple[str, ...] = ("sk-test",),
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """Start `convtune serve --port 0 --api-key-file F *args` with CONVTUNE_HOME=home.

    Waits for the `listening on` line, yields a `Served`, and at exit stops the server (SIGTERM,
    then SIGKILL after 15 s). Raises AssertionError with the server's stderr if it does not start.
    """
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    key_file = home / "keys.txt"
    key_file.write_text("# test keys\n" + "".join(f"{k}\n" for k in keys), encoding="utf-8")
    key_file.chmod(0o600)
    out_path, err_path = home / "serve.out", home / "serve.err"
    full_env = dict(os.environ, CONVTUNE_HOME=str(home), OMP_NUM_THREADS="1")
    full_env.pop("CONVTUNE_API_KEYS", None)
    full_env.update(env or {})
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen(
            [CONVTUNE, "serve", "--port", "0", "--api-key-file", str(key_file), *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=full_env,
        )
    try:
        url = _wait_for_listening(process, out_path, err_path, timeout)
        yield Served(url=url, key=keys[0] if keys else "", process=process, home=home)
    finally:
        stop(process)


def wait_for(predicate, timeout: float = 180.0, every: float = 0.3):
    """The first truthy value of `predicate()`, polled; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting")


def wait_for_job(service, job_id: str, predicate, timeout: float = 180.0):
    """`wait_for(predicate)` while job `job_id` runs: if the job ends first (a worker that
    failed, a job that finished too soon for the test), fail at once with its status and error,
    not minutes later with a timeout."""

    def check():
        value = predicate()
        if value:
            return value
        job = service.jobs.get(job_id)
        if job.done:
            value = predicate()  # what was awaited may have come just before the end
            assert value, f"job {job_id} is {job.status} already: {job.error}"
        return value

    return wait_for(check, timeout)


def stop(process: subprocess.Popen, grace: float = 15.0) -> int:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it has not exited within `grace`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return process.returncode


def _wait_for_listening(
    process: subprocess.Popen, out_path: Path, err_path: Path, timeout: float
) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        first = out_path.read_text(errors="replace").split("\n", 1)
        if len(first) == 2:  # a whole first line
            match = LISTENING.match(first[0])
            assert match, f"unexpected first line from convtune serve: {first[0]!r}"
            return match.group(1)
        if process.poll() is not None:
            raise AssertionError(
                f"convtune serve exited with {process.returncode}:\n"
                + err_path.read_text(errors="replace")[-3000:]
            )
        time.sleep(0.05)
    raise AssertionError(
        "convtune serve did not say it was listening in time:\n"
        + err_path.read_text(errors="replace")[-3000:]
    )


# -- conformance to OpenAI's published schemas ---------------------------------------------------

# Where OpenAI's API (and so convtune serve) knowingly differs from the schemas of its spec
# (v2.3.0). Each is a patch to the schema, applied before validating; nothing else is loosened.
DEVIATIONS = {
    # The spec has pause and resume operations but leaves `paused` out of the job's status enum;
    # OpenAI's API (and convtune) report a paused job as `paused`.
    "FineTuningJob.status may be paused": lambda s: s["FineTuningJob"]["properties"]["status"][
        "enum"
    ].append("paused"),
    # An empty list has no first or last id: OpenAI sends null, its schema says string.
    "empty lists have null first_id/last_id": lambda s: [
        s[name]["properties"].__setitem__(key, {"type": ["string", "null"]})
        for name in ("ListFilesResponse", "ChatCompletionList")
        for key in ("first_id", "last_id")
    ],
}

ERROR_SCHEMA = "#/components/schemas/ErrorResponse"
STREAM_SCHEMA = "#/components/schemas/CreateChatCompletionStreamResponse"


@functools.lru_cache(maxsize=1)
def load_spec(path: Path = SPEC) -> dict[str, Any]:
    """The spec subset, parsed once per test session."""
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def operations(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """operationId -> (METHOD, path as the spec writes it: /files/{file_id})."""
    return {
        op["operationId"]: (method.upper(), path)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "operationId" in op
    }


def _json_schema(node: Any) -> Any:
    """OpenAPI 3.0 idioms the spec still uses, as JSON Schema 2020-12 says them.

    `nullable: true` becomes `anyOf [..., null]`; a boolean `exclusiveMinimum` (3.0's style)
    becomes the number it qualifies. `$ref`s are left for the validator to resolve.
    """
    if isinstance(node, list):
        return [_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _json_schema(v) for k, v in node.items()}
    for bound, limit in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if node.get(bound) is True:
            node[bound] = node.pop(limit, 0)
        elif node.get(bound) is False:
            del node[bound]
    if node.pop("nullable", None) is True:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


class Conformance:
    """Validates responses against the response schema of the spec operation they answer.

    2xx bodies against the operation's 200 schema (server-sent events chunk by chunk), others
    against OpenAI's `ErrorResponse`. `seen` counts the operations validated, by operationId.
    """

    def __init__(self, spec: dict[str, Any] | None = None) -> None:
        from jsonschema import Draft202012Validator

        spec = copy.deepcopy(spec or load_spec())
        schemas = spec["components"]["schemas"]
        for patch in DEVIATIONS.values():
            patch(schemas)
        self._root = {"components": {"schemas": _json_schema(schemas)}}
        self._validator = Draft202012Validator
        self._routes: list[tuple[str, re.Pattern[str], str, Any]] = []
        for op_id, (method, path) in operations(spec).items():
            op = spec["paths"][path][method.lower()]
            content = op["responses"]["200"].get("content", {})
            schema = next(iter(content.values()))["schema"] if content else None
            pattern = re.compile("^" + re.sub(r"\\{(\w+)\\}", r"[^/]+", re.escape(path)) + "$")
            self._routes.append((method, pattern, op_id, schema))
        self.seen: Counter[str] = Counter()
        self.checked = 0

    def validate(self, body: Any, schema: Any, where: str) -> None:
        from jsonschema.exceptions import best_match

        validator = self._validator({**_json_schema(schema), **self._root})
        error = best_match(validator.iter_errors(body))
        if error is not None:
            raise AssertionError(
                f"{where}: response does not match its schema: {error.message}"
                f" at {list(error.absolute_path)}\n{json.dumps(body)[:2000]}"
            )
        self.checked += 1

    def operation(self, method: str, path: str) -> tuple[str | None, Any]:
        """(operationId, 200 schema) of a request path under /v1, or (None, None)."""
        path = path.split("/v1", 1)[1] if "/v1/" in path else path
        for op_method, pattern, op_id, schema in self._routes:
            if op_method == method and pattern.match(path):
                return op_id, schema
        return None, None

    def check(self, response: Any) -> None:
        """An httpx response hook: read the body, validate it, count its operation."""
        response.read()
        self._check_body(response)

    async def acheck(self, response: Any) -> None:
        """The same, as an `httpx.AsyncClient` hook."""
        await response.aread()
        self._check_body(response)

    def _check_body(self, response: Any) -> None:
        request = response.request
        op_id, schema = self.operation(request.method, request.url.path)
        where = f"{request.method} {request.url.path} -> {response.status_code}"
        kind = response.headers.get("content-type", "")
        if response.status_code >= 400:
            assert kind.startswith("application/json"), f"{where}: error body is not JSON"
            self.validate(response.json(), {"$ref": ERROR_SCHEMA}, where)
            return
        assert op_id is not None, f"{where}: not an operation of the spec"
        if kind.startswith("text/event-stream"):
            self.check_events(response.text, where)
        elif schema == {"type": "string"}:  # file content: the raw bytes, as OpenAI sends them
            assert not kind.startswith("application/json"), f"{where}: content came as JSON"
        else:
            self.validate(response.json(), schema, where)
        self.seen[op_id] += 1

    def check_events(self, text: str, where: str) -> list[dict[str, Any]]:
        """Every `data:` event of a chat stream validated; the stream must end with [DONE]."""
        events = [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]
        chunks = []
        for data in events[:-1]:
            chunk = json.loads(data)
            schema = ERROR_SCHEMA if "error" in chunk else STREAM_SCHEMA
            self.validate(chunk, {"$ref": schema}, where + " (stream)")
            chunks.append(chunk)
        if events and "error" in json.loads(events[-1] if events[-1] != "[DONE]" else "{}"):
            self.validate(json.loads(events[-1]), {"$ref": ERROR_SCHEMA}, where + " (stream)")
        else:
            assert events and events[-1] == "[DONE]", f"{where}: the stream did not end with [DONE]"
        return chunks

    def client(self, served: Served, *, key: str | None = None, **kw: Any):
        """An httpx client on the server's /v1, with its key, validating every response."""
        import httpx

        headers = {"Authorization": f"Bearer {served.key if key is None else key}"}
        return httpx.Client(
            base_url=served.url,
            headers=headers,
            event_hooks={"response": [self.check]},
            timeout=kw.pop("timeout", 120),
            **kw,
        )

    def openai(self, served: Served, **kw: Any):
        """The real openai SDK on the server, its every response validated on arrival."""
        import httpx
        from openai import OpenAI

        http = httpx.Client(event_hooks={"response": [self.check]}, timeout=120)
        return OpenAI(base_url=served.url, api_key=served.key, http_client=http, **kw)
