"""The training loop: set up (`train`), run the steps (`TrainingLoop`), evaluate.

Each step: the step's examples (`batching`), forward and backward in micro-batches under
autocast, gradients summed across ranks, clipping, the optimizer's step; metrics after every
step, validation now and then. What it does for speed:

- The output layer: SmolLM2's vocabulary has 49,152 words. Logits are computed only at the
  positions that have a loss (a fifth of the tokens in chat data); on a GPU, a chunked or fused
  cross-entropy never holds them all in float32 (`losses`).
- Attention: per-example products on a CPU, a variable-length kernel on a GPU (`attention`).
- Micro-batches sized by tokens for the device (`runtime.default_micro_batch_tokens`): a GPU
  takes tens of thousands of tokens a forward pass.
- Fused AdamW; one host synchronisation per step, for the metrics.

Data parallel (under torchrun): each rank takes its share of every batch, gradients are summed
across ranks once per step, and rank 0 alone reports metrics and saves. The loss is normalised
by the whole batch's loss tokens, so one process and N processes compute the same update.

Exact resume: dropout's random numbers come from (seed, step, rank) and the learning rate from
the step, so a checkpoint (`checkpoints`) continues the run as if it had never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...errors import ConvtuneError, OptionError
from ..loss_masks import TokenizedExample
from .adapters import compile_layers, core_model, prepare_model, restore_model
from .attention import choose_kernel, is_packed, model_windows, use_packed_attention
from .batching import Examples, micro_batches, rank_share
from .callbacks import positional_arguments
from .checkpoints import save_checkpoint
from .config import StepMetrics, TrainConfig, TrainResult
from .losses import choose_loss, fused_cross_entropy, output_weight, plain_cross_entropy
from .resuming import resume_sharded, resume_unsharded
from .runtime import (
    Distributed,
    autocast_dtype,
    default_micro_batch_tokens,
    fused_kwargs,
    peak_memory_mb,
    pick_device,
    set_threads,
)
from .sharding import gather, shard_run


def train(
    model: Any,
    tokenizer: Any,
    train: list[TokenizedExample],
    valid: list[TokenizedExample] | None,
    config: TrainConfig,
    *,
    on_metrics: Callable[[StepMetrics], None] = lambda metrics: None,
    on_epoch_end: Callable[..., None] = lambda epoch, step: None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: Path | None = None,
    on_stop: Callable[[int, int, Callable[[Path], Path]], None] | None = None,
    should_pause: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Fine-tune `model` on `train`; metrics after every step, validation now and then.

    `on_epoch_end(epoch, step)` runs after each epoch's last step (epochs count from 1); a
    callback with a third parameter gets ``save(folder)``, which writes a checkpoint there, and
    one with a fourth gets ``answering()``, a context manager that gives the model as it is,
    ready to generate (what the checkpoint would answer), and puts it back to training after.
    `resume` is a checkpoint folder: the run continues from it exactly. Under torchrun only rank
    0 calls `on_metrics` and `on_epoch_end`; `should_stop` is asked on every rank and any rank
    stopping stops all of them after the current step. The stop is a pause when any rank's
    `should_pause` says so (on another machine, a pause asked of its own job); then rank 0 calls
    ``on_stop(step, epoch, save)``, `epoch` being the whole epochs done by then (a pause keeps
    its place in a checkpoint there), and the result says `paused` on every rank.
    """
    if not train:
        raise ConvtuneError("no training examples")
    dist = Distributed.start()
    device = pick_device(dist.local_rank)
    precision = autocast_dtype(config.precision, device)
    threads_before = torch.get_num_threads()
    set_threads(config.threads, device, dist.local_world)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the adapters' initial weights, equal on every rank
            model = prepare_model(model, config, device, precision, sharded=config.fsdp)
            if config.fsdp:
                shard_run(model, config, dist, device, precision)
            ctx = _Context.make(model, config, dist, device, precision, training=True)
            if config.compile:
                if ctx.packed and ctx.kernel == "segments":
                    raise OptionError(
                        "compile: not with the segments attention (it would recompile for"
                        " every batch)",
                        hint="attention varlen, flash or flex, on a GPU",
                    )
                compile_layers(core_model(model))
            loop = TrainingLoop
            if config.method == "dpo":  # preference pairs (`dpo.tokenize_pairs`), not examples
                from .dpo import PreferenceLoop

                loop = PreferenceLoop
            return loop(model, train, valid, config, ctx).run(
                on_metrics, on_epoch_end, should_stop, resume, on_stop, should_pause
            )
    finally:
        restore_model(model)
        torch.set_num_threads(threads_before)


@dataclass
class _Context:
    """Where and how forward passes run."""

    device: torch.device
    precision: torch.dtype | None  # the autocast dtype, None for float32
    dist: Distributed
    packed: bool  # examples packed in one row (else padded batches)
    micro_batch_tokens: int
    kernel: str = "segments"  # the attention kernel of packed rows
    windows: tuple[int | None, ...] = (None,)  # the sliding windows of the model's layers
    loss: str = "plain"  # the cross-entropy: plain, chunked or liger
    decoder: Any = None  # the fused cross-entropies' decoder and output weight
    weight: Any = None

    @classmethod
    def make(cls, model, config: TrainConfig, dist, device, precision, *, training: bool):
        """The context of a prepared model: kernels and token budget chosen for the device."""
        core = core_model(model)
        packed = is_packed(core)
        dtype = precision or next(core.parameters()).dtype
        kernel = choose_kernel(config.attention, device, dtype, core.config, training=training)
        # a sharded head is whole only inside the model's forward pass: the plain loss there
        loss = "plain" if dist.sharded else choose_loss(config.cross_entropy, device, core)
        budget = config.micro_batch_tokens or default_micro_batch_tokens(
            core.config, device, precision, checkpointing=config.gradient_checkpointing
        )
        fused = loss != "plain"
        return cls(
            device,
            precision,
            dist,
            packed,
            budget,
            kernel=kernel if packed else "segments",
            windows=model_windows(core.config),
            loss=loss,
            decoder=core.get_decoder() if fused else None,
            weight=output_weight(core) if fused else None,
        )

    def autocast(self):
        if self.precision is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.precision)


@dataclass
class Measured:
    """A step's (or a validation's) figures: the loss, the accuracy, the tokens, and what else
    the method measures (`extra`, StepMetrics' fields without their train_/valid_ prefix)."""

    loss: float | None = None
    accuracy: float | None = None
    loss_tokens: float = 0
    tokens: float = 0
    extra: dict[str, float] = field(default_factory=dict)


class TrainingLoop:
    """One run's steps, from its first (or resumed) step to its last or to a stop."""

    def __init__(self, model, train, valid, config, ctx: _Context) -> None:
        self.model, self.config, self.dist, self.ctx = model, config, ctx.dist, ctx
        device = ctx.device
        self.train_set = self._dataset(train)
        self.valid_set = self._dataset(valid) if valid else None
        self.rows_per_step = self.train_set.rows_per_step(config.batch_size)
        self.steps_per_epoch = math.ceil(len(self.train_set) / self.rows_per_step)
        self.total_steps = config.max_steps or config.n_epochs * self.steps_per_epoch
        self.eval_every = config.eval_every or max(1, round(self.total_steps / 10))
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            **fused_kwargs(device),
        )
        self.valid_cursor = 0
        self._gathered: tuple[dict, dict] = ({}, {})  # a sharded run's last gathered state

    def run(
        self, on_metrics, on_epoch_end, should_stop, resume, on_stop=None, should_pause=None
    ) -> TrainResult:
        config, dist = self.config, self.dist
        resuming = resume_sharded if dist.sharded else resume_unsharded
        step = resuming(dist, self.model, self.optimizer, resume, self._identity())
        dist.broadcast_(self.params)
        wants = positional_arguments(on_epoch_end)
        tokens = loss_tokens = 0
        seconds = 0.0
        train_loss = valid_loss = None
        stopped = paused = False
        self.model.train()
        while step < self.total_steps:
            started = time.perf_counter()
            batch = self.train_set.batch(
                step, self.steps_per_epoch, self.rows_per_step, config.seed
            )
            lr = config.learning_rate * (1 - step / self.total_steps)  # linear decay, no warm-up
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + dist.rank)  # dropout
            measured = self._measure(dist.sum(self._step(batch)))
            elapsed = time.perf_counter() - started
            step += 1
            seconds += elapsed
            tokens += int(measured.tokens)
            loss_tokens += int(measured.loss_tokens)
            train_loss = measured.loss
            epoch_end = step % self.steps_per_epoch == 0
            valid = Measured()
            if self.valid_set is not None:
                # the whole set at the end (OpenAI's full validation loss); a batch at each
                # epoch end and every `eval_every` steps: the whole set each epoch cost a tenth
                # of a short run's time on a CPU, and the answers, not the loss, choose the model
                if step == self.total_steps:
                    valid = self._validate(self.valid_set.all())
                    valid_loss = valid.loss
                elif epoch_end or step % self.eval_every == 0:
                    valid = self._validate(self._valid_batch())
            if epoch_end and dist.sharded:  # every rank gathers the checkpoint rank 0 writes
                self._gathered = gather(self.model, self.optimizer)
            if dist.rank == 0:
                on_metrics(
                    StepMetrics(
                        step=step,
                        total_steps=self.total_steps,
                        epoch=step / self.steps_per_epoch,
                        train_loss=train_loss,
                        train_mean_token_accuracy=measured.accuracy,
                        valid_loss=valid.loss,
                        valid_mean_token_accuracy=valid.accuracy,
                        tokens_per_second=measured.tokens / elapsed,
                        learning_rate=lr,
                        **{f"train_{k}": v for k, v in measured.extra.items()},
                        **{f"valid_{k}": v for k, v in valid.extra.items()},
                    )
                )
                if epoch_end:
                    self._epoch_end(on_epoch_end, wants, step)
            if step < self.total_steps and dist.sum([1.0 if should_stop() else 0.0])[0]:
                stopped = True
                asked = should_pause is not None and should_pause()
                paused = bool(dist.sum([1.0 if asked else 0.0])[0])  # any rank's, everyone's
                if dist.sharded and paused:  # every rank gathers the checkpoint rank 0 writes
                    self._gathered = gather(self.model, self.optimizer)
                if on_stop is not None and dist.rank == 0 and paused:
                    on_stop(step, step // self.steps_per_epoch, self._saver(step))
                break
        whole = gather(self.model)[0] if dist.sharded else None
        return TrainResult(
            model=self.model,
            weights=whole if dist.rank == 0 else None,
            steps=step,
            total_steps=self.total_steps,
            stopped=stopped,
            paused=paused,
            trained_tokens=tokens,
            loss_tokens=loss_tokens,
            seconds=seconds,
            tokens_per_second=tokens / seconds if seconds else 0.0,
            train_loss=train_loss,
            valid_loss=valid_loss,
            peak_memory_mb=peak_memory_mb(self.ctx.device),
            precision="bf16" if self.ctx.precision is not None else "fp32",
            device=str(self.ctx.device),
        )

    def _epoch_end(self, on_epoch_end: Callable, wants: int, step: int) -> None:
        epoch = step // self.steps_per_epoch
        extra = [self._saver(step), self.answering][: max(0, wants - 2)]
        on_epoch_end(epoch, step, *extra)

    @contextmanager
    def answering(self) -> Iterator[Any]:
        """The model ready to generate, as it is now (eval mode, its plain attention, float32
        weights, the cache on), then back to training exactly as it was: what a checkpoint of
        this step would answer, without saving and loading it."""
        if self.dist.sharded:  # rank 0 alone cannot run a model whose weights every rank holds
            raise ConvtuneError("a sharded (fsdp) model answers once training has ended")
        model, ctx = self.model, self.ctx
        core = core_model(model)
        restore_model(model)
        model.eval()
        core.config.use_cache = True
        try:
            with torch.no_grad():
                yield model
        finally:
            model.train()
            prepare_model(model, self.config, ctx.device, ctx.precision)
            if self.config.compile:
                compile_layers(core)

    def _saver(self, step: int) -> Callable[[Path], Path]:
        """`save(folder)`: a checkpoint of the run as it is after `step`."""

        def save(folder: Path) -> Path:
            return save_checkpoint(
                self.model,
                self.optimizer,
                folder,
                step=step,
                epoch=step // self.steps_per_epoch,
                identity=self._identity(),
                gathered=self._gathered if self.dist.sharded else None,
            )

        return save

    def _identity(self) -> dict:
        """What a checkpoint must match to be resumed by this run."""
        c = self.config
        return {
            "examples": self.train_set.examples,
            "batch_size": c.batch_size,
            "seed": c.seed,
            "lora": c.lora,
            "total_steps": self.total_steps,
            "fsdp": c.fsdp,
        }

    # -- what a method changes: its data, its step, what it measures ------------------------------

    def _dataset(self, examples: list[TokenizedExample]) -> Examples:
        return Examples(examples)

    def _measure(self, sums: list[float]) -> Measured:
        """A step's figures from `_step`'s sums (added over ranks)."""
        loss_sum, correct, count, step_tokens = sums
        return Measured(loss_sum / max(count, 1), correct / max(count, 1), count, step_tokens)

    def _validate(self, indices: list[int]) -> Measured:
        loss, accuracy = _evaluate(self.model, self.valid_set, indices, self.ctx)
        return Measured(loss, accuracy)

    def _step(self, batch: list[int]) -> list[float]:
        """Forward and backward over the batch (this rank's share), then the optimizer's step."""
        examples, ctx = self.train_set, self.ctx
        total_loss_tokens = max(1, sum(examples.loss_tokens[i] for i in batch))
        mine = rank_share(batch, examples.lengths, self.dist.rank, self.dist.world)
        sums = torch.zeros(3, dtype=torch.float64)
        micros = micro_batches(mine, examples.lengths, ctx.micro_batch_tokens)
        for micro, counts in self.dist.passes(micros, batch[:1]):
            with ctx.autocast():
                loss, correct, count = _forward(self.model, examples, micro, ctx)
            weight = self.dist.loss_scale / total_loss_tokens if counts else 0.0
            (loss * weight).backward()
            if counts:
                sums += torch.stack([loss.detach().double().cpu(), correct, count])
        self.dist.sum_gradients_(self.params)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return [*sums.tolist(), float(sum(examples.lengths[i] for i in mine))]

    def _valid_batch(self) -> list[int]:
        """The next batch of validation examples, in turn (OpenAI's step-wise validation loss)."""
        n = len(self.valid_set)
        size = min(n, self.valid_set.rows_per_step(self.config.batch_size))
        chosen = [(self.valid_cursor + k) % n for k in range(size)]
        self.valid_cursor = (self.valid_cursor + size) % n
        return chosen


def _forward(model: Any, examples: Examples, micro: list[int], ctx: _Context):
    """Summed loss, correct next-token guesses and loss tokens of some examples."""
    if ctx.packed:
        inputs, keep, targets = examples.packed(micro, ctx.device, ctx.kernel, ctx.windows)
    else:
        inputs, keep, targets = examples.padded(micro, ctx.device)
    if ctx.loss == "plain":
        if ctx.packed:  # the output layer at the loss positions only
            logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]
        else:
            logits = model(**inputs, use_cache=False).logits[keep]
        loss, correct = plain_cross_entropy(logits, targets)
    else:  # the decoder's hidden states at the loss positions, into the fused loss
        hidden = ctx.decoder(**inputs, use_cache=False).last_hidden_state
        hidden = hidden[0, keep] if ctx.packed else hidden[keep]
        loss, correct = fused_cross_entropy(ctx.loss, hidden, ctx.weight, targets)
    return loss, correct.double().cpu(), torch.tensor(float(targets.numel()), dtype=torch.float64)


def _evaluate(
    model: Any, examples: Examples, indices: list[int], ctx: _Context
) -> tuple[float, float]:
    """Mean loss and next-token accuracy over some examples (shared among ranks)."""
    mine = rank_share(indices, examples.lengths, ctx.dist.rank, ctx.dist.world)
    sums = torch.zeros(3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # not inference_mode: the cached masks are reused by training
        micros = micro_batches(mine, examples.lengths, ctx.micro_batch_tokens)
        for micro, counts in ctx.dist.passes(micros, indices[:1]):
            with ctx.autocast():
                loss, correct, count = _forward(model, examples, micro, ctx)
            if counts:
                sums += torch.stack([loss.double().cpu(), correct, count])
    model.train(was_training)
    loss_sum, correct, count = ctx.dist.sum(sums.tolist())
    return loss_sum / max(count, 1), correct / max(count, 1)


def evaluate(
    model: Any, examples: list[TokenizedExample], config: TrainConfig | None = None
) -> tuple[float, float]:
    """Mean loss and next-token accuracy of `model` on `examples`, computed as training does."""
    if not examples:
        raise ConvtuneError("no examples to evaluate")
    config = config or TrainConfig()
    dist = Distributed.start()
    device = pick_device(dist.local_rank)
    model.to(device)
    use_packed_attention(core_model(model))
    precision = autocast_dtype(config.precision, device)
    try:
        ctx = _Context.make(model, config, dist, device, precision, training=False)
        data = Examples(examples)
        return _evaluate(model, data, data.all(), ctx)
    finally:
        restore_model(model)
