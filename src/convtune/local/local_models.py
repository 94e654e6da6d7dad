"""`service.models` of the local backend: the store's fine-tuned models and the base models
this installation can start from (SmolLM2, those its jobs trained from, converted copies).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Conflict, NotFound, OptionError
from ..service.contract import Models
from ..service.objects import ACTIVE, ModelObject

if TYPE_CHECKING:  # resolving a base model loads no torch, but its module is not small
    from .base_models import BaseModelRef
    from .local_service import LocalService

# `owned_by` of a listed base model: what OpenAI says of its own base models (fine-tuned models
# are "convtune", as OpenAI's are the organisation's); the ft: prefix tells them apart too
BASE_OWNER = "system"


class LocalModels(Models):
    service: LocalService

    def list(self) -> list[ModelObject]:
        """The fine-tuned models, newest first, then the base models a job or a chat can start
        from (`base_models`: owned by "system", as OpenAI lists its own), the default first."""
        return self.service.store.list_models() + [
            model for _, model in self.base_models().values()
        ]

    def get(self, model_id: str) -> ModelObject:
        """A fine-tuned model, or a base model `list_models` lists."""
        if not model_id.startswith("ft:") and self.service.store.get_model(model_id) is None:
            known = self.base_models().get(model_id)
            if known is None:
                raise NotFound(
                    f"no model {model_id!r}",
                    hint="convtune models list --include-base shows them",
                )
            return known[1]
        record = self.record(model_id)
        return ModelObject(model_id, record["created"], record.get("owned_by") or "convtune")

    def base_model(self, name: str) -> BaseModelRef:
        """What a base model's name means here: whatever `resolve_base_model` takes (SmolLM2,
        a model folder, a .gguf file, a hub id), or the id of a base model `list_models` lists.
        `OptionError` for neither."""
        from .base_models import resolve_base_model

        try:
            return resolve_base_model(name)
        except OptionError:
            known = None if name.startswith("ft:") else self.base_models().get(name)
            if known is None or known[0] is None:
                raise
            return known[0]

    def base_models(self) -> dict[str, tuple[BaseModelRef | None, ModelObject]]:
        """The base models this installation can start from, by id, each as a job and a chat
        take it: SmolLM2-135M-Instruct always, then those its jobs trained from (oldest first),
        then the converted copies in `base_models_dir()` of models no job names.

        One entry per source, however its path was spelled; a source that is gone is left out.
        An id is the name fine-tuned ids carry (`ft:<name>:...`, a job's `model`); a second
        source of the same name gets the name and a digest of its path, as the folders of
        converted GGUF files are named. The default's ref is None without its package.
        """
        from ..dataset.modelinfo import SMOLLM2
        from ..state.home import base_models_dir
        from .base_models import BaseModelRef, resolve_base_model

        found: dict[str, tuple[BaseModelRef | None, ModelObject]] = {}
        seen: set[str] = set()
        for name, spec, created in self._base_candidates(base_models_dir()):
            try:
                ref = resolve_base_model(spec)
            except OptionError:  # gone (or, for the default, its package missing)
                if spec == SMOLLM2:
                    found[SMOLLM2] = (None, ModelObject(SMOLLM2, 0, BASE_OWNER))
                continue
            key = _source_key(ref)
            if key in seen:
                continue
            seen.add(key)
            model_id = name or ref.name
            if model_id in found:
                model_id = f"{model_id}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
            if created is None:
                created = _mtime(ref.source)
            found[model_id] = (
                BaseModelRef(model_id, ref.kind, ref.source),
                ModelObject(model_id, created, BASE_OWNER),
            )
        return found

    def _base_candidates(self, converted: Path) -> Iterator[tuple[str | None, str, int | None]]:
        """(id wanted or None for the model's own name, what `resolve_base_model` takes,
        created or None for the source's time), in the order ids are given out."""
        from ..dataset.modelinfo import SMOLLM2
        from .base_models import STAMP

        yield SMOLLM2, SMOLLM2, None
        jobs, _ = self.service.store.list_jobs(limit=1 << 62)
        for job in reversed(jobs):  # oldest first: an id, once given, stays with its source
            if job.model.startswith("ft:"):  # trained further: its base is a fine-tuned model
                continue
            spec = self.service.store.job_spec(job.id)
            if spec.model_source:
                yield spec.base_name or job.model, spec.model_source, job.created_at  # first
        for folder in sorted(converted.iterdir()):
            if folder.name.startswith(".") or folder.name == SMOLLM2:
                continue  # a conversion under way; the default's own copy
            if not (folder / "config.json").is_file():
                continue
            try:
                gguf = Path(json.loads((folder / STAMP).read_text())["file"])
            except (OSError, ValueError, KeyError, TypeError):
                gguf = None
            if gguf is not None and gguf.is_file():  # the GGUF it came from, as a job names it
                yield None, str(gguf), None
            else:
                yield folder.name, str(folder), None

    def record(self, model_id: str) -> dict:
        """The store's row of a fine-tuned model: where its weights are, its format, actors."""
        model = self.service.store.get_model(model_id)
        if model is None:
            raise NotFound(
                f"no fine-tuned model {model_id!r}", hint="convtune models list shows them"
            )
        return model

    def delete(self, model_id: str) -> None:
        """Remove a fine-tuned model from the database and its files from disk.

        Refused (`Conflict`) for a base model, and while a job that has not ended trains on
        top of it.
        """
        if self.service.store.get_model(model_id) is None and not model_id.startswith("ft:"):
            try:
                self.base_model(model_id)
            except OptionError:
                pass
            else:
                raise Conflict(
                    f"{model_id} is a base model: convtune deletes only fine-tuned (ft:) models"
                )
        model = self.record(model_id)
        users = [
            j
            for j in self.service.store.job_ids_with_status((*ACTIVE, "paused"))
            if (found := self.service.store.get_job(j)) is not None and found.model == model_id
        ]
        if users:
            raise Conflict(f"model {model_id} is in use by job {users[0]}; cancel it first")
        self.service.store.delete_model(model_id)
        self.service.chat.forget(model_id)
        folder = Path(model["path"]).parent
        if folder.is_dir() and self.service.home in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)

    def knows(self, model: str) -> bool:
        """A fine-tuned model of the store, or a base model name, id or folder that resolves."""
        if self.service.store.get_model(model) is not None:
            return True
        try:
            self.base_model(model)
        except OptionError:
            return False
        return True

    def score_references(
        self, model: str, records: list[dict], *, max_length: int = 1024
    ) -> tuple[float, float]:
        """Teacher forcing on `records` with the loss masks training uses (the model loaded
        once, shared with chat; chats on it wait meanwhile)."""
        return self.service.chat.model(model).score(records, max_length=max_length)


def _source_key(ref: BaseModelRef) -> str:
    """One spelling of a base model's source: its real path, or its hub id."""
    return ref.source if ref.kind == "hub" else str(Path(ref.source).resolve())


def _mtime(source: str) -> int:
    """When a local source was last written (0 for a hub id)."""
    try:
        return int(Path(source).stat().st_mtime)
    except OSError:
        return 0
