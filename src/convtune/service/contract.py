"""One interface for fine-tuning, whatever does the training: `FineTuningService`.

`LocalService` trains open models on this machine; `OpenAIService` drives OpenAI's API or any
service that speaks it (convtune serve included). The CLI, the notebook and the HTTP server speak
only to this interface, so a follow loop or a chat written once works with both.

A service is split by resource, as openai-python's client and the server's routes are:
`service.files`, `service.jobs` (with their events and checkpoints), `service.models` and
`service.chat`. Each is a small class of its backend, so no backend is one large room, and a
front end names what it touches: `service.jobs.cancel(job_id)`, `service.chat.create(request)`.

What differs between backends is *declared* (`Capabilities`, as simonw/llm declares
`can_stream` on its models), never probed with `getattr`: a front end asks
`service.capabilities.pause` and calls `service.jobs.pause` directly. An operation a backend
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

UploadProgress = Callable[[int, int], None]  # progress(done, total), in bytes


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


class Resource:
    """One resource of a service (its files, jobs, models or chat): what it needs of the
    service it belongs to is the service itself (its store, its client, its name)."""

    def __init__(self, service: FineTuningService) -> None:
        self.service = service

    def unsupported(self, what: str) -> Unsupported:
        return Unsupported(f"the {self.service.name} backend {what}")


class Files(Resource, ABC):
    """`service.files`: OpenAI's /v1/files."""

    @abstractmethod
    def upload(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        reuse: bool = True,
        progress: UploadProgress | None = None,
    ) -> FileObject:
        """Upload `path` (named `filename`, by default its own name); with `reuse`, an identical
        earlier upload is returned instead. A fine-tuning file with errors is refused, with its
        first error's line. `progress(done, total)` is called in bytes."""

    @abstractmethod
    def get(self, file_id: str) -> FileObject: ...

    @abstractmethod
    def list(self) -> list[FileObject]:
        """Newest first."""

    @abstractmethod
    def delete(self, file_id: str) -> None: ...

    @abstractmethod
    def content(self, file_id: str) -> bytes:
        """The file's bytes (a training file, or a job's results CSV, decoded)."""

    def path(self, file_id: str) -> Path:
        """Where the file's bytes are on this machine (`capabilities.file_paths`)."""
        raise self.unsupported("keeps no files on this machine")

    def uploaded_from(self, file_id: str) -> Path | None:
        """The file on this machine that convtune uploaded as `file_id`, if it has not changed
        since (a service that does not let its fine-tuning files be downloaded still has the
        user's copy); None where convtune does not know it."""
        return None


class Jobs(Resource, ABC):
    """`service.jobs`: OpenAI's /v1/fine_tuning/jobs, with their events and checkpoints."""

    @abstractmethod
    def create(self, request: JobRequest) -> Job: ...

    @abstractmethod
    def get(self, job_id: str) -> Job: ...

    @abstractmethod
    def list(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        """Newest first; `after` is a job id (older jobs follow)."""

    @abstractmethod
    def cancel(self, job_id: str) -> Job: ...

    @abstractmethod
    def pause(self, job_id: str) -> Job:
        """Stop a running job after a checkpoint; `resume` continues it."""

    @abstractmethod
    def resume(self, job_id: str) -> Job:
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
        raise self.unsupported("has no numbered events; use list_events")

    @abstractmethod
    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Newest first."""


class Models(Resource, ABC):
    """`service.models`: OpenAI's /v1/models, fine-tuned (ft:) and base models."""

    @abstractmethod
    def list(self) -> list[ModelObject]: ...

    @abstractmethod
    def get(self, model_id: str) -> ModelObject: ...

    @abstractmethod
    def delete(self, model_id: str) -> None: ...

    def knows(self, model: str) -> bool:
        """Whether `chat` can answer with `model` (a fine-tuned model here, or a base model the
        backend can load): a server answers 404 before it starts a reply."""
        try:
            self.get(model)
        except NotFound:
            return False
        return True

    def score_references(
        self, model: str, records: list[dict], *, max_length: int = 1024
    ) -> tuple[float, float]:
        """The model's mean loss and next-token accuracy on the trained parts of `records`
        (fine-tuning examples), by teacher forcing with the trainer's own loss masks: OpenAI's
        `valid_loss` and `valid_mean_token_accuracy` (`capabilities.scores_references`)."""
        raise self.unsupported("cannot score references by teacher forcing")


class Chat(Resource, ABC):
    """`service.chat`: OpenAI's /v1/chat/completions."""

    @abstractmethod
    def create(self, request: ChatRequest) -> ChatReply:
        """The reply, piece by piece as it is generated, with its token counts at the end."""


class FineTuningService(ABC):
    """Files, jobs (events, checkpoints), models and chat, as OpenAI's fine-tuning API has them.

    A backend sets its four resources in its constructor. Errors are `ConvtuneError`s:
    `NotFound` for a missing id, `Conflict` for an object in the wrong state (cancel a finished
    job, delete a model a job is using), `TransientError` for a service that could not be
    reached (worth retrying), `Unsupported` for what `capabilities` rule out.
    """

    name: ClassVar[str]  # the backend's name, as --backend takes it
    capabilities: ClassVar[Capabilities]
    base_url: str | None = None  # where a remote service is; None for this machine
    home: Path | None = None  # the data folder where it keeps its state on this machine
    poll_interval: float = 1.0  # seconds between two looks at a running job

    files: Files
    jobs: Jobs
    models: Models
    chat: Chat

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
