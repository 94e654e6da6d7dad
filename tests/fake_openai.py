"""A small OpenAI-shaped HTTP server on 127.0.0.1, for what a real `convtune serve` cannot do.

It speaks just enough of the fine-tuning API for the real SDK (files with multipart upload,
jobs that advance on every read, events newest first with `after`/`limit`, checkpoints, pause,
resume, cancel, models, streamed chat) and injects faults on demand: a status code (429, 5xx)
or a dropped connection for the next requests to a path. It also stands for api.openai.com
when used as an HTTP proxy (requests then arrive with an absolute URL), and holds objects that
"someone else" created.

    with FakeOpenAI() as fake:
        client = OpenAI(base_url=fake.url, api_key=fake.key, max_retries=0)
        fake.fail("/fine_tuning/jobs", 503, times=2)
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

KEY = "sk-fake-9c2f7e1d5b3a-SECRET"
BASE_MODELS = ("gpt-4.1-mini-2025-04-14", "gpt-4o-mini-2024-07-18")


@dataclass
class Fault:
    path: str  # a prefix of the request path after /v1
    kind: int | str  # a status code, or "drop"
    times: int = 1
    method: str | None = None


@dataclass
class FakeJob:
    data: dict
    total_steps: int
    advance: int  # steps per read of the job
    step: int = 0
    events: list[dict] = field(default_factory=list)
    checkpoints: list[dict] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)  # events to publish on the next read


class FakeOpenAI:
    def __init__(
        self,
        *,
        key: str = KEY,
        total_steps: int = 4,
        advance: int = 2,
        processing_reads: int = 0,
        events_per_step: int = 1,
        fail_jobs: bool = False,
    ) -> None:
        self.key = key
        self.total_steps = total_steps
        self.advance = advance
        self.processing_reads = processing_reads  # retrieves before a file is "processed"
        self.events_per_step = events_per_step
        self.fail_jobs = fail_jobs
        self.files: dict[str, dict] = {}
        self.contents: dict[str, bytes] = {}
        self.reads: dict[str, int] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.models: dict[str, dict] = {
            m: {"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "system"}
            for m in BASE_MODELS
        }
        self.faults: list[Fault] = []
        self.requests: list[dict] = []  # method, path, query, json, host
        self.downloadable = True  # False: like OpenAI, fine-tune files cannot be downloaded
        # chat: the reply to a conversation (default: the same words every time), and a delay
        # before it, so that a test can stop a client in the middle of a run
        self.answer = None  # Callable[[list[dict]], str] | None
        self.chat_delay = 0.0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # -- control ----------------------------------------------------------------------------

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def fail(self, path: str, kind: int | str, times: int = 1, method: str | None = None) -> None:
        with self._lock:
            self.faults.append(Fault(path, kind, times, method))

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def add_file(self, filename: str, content: bytes, purpose: str = "fine-tune") -> dict:
        with self._lock:
            file_id = self.new_id("file-")
            self.files[file_id] = {
                "id": file_id,
                "object": "file",
                "bytes": len(content),
                "created_at": int(time.time()),
                "filename": filename,
                "purpose": purpose,
                "status": "uploaded" if self.processing_reads else "processed",
            }
            self.contents[file_id] = content
            self.reads[file_id] = 0
            return self.files[file_id]

    def add_job(self, model: str, training_file: str, **body) -> FakeJob:
        """A job as if someone created it (no convtune tag unless `metadata` says so)."""
        with self._lock:
            job_id = self.new_id("ftjob-")
            method = body.get("method") or {}
            kind = method.get("type") or "supervised"
            hyperparameters = (method.get(kind) or {}).get("hyperparameters", {})
            data = {
                "id": job_id,
                "object": "fine_tuning.job",
                "created_at": int(time.time()),
                "model": model,
                "training_file": training_file,
                "validation_file": body.get("validation_file"),
                "status": "validating_files",
                "fine_tuned_model": None,
                "finished_at": None,
                "error": None,
                "hyperparameters": {
                    "n_epochs": hyperparameters.get("n_epochs", "auto"),
                    "batch_size": hyperparameters.get("batch_size", "auto"),
                    "learning_rate_multiplier": hyperparameters.get(
                        "learning_rate_multiplier", "auto"
                    ),
                },
                "method": {"type": kind, kind: {"hyperparameters": hyperparameters}},
                "organization_id": "org-fake",
                "result_files": [],
                "seed": body.get("seed", 42),
                "trained_tokens": None,
                "metadata": body.get("metadata"),
                "user_provided_suffix": body.get("suffix"),
                "integrations": [],
                "estimated_finish": None,
            }
            job = FakeJob(data, self.total_steps, self.advance)
            self._event(job, f"Created fine-tuning job: {job_id}")
            self.jobs[job_id] = job
            return job

    def finish_job(self, job: FakeJob, model_id: str | None = None) -> None:
        with self._lock:
            job.step = job.total_steps
            self._succeed(job, model_id)

    # -- the job's life ---------------------------------------------------------------------

    def _event(self, job: FakeJob, message: str, level="info", type_="message", data=None):
        event = {
            "id": f"ftevent-{next(self._ids):08d}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "type": type_,
            "data": data or {},
        }
        job.events.append(event)
        return event

    def _tick(self, job: FakeJob) -> None:
        data = job.data
        if data["status"] in ("succeeded", "failed", "cancelled", "paused"):
            return
        if data["status"] == "validating_files":
            data["status"] = "running"
            self._event(job, "Files validated, moving job to queued state")
            self._event(job, "Fine-tuning job started")
            if self.fail_jobs:
                data["status"] = "failed"
                data["error"] = {"code": "invalid_file", "message": "bad things", "param": None}
                data["finished_at"] = int(time.time())
                self._event(job, "Fine-tuning job failed: bad things", level="error")
            return
        for _ in range(job.advance):
            if job.step >= job.total_steps:
                break
            job.step += 1
            for n in range(self.events_per_step):
                loss = 2.0 / (job.step + n / self.events_per_step)
                self._event(
                    job,
                    f"Step {job.step}/{job.total_steps}: training loss={loss:.4f}",
                    type_="metrics",
                    data={
                        "step": job.step,
                        "total_steps": job.total_steps,
                        "train_loss": loss,
                        "valid_loss": loss * 1.1,
                        "train_mean_token_accuracy": 0.5,
                    },
                )
            if job.step == job.total_steps // 2:
                job.checkpoints.append(
                    {
                        "id": self.new_id("ftckpt-"),
                        "object": "fine_tuning.job.checkpoint",
                        "created_at": int(time.time()),
                        "fine_tuned_model_checkpoint": f"ft:{data['model']}:fake::{data['id']}"
                        f":ckpt-step-{job.step}",
                        "fine_tuning_job_id": data["id"],
                        "step_number": job.step,
                        "metrics": {"step": job.step, "train_loss": 1.0, "valid_loss": 1.1},
                    }
                )
        if job.step >= job.total_steps:
            self._succeed(job)

    def _succeed(self, job: FakeJob, model_id: str | None = None) -> None:
        data = job.data
        suffix = data.get("user_provided_suffix") or ""
        model_id = model_id or f"ft:{data['model']}:fake:{suffix}:{data['id'][-6:]}"
        csv = "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy\n" + "".join(
            f"{s},{2.0 / s:.4f},0.5,{2.2 / s:.4f},0.5\n" for s in range(1, job.total_steps + 1)
        )
        results = self.add_file(
            "step_metrics.csv", base64.b64encode(csv.encode()), "fine-tune-results"
        )
        self.files[results["id"]]["status"] = "processed"
        data.update(
            status="succeeded",
            fine_tuned_model=model_id,
            finished_at=int(time.time()),
            result_files=[results["id"]],
            trained_tokens=1234,
        )
        self.models[model_id] = {
            "id": model_id,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "org-fake",
        }
        self._event(job, f"New fine-tuned model created: {model_id}")
        self._event(job, "The job has successfully completed")


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeOpenAI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _route(self) -> tuple[str, dict, str]:
        parts = urlsplit(self.path)  # absolute when we are a proxy
        host = parts.hostname or self.headers.get("Host", "").split(":")[0]
        path = unquote(parts.path)
        if path.startswith("/v1"):
            path = path[3:]
        return path, parse_qs(parts.query), host

    def _send(self, status: int, body, headers: dict | None = None) -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        self._send(
            status,
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": None,
                    "code": code,
                }
            },
        )

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self, method: str) -> None:
        fake = self.server_fake
        path, query, host = self._route()
        raw = self._body()
        record = {"method": method, "path": path, "query": query, "host": host, "json": None}
        if raw and self.headers.get("Content-Type", "").startswith("application/json"):
            record["json"] = json.loads(raw)
        with fake._lock:
            fake.requests.append(record)
            fault = next(
                (
                    f
                    for f in fake.faults
                    if path.startswith(f.path) and f.times > 0 and f.method in (None, method)
                ),
                None,
            )
            if fault is not None:
                fault.times -= 1
        if fault is not None:
            if fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            code = "insufficient_quota" if fault.kind == 4290 else None
            status = 429 if fault.kind == 4290 else int(fault.kind)
            self.send_response(status)
            raw_error = json.dumps(
                {"error": {"message": f"injected {status}", "type": "server_error", "code": code}}
            ).encode()
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw_error)))
            self.send_header("retry-after-ms", "10")
            self.end_headers()
            self.wfile.write(raw_error)
            return
        auth = self.headers.get("Authorization", "")
        if auth != f"Bearer {fake.key}":
            given = auth.removeprefix("Bearer ")
            return self._error(401, f"Incorrect API key provided: {given}.", "invalid_api_key")
        try:
            with fake._lock:
                self._dispatch(method, path, query, raw)
        except KeyError as missing:
            self._error(404, f"No such object: {missing}")

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- the API ----------------------------------------------------------------------------

    def _dispatch(self, method: str, path: str, query: dict, raw: bytes) -> None:
        fake = self.server_fake
        seg = [s for s in path.split("/") if s]
        body = json.loads(raw) if raw and seg[:1] != ["files"] else {}
        if seg == ["files"] and method == "POST":
            return self._upload(raw)
        if seg == ["files"]:
            files = sorted(fake.files.values(), key=lambda f: f["created_at"], reverse=True)
            return self._send(200, {"object": "list", "data": files, "has_more": False})
        if seg[:1] == ["files"] and len(seg) == 2:
            file = fake.files[seg[1]]
            if method == "DELETE":
                del fake.files[seg[1]]
                return self._send(200, {"id": seg[1], "object": "file", "deleted": True})
            fake.reads[seg[1]] = fake.reads.get(seg[1], 0) + 1
            if file["status"] == "uploaded" and fake.reads[seg[1]] > fake.processing_reads:
                file["status"] = "processed"
            return self._send(200, file)
        if seg[:1] == ["files"] and seg[2:] == ["content"]:
            file = fake.files[seg[1]]
            if not fake.downloadable and file["purpose"] == "fine-tune":
                return self._error(400, "Not allowed to download files of purpose: fine-tune")
            return self._send(200, fake.contents[seg[1]])
        if seg == ["fine_tuning", "jobs"] and method == "POST":
            if body["training_file"] not in fake.files:
                return self._error(400, f"invalid training_file: {body['training_file']}")
            job = fake.add_job(**body)
            return self._send(200, job.data)
        if seg == ["fine_tuning", "jobs"]:
            jobs = sorted(fake.jobs.values(), key=lambda j: j.data["id"], reverse=True)
            wanted = {
                k[len("metadata[") : -1]: v[0]
                for k, v in query.items()
                if k.startswith("metadata[")
            }
            data = [
                j.data
                for j in jobs
                if all((j.data.get("metadata") or {}).get(k) == v for k, v in wanted.items())
            ]
            return self._page(data, query, key="id")
        if seg[:2] == ["fine_tuning", "jobs"] and len(seg) >= 3:
            job = fake.jobs[seg[2]]
            action = seg[3] if len(seg) > 3 else None
            if action is None:
                fake._tick(job)
                return self._send(200, job.data)
            if action == "events":
                return self._page(list(reversed(job.events)), query, key="id")
            if action == "checkpoints":
                return self._page(list(reversed(job.checkpoints)), query, key="id")
            if action in ("cancel", "pause", "resume"):
                status = job.data["status"]
                allowed = {
                    "cancel": ("validating_files", "queued", "running", "paused"),
                    "pause": ("running",),
                    "resume": ("paused",),
                }[action]
                if status not in allowed:
                    return self._error(409, f"Cannot {action} a job that is {status}")
                job.data["status"] = {
                    "cancel": "cancelled",
                    "pause": "paused",
                    "resume": "running",
                }[action]
                fake._event(job, f"Fine-tuning job {job.data['status']}")
                return self._send(200, job.data)
        if seg == ["models"]:
            return self._send(200, {"object": "list", "data": list(fake.models.values())})
        if seg[:1] == ["models"] and len(seg) == 2:
            model = fake.models[seg[1]]
            if method == "DELETE":
                del fake.models[seg[1]]
                return self._send(200, {"id": seg[1], "object": "model", "deleted": True})
            return self._send(200, model)
        if seg == ["chat", "completions"]:
            return self._chat(body)
        self._error(404, f"Unknown path {path}")

    def _page(self, items: list[dict], query: dict, key: str) -> None:
        limit = int(query.get("limit", ["20"])[0])
        after = query.get("after", [None])[0]
        if after is not None:
            ids = [i[key] for i in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        self._send(200, {"object": "list", "data": page, "has_more": len(items) > limit})

    def _upload(self, raw: bytes) -> None:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + raw
        )
        fields, filename, content = {}, None, b""
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename():
                filename, content = part.get_filename(), part.get_payload(decode=True)
            else:
                fields[name] = part.get_payload(decode=True).decode()
        file = self.server_fake.add_file(filename, content, fields.get("purpose", "fine-tune"))
        self._send(200, file)

    def _chat(self, body: dict) -> None:
        fake = self.server_fake
        if body["model"] not in fake.models:
            return self._error(404, f"The model {body['model']} does not exist")
        words = ["Hello", " from", " the", " fake", " service"]
        if fake.answer is not None:
            words = fake.answer(body["messages"]).split(" ")
            words = [words[0], *(" " + w for w in words[1:])]
        if fake.chat_delay:
            time.sleep(fake.chat_delay)
        if not body.get("stream"):
            return self._send(
                200,
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": "stop",
                        }
                    ],
                },
            )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(text: str) -> None:
            data = text.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        for word in words:
            delta = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}],
            }
            chunk(f"data: {json.dumps(delta)}\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            prompt = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            usage = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body["model"],
                "choices": [],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": len(words),
                    "total_tokens": prompt + len(words),
                },
            }
            chunk(f"data: {json.dumps(usage)}\n\n")
        chunk("data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")


class _QuietServer(ThreadingHTTPServer):
    """A client that closes its connection first (after a stream's last chunk) is no error:
    socketserver would print its traceback on stderr, into the output of the command under test."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)
