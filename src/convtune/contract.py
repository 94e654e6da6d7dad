"""One interface for fine-tuning, whatever does the training.

`LocalService` trains open models on this machine; `OpenAIService` drives OpenAI's API or any
service that speaks it (convtune serve included). The CLI, the notebook and the HTTP server speak only to this
interface, so a follow loop or a chat written once works with both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .objects import Checkpoint, FileObject, Job, JobEvent, ModelObject


@dataclass
class JobRequest:
    """What `create_job` takes: OpenAI's parameters, plus local-only options.

    `n_epochs`, `batch_size` and `learning_rate_multiplier` are "auto" or a value, as OpenAI names
    them. `options` carries what only a local trainer understands (LoRA rank, max length...).
    """

    model: str
    training_file: str
    validation_file: str | None = None
    n_epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate_multiplier: float | str = "auto"
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": self.learning_rate_multiplier,
        }


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # OpenAI's `stop`: strings that end the reply


class FineTuningService(Protocol):
    """Files, jobs, events, checkpoints, models and chat, as OpenAI's fine-tuning API has them.

    Errors are `ConvtuneError`s: `NotFound` for a missing id, `Conflict` for an object in the
    wrong state (cancel a finished job, delete a model a job is using).
    """

    def upload_file(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> FileObject:
        """Upload (or reuse an identical earlier upload); `progress(done, total)` in bytes."""
        ...

    def get_file(self, file_id: str) -> FileObject: ...

    def list_files(self) -> list[FileObject]: ...

    def delete_file(self, file_id: str) -> None: ...

    def file_content(self, file_id: str) -> bytes:
        """The file's bytes (a training file, or a job's results CSV)."""
        ...

    def create_job(self, request: JobRequest) -> Job: ...

    def get_job(self, job_id: str) -> Job: ...

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]: ...

    def cancel_job(self, job_id: str) -> Job: ...

    def pause_job(self, job_id: str) -> Job:
        """Stop a running job after a checkpoint; `resume_job` continues it."""
        ...

    def resume_job(self, job_id: str) -> Job:
        """Continue a paused job (or, locally, a failed or cancelled one) from its checkpoint."""
        ...

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        """Newest first, as OpenAI lists them."""
        ...

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]: ...

    def list_models(self) -> list[ModelObject]: ...

    def get_model(self, model_id: str) -> ModelObject: ...

    def delete_model(self, model_id: str) -> None: ...

    def chat(self, request: ChatRequest) -> Iterator[str]:
        """The reply, piece by piece as it is generated."""
        ...
