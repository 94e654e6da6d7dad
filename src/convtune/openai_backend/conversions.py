"""The SDK's objects as convtune's (`objects.py`), and what a service's error says."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from ..service.contract import ChatReply
from ..service.objects import Checkpoint, FileObject, Job, JobError, JobEvent


def to_file(f) -> FileObject:
    return FileObject(
        id=f.id,
        bytes=f.bytes or 0,
        created_at=f.created_at or 0,
        filename=f.filename or "",
        purpose=f.purpose or "",
        status=getattr(f, "status", None) or "processed",
    )


def to_job(j) -> Job:
    data = j.model_dump()
    hyperparameters = dict(data.get("hyperparameters") or {})
    method = data.get("method") or {}
    chosen = (method.get(method.get("type") or "supervised") or {}).get("hyperparameters")
    if chosen:
        hyperparameters.update({k: v for k, v in chosen.items() if v is not None})
    for name in ("n_epochs", "batch_size", "learning_rate_multiplier"):
        if hyperparameters.get(name) is None:
            hyperparameters[name] = "auto"
    error = data.get("error") or {}
    return Job(
        id=data["id"],
        created_at=data.get("created_at") or 0,
        model=data.get("model") or "",
        training_file=data.get("training_file") or "",
        status=data.get("status") or "validating_files",
        validation_file=data.get("validation_file"),
        hyperparameters=hyperparameters,
        fine_tuned_model=data.get("fine_tuned_model"),
        finished_at=data.get("finished_at"),
        error=JobError(error.get("code") or "", error["message"], error.get("param"))
        if error.get("message")
        else None,
        result_files=list(data.get("result_files") or []),
        trained_tokens=data.get("trained_tokens"),
        seed=data.get("seed") or 0,
        suffix=data.get("suffix") or data.get("user_provided_suffix"),
        estimated_finish=data.get("estimated_finish"),
        metadata=data.get("metadata"),
        organization_id=data.get("organization_id") or "",
        method=method.get("type") or "supervised",
    )


def to_event(e) -> JobEvent:
    return JobEvent(
        id=e.id,
        created_at=e.created_at or 0,
        level=e.level or "info",
        message=e.message or "",
        type=getattr(e, "type", None) or "message",
        data=dict(getattr(e, "data", None) or {}),
    )


def to_checkpoint(c) -> Checkpoint:
    metrics = c.metrics.model_dump(exclude_none=True) if c.metrics is not None else {}
    return Checkpoint(
        id=c.id,
        created_at=c.created_at or 0,
        fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
        fine_tuning_job_id=c.fine_tuning_job_id,
        step_number=c.step_number,
        metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
    )


def server_message(exc) -> str:
    body = exc.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                value = body[key]
                return value if isinstance(value, str) else str(value)
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    try:
        text = exc.response.text.strip()
    except Exception:
        text = ""
    return text[:300] or exc.response.reason_phrase or "no message"


class ProgressReader(io.FileIO):
    """A file the SDK (httpx) reads in chunks while uploading; each read reports progress."""

    def __init__(self, path: Path, progress: Callable[[int, int], None] | None) -> None:
        super().__init__(path, "rb")
        self._progress = progress
        self._total = os.fstat(self.fileno()).st_size

    def read(self, size: int = -1) -> bytes:
        chunk = super().read(size)
        if self._progress is not None:
            self._progress(self.tell(), self._total)
        return chunk


class RemoteReply(ChatReply):
    """A streamed chat completion as a `ChatReply`: its text deltas, then the finish reason and
    the usage chunk (services that send none leave the counts None). `errors()` wraps each read
    of the stream, so a failure midway is a `ConvtuneError` like any other call's."""

    def __init__(self, stream, errors: Callable[[], AbstractContextManager]) -> None:
        self._stream = stream
        self._errors = errors
        self._pieces = self._read()

    def __next__(self) -> str:
        return next(self._pieces)

    def _read(self) -> Iterator[str]:
        try:
            with self._errors():
                for chunk in self._stream:
                    usage = getattr(chunk, "usage", None)
                    if usage is not None:
                        self.prompt_tokens = usage.prompt_tokens
                        self.completion_tokens = usage.completion_tokens
                    for choice in chunk.choices or ():
                        if choice.finish_reason:
                            self.finish_reason = choice.finish_reason
                        if choice.delta is not None and choice.delta.content:
                            yield choice.delta.content
        finally:
            self._stream.close()

    def close(self) -> None:
        self._pieces.close()
        self._stream.close()
