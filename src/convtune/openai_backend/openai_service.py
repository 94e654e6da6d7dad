"""`OpenAIService`: the fine-tuning API of OpenAI, or of any service that speaks it.

A thin layer over the official SDK (`openai.OpenAI`): objects become convtune's (`objects.py`),
SDK errors become `ConvtuneError`s with the key redacted, and options the user did not set are
never sent. What it adds: an identical earlier upload is reused, a file is checked before a job
uses it, and every job is tagged `metadata.created_by = "convtune"` so that deleting can stay
within what convtune made.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..dataset.check import check_file
from ..dataset.findings import counted, first_error
from ..dataset.report import OPENAI_MIN_EXAMPLES
from ..errors import (
    Conflict,
    ConvtuneError,
    KeyRefused,
    NotFound,
    OptionError,
    TransientError,
    Unreachable,
)
from ..metrics.results_csv import decode_base64_results
from ..service.contract import (
    Capabilities,
    ChatReply,
    ChatRequest,
    FineTuningService,
    JobRequest,
    Ownership,
    Progress,
)
from ..service.objects import Checkpoint, FileObject, Job, JobEvent, ModelObject
from ..service.training_options import refuse_trainer_options
from ..state.digest import file_sha256
from ..state.home import data_dir, installation_id
from .conversions import (
    ProgressReader,
    RemoteReply,
    server_message,
    to_checkpoint,
    to_event,
    to_file,
    to_job,
)
from .provenance import Record

OPENAI_URL = "https://api.openai.com/v1"
OPENAI_HOST = "api.openai.com"
WIND_DOWN = date(2027, 1, 6)  # OpenAI stops accepting new fine-tuning jobs
TAG = {"created_by": "convtune"}
INSTALL_KEY = "convtune_installation"
KEY_HINT = "set OPENAI_API_KEY or pass --api-key"
_KEYLIKE = re.compile(r"\b(sk|sess|org|proj)-[A-Za-z0-9_*.\-]{6,}")


def wind_down_warning(today: date | None = None) -> str:
    """The warning for a job sent to api.openai.com."""
    today = today or date.today()
    when = WIND_DOWN.isoformat()
    if today >= WIND_DOWN:
        return (
            f"OpenAI stopped accepting new fine-tuning jobs on {when}: this job will likely be"
            " refused (--backend local, or --base-url of another service, train open models)"
        )
    return (
        f"OpenAI stops accepting new fine-tuning jobs on {when} ({(WIND_DOWN - today).days} days"
        " from now): plan a move to --backend local or another service (--base-url)"
    )


LOOPBACK = ("127.0.0.1", "localhost", "::1")
NO_KEY = "convtune-no-key"  # sent, without a key given, to a service on this machine


class OpenAIService(FineTuningService):
    """The `FineTuningService` of OpenAI and compatible services (convtune serve included).

    The key comes from `api_key`, else `OPENAI_API_KEY` (else, for a service on this machine
    only, a placeholder); the address from `base_url`, else `OPENAI_BASE_URL`, else OpenAI's. `home` is convtune's data directory (where uploads and jobs
    are recorded); `max_retries` is the SDK's own retry count for 429, 5xx and dropped
    connections, before a `TransientError` reaches the caller.
    """

    name = "openai"
    capabilities = Capabilities(
        remote=True,
        numbered_events=False,
        file_paths=False,
        trainer_options=False,
        resume_ended=False,
        lists_base_models=True,
        deletes_model_files=False,
    )

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        home: Path | None = None,
        *,
        max_retries: int = 2,
        timeout: float | None = None,
        processing_timeout: float = 600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import openai

        key = (api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")).strip()
        self._key = key
        url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OptionError(
                f"the base URL {self._redact(url)!r} is not an http(s) address",
                hint="for example http://127.0.0.1:8000/v1",
            )
        on_this_machine = parts.hostname in LOOPBACK
        if not key and on_this_machine:
            # a service on this machine may check no key (llama-server, vLLM); one that does
            # (convtune serve) refuses this one with a 401 that says which key to give
            key = self._key = NO_KEY
        if not key:
            raise ConvtuneError("no API key for the openai backend", hint=KEY_HINT)
        if not key.isascii() or not key.isprintable() or " " in key:
            raise ConvtuneError(
                "the API key has spaces or characters that cannot be sent in a header",
                hint=KEY_HINT,
            )
        self.base_url = url
        self.host = parts.hostname
        self.is_openai = self.host == OPENAI_HOST
        # loopback services (convtune serve) answer at once; OpenAI's rate limits want patience
        self.poll_interval = 1.0 if on_this_machine else 3.0
        self.processing_timeout = processing_timeout
        self._sleep = sleep
        options: dict[str, Any] = {"api_key": key, "base_url": url, "max_retries": max_retries}
        if timeout is not None:
            options["timeout"] = timeout
        self.client = openai.OpenAI(**options)
        self.record = Record((home or data_dir()) / "openai.db", url)
        # reports of the files this process checked before uploading them, by digest: creating
        # the job right after (`convtune train`) need not read the same bytes again
        self._checked: dict[str, Any] = {}
        # every job is tagged created_by=convtune and with this data directory's id: on an
        # account shared with teammates, only this installation's jobs count as its own
        self.tag = {**TAG, INSTALL_KEY: installation_id(home)}

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:  # never the key
        return f"OpenAIService(base_url={self.base_url!r})"

    # -- errors --------------------------------------------------------------------------------

    def _redact(self, text: str) -> str:
        key = getattr(self, "_key", None)
        if key:
            text = text.replace(key, "***")
        return _KEYLIKE.sub(lambda m: m.group(1) + "-***", text)

    @contextmanager
    def _api(self, what: str):
        """Run SDK calls; their errors leave as `ConvtuneError`s naming `what` failed."""
        import openai

        try:
            yield
        except openai.OpenAIError as exc:
            raise self._translate(exc, what) from None

    def _translate(self, exc: Exception, what: str) -> ConvtuneError:
        import openai

        redact = self._redact
        if isinstance(exc, openai.APITimeoutError):
            return TransientError(redact(f"{what}: {self.host} did not answer in time"))
        if isinstance(exc, openai.APIConnectionError):
            import httpx

            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            # no connection at all (refused, no such host) rather than one that dropped
            kind = Unreachable if isinstance(exc.__cause__, httpx.ConnectError) else TransientError
            return kind(
                redact(f"{what}: cannot reach {self.base_url}{cause}"),
                hint="check the address (--base-url) and the network",
            )
        if not isinstance(exc, openai.APIStatusError):
            return ConvtuneError(redact(f"{what}: {exc}"))
        status = exc.status_code
        message = redact(server_message(exc))
        if status == 401:
            return KeyRefused(
                f"{what}: the service refused the API key (401: {message})", hint=KEY_HINT
            )
        if status == 403:
            return KeyRefused(f"{what}: permission denied (403: {message})")
        if status == 404:
            unversioned = not urlsplit(self.base_url).path.rstrip("/").endswith("/v1")
            return NotFound(
                f"{what}: not found ({message})",
                hint="does --base-url end in /v1?" if unversioned else None,
            )
        if status == 409:
            return Conflict(f"{what}: {message}")
        if status == 429:
            if getattr(exc, "code", None) == "insufficient_quota":
                return ConvtuneError(
                    f"{what}: quota exceeded ({message})",
                    hint="check the account's plan and billing",
                )
            return TransientError(f"{what}: rate limited (429: {message})", hint="try again later")
        if status >= 500:
            return TransientError(f"{what}: the service failed ({status}: {message})")
        return ConvtuneError(f"{what}: {message} ({status})")

    # -- files ---------------------------------------------------------------------------------

    def upload_file(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        reuse: bool = True,
        progress: Progress | None = None,
    ) -> FileObject:
        """Upload a file and wait until the service has processed it.

        A fine-tuning file is checked first (a file with errors is refused, with its first
        error's line). With `reuse`, a file already on the service with the same name, size and
        purpose is used instead, as OpenAI's old CLI did, unless its content is known to differ
        (convtune recorded a different digest, or the service lets it be downloaded and compared).
        """
        path = Path(path)
        if not path.is_file():
            raise ConvtuneError("no such file", path=path)
        name = filename or path.name
        stat = path.stat()
        digest = file_sha256(path)
        if purpose == "fine-tune":
            report = check_file(path, training=False)
            _refuse_errors(report, path)
            self._checked[digest] = report
        if reuse:
            existing = self._identical(name, stat.st_size, purpose, digest)
            if existing is not None:
                self._record_upload(
                    existing.id, existing.filename, purpose, path, digest, ours=False
                )
                if progress is not None:
                    progress(stat.st_size, stat.st_size)
                return self._processed(existing)
        with ProgressReader(path, progress) as reader, self._api(f"upload {name}"):
            created = self.client.files.create(file=(name, reader), purpose=purpose)
        if progress is not None:
            progress(stat.st_size, stat.st_size)
        self._record_upload(created.id, name, purpose, path, digest, ours=True)
        return self._processed(to_file(created))

    def _record_upload(
        self, file_id: str, filename: str, purpose: str, path: Path, digest: str, *, ours: bool
    ) -> None:
        """Remember where a file on the service came from (and whether convtune sent it): its
        checks can then read the local copy, and deleting stays within what convtune sent."""
        stat = path.stat()
        self.record.add_file(
            file_id,
            filename=filename,
            size=stat.st_size,
            purpose=purpose,
            sha256=digest,
            path=path.resolve(),
            mtime_ns=stat.st_mtime_ns,
            ours=ours,
        )

    def _identical(self, name: str, size: int, purpose: str, digest: str) -> FileObject | None:
        known = self.record.files()
        for candidate in self.list_files():
            if (
                candidate.filename != name
                or candidate.bytes != size
                or candidate.purpose != purpose
                or candidate.status in ("error", "deleted")
            ):
                continue
            recorded = known.get(candidate.id)
            if recorded is not None:
                if recorded["sha256"] == digest:
                    return candidate
                continue
            same = self._same_content(candidate.id, digest)
            if same or same is None:  # None: the service does not let it be read back
                return candidate
        return None

    def _same_content(self, file_id: str, digest: str) -> bool | None:
        try:
            content = self._raw_content(file_id)
        except TransientError:
            raise
        except ConvtuneError:
            return None
        return hashlib.sha256(content).hexdigest() == digest

    def _processed(self, file: FileObject) -> FileObject:
        """Wait until the service has processed `file` (or say why it could not)."""
        deadline = time.monotonic() + self.processing_timeout
        delay = 0.2
        while file.status not in ("processed", None, ""):
            if file.status in ("error", "deleted"):
                raise ConvtuneError(
                    f"the service could not process {file.filename} ({file.id}): {file.status}"
                )
            if time.monotonic() > deadline:
                raise ConvtuneError(
                    f"{file.filename} ({file.id}) is still {file.status} after"
                    f" {self.processing_timeout:g} s",
                    hint="try again later; convtune files list --backend openai shows its status",
                )
            self._sleep(delay)
            delay = min(delay * 2, 5.0)
            file = self.get_file(file.id)
        return file

    def get_file(self, file_id: str) -> FileObject:
        with self._api(f"file {file_id}"):
            return to_file(self.client.files.retrieve(file_id))

    def list_files(self) -> list[FileObject]:
        with self._api("list files"):
            return [to_file(f) for f in self.client.files.list()]

    def delete_file(self, file_id: str) -> None:
        with self._api(f"delete file {file_id}"):
            self.client.files.delete(file_id)
        self.record.forget_file(file_id)

    def file_content(self, file_id: str) -> bytes:
        """The file's bytes; a results file OpenAI serves base64-encoded comes back decoded."""
        return decode_base64_results(self._raw_content(file_id))

    def _raw_content(self, file_id: str) -> bytes:
        with self._api(f"download file {file_id}"):
            return self.client.files.content(file_id).read()

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(self, request: JobRequest) -> Job:
        """Check the files, then create the job with only the parameters that were set."""
        refuse_trainer_options(request.options.changed_trainer_options())
        metadata = dict(request.metadata or {})
        for key in set(metadata) & set(self.tag):
            raise OptionError(f"the metadata key {key} is convtune's own tag")
        self._check_uploaded(request.training_file, training=True)
        if request.validation_file:
            self._check_uploaded(request.validation_file, training=False)
        params: dict[str, Any] = {"model": request.model, "training_file": request.training_file}
        if request.validation_file:
            params["validation_file"] = request.validation_file
        hyperparameters = {k: v for k, v in request.hyperparameters.items() if v != "auto"}
        if hyperparameters:
            params["method"] = {
                "type": "supervised",
                "supervised": {"hyperparameters": hyperparameters},
            }
        if request.suffix is not None:
            params["suffix"] = request.suffix
        if request.seed is not None:
            params["seed"] = request.seed
        params["metadata"] = {**metadata, **self.tag}
        with self._api("create the fine-tuning job"):
            created = self.client.fine_tuning.jobs.create(**params)
        self.record.add_job(created.id)
        return to_job(created)

    def _check_uploaded(self, file_id: str, *, training: bool) -> None:
        """Refuse a file with errors (or, for OpenAI, too few examples) before a job uses it.

        The file is read where it was uploaded from, if convtune uploaded it and it has not
        changed since; else downloaded, if the service allows; else left to the service.
        """
        recorded = self.record.file(file_id)
        if recorded is not None and recorded["path"]:
            path = Path(recorded["path"])
            try:
                stat = path.stat()
            except OSError:
                stat = None
            if stat and (stat.st_size, stat.st_mtime_ns) == (
                recorded["bytes"],
                recorded["mtime_ns"],
            ):
                # errors and the number of examples, all `_refuse` reads, do not depend on
                # `training`: a report from the upload serves
                report = self._checked.get(recorded["sha256"]) or check_file(
                    path, training=training
                )
                self._refuse(report, path, training)
                return
        try:
            content = self._raw_content(file_id)
        except NotFound:
            raise
        except TransientError:
            raise
        except ConvtuneError:  # OpenAI does not let fine-tuning files be downloaded
            return
        name = recorded["filename"] if recorded else file_id
        with tempfile.TemporaryDirectory(prefix="convtune-") as folder:
            copy = Path(folder) / f"{file_id}.jsonl"
            copy.write_bytes(content)
            report = check_file(copy, training=training)
        report.path = name
        self._refuse(report, Path(name), training)

    def _refuse(self, report, path: Path, training: bool) -> None:
        _refuse_errors(report, path)
        if training and self.is_openai and report.examples < OPENAI_MIN_EXAMPLES:
            raise ConvtuneError(
                f"{counted(report.examples, 'example')}: OpenAI refuses to train on fewer than"
                f" {OPENAI_MIN_EXAMPLES}",
                path=path,
            )

    def get_job(self, job_id: str) -> Job:
        with self._api(f"fine-tuning job {job_id}"):
            return to_job(self.client.fine_tuning.jobs.retrieve(job_id))

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if metadata:
            params["metadata"] = metadata
        with self._api("list fine-tuning jobs"):
            page = self.client.fine_tuning.jobs.list(**params)
            return [to_job(j) for j in page.data]

    def cancel_job(self, job_id: str) -> Job:
        with self._api(f"cancel {job_id}"):
            return to_job(self.client.fine_tuning.jobs.cancel(job_id))

    def pause_job(self, job_id: str) -> Job:
        with self._api(f"pause {job_id}"):
            return to_job(self.client.fine_tuning.jobs.pause(job_id))

    def resume_job(self, job_id: str) -> Job:
        with self._api(f"resume {job_id}"):
            return to_job(self.client.fine_tuning.jobs.resume(job_id))

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        with self._api(f"events of {job_id}"):
            page = self.client.fine_tuning.jobs.list_events(job_id, **params)
            return [to_event(e) for e in page.data]

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self._api(f"checkpoints of {job_id}"):
            pages = self.client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
            return [to_checkpoint(c) for c in pages]

    # -- models and chat -----------------------------------------------------------------------

    def list_models(self) -> list[ModelObject]:
        """Every model the service lists (base models too); fine-tuned ones start with ft:."""
        with self._api("list models"):
            found = [
                ModelObject(m.id, m.created or 0, m.owned_by or "")
                for m in self.client.models.list()
            ]
        return sorted(found, key=lambda m: m.created, reverse=True)

    def get_model(self, model_id: str) -> ModelObject:
        with self._api(f"model {model_id}"):
            m = self.client.models.retrieve(model_id)
        return ModelObject(m.id, m.created or 0, m.owned_by or "")

    def delete_model(self, model_id: str) -> None:
        """Delete a fine-tuned model; base models are refused before anything is sent."""
        if not model_id.startswith("ft:"):
            raise Conflict(
                f"{model_id} is a base model: convtune deletes only fine-tuned (ft:) models"
            )
        with self._api(f"delete model {model_id}"):
            self.client.models.delete(model_id)

    def chat(self, request: ChatRequest) -> ChatReply:
        """Stream the reply (chat.completions with stream=True, asking for the usage chunk)."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.top_p != 1.0:
            params["top_p"] = request.top_p
        if request.seed is not None:
            params["seed"] = request.seed
        if request.stop:
            params["stop"] = request.stop
        what = f"chat with {request.model}"
        with self._api(what):
            stream = self.client.chat.completions.create(**params)
        return RemoteReply(stream, lambda: self._api(what))

    # -- what convtune created -----------------------------------------------------------------

    def notices(self) -> list[str]:
        """OpenAI's wind-down, before a job goes to api.openai.com."""
        return [wind_down_warning()] if self.is_openai else []

    def ownership(self) -> Ownership:
        """What convtune created here: its uploads, its jobs (tagged or recorded), their models
        and results files. Lists every job of the account once."""
        owned = Ownership()
        recorded_jobs = self.record.jobs()
        owned.files = {i for i, row in self.record.files().items() if row["ours"]}
        with self._api("list fine-tuning jobs"):
            for job in self.client.fine_tuning.jobs.list(limit=100):
                meta = job.metadata or {}
                tagged = all(meta.get(k) == v for k, v in self.tag.items())
                if not tagged and job.id not in recorded_jobs:
                    continue
                owned.jobs.add(job.id)
                if job.fine_tuned_model:
                    owned.models.add(job.fine_tuned_model)
                owned.files.update(job.result_files or ())
        return owned


def _refuse_errors(report, path: Path) -> None:
    """A `ConvtuneError` at the first error's line, if the report has errors."""
    first = first_error(report.findings)
    if first is None:
        return
    raise ConvtuneError(
        first.message,
        path=path,
        line=first.line,
        hint=f"{counted(report.errors, 'error')} in all; convtune check {path} lists them"
        if first.more
        else "the service would refuse this file",
    )
