"""The process that runs one local fine-tuning job: `python -m convtune.local.worker JOB [--resume]`.

It is the training entry point and runs unchanged under torchrun (`process.Launch`): every rank
trains; rank 0 alone reports the metrics and writes the checkpoints and the model. Each machine
of a run over several (`--nnodes`) has a job of its own in its own store, which its first
process (local rank 0) moves through its states; node 0's job holds the model, the others end
without one.
This module moves the job through its states, as OpenAI's jobs go: validate the files (no model
loaded yet), queue, wait for a slot, run the recipe (`recipe.FineTuneRecipe`: set up, train,
save), register the model, succeed; or end paused, cancelled or failed. It reads what to train
from the job's `JobSpec`.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path

from ..dataset.check import check_file
from ..dataset.findings import first_error
from ..metrics.results_csv import write_results
from ..service.objects import JobError
from ..service.training_options import TrainOptions, method_data_problem
from ..state.digest import file_sha256
from ..state.home import data_dir
from .database import database_path
from .process import process_alive
from .recipe import FineTuneRecipe
from .store import Store


class Stop(Exception):
    """The job was cancelled or paused: leave quietly (a pause has saved its checkpoint)."""


class Gone(Exception):
    """The job left the line without this worker (cancelled, or run by another worker): leave
    without writing anything, its status is someone else's."""


class JobRun:
    def __init__(self, job_id: str, *, resume: bool) -> None:
        self.rank = int(os.environ.get("RANK", "0"))  # the run's: rank 0 saves the model
        # this machine's first process: it reports to this machine's store (its job's status)
        self.reporter = int(os.environ.get("LOCAL_RANK", "0")) == 0
        self.run_paused: bool | None = None  # whether training stopped for a pause (any node's)
        self.home = data_dir()
        self.store = Store(database_path(self.home))
        self.job_id = job_id
        self.resume = resume
        job = self.store.get_job(job_id)
        if job is None:
            raise SystemExit(f"no job {job_id}")
        self.job = job
        self.spec = self.store.job_spec(job_id)
        self.stopping = False
        self.folder = self.home / "jobs" / job_id
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- store helpers (each machine's first process) -------------------------------------------

    def event(self, message: str, **kw) -> None:
        if self.reporter:
            self.store.add_event(self.job_id, message, **kw)

    def advance(self, status: str) -> None:
        """validating_files, queued, running: the worker's own steps; a job cancelled meanwhile
        stops the worker."""
        if self.reporter and not self.store.advance(self.job_id, status):
            raise Stop()

    def stop_requested(self) -> bool:
        """True once a cancel or a pause was asked for (a flag in the store, or SIGTERM)."""
        if self.stopping:
            return True
        if self.reporter:
            runtime = self.store.job_runtime(self.job_id)
            if runtime.get("cancel_requested") or runtime.get("pause_requested"):
                self.stopping = True
        return self.stopping

    def pause_asked(self) -> bool:
        """Whether a pause was asked of this machine's job."""
        return self.reporter and bool(self.store.job_runtime(self.job_id).get("pause_requested"))

    def pausing(self) -> bool:
        """Whether this stop is a pause: asked of this job, or, once training has stopped, of
        any node's job (every node then pauses, and node 0 keeps the checkpoint)."""
        if self.run_paused is not None:
            return self.run_paused
        return self.pause_asked()

    def wait_for_slot(self) -> None:
        """Run now, or wait in line while `max_running` jobs already run (`convtune serve
        --concurrency`). Waiting happens before torch is imported: a queued job costs little."""
        limit = self.spec.max_running
        if not self.reporter or not limit:
            self.advance("running")
            return
        told = False
        while True:
            claim = self.store.claim_slot(self.job_id, int(limit), process_alive)
            if claim == "running":
                return
            if claim == "gone":
                raise Gone()
            if self.stop_requested():
                raise Stop()
            if not told:
                self.event(f"Waiting for a free slot ({limit} job(s) run at once)")
                told = True
            time.sleep(1.0)

    def fail(self, code: str, message: str, param: str | None = None) -> None:
        if self.reporter:
            self.store.mark_failed(self.job_id, JobError(code, message, param))

    # -- the job -------------------------------------------------------------------------------

    def run(self) -> None:
        job = self.job
        self.advance("validating_files")
        train_path = self.file(job.training_file)
        valid_path = self.file(job.validation_file) if job.validation_file else None
        self.event(f"Validating training file: {job.training_file}")
        for role, path in (("training_file", train_path), ("validation_file", valid_path)):
            if path is None:
                continue
            # the format's own default model counts the tokens, as `convtune check` does: only
            # the errors matter here, and they do not depend on a model
            report = check_file(path, training=role == "training_file")
            mismatch = method_data_problem(self.spec.options.method, report.format)
            if mismatch is not None:
                raise Invalid(
                    f"invalid {role.replace('_', ' ')} {getattr(job, role)}: {mismatch}", role
                )
            first = first_error(report.findings)
            if first is not None:
                more = first.more_text()
                raise Invalid(
                    f"invalid {role.replace('_', ' ')} {getattr(job, role)}: {first.located()}"
                    + (f" ({more})" if more else ""),
                    role,
                )
        self.event("Files validated, moving job to queued state")
        self.advance("queued")
        self.wait_for_slot()
        self.event("Fine-tuning job started")
        self.train(train_path, valid_path)

    def file(self, file_id: str) -> Path:
        found = self.store.get_file(file_id)
        if found is None:
            raise Invalid(f"no file {file_id}", "training_file")
        return found[1]

    def train(self, train_path: Path, valid_path: Path | None) -> None:
        recipe = FineTuneRecipe(self, train_path, valid_path)
        recipe.setup()
        result = recipe.train()
        if result.stopped:  # every node ends as the run does: paused, or cancelled
            self.run_paused = result.paused
        stop = result.stopped or self.stop_requested()
        if recipe.world > 1 and not result.stopped:  # a stop asked after the last step: anywhere
            stop = bool(recipe.dist.sum([1.0 if stop else 0.0])[0])
        if stop:
            raise Stop()
        if self.rank != 0:  # another process of the run: rank 0 saves, then says how it went
            said = recipe.from_leader(None)
            if self.reporter:
                self.follower_done(said)
            return
        try:
            model_id = self.save(recipe, result)
        except Exception as exc:
            if recipe.world > 1:  # the other processes wait for the outcome
                recipe.from_leader(f"{type(exc).__name__}: {exc}")
            raise
        if recipe.world > 1:
            recipe.from_leader(model_id)
        self.store.mark_succeeded(self.job_id)

    def save(self, recipe: FineTuneRecipe, result) -> str:
        """Save the model, register it and the results file; its id."""
        model_id = self.model_id()
        saved = recipe.save(result, self.home / "models" / model_id.replace(":", "_"))
        self.store.add_model(
            model_id,
            self.base_name,
            self.job_id,
            saved.folder,
            saved.adapter,
            saved.fmt,
            saved.actors,
        )
        self.store.update_job(
            self.job_id,
            fine_tuned_model=model_id,
            result_files=[self.results_file(saved.rows)],
            trained_tokens=saved.trained_tokens,
        )
        self.event(f"New fine-tuned model created: {model_id}")
        return model_id

    def follower_done(self, said: str | None) -> None:
        """The end of the job of a machine other than node 0's, once node 0 has saved (`said`:
        the model's id) or failed to (why); on node 0, the other processes end with its job."""
        options = self.options
        if options.node_rank == 0:
            return
        if said is not None and said.startswith("ft:"):
            self.event(
                f"Node {options.node_rank} of {options.nnodes} done; node 0"
                f" ({options.master_addr}) saved the model as {said}"
            )
            self.store.mark_succeeded(self.job_id)
        else:
            self.fail("training_failed", f"node 0 could not save the model: {said}")

    def record_resolved(self, hyperparameters: dict) -> None:
        """What "auto" became, beside the options as given (the spec) and as OpenAI shows it
        (the job's hyperparameters)."""
        if self.reporter:
            self.spec = self.spec.with_(resolved=hyperparameters)
            self.store.save_spec(self.job_id, self.spec)
            self.store.update_job(self.job_id, hyperparameters=hyperparameters)

    @property
    def options(self) -> TrainOptions:
        return self.spec.options

    @property
    def base_name(self) -> str:
        """The base model's name, also for a job that trains a fine-tuned model further."""
        return self.spec.base_name or self.job.model

    def model_id(self) -> str:
        return f"ft:{self.base_name}:{self.job.suffix or ''}:{self.job_id}"

    def results_file(self, rows: list[dict]) -> str:
        """OpenAI's results CSV: step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy."""
        path = self.folder / "results.csv"
        path.write_text(write_results(rows), encoding="utf-8")
        digest = file_sha256(path)
        return self.store.add_file(
            f"{self.job_id}-results.csv", path.stat().st_size, "fine-tune-results", path, digest
        ).id


class Invalid(Exception):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    resume = "--resume" in args
    job_id = next(a for a in args if not a.startswith("--"))
    run = JobRun(job_id, resume=resume)

    def on_term(signum, frame) -> None:  # cancel: stop after the current step
        run.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        run.run()
    except Gone:
        return 0
    except Stop:
        if run.reporter and run.pausing():
            run.store.mark_paused(job_id)
        elif run.reporter:
            run.store.mark_cancelled(job_id)
        return 0
    except Invalid as exc:
        run.fail("invalid_file", str(exc), exc.param)
        return 1
    except Exception as exc:
        traceback.print_exc()  # into the job's worker.log
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        run.fail("training_failed", f"training failed: {type(exc).__name__}: {message}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
