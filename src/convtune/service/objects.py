"""The objects of the fine-tuning API, shaped as OpenAI publishes them.

Both backends return these, so one follow loop, one renderer and one HTTP server serve both
worlds. `to_dict()` gives exactly the JSON OpenAI's API returns for the same object.
"""

from __future__ import annotations

import secrets
import string
import time
from dataclasses import asdict, dataclass, field
from typing import Any

TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ("validating_files", "queued", "running", "paused", *TERMINAL)
ACTIVE = ("validating_files", "queued", "running")  # a worker is (or should be) at work
RESUMABLE = ("paused", "failed", "cancelled")  # a local job continues from its checkpoint

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str) -> str:
    """An OpenAI-style id: `file-`, `ftjob-`, `ftevent-`, `ftckpt-`, `chatcmpl-` and 24 random
    letters and digits."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def now() -> int:
    """Seconds since the epoch, as OpenAI's objects count time."""
    return int(time.time())


@dataclass
class FileObject:
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str = "fine-tune"
    status: str = "processed"
    object: str = "file"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobError:
    code: str
    message: str
    param: str | None = None


@dataclass
class Job:
    id: str
    created_at: int
    model: str
    training_file: str
    status: str = "validating_files"
    validation_file: str | None = None
    hyperparameters: dict[str, Any] = field(
        default_factory=lambda: {
            "n_epochs": "auto",
            "batch_size": "auto",
            "learning_rate_multiplier": "auto",
        }
    )
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    result_files: list[str] = field(default_factory=list)
    trained_tokens: int | None = None
    seed: int = 0
    suffix: str | None = None
    estimated_finish: int | None = None
    metadata: dict[str, str] | None = None
    organization_id: str = "convtune"
    method: str = "supervised"  # OpenAI's method.type: supervised or dpo
    object: str = "fine_tuning.job"

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("suffix")
        data["integrations"] = []
        data["method"] = {
            "type": self.method,
            self.method: {"hyperparameters": dict(self.hyperparameters)},
        }
        return data


@dataclass
class JobEvent:
    id: str
    created_at: int
    level: str  # info | warn | error
    message: str
    type: str = "message"  # message | metrics
    data: dict[str, Any] = field(default_factory=dict)
    object: str = "fine_tuning.job.event"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Checkpoint:
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, float] = field(default_factory=dict)
    object: str = "fine_tuning.job.checkpoint"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModelObject:
    id: str
    created: int
    owned_by: str
    object: str = "model"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
