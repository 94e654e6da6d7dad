"""Where a migration stands: one JSON file per migrated model, written after every step.

A migration of one OpenAI fine-tune is five steps (inventory, record, retrain, eval, report),
each with what it made: the job behind the model, the recorded answers' file, the local job and
its model, the evaluations' files, the report. A step already done is skipped when the command
runs again, so a migration interrupted anywhere (a dropped connection, a closed laptop, the
shutdown itself between record and retrain) goes on where it stopped. Writes are atomic.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..dataset.jsonl import AtomicWriter
from ..errors import ConvtuneError

STEPS = ("inventory", "record", "retrain", "eval", "report")
STATE_FILE = "migration.json"


def folder_name(model: str) -> str:
    """A folder name for a model id: `ft:gpt-4o-mini-2024-07-18:acme:support:AbC` becomes
    `gpt-4o-mini-2024-07-18-acme-support-AbC`."""
    name = model.removeprefix("ft:")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


@dataclass
class Migration:
    model: str  # the OpenAI fine-tune being moved
    folder: Path
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # step -> what it made

    @classmethod
    def open(cls, out: Path, model: str) -> Migration:
        """The migration of `model` under `out`, as far as it went."""
        folder = out / folder_name(model)
        path = folder / STATE_FILE
        if not path.is_file():
            return cls(model, folder)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConvtuneError(
                f"cannot read the migration's state: {exc}",
                path=path,
                hint="delete the file to start this migration over",
            ) from None
        if data.get("model") != model:
            raise ConvtuneError(
                f"this folder holds the migration of {data.get('model')!r}, not {model!r}",
                path=path,
            )
        return cls(model, folder, dict(data.get("done") or {}))

    def has(self, step: str) -> bool:
        return step in self.done

    def mark(self, step: str, **made: Any) -> None:
        """Record a step as done (with what it made) and save at once."""
        self.done[step] = {k: (str(v) if isinstance(v, Path) else v) for k, v in made.items()}
        self.save()

    def forget(self, step: str) -> None:
        self.done.pop(step, None)
        self.save()

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {"model": self.model, "done": self.done}
        with AtomicWriter(self.folder / STATE_FILE, force=True) as out:
            out.write_line(json.dumps(data, indent=1))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "folder": str(self.folder), **asdict(self)["done"]}
