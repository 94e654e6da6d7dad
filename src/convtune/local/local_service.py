"""`LocalService`: OpenAI's fine-tuning API, on this machine, with open models.

Files are copied into the data directory, jobs are rows in the SQLite store, and each job runs in
its own process (`process.start_worker`: `python -m convtune.local.worker JOB`, or under
`torchrun` for several processes), started in a new session so that it survives the terminal that
started it. Every change of a job's status is one of the store's transitions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Conflict, ConvtuneError, NotFound, OptionError
from ..service.contract import (
    Capabilities,
    ChatReply,
    ChatRequest,
    FineTuningService,
    JobRequest,
    Progress,
)
from ..service.objects import (
    ACTIVE,
    RESUMABLE,
    Checkpoint,
    FileObject,
    Job,
    JobError,
    JobEvent,
    ModelObject,
    new_id,
    now,
)
from ..state.digest import file_sha256
from ..state.home import data_dir
from . import process

if TYPE_CHECKING:  # loading a chat model needs torch; resolving a job does not
    from .base_models import BaseModelRef
    from .chat import LocalChat
from .store import LAUNCH_GRACE, Store, database_path

DEFAULT_MAX_BATCH = 32  # chat replies generated together (measured: BENCHMARKS.md, serve section)
SUFFIX = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")
PURPOSES = ("fine-tune", "fine-tune-results")
CHAT_MODELS_KEPT = 4  # models kept loaded for chat; the least recently used is dropped first
# `owned_by` of a listed base model: what OpenAI says of its own base models (fine-tuned models
# are "convtune", as OpenAI's are the organisation's); the ft: prefix tells them apart too
BASE_OWNER = "system"


class LocalService(FineTuningService):
    """The local implementation of `FineTuningService`.

    `max_running` caps how many jobs train at once (`convtune serve --concurrency`): more jobs
    wait in line as `queued`, oldest first. None, as the CLI has it, runs every job at once.

    `max_batch` caps how many chat replies one model generates together (`convtune serve
    --max-batch`): replies asked at the same time share each forward pass; 1 generates them one
    after another.
    """

    name = "local"
    capabilities = Capabilities(
        remote=False,
        numbered_events=True,
        file_paths=True,
        trainer_options=True,
        resume_ended=True,
        lists_base_models=True,
        deletes_model_files=True,
        scores_references=True,
        batches_chat=True,
    )

    def __init__(
        self,
        home: Path | None = None,
        *,
        max_running: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if max_running is not None and max_running < 1:
            raise OptionError("the number of jobs running at once must be 1 or more")
        if max_batch < 1:
            raise OptionError("the number of replies generated together must be 1 or more")
        self.home = home or data_dir()
        self.max_running = max_running
        self.max_batch = max_batch
        self.store = Store(database_path(self.home))
        self._children: dict[str, subprocess.Popen] = {}
        self._chat_models: dict[str, LocalChat] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._uploading = threading.Lock()

    def close(self) -> None:
        with self._guard:
            chats = list(self._chat_models.values())
        for chat in chats:  # replies still under way end here, not in the middle of torch
            chat.close()
        self.store.close()

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
        """Copy a JSONL file into the data directory; with `reuse`, an earlier upload of the
        very same bytes, name and purpose is returned instead.

        `filename` names the file as the uploader called it (the server receives uploads into
        temporary files); by default the path's own name.
        """
        path = Path(path)
        if purpose not in PURPOSES:
            raise OptionError(f"unknown purpose {purpose!r}; use fine-tune")
        if not path.is_file():
            raise ConvtuneError("no such file", path=path)
        name = filename or path.name
        total = path.stat().st_size
        digest = file_sha256(path)
        with self._uploading:  # the same bytes uploaded twice at once are stored once
            existing = self.store.find_file(digest, name, purpose) if reuse else None
            if existing is not None:
                if progress is not None:
                    progress(total, total)
                return existing
            return self._store_file(path, name, purpose, digest, total, progress)

    def _store_file(
        self,
        path: Path,
        name: str,
        purpose: str,
        digest: str,
        total: int,
        progress: Progress | None,
    ) -> FileObject:
        file_id = new_id("file-")
        target = self.home / "files" / f"{file_id}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        done = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        os.replace(tmp, target)
        return self.store.add_file(name, target.stat().st_size, purpose, target, digest, file_id)

    def file_path(self, file_id: str) -> Path:
        found = self.store.get_file(file_id)
        if found is None:
            raise NotFound(f"no file {file_id!r}")
        return found[1]

    def get_file(self, file_id: str) -> FileObject:
        found = self.store.get_file(file_id)
        if found is None:
            raise NotFound(f"no file {file_id!r}")
        return found[0]

    def list_files(self) -> list[FileObject]:
        return self.store.list_files()

    def delete_file(self, file_id: str) -> None:
        """Remove a file; refused (`Conflict`) while a job that has not ended still reads it."""
        path = self.file_path(file_id)
        for job_id in self.store.job_ids_with_status((*ACTIVE, "paused")):
            job = self.store.get_job(job_id)
            if job is not None and file_id in (job.training_file, job.validation_file):
                raise Conflict(
                    f"file {file_id} is in use by job {job_id} ({job.status})",
                    hint="cancel the job first",
                )
        self.store.delete_file(file_id)
        path.unlink(missing_ok=True)

    def file_content(self, file_id: str) -> bytes:
        return self.file_path(file_id).read_bytes()

    # -- jobs ----------------------------------------------------------------------------------

    def create_job(self, request: JobRequest) -> Job:
        """Record the job and start its worker; validation happens there, before any model load."""
        from .base_models import BaseModelRef

        tuned = self.store.get_model(request.model)
        if tuned is not None:  # train further on a fine-tuned model, as OpenAI allows
            base = BaseModelRef(tuned["base"], "folder", tuned["path"])
        else:
            base = self.base_model(request.model)
        for file_id in filter(None, (request.training_file, request.validation_file)):
            self.file_path(file_id)  # NotFound early, with the id
        if request.suffix is not None and not SUFFIX.match(request.suffix):
            raise OptionError("the suffix may have up to 40 letters, digits, '-', '_' or '.'")
        if request.options.quantize_base != "none":  # refused now, not once the worker trains
            from .training.adapters import quantization_problem
            from .training.runtime import pick_device

            if (problem := quantization_problem(pick_device(0))) is not None:
                raise OptionError(f"quantize_base {request.options.quantize_base}: {problem}")
        job = Job(
            id=new_id("ftjob-"),
            created_at=now(),
            model=request.model if tuned is not None else base.name,
            training_file=request.training_file,
            validation_file=request.validation_file,
            hyperparameters=request.options.hyperparameters(),
            seed=request.seed if request.seed is not None else int.from_bytes(os.urandom(3), "big"),
            suffix=request.suffix,
            metadata=request.metadata,
        )
        runtime = {
            "training": request.options.trainer_options(),
            "model_source": base.source,  # absolute: workers may run elsewhere
            "base_name": base.name,  # ft:<base>:..., also when training further
        }
        self.store.add_job(job, runtime)
        self.store.add_event(job.id, f"Created fine-tuning job: {job.id}")
        self._start(job.id, runtime)
        return self.get_job(job.id)

    def _start(self, job_id: str, runtime: dict, *, resume: bool = False) -> None:
        if self.max_running is not None and runtime.get("max_running") != self.max_running:
            runtime = {**runtime, "max_running": self.max_running}
            self.store.update_job(job_id, options=runtime)
        # before the worker exists: flags cleared (a resumed worker must not read an old pause),
        # no stale pid, and a grace period in which readers do not take the job for crashed
        self.store.update_job(
            job_id,
            pid=None,
            cancel_requested=0,
            pause_requested=0,
            launching_until=now() + LAUNCH_GRACE,
        )
        nproc = int(runtime.get("training", runtime).get("nproc_per_node") or 1)
        child = process.start_worker(
            job_id, self.home, self.job_dir(job_id) / "worker.log", nproc=nproc, resume=resume
        )
        self._children[job_id] = child
        self.store.update_job(job_id, pid=child.pid, launching_until=None)

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def get_job(self, job_id: str) -> Job:
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no fine-tuning job {job_id!r}")
        if job.status in ACTIVE and not self._worker_alive(job_id):
            job = self._mark_crashed(job_id)
        return job

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        jobs, _ = self.store.list_jobs(after=after, limit=limit, metadata=metadata)
        return [self.get_job(j.id) if j.status in ACTIVE else j for j in jobs]

    def cancel_job(self, job_id: str, *, grace: float = 30.0) -> Job:
        """Ask the worker to stop after its current step; kill it if it does not within `grace`."""
        job = self.get_job(job_id)
        if job.done:
            raise Conflict(f"job {job_id} is already {job.status}")
        self.store.update_job(job_id, cancel_requested=1)
        self._stop_worker(job_id, grace)
        self.store.mark_cancelled(job_id)  # a no-op if the worker marked it itself
        return self.get_job(job_id)

    def pause_job(self, job_id: str, *, grace: float = 60.0) -> Job:
        """Stop a running job after its current step, keeping its place in a checkpoint.

        The worker saves the checkpoint and marks the job `paused`; one that does not stop
        within `grace` is killed and resumes from its last epoch's checkpoint instead.
        """
        job = self.get_job(job_id)
        if job.status != "running":
            raise Conflict(f"job {job_id} is {job.status}; only running jobs pause")
        if self.store.job_runtime(job_id).get("cancel_requested"):
            raise Conflict(f"job {job_id} is being cancelled")
        self.store.update_job(job_id, pause_requested=1)
        self._stop_worker(job_id, grace)
        self.store.mark_paused(job_id)  # a no-op if the worker marked it itself
        return self.get_job(job_id)

    def _stop_worker(self, job_id: str, grace: float) -> None:
        """SIGTERM (the worker stops after its current step), SIGKILL after `grace` seconds."""
        pid = self.store.job_runtime(job_id).get("pid")
        if not (pid and self._worker_alive(job_id)):
            return
        if process.stop_group(pid, lambda: self._worker_alive(job_id), grace):
            process.reap(self._children.get(job_id))

    def resume_job(self, job_id: str) -> Job:
        """Continue a paused, failed or cancelled job from its last checkpoint (or the start)."""
        job = self.get_job(job_id)
        if job.status not in RESUMABLE:
            raise Conflict(
                f"job {job_id} is {job.status}; only paused, failed or cancelled jobs resume"
            )
        # compare and set: of two resumes at once, one moves the job and starts a worker
        if not self.store.requeue(
            job_id,
            f"Resuming fine-tuning job from {self._resume_point(job_id)}",
            only_from=RESUMABLE,
        ):
            raise Conflict(f"job {job_id} is being resumed already")
        self._start(job_id, self.store.job_runtime(job_id)["options"], resume=True)
        return self.get_job(job_id)

    def _resume_point(self, job_id: str) -> str:
        checkpoints = self.store.list_checkpoints(job_id)
        return f"checkpoint at step {checkpoints[0][0].step_number}" if checkpoints else "the start"

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        self.get_job(job_id)
        return self.store.list_events(job_id, after=after, limit=limit)[0]

    def events_since(self, job_id: str, seq: int = 0) -> list[tuple[int, JobEvent]]:
        """Oldest first, with sequence numbers: a database query, no paging."""
        return self.store.events_since(job_id, seq)

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        self.get_job(job_id)
        return [c for c, _, _ in self.store.list_checkpoints(job_id)]

    def recover(self, *, resume_running: bool = True) -> list[tuple[str, str]]:
        """After a restart: start again the jobs whose worker is gone; (job id, what was done).

        Workers run in their own sessions and usually outlive a server restart; this is for a
        machine restart or a killed worker. Jobs still waiting (`validating_files`, `queued`)
        start over; running ones resume from their last checkpoint (or, with
        `resume_running=False`, are marked failed with the reason).
        """
        done: list[tuple[str, str]] = []
        for job_id in self.store.job_ids_with_status(ACTIVE):
            if self._worker_alive(job_id):
                continue
            job = self.store.get_job(job_id)
            assert job is not None
            runtime = self.store.job_runtime(job_id)["options"]
            if job.status in ("validating_files", "queued"):
                self.store.requeue(job_id, "Restarting the job: its worker had stopped")
                # resume: a job queued again after a pause has checkpoints to go on from
                self._start(job_id, runtime, resume=True)
                done.append((job_id, "restarted"))
            elif resume_running:
                where = self._resume_point(job_id)
                self.store.requeue(job_id, f"Its worker had stopped: resuming from {where}")
                self._start(job_id, runtime, resume=True)
                done.append((job_id, "resumed"))
            else:
                self._mark_crashed(job_id)
                done.append((job_id, "failed"))
        return done

    # -- worker liveness -----------------------------------------------------------------------

    def _worker_alive(self, job_id: str) -> bool:
        runtime = self.store.job_runtime(job_id)
        if (runtime.get("launching_until") or 0) >= now():  # being started right now
            return True
        child = self._children.get(job_id)
        if child is not None and child.pid == runtime.get("pid"):
            return child.poll() is None
        pid = runtime.get("pid")
        return bool(pid) and process.process_alive(pid, job_id)

    def _mark_crashed(self, job_id: str) -> Job:
        # The worker writes its final status before exiting; re-read in case it just did.
        job = self.store.get_job(job_id)
        assert job is not None
        if job.status not in ACTIVE:
            return job
        last = process.last_line(self.job_dir(job_id) / "worker.log")
        reason = "the training process stopped unexpectedly (killed, or out of memory?)"
        if last:
            reason += f": {last}"
        self.store.mark_failed(job_id, JobError("worker_died", reason))
        job = self.store.get_job(job_id)
        assert job is not None
        return job

    # -- models --------------------------------------------------------------------------------

    def list_models(self) -> list[ModelObject]:
        """The fine-tuned models, newest first, then the base models a job or a chat can start
        from (`base_models`: owned by "system", as OpenAI lists its own), the default first."""
        return self.store.list_models() + [model for _, model in self.base_models().values()]

    def get_model(self, model_id: str) -> ModelObject:
        """A fine-tuned model, or a base model `list_models` lists."""
        if not model_id.startswith("ft:") and self.store.get_model(model_id) is None:
            known = self.base_models().get(model_id)
            if known is None:
                raise NotFound(
                    f"no model {model_id!r}",
                    hint="convtune models list --include-base shows them",
                )
            return known[1]
        record = self.model_record(model_id)
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
        jobs, _ = self.store.list_jobs(limit=1 << 62)
        for job in reversed(jobs):  # oldest first: an id, once given, stays with its source
            if job.model.startswith("ft:"):  # trained further: its base is a fine-tuned model
                continue
            options = self.store.job_runtime(job.id).get("options") or {}
            if options.get("model_source"):
                name = options.get("base_name") or job.model
                yield name, options["model_source"], job.created_at  # first trained from
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

    def model_record(self, model_id: str) -> dict:
        """The store's row of a fine-tuned model: where its weights are, its format, actors."""
        model = self.store.get_model(model_id)
        if model is None:
            raise NotFound(
                f"no fine-tuned model {model_id!r}", hint="convtune models list shows them"
            )
        return model

    def delete_model(self, model_id: str) -> None:
        """Remove a fine-tuned model from the database and its files from disk.

        Refused (`Conflict`) for a base model, and while a job that has not ended trains on
        top of it.
        """
        if self.store.get_model(model_id) is None and not model_id.startswith("ft:"):
            try:
                self.base_model(model_id)
            except OptionError:
                pass
            else:
                raise Conflict(
                    f"{model_id} is a base model: convtune deletes only fine-tuned (ft:) models"
                )
        model = self.model_record(model_id)
        users = [
            j
            for j in self.store.job_ids_with_status((*ACTIVE, "paused"))
            if (found := self.store.get_job(j)) is not None and found.model == model_id
        ]
        if users:
            raise Conflict(f"model {model_id} is in use by job {users[0]}; cancel it first")
        self.store.delete_model(model_id)
        self._chat_models.pop(model_id, None)
        folder = Path(model["path"]).parent
        if folder.is_dir() and self.home in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)

    def knows_model(self, model: str) -> bool:
        """A fine-tuned model of the store, or a base model name, id or folder that resolves."""
        if self.store.get_model(model) is not None:
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
        return self._chat_model(model).score(records, max_length=max_length)

    def chat(self, request: ChatRequest) -> ChatReply:
        return self._chat_model(request.model).reply(request)

    def _chat_model(self, model: str) -> LocalChat:
        """The loaded model, from the cache of the most recently used ones."""
        from .chat import LocalChat

        key = self._chat_key(model)
        with self._guard:  # one load per model, however many threads ask for it at once
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._guard:
                chat = self._chat_models.pop(key, None)
            if chat is None:  # by its source: a base model's id means nothing to the loader
                chat = LocalChat.load(self, key)
            with self._guard:
                self._chat_models[key] = chat  # most recently used last
                while len(self._chat_models) > CHAT_MODELS_KEPT:  # replies under way go on
                    self._chat_models.pop(next(iter(self._chat_models)))
        return chat

    def _chat_key(self, model: str) -> str:
        """One cache entry per model, however its path is spelled (`/a/b`, `/a//b`, `/a/./b`)."""
        if self.store.get_model(model) is not None:
            return model
        return self.base_model(model).source


def _source_key(ref: BaseModelRef) -> str:
    """One spelling of a base model's source: its real path, or its hub id."""
    return ref.source if ref.kind == "hub" else str(Path(ref.source).resolve())


def _mtime(source: str) -> int:
    """When a local source was last written (0 for a hub id)."""
    try:
        return int(Path(source).stat().st_mtime)
    except OSError:
        return 0
