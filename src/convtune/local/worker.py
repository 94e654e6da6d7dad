"""The process that runs one local fine-tuning job: `python -m convtune.local.worker JOB [--resume]`.

It is the training entry point and runs unchanged under `torchrun --nproc_per_node N` (DDP):
every rank trains, rank 0 alone talks to the store (status, events, checkpoints, the model).
Order of work, as OpenAI's jobs do it: validate the files (no model loaded yet), queue, run,
checkpoint each epoch, then save the LoRA adapter and a merged model and register it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from ..dataset.check import check_file, format_and_actors
from ..dataset.findings import counted, first_error
from ..metrics.results_csv import write_results
from ..service.objects import JobError
from ..service.training_options import TrainOptions
from ..state.digest import file_sha256
from ..state.home import data_dir
from .answer_check import AnswerCheck
from .process import process_alive
from .store import Store, database_path, now

CHECKPOINT_METRICS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


class Stop(Exception):
    """The job was cancelled or paused: leave quietly (a pause has saved its checkpoint)."""


class Gone(Exception):
    """The job left the line without this worker (cancelled, or run by another worker): leave
    without writing anything, its status is someone else's."""


class JobRun:
    def __init__(self, job_id: str, *, resume: bool) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.home = data_dir()
        self.store = Store(database_path(self.home))
        self.job_id = job_id
        self.resume = resume
        job = self.store.get_job(job_id)
        if job is None:
            raise SystemExit(f"no job {job_id}")
        self.job = job
        self.runtime = self.store.job_runtime(job_id)["options"]
        self.options = stored_options(job.hyperparameters, self.runtime)
        self.stopping = False
        self.folder = self.home / "jobs" / job_id
        self.folder.mkdir(parents=True, exist_ok=True)

    # -- store helpers (rank 0 only) -----------------------------------------------------------

    def event(self, message: str, **kw) -> None:
        if self.rank == 0:
            self.store.add_event(self.job_id, message, **kw)

    def advance(self, status: str) -> None:
        """validating_files, queued, running: the worker's own steps; a job cancelled meanwhile
        stops the worker."""
        if self.rank == 0 and not self.store.advance(self.job_id, status):
            raise Stop()

    def stop_requested(self) -> bool:
        """True once a cancel or a pause was asked for (a flag in the store, or SIGTERM)."""
        if self.stopping:
            return True
        if self.rank == 0:
            runtime = self.store.job_runtime(self.job_id)
            if runtime.get("cancel_requested") or runtime.get("pause_requested"):
                self.stopping = True
        return self.stopping

    def pausing(self) -> bool:
        return self.rank == 0 and bool(self.store.job_runtime(self.job_id).get("pause_requested"))

    def wait_for_slot(self) -> None:
        """Run now, or wait in line while `max_running` jobs already run (`convtune serve
        --concurrency`). Waiting happens before torch is imported: a queued job costs little."""
        limit = self.runtime.get("max_running")
        if self.rank != 0 or not limit:
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
        if self.rank == 0:
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
            report = check_file(path, training=role == "training_file", model="gpt-4o-mini")
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
        import torch

        from .base_models import load_base_model, resolve_base_model
        from .loss_masks import tokenize_file
        from .training import TrainConfig, merge_and_save, train

        options = self.options
        ref = resolve_base_model(self.runtime.get("model_source") or self.job.model)
        model, tokenizer, _ = load_base_model(ref)
        fmt, actors = format_and_actors(train_path)
        check = AnswerCheck.start(self, valid_path, model, tokenizer, fmt, actors)
        max_length = options.max_length
        train_examples, train_stats = tokenize_file(train_path, tokenizer, max_length=max_length)
        valid_examples = None
        if valid_path is not None:
            valid_examples, _ = tokenize_file(valid_path, tokenizer, max_length=max_length)
        if train_stats.truncated:
            self.event(
                f"{train_stats.truncated} training examples were longer than {max_length} tokens"
                " and lost their oldest tokens",
                level="warn",
            )
        n = len(train_examples)
        config = TrainConfig.from_options(options, n, seed=self.job.seed)
        n_epochs, batch_size = config.n_epochs, config.batch_size
        if self.rank == 0:
            self.store.update_job(self.job_id, hyperparameters=config.resolved_hyperparameters())
        chosen = config.auto_choices(options, n)
        if chosen and not self.resume:
            self.event(
                "auto chose " + "; ".join(chosen), data={"auto": config.resolved_hyperparameters()}
            )
        resume_from = None
        checkpoints = self.store.list_checkpoints(self.job_id)
        if self.resume and checkpoints:
            resume_from = checkpoints[0][1]
        self.event(
            f"Training {self.job.model} on {counted(n, 'example')}"
            f" ({train_stats.trained_tokens:,} tokens with a loss), {counted(n_epochs, 'epoch')},"
            f" batch size {batch_size}, "
            + ("LoRA" if config.lora else "full fine-tune")
            + (f", resuming from step {checkpoints[0][0].step_number}" if resume_from else "")
        )
        start_step = checkpoints[0][0].step_number if resume_from else 0
        rows = self.earlier_metrics(start_step)  # the results file covers the whole job
        started = time.monotonic()

        total_steps = [0]  # the run's, from its metrics: the probes' second half

        def on_metrics(m) -> None:
            total_steps[0] = m.total_steps
            data = {k: v for k, v in asdict(m).items() if v is not None}
            rows.append(data)
            message = f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}"
            if m.valid_loss is not None:
                message += f", validation loss={m.valid_loss:.4f}"
            self.event(message, type="metrics", data=data)
            if self.rank == 0 and m.step:
                rate = (time.monotonic() - started) / max(1, m.step - start_step)
                self.store.update_job(
                    self.job_id, estimated_finish=now() + int(rate * (m.total_steps - m.step))
                )

        def checkpoint(step: int, epoch: int, save, why: str) -> None:
            folder = self.folder / "checkpoints" / f"step-{step}"
            save(folder)
            metrics = {
                k: v for k, v in (rows[-1] if rows else {}).items() if k in CHECKPOINT_METRICS
            }
            name = f"{self.model_id()}:ckpt-step-{step}"
            self.store.add_checkpoint(self.job_id, step, epoch, metrics, name, folder)
            self.event(f"Checkpoint created at step {step} ({why})")

        def on_epoch_end(epoch: int, step: int, save, answering) -> None:
            if self.rank == 0:
                checkpoint(step, epoch, save, f"epoch {epoch}")
            if check is not None:
                check.probe(epoch, step, total_steps[0], answering)

        def on_stop(step: int, epoch: int, save) -> None:
            """A pause keeps its place: a checkpoint at this step (unless one is there)."""
            if not self.pausing():
                return
            if any(c.step_number == step for c, _, _ in self.store.list_checkpoints(self.job_id)):
                return
            checkpoint(step, epoch, save, "paused")

        result = train(
            model,
            tokenizer,
            train_examples,
            valid_examples,
            config,
            on_metrics=on_metrics,
            on_epoch_end=on_epoch_end,
            should_stop=self.stop_requested,
            resume=resume_from,
            on_stop=on_stop,
        )
        if self.stop_requested() or result.stopped:
            raise Stop()
        if self.rank != 0:
            return
        if check is not None:
            epoch = int(rows[-1]["epoch"]) if rows else 0
            check.finish(
                result.model,
                result.steps,
                epoch,
                keep_last=options.keep_last,
                verdict=options.learning_check,
            )
        model_id = self.model_id()
        target = self.home / "models" / model_id.replace(":", "_")
        merge_and_save(
            result.model,
            tokenizer,
            target / "merged",
            adapter_folder=target / "adapter",
        )
        self.store.add_model(
            model_id,
            self.base_name,
            self.job_id,
            target / "merged",
            target / "adapter",
            fmt,
            actors,
        )
        results = self.results_file(rows)
        self.store.update_job(
            self.job_id,
            fine_tuned_model=model_id,
            result_files=[results],
            trained_tokens=int(result.trained_tokens or train_stats.trained_tokens * n_epochs),
        )
        self.event(f"New fine-tuned model created: {model_id}")
        self.store.mark_succeeded(self.job_id)
        del torch

    def earlier_metrics(self, up_to: int) -> list[dict]:
        """The metrics of steps 1..`up_to`, done before a resume: the last run of each step is
        the one its checkpoint holds (a crash past a checkpoint makes steps run twice)."""
        if up_to <= 0:
            return []
        by_step: dict[int, dict] = {}
        for _, event in self.store.events_since(self.job_id):
            step = event.data.get("step") if event.type == "metrics" else None
            if isinstance(step, int) and step <= up_to:
                by_step[step] = event.data
        return [by_step[step] for step in sorted(by_step)]

    @property
    def base_name(self) -> str:
        """The base model's name, also for a job that trains a fine-tuned model further."""
        return self.runtime.get("base_name") or self.job.model

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


def stored_options(hyperparameters: dict, runtime: dict) -> TrainOptions:
    """The job's options as its creator gave them: OpenAI's hyperparameters from the job (numbers
    once the first run resolved "auto"), the trainer's from the stored runtime (kept flat beside
    the runtime by convtune before 0.2)."""
    training = runtime.get("training")
    if training is None:
        known = TrainOptions().trainer_options()
        training = {k: v for k, v in runtime.items() if k in known and v is not None}
    return TrainOptions(**hyperparameters, **training)


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
        if run.rank == 0 and run.pausing():
            run.store.mark_paused(job_id)
        elif run.rank == 0:
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
