"""The fine-tuning recipe a local job runs: set up, train, save, as torchtune's recipes are.

`setup` loads the base model and tokenizer, tokenizes the files, resolves "auto" for this data
(`TrainConfig.from_options`, recorded in the job's spec and hyperparameters), finds the
checkpoint a resumed job goes on from, and starts the answer check (the base model's answers,
before training changes the weights). `train` runs the training loop with the job's callbacks:
metrics become events, each epoch end a checkpoint (and a probe of held-out answers), a pause a
checkpoint at its step. `save` keeps the checkpoint the answers chose and writes the merged
model and the adapter.

The job around it (validating its files, waiting for a slot, the status it ends in, registering
the model) is the worker's (`worker.JobRun`), which hands the recipe what it needs of the store:
`JobRun.event`, `JobRun.store`, `JobRun.stop_requested`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dataset.check import format_and_actors
from ..dataset.findings import counted
from ..errors import ConvtuneError
from ..state.digest import file_sha256
from .answer_check import AnswerCheck
from .store import now

if TYPE_CHECKING:
    from .training import TrainResult
    from .worker import JobRun

CHECKPOINT_METRICS = (
    "step",
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
)


@dataclass
class Saved:
    """What `save` wrote: the worker registers it as the job's model."""

    folder: Path  # the merged model
    adapter: Path  # the LoRA adapter (empty for a full fine-tune)
    fmt: str
    actors: tuple[str, str] | None
    trained_tokens: int
    rows: list[dict[str, Any]]  # every step's metrics: the results file


class FineTuneRecipe:
    def __init__(self, run: JobRun, train_path: Path, valid_path: Path | None) -> None:
        self.run = run
        self.train_path = train_path
        self.valid_path = valid_path

    # -- set up --------------------------------------------------------------------------------

    def setup(self) -> None:
        from .base_models import load_base_model, resolve_base_model
        from .loss_masks import tokenize_file
        from .training import TrainConfig

        run, options = self.run, self.run.spec.options
        seed = self.agree()
        self.ref = ref = resolve_base_model(run.spec.model_source or run.job.model)
        self.model, self.tokenizer, _ = load_base_model(ref)
        self.fmt, self.actors = format_and_actors(self.train_path)
        if self.fmt == "preference":  # the model answers in chat, as it was trained
            self.fmt = "chat"
        self.check = AnswerCheck.start(
            run, self.valid_path, self.model, self.tokenizer, self.fmt, self.actors
        )
        max_length = options.max_length
        tokenize = _tokenize_pairs if options.method == "dpo" else tokenize_file
        self.train_examples, stats = tokenize(
            self.train_path, self.tokenizer, max_length=max_length
        )
        self.valid_examples = None
        if self.valid_path is not None:
            self.valid_examples, _ = tokenize(
                self.valid_path, self.tokenizer, max_length=max_length
            )
        if stats.truncated:
            run.event(
                f"{stats.truncated} training examples were longer than {max_length} tokens"
                " and lost their oldest tokens",
                level="warn",
            )
        self.stats = stats
        n = len(self.train_examples)
        self.config = config = TrainConfig.from_options(options, n, seed=seed)
        run.record_resolved(config.resolved_hyperparameters())
        chosen = config.auto_choices(options, n)
        if chosen and not run.resume:
            run.event(
                "auto chose " + "; ".join(chosen), data={"auto": config.resolved_hyperparameters()}
            )
        checkpoints = run.store.list_checkpoints(run.job_id)
        self.resume_from = checkpoints[0][1] if run.resume and checkpoints else None
        self.start_step = checkpoints[0][0].step_number if self.resume_from else 0
        what = "preference pair" if options.method == "dpo" else "example"
        run.event(
            f"Training {run.job.model} on {counted(n, what)}"
            f" ({stats.trained_tokens:,} tokens with a loss), {counted(config.n_epochs, 'epoch')},"
            f" batch size {config.batch_size}, "
            + ("LoRA" if config.lora else "full fine-tune")
            + (f", DPO with beta {config.beta:g}" if config.method == "dpo" else "")
            + (
                f", sharded (FSDP) across {self.world} processes, keeping the last epoch"
                if options.fsdp
                else ""
            )
            + (f", resuming from step {self.start_step}" if self.resume_from else "")
        )
        self.rows = self.earlier_metrics(self.start_step)  # the results file covers the job

    def agree(self) -> int:
        """The run's seed, once every process holds the same data.

        Under torchrun each machine's job was made on its own (`--nnodes`): the files must be the
        same bytes everywhere (each rank trains its share of every batch of them), and the seed,
        which orders the examples and makes the adapters, is node 0's.
        """
        from .training.runtime import Distributed

        run = self.run
        self.dist = dist = Distributed.start()
        if dist.world == 1:
            return run.job.seed
        # what every process must share: the files, the base model, the options (all but where
        # this machine stands among the others): anything else breaks the collectives later
        options = {k: v for k, v in run.spec.options.to_dict().items() if k not in ("node_rank",)}
        mine = {
            "the training file": file_sha256(self.train_path),
            "the validation file": file_sha256(self.valid_path) if self.valid_path else None,
            "the base model": run.base_name,
            **{f"option {k}": v for k, v in options.items()},
        }
        everyone = dist.gather(mine)
        for rank, theirs in enumerate(everyone):
            for what, value in theirs.items():
                if value != everyone[0].get(what):
                    raise ConvtuneError(
                        f"{what} of rank {rank} is not the one of rank 0 (every node must train"
                        " the same model on the same files with the same options)"
                    )
        seed = dist.from_rank0(run.job.seed)
        if seed != run.job.seed and run.reporter:  # the job shows the seed it trained with
            run.store.update_job(run.job_id, seed=seed)
            run.event(f"Seed {seed}: node 0's (every node orders the examples alike)")
        return seed

    @property
    def world(self) -> int:
        """How many processes train together."""
        return self.dist.world

    def from_leader(self, value):
        """Rank 0's `value` on every process (a run of several processes)."""
        return self.dist.from_rank0(value)

    def plain_copy(self, weights: dict) -> Any:
        """The base model again, unsharded, on the CPU, with a sharded run's trained `weights`
        (its adapters, or every weight of a full fine-tune) loaded by name: what is saved and
        answers."""
        import torch

        from .base_models import load_base_model
        from .training.adapters import prepare_model, restore_model

        model, _, _ = load_base_model(self.ref)
        model = prepare_model(model, self.config, torch.device("cpu"), None)
        restore_model(model)
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys
        if unexpected:
            raise ConvtuneError(f"the trained weights do not fit the model: {unexpected[:3]}")
        return model

    def earlier_metrics(self, up_to: int) -> list[dict]:
        """The metrics of steps 1..`up_to`, done before a resume: the last run of each step is
        the one its checkpoint holds (a crash past a checkpoint makes steps run twice)."""
        if up_to <= 0:
            return []
        by_step: dict[int, dict] = {}
        for _, event in self.run.store.events_since(self.run.job_id):
            step = event.data.get("step") if event.type == "metrics" else None
            if isinstance(step, int) and step <= up_to:
                by_step[step] = event.data
        return [by_step[step] for step in sorted(by_step)]

    # -- train ---------------------------------------------------------------------------------

    def train(self) -> TrainResult:
        from .training import train

        run, rows, check = self.run, self.rows, self.check
        started = time.monotonic()
        total_steps = [0]  # the run's, from its metrics: the probes' second half

        def on_metrics(m) -> None:
            total_steps[0] = m.total_steps
            data = {k: v for k, v in asdict(m).items() if v is not None}
            rows.append(data)
            message = f"Step {m.step}/{m.total_steps}: training loss={m.train_loss:.4f}"
            if m.valid_loss is not None:
                message += f", validation loss={m.valid_loss:.4f}"
            if m.train_reward_margin is not None:  # DPO's
                message += (
                    f", reward margin={m.train_reward_margin:.4f}"
                    f" (accuracy {m.train_reward_accuracy:.0%})"
                )
            run.event(message, type="metrics", data=data)
            if run.rank == 0 and m.step:
                rate = (time.monotonic() - started) / max(1, m.step - self.start_step)
                run.store.update_job(
                    run.job_id, estimated_finish=now() + int(rate * (m.total_steps - m.step))
                )

        def checkpoint(step: int, epoch: int, save, why: str) -> None:
            folder = run.folder / "checkpoints" / f"step-{step}"
            save(folder)
            last = rows[-1] if rows else {}
            metrics = {k: v for k, v in last.items() if k in CHECKPOINT_METRICS}
            name = f"{run.model_id()}:ckpt-step-{step}"
            run.store.add_checkpoint(run.job_id, step, epoch, metrics, name, folder)
            run.event(f"Checkpoint created at step {step} ({why})")

        def on_epoch_end(epoch: int, step: int, save, answering) -> None:
            if run.rank == 0:
                checkpoint(step, epoch, save, f"epoch {epoch}")
            if check is not None:
                check.probe(epoch, step, total_steps[0], answering)

        def on_stop(step: int, epoch: int, save) -> None:
            """A pause keeps its place: a checkpoint at this step (unless one is there)."""
            if any(c.step_number == step for c, _, _ in run.store.list_checkpoints(run.job_id)):
                return
            checkpoint(step, epoch, save, "paused")

        return train(
            self.model,
            self.tokenizer,
            self.train_examples,
            self.valid_examples,
            self.config,
            on_metrics=on_metrics,
            on_epoch_end=on_epoch_end,
            should_stop=run.stop_requested,
            resume=self.resume_from,
            on_stop=on_stop,
            should_pause=run.pause_asked,
        )

    # -- save ----------------------------------------------------------------------------------

    def save(self, result: TrainResult, target: Path) -> Saved:
        """Keep the model the answers chose (and say whether it learned), then write it merged
        and as an adapter under `target`."""
        from .training import merge_and_save

        options = self.run.spec.options
        model = result.model if result.weights is None else self.plain_copy(result.weights)
        if self.check is not None:
            epoch = int(self.rows[-1]["epoch"]) if self.rows else 0
            self.check.finish(
                model,
                result.steps,
                epoch,
                keep_last=options.keeps_last_epoch,
                verdict=options.learning_check,
            )
        merge_and_save(model, self.tokenizer, target / "merged", adapter_folder=target / "adapter")
        trained = result.trained_tokens or self.stats.trained_tokens * self.config.n_epochs
        return Saved(
            target / "merged", target / "adapter", self.fmt, self.actors, int(trained), self.rows
        )


def _tokenize_pairs(path: Path, tokenizer: Any, *, max_length: int):
    """A preference file's pairs as token ids (`tokenize_file`'s counterpart for DPO)."""
    from ..dataset.preference import read_pairs
    from .training.dpo import tokenize_pairs

    return tokenize_pairs(read_pairs(path), tokenizer, max_length=max_length)
