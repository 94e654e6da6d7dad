"""`OpenAIService`: the fine-tuning API of OpenAI, or of any service that speaks it.

A thin layer over the official SDK (`openai.OpenAI`): objects become convtune's
(`service/objects.py`), SDK errors become `ConvtuneError`s with the key redacted (`call`), and
options the user did not set are never sent. What it adds: an identical earlier upload is reused
and a file is checked before a job uses it (`openai_files`), and every job is tagged
`metadata.created_by = "convtune"` (`openai_jobs`) so that deleting can stay within what
convtune made. This class holds what the resources share: the client, the record, the tag.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import (
    Conflict,
    ConvtuneError,
    KeyRefused,
    NotFound,
    OptionError,
    TransientError,
    Unreachable,
)
from ..service.contract import (
    Capabilities,
    FineTuningService,
    Ownership,
)
from ..state.home import data_dir, installation_id
from .conversions import (
    server_message,
)
from .openai_files import OpenAIFiles
from .openai_jobs import OpenAIJobs
from .openai_models import OpenAIChat, OpenAIModels
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
        self.sleep = sleep  # between two looks at a file being processed (tests pass a fake)
        options: dict[str, Any] = {"api_key": key, "base_url": url, "max_retries": max_retries}
        if timeout is not None:
            options["timeout"] = timeout
        self.client = openai.OpenAI(**options)
        self.home = home or data_dir()
        self.record = Record(self.home / "openai.db", url)
        # every job is tagged created_by=convtune and with this data directory's id: on an
        # account shared with teammates, only this installation's jobs count as its own
        self.tag = {**TAG, INSTALL_KEY: installation_id(home)}
        self.files = OpenAIFiles(self)
        self.jobs = OpenAIJobs(self)
        self.models = OpenAIModels(self)
        self.chat = OpenAIChat(self)

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
    def call(self, what: str):
        """Run SDK calls (`with service.call("list files"): ...`); their errors leave as
        `ConvtuneError`s naming what failed."""
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
        with self.call("list fine-tuning jobs"):
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
