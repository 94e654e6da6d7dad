"""One interface for fine-tuning, whatever does the training: `FineTuningService`.

`LocalService` trains open models on this machine; `OpenAIService` drives OpenAI's API or any
service that speaks it (convtune serve included). The CLI, the notebook and the HTTP server speak
only to this interface, so a follow loop or a chat written once works with both.

What differs between backends is *declared* (`Capabilities`, as simonw/llm declares
`can_stream` on its models), never probed with `getattr`: a front end asks
`service.capabilities.pause` and calls `service.pause_job` directly. An operation a backend
cannot do raises `Unsupported`, a `ConvtuneError` with a one-line message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from ..errors import ConvtuneError, NotFound
from .objects import Checkpoint, FileObject, Job, JobEvent, ModelObject
from .training_options import TrainOptions

Progress = Callable[[int, int], None]  # progress(done, total), in bytes


class Unsupported(ConvtuneError):
    """The backend cannot do this (its `capabilities` say so)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; front ends read these instead of probing the service."""

    remote: bool  # a service over a network: ids worth printing, transient errors retried
    numbered_events: bool  # `events_since`: every event once, in order, without paging
    file_paths: bool  # `file_path`: a file's bytes on this machine's disk
    trainer_options: bool  # takes the local trainer's options (LoRA rank, max length...)
    resume_ended: bool  # failed and cancelled jobs resume from their last checkpoint too
    lists_base_models: bool  # `list_models` lists base models beside the fine-tuned (ft:) ones
    deletes_model_files: bool  # deleting a model removes its weights from this machine
    pause: bool = True  # running jobs pause (with a checkpoint) and resume
    scores_references: bool = False  # `score_references`: loss and accuracy by teacher forcing
    batches_chat: bool = False  # chats asked at once are generated together: ask several at once


@dataclass
class JobRequest:
    """What `create_job` takes: the job's files and names, and how it trains.

    `options` holds OpenAI's hyperparameters ("auto" or a value) and the local trainer's options;
    the openai backend refuses trainer options that differ from their defaults.
    """

    model: str
    training_file: str
    validation_file: str | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    options: TrainOptions = field(default_factory=TrainOptions)

    @property
    def hyperparameters(self) -> dict:
        return self.options.hyperparameters()


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)  # OpenAI's `stop`: strings that end the reply


class ChatReply(Iterator[str]):
    """A reply as it is generated: iterate for its pieces of text. Once they are exhausted,
    `completion_tokens` and `finish_reason` ("stop" or "length", as OpenAI says it) are set, and
    `prompt_tokens` (known from the start locally). A count the service did not give is None.

    `close()` ends generation early (a reader that went away); it may wait for the generating
    thread, so call it from a thread that may block.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None

    def close(self) -> None:
        """Stop generating."""


@dataclass
class Ownership:
    """The ids of what convtune created on one service (deleting stays within them)."""

    files: set[str] = field(default_factory=set)
    jobs: set[str] = field(default_factory=set)
    models: set[str] = field(default_factory=set)

    def has_file(self, file_id: str) -> bool:
        return file_id in self.files

    def has_model(self, model_id: str) -> bool:
        # a checkpoint's model (ft:...:ckpt-step-N) is its job's, as the job's model is
        return model_id in self.models or model_id.split(":ckpt-step-")[0] in self.models


class FineTuningService(ABC):
    """Files, jobs, events, checkpoints, models and chat, as OpenAI's fine-tuning API has them.

    Errors are `ConvtuneError`s: `NotFound` for a missing id, `Conflict` for an object in the
    wrong state (cancel a finished job, delete a model a job is using), `TransientError` for a
    service that could not be reached (worth retrying), `Unsupported` for what `capabilities`
    rule out.
    """

    name: ClassVar[str]  # the backend's name, as --backend takes it
    capabilities: ClassVar[Capabilities]
    base_url: str | None = None  # where a remote service is; None for this machine
    poll_interval: float = 1.0  # seconds between two looks at a running job

    # -- files ---------------------------------------------------------------------------------

    @abstractmethod
    def upload_file(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        reuse: bool = True,
        progress: Progress | None = None,
    ) -> FileObject:
        """Upload `path` (named `filename`, by default its own name); with `reuse`, an identical
        earlier upload is returned instead. A fine-tuning file with errors is refused, with its
        first error's line. `progress(done, total)` is called in bytes."""

    @abstractmethod
    def get_file(self, file_id: str) -> FileObject: ...

    @abstractmethod
    def list_files(self) -> list[FileObject]:
        """Newest first."""

    @abstractmethod
    def delete_file(self, file_id: str) -> None: ...

    @abstractmethod
    def file_content(self, file_id: str) -> bytes:
        """The file's bytes (a training file, or a job's results CSV, decoded)."""

    def file_path(self, file_id: str) -> Path:
        """Where the file's bytes are on this machine (`capabilities.file_paths`)."""
        raise Unsupported(f"the {self.name} backend keeps no files on this machine")

    # -- jobs ----------------------------------------------------------------------------------

    @abstractmethod
    def create_job(self, request: JobRequest) -> Job: ...

    @abstractmethod
    def get_job(self, job_id: str) -> Job: ...

    @abstractmethod
    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        """Newest first; `after` is a job id (older jobs follow)."""

    @abstractmethod
    def cancel_job(self, job_id: str) -> Job: ...

    @abstractmethod
    def pause_job(self, job_id: str) -> Job:
        """Stop a running job after a checkpoint; `resume_job` continues it."""

    @abstractmethod
    def resume_job(self, job_id: str) -> Job:
        """Continue a paused job (and, with `capabilities.resume_ended`, a failed or cancelled
        one) from its last checkpoint."""

    @abstractmethod
    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        """Newest first, as OpenAI lists them."""

    def events_since(self, job_id: str, seq: int = 0) -> list[tuple[int, JobEvent]]:
        """Oldest first, with sequence numbers: the events after `seq`
        (`capabilities.numbered_events`)."""
        raise Unsupported(f"the {self.name} backend has no numbered events; use list_events")

    @abstractmethod
    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Newest first."""

    # -- models and chat -----------------------------------------------------------------------

    @abstractmethod
    def list_models(self) -> list[ModelObject]: ...

    @abstractmethod
    def get_model(self, model_id: str) -> ModelObject: ...

    @abstractmethod
    def delete_model(self, model_id: str) -> None: ...

    def knows_model(self, model: str) -> bool:
        """Whether `chat` can answer with `model` (a fine-tuned model here, or a base model the
        backend can load): a server answers 404 before it starts a reply."""
        try:
            self.get_model(model)
        except NotFound:
            return False
        return True

    @abstractmethod
    def chat(self, request: ChatRequest) -> ChatReply:
        """The reply, piece by piece as it is generated, with its token counts at the end."""

    def score_references(
        self, model: str, records: list[dict], *, max_length: int = 1024
    ) -> tuple[float, float]:
        """The model's mean loss and next-token accuracy on the trained parts of `records`
        (fine-tuning examples), by teacher forcing with the trainer's own loss masks: OpenAI's
        `valid_loss` and `valid_mean_token_accuracy` (`capabilities.scores_references`)."""
        raise Unsupported(f"the {self.name} backend cannot score references by teacher forcing")

    # -- what convtune made, and what to tell the user -----------------------------------------

    def ownership(self) -> Ownership | None:
        """What convtune created on this service; None when everything there is its own (this
        machine's store), so deleting needs no filter."""
        return None

    def notices(self) -> list[str]:
        """Warnings a user should see before starting a job here (OpenAI's wind-down)."""
        return []

    def close(self) -> None:  # noqa: B027 - nothing to release by default
        """Release connections and handles."""
