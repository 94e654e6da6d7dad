"""`JobSpec`: what a local job trains, as one typed, versioned document.

A job's settings cross a process boundary: `LocalService` writes them into the store's `options`
column, the worker (another process, maybe under torchrun, maybe after a restart) reads them.
They used to cross as an untyped JSON bag whose readers guessed its shape. A spec keeps the
`TrainOptions` whole, as the user gave them ("auto" stays "auto"), and records beside them what
the first run resolved "auto" to, so a resumed job trains exactly as it started and a reader can
tell the user's choice from convtune's.

Stored form (`to_json`), version 1:

    {"version": 1, "options": {...every TrainOptions field...}, "model_source": "/abs/path",
     "base_name": "SmolLM2-135M-Instruct", "max_running": null, "resolved": {"n_epochs": 4, ...}}

Jobs stored by earlier versions still load (`from_json`): the version-0 form kept the trainer's
options under "training" and OpenAI's hyperparameters in the job's own row; the form before
that kept the trainer's options flat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConvtuneError
from ..service.training_options import TrainOptions

VERSION = 1


@dataclass(frozen=True)
class JobSpec:
    options: TrainOptions = field(default_factory=TrainOptions)  # as the user gave them
    model_source: str = (
        ""  # the base weights: an absolute path (workers may run elsewhere), a hub id
    )
    base_name: str = ""  # the name fine-tuned ids carry: ft:<base_name>:..., also training further
    max_running: int | None = None  # the server's slots when the job was last started
    resolved: dict[str, Any] = field(default_factory=dict)  # what "auto" became, once known

    def with_(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "options": self.options.to_dict(),
            "model_source": self.model_source,
            "base_name": self.base_name,
            "max_running": self.max_running,
            "resolved": dict(self.resolved),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], hyperparameters: dict[str, Any]) -> JobSpec:
        """A stored spec, of this version or an earlier one. `hyperparameters` are the job row's
        (an earlier version's only record of OpenAI's three; numbers once resolved)."""
        version = data.get("version", 0)
        if version > VERSION:
            raise ConvtuneError(
                f"this job was stored by a newer convtune (job spec version {version})",
                hint="upgrade convtune to run it",
            )
        if version == VERSION:
            return cls(
                options=TrainOptions.from_dict(data["options"]),
                model_source=data.get("model_source") or "",
                base_name=data.get("base_name") or "",
                max_running=data.get("max_running"),
                resolved=dict(data.get("resolved") or {}),
            )
        training = data.get("training")
        if training is None:  # before 0.2: the trainer's options flat beside the rest
            known = TrainOptions().trainer_options()
            training = {k: v for k, v in data.items() if k in known and v is not None}
        return cls(
            options=TrainOptions(**hyperparameters, **training),
            model_source=data.get("model_source") or "",
            base_name=data.get("base_name") or "",
            max_running=data.get("max_running"),
        )
