"""The training loop of the local backend: LoRA (or full) fine-tuning, fast on a CPU.

Where the time goes on a CPU, and what this loop does about it (measured on SmolLM2-135M with
LoRA on every linear layer; BENCHMARKS.md has the figures):

- Padding: the examples of a step are packed into one row with no padding at all, and
  attention never crosses from one example into another (``_packed_attention``: each example
  attends to itself only, with position ids restarting at 0). No token is computed for nothing,
  and the matrix products run on one tall matrix.
- Precision: bfloat16 autocast where the hardware computes in it (``avx512_bf16``/AMX CPUs,
  CUDA): 2.5x faster matrix products than float32 on such a CPU. With LoRA the frozen weights
  are bfloat16 copies during training (autocast would convert each of them at every forward
  pass); the adapters and the optimizer are float32, and the float32 base weights come back
  when training ends, for an exact merge.
- The output layer: SmolLM2's vocabulary has 49,152 words. Logits are computed only at the
  positions that have a loss (a fifth of the tokens in chat data), through the model's own
  ``logits_to_keep``.
- No gradient checkpointing (it recomputes the forward pass to save memory that a small model
  does not need); fused AdamW; one host synchronisation per step, for the metrics.
- Attention in small products per example (one fused scale-mask-product, then softmax and
  product): PyTorch's fused CPU attention is twice as slow backwards in bfloat16 on sequences
  this short.

Data parallel: run under ``torchrun --nproc_per_node N`` unchanged. When ``WORLD_SIZE`` > 1, the
process group starts (gloo on CPU, NCCL on CUDA), each rank takes a deterministic share of every
batch (balanced by tokens), gradients are summed across ranks once per step, and rank 0 alone
reports metrics and saves. The loss is normalised by the whole batch's loss tokens, so one
process and N processes compute the same update.

Exact resume: the order of examples comes from (seed, epoch) and dropout's random numbers from
(seed, step, rank), so a checkpoint (weights, optimizer, step) is all a run needs to continue as
if it had never stopped.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConvtuneError, OptionError
from .training_data import IGNORE, TokenizedExample

PACKED = "convtune_packed"  # our attention implementation's name in transformers' registry
SEGMENTS = "convtune_segments"  # the keyword argument that carries the packed examples' bounds
# Model families whose attention takes only what `_packed_attention` implements (scaling,
# sliding window, soft-capping); others train on padded batches with their own attention.
PACKED_MODEL_TYPES = frozenset(
    {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen2_moe",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "phi3",
        "olmo",
        "olmo2",
        "granite",
        "gemma",
        "gemma2",
    }
)
STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "trainable.safetensors"  # full fine-tuning: every trainable weight


@dataclass
class TrainConfig:
    n_epochs: int = field(default=3, metadata={"help": "passes over the training examples"})
    batch_size: int = field(
        default=8, metadata={"help": "examples per optimizer step, over all processes"}
    )
    learning_rate: float = field(
        default=2e-4,
        metadata={"help": "peak learning rate (LoRA default; the caller maps OpenAI's multiplier)"},
    )
    lora: bool = field(default=True, metadata={"help": "train LoRA adapters, not every weight"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scale numerator (scale = alpha/r)"})
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA inputs"})
    lora_targets: str | list[str] = field(
        default="all-linear",
        metadata={"help": "modules that get adapters: 'all-linear' or a list of module names"},
    )
    max_steps: int | None = field(
        default=None, metadata={"help": "stop after this many steps (overrides n_epochs)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the order, adapters and dropout"})
    eval_every: int | None = field(
        default=None,
        metadata={
            "help": "steps between validation losses (on one batch of validation examples; the"
            " whole set at each epoch end); default: about 10 times per run"
        },
    )
    precision: str = field(
        default="auto",
        metadata={
            "help": "auto | fp32 | bf16: auto is bf16 autocast on CUDA and on CPUs that compute"
            " in bf16 (avx512_bf16 or AMX), fp32 elsewhere"
        },
    )
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads per process; default: physical cores / processes"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the gradient's norm to this (None: no clipping)"}
    )
    micro_batch_tokens: int = field(
        default=4096,
        metadata={
            "help": "most tokens in one forward pass; a larger batch is accumulated (bounds memory)"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations: less memory, about 30% slower"}
    )

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_epochs", "batch_size", "lora_r", "lora_alpha", "micro_batch_tokens"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, not {getattr(self, name)!r}")
        for name in ("max_steps", "eval_every", "threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a positive integer or None, not {value!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, not {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            problems.append(f"precision must be auto, fp32 or bf16, not {self.precision!r}")
        if problems:
            raise OptionError("; ".join(problems))


@dataclass
class StepMetrics:
    step: int
    total_steps: int
    epoch: float
    train_loss: float
    train_mean_token_accuracy: float
    valid_loss: float | None
    valid_mean_token_accuracy: float | None
    tokens_per_second: float  # input tokens of this step (all processes) per second of training
    learning_rate: float


@dataclass
class TrainResult:
    model: Any  # the trained model (a peft model with LoRA)
    steps: int  # steps done, counting those before a resume
    total_steps: int
    stopped: bool  # should_stop() ended the run early
    trained_tokens: int  # input tokens processed (every token of every example, each epoch)
    loss_tokens: int  # of which tokens with a loss
    seconds: float  # training time of this run, evaluation excluded
    tokens_per_second: float
    train_loss: float | None
    valid_loss: float | None  # on the whole validation set, at the end
    peak_memory_mb: float  # the process's peak resident memory (CUDA: peak allocated)
    precision: str = "fp32"
    device: str = "cpu"


# -- the run -------------------------------------------------------------------------------------


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
    on_stop: Callable[[int, Callable[[Path], Path]], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` on `train`; metrics after every step, validation now and then.

    `on_epoch_end(epoch, step)` runs after each epoch's last step (epochs count from 1); a
    callback with a third parameter gets ``save(folder)``, which writes a checkpoint there.
    `resume` is a checkpoint folder: the run continues from it exactly. Under torchrun only rank
    0 calls `on_metrics` and `on_epoch_end`; `should_stop` is asked on every rank and any rank
    stopping stops all of them after the current step; then rank 0 calls ``on_stop(step, save)``
    (a pause keeps its place in a checkpoint there).
    """
    if not train:
        raise ConvtuneError("no training examples")
    dist = _Distributed.start()
    device = _device(dist.local_rank)
    precision = _precision(config.precision, device)
    threads_before = torch.get_num_threads()
    _set_threads(config.threads, device, dist.local_world)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # the adapters' initial weights, equal on every rank
            model = _prepare(model, config, device, precision)
            return _Run(model, train, valid, config, dist, device, precision).run(
                on_metrics, on_epoch_end, should_stop, resume, on_stop
            )
    finally:
        _restore(model)
        torch.set_num_threads(threads_before)


@dataclass
class _Context:
    """Where and how forward passes run."""

    device: torch.device
    precision: torch.dtype | None  # the autocast dtype, None for float32
    dist: _Distributed
    packed: bool  # examples packed in one row (else padded batches)
    micro_batch_tokens: int

    def autocast(self):
        if self.precision is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.precision)


class _Run:
    def __init__(self, model, train, valid, config, dist, device, precision) -> None:
        self.model, self.config, self.dist = model, config, dist
        packed = getattr(_core(model).config, "_attn_implementation", None) == PACKED
        self.ctx = _Context(device, precision, dist, packed, config.micro_batch_tokens)
        self.train_set = _Examples(train)
        self.valid_set = _Examples(valid) if valid else None
        self.steps_per_epoch = math.ceil(len(train) / config.batch_size)
        self.total_steps = config.max_steps or config.n_epochs * self.steps_per_epoch
        self.eval_every = config.eval_every or max(1, round(self.total_steps / 10))
        self.params = [p for _, p in model.named_parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params,
            lr=config.learning_rate,
            weight_decay=config.weight_decay,
            **_fused(device),
        )
        self.valid_cursor = 0

    def run(self, on_metrics, on_epoch_end, should_stop, resume, on_stop=None) -> TrainResult:
        config, dist = self.config, self.dist
        step = 0
        if resume is not None:
            step = load_checkpoint(self.model, self.optimizer, resume, expect=self._identity())
        dist.broadcast_(self.params)
        wants_save = _accepts_save(on_epoch_end)
        tokens = loss_tokens = 0
        seconds = 0.0
        train_loss = valid_loss = None
        stopped = False
        self.model.train()
        while step < self.total_steps:
            started = time.perf_counter()
            batch = self.train_set.batch(step, self.steps_per_epoch, config.batch_size, config.seed)
            lr = config.learning_rate * (1 - step / self.total_steps)  # linear decay, no warm-up
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            torch.manual_seed(config.seed * 1_000_003 + step * 1_009 + dist.rank)  # dropout
            sums = self._step(batch)
            loss_sum, correct, count, step_tokens = dist.sum(sums)
            elapsed = time.perf_counter() - started
            step += 1
            seconds += elapsed
            tokens += int(step_tokens)
            loss_tokens += int(count)
            train_loss = loss_sum / max(count, 1)
            epoch_end = step % self.steps_per_epoch == 0
            valid = (None, None)
            if self.valid_set is not None:
                if epoch_end or step == self.total_steps:
                    valid = _evaluate(self.model, self.valid_set, self.valid_set.all(), self.ctx)
                    valid_loss = valid[0]
                elif step % self.eval_every == 0:
                    valid = _evaluate(self.model, self.valid_set, self._valid_batch(), self.ctx)
            if dist.rank == 0:
                on_metrics(
                    StepMetrics(
                        step=step,
                        total_steps=self.total_steps,
                        epoch=step / self.steps_per_epoch,
                        train_loss=train_loss,
                        train_mean_token_accuracy=correct / max(count, 1),
                        valid_loss=valid[0],
                        valid_mean_token_accuracy=valid[1],
                        tokens_per_second=step_tokens / elapsed,
                        learning_rate=lr,
                    )
                )
                if epoch_end:
                    self._epoch_end(on_epoch_end, wants_save, step)
            if step < self.total_steps and dist.sum([1.0 if should_stop() else 0.0])[0]:
                stopped = True
                if on_stop is not None and dist.rank == 0:
                    on_stop(step, self._saver(step))
                break
        return TrainResult(
            model=self.model,
            steps=step,
            total_steps=self.total_steps,
            stopped=stopped,
            trained_tokens=tokens,
            loss_tokens=loss_tokens,
            seconds=seconds,
            tokens_per_second=tokens / seconds if seconds else 0.0,
            train_loss=train_loss,
            valid_loss=valid_loss,
            peak_memory_mb=_peak_memory_mb(self.ctx.device),
            precision="bf16" if self.ctx.precision is not None else "fp32",
            device=str(self.ctx.device),
        )

    def _epoch_end(self, on_epoch_end: Callable, wants_save: bool, step: int) -> None:
        epoch = step // self.steps_per_epoch
        if not wants_save:
            on_epoch_end(epoch, step)
            return

        on_epoch_end(epoch, step, self._saver(step))

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
            )

        return save

    def _identity(self) -> dict:
        """What a checkpoint must match to be resumed by this run."""
        c = self.config
        return {
            "examples": len(self.train_set),
            "batch_size": c.batch_size,
            "seed": c.seed,
            "lora": c.lora,
            "total_steps": self.total_steps,
        }

    def _step(self, batch: list[int]) -> list[float]:
        """Forward and backward over the batch (this rank's share), then the optimizer's step."""
        examples, ctx = self.train_set, self.ctx
        total_loss_tokens = max(1, sum(examples.loss_tokens[i] for i in batch))
        mine = _share(batch, examples.lengths, self.dist.rank, self.dist.world)
        sums = torch.zeros(3, dtype=torch.float64)
        for micro in _micro_batches(mine, examples.lengths, ctx.micro_batch_tokens):
            with ctx.autocast():
                loss, correct, count = _forward(self.model, examples, micro, ctx)
            (loss / total_loss_tokens).backward()
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
        size = min(n, self.config.batch_size)
        chosen = [(self.valid_cursor + k) % n for k in range(size)]
        self.valid_cursor = (self.valid_cursor + size) % n
        return chosen


def _forward(model: Any, examples: _Examples, micro: list[int], ctx: _Context):
    """Summed loss, correct next-token guesses and loss tokens of some examples."""
    if ctx.packed:
        inputs, targets = examples.packed(micro, ctx.device)
        logits = model(**inputs, use_cache=False).logits[0]
    else:
        inputs, keep, targets = examples.padded(micro, ctx.device)
        logits = model(**inputs, use_cache=False).logits[keep]
    loss, correct = _loss_and_correct(logits, targets)
    return loss, correct.double().cpu(), torch.tensor(float(targets.numel()), dtype=torch.float64)


def _loss_and_correct(logits: torch.Tensor, targets: torch.Tensor):
    """Summed cross-entropy (in float32) and the number of targets the logits rank first.

    (A chunked cross-entropy that never holds float32 logits was measured: no faster.)
    """
    floats = logits.float()
    loss = F.cross_entropy(floats, targets, reduction="sum")
    return loss, (floats.detach().argmax(-1) == targets).sum()


def _evaluate(
    model: Any, examples: _Examples, indices: list[int], ctx: _Context
) -> tuple[float, float]:
    """Mean loss and next-token accuracy over some examples (shared among ranks)."""
    mine = _share(indices, examples.lengths, ctx.dist.rank, ctx.dist.world)
    sums = torch.zeros(3, dtype=torch.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():  # not inference_mode: the cached masks are reused by training
        for micro in _micro_batches(mine, examples.lengths, ctx.micro_batch_tokens):
            with ctx.autocast():
                loss, correct, count = _forward(model, examples, micro, ctx)
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
    dist = _Distributed.start()
    device = _device(dist.local_rank)
    model.to(device)
    packed = _use_packed_attention(model)
    ctx = _Context(
        device, _precision(config.precision, device), dist, packed, config.micro_batch_tokens
    )
    try:
        data = _Examples(examples)
        return _evaluate(model, data, data.all(), ctx)
    finally:
        _restore(model)


# -- examples, batches and shares --------------------------------------------------------------


class _Examples:
    """Examples as tensors, with what batching needs: lengths and loss tokens.

    A position has a loss when the next token of its example has a label; its target is that
    label. The last position of each example has none (it has no next token).
    """

    def __init__(self, examples: list[TokenizedExample]) -> None:
        self.ids = [torch.tensor(e.input_ids, dtype=torch.long) for e in examples]
        self.targets = []
        for e in examples:
            shifted = torch.tensor([*e.labels[1:], IGNORE], dtype=torch.long)
            self.targets.append(shifted)
        self.lengths = [len(e.input_ids) for e in examples]
        self.loss_tokens = [int((t != IGNORE).sum()) for t in self.targets]

    def __len__(self) -> int:
        return len(self.ids)

    def all(self) -> list[int]:
        return list(range(len(self.ids)))

    def batch(self, step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[int]:
        """The examples of a step: a permutation of the set per epoch, fixed by (seed, epoch)."""
        epoch, k = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        order = torch.randperm(len(self.ids), generator=generator)
        return order[k * batch_size : (k + 1) * batch_size].tolist()

    def packed(self, indices: list[int], device: torch.device) -> tuple[dict, torch.Tensor]:
        """One row with the examples end to end, positions restarting at each one."""
        ids = torch.cat([self.ids[i] for i in indices])
        targets = torch.cat([self.targets[i] for i in indices])
        position_ids = torch.cat([torch.arange(self.lengths[i]) for i in indices])
        keep = (targets != IGNORE).nonzero().squeeze(1)
        segments, start = [], 0
        for i in indices:
            segments.append((start, self.lengths[i]))
            start += self.lengths[i]
        inputs = {
            "input_ids": ids[None].to(device),
            "position_ids": position_ids[None].to(device),
            "logits_to_keep": keep.to(device),
            SEGMENTS: tuple(segments),
        }
        return inputs, targets[keep].to(device)

    def padded(self, indices: list[int], device: torch.device):
        """A right-padded batch with its attention mask: for models without packed attention."""
        width = max(self.lengths[i] for i in indices)
        ids = torch.zeros(len(indices), width, dtype=torch.long)
        mask = torch.zeros(len(indices), width, dtype=torch.long)
        targets = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            n = self.lengths[i]
            ids[row, :n], mask[row, :n], targets[row, :n] = self.ids[i], 1, self.targets[i]
        keep = targets != IGNORE
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        return inputs, keep.to(device), targets[keep].to(device)


def _share(batch: list[int], lengths: list[int], rank: int, world: int) -> list[int]:
    """This rank's examples of a batch: longest first, each to the least loaded rank."""
    if world == 1:
        return list(batch)
    loads = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += lengths[i]
    return shares[rank]


def _micro_batches(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of at most `budget` tokens (an example longer than that goes alone)."""
    groups: list[list[int]] = []
    size = 0
    for i in indices:
        if groups and size + lengths[i] <= budget:
            groups[-1].append(i)
            size += lengths[i]
        else:
            groups.append([i])
            size = lengths[i]
    return groups


# -- the attention of packed examples ----------------------------------------------------------


def _packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each packed example: (1, heads, T, dim) -> (1, T, heads, dim).

    Grouped-query attention without repeating keys and values: the query heads that share a
    key/value head are stacked along the sequence axis. Without segments (a call outside
    training, such as generation), this is transformers' own sdpa attention.
    """
    segments = kwargs.pop(SEGMENTS, None)
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    lengths = [length for _, length in segments]
    outputs = []
    # split, not sliced one by one: the backward of a split is one concatenation, that of each
    # slice a zero tensor of the whole sequence
    for q, k, v in zip(
        query[0].split(lengths, dim=1),
        key[0].split(lengths, dim=1),
        value[0].split(lengths, dim=1),
        strict=True,
    ):
        length = q.shape[1]
        q = q.reshape(kv_heads, groups * length, dim)
        k = k.transpose(1, 2)
        mask = _causal_mask(length, groups, sliding_window, q.device, q.dtype)
        if softcap is None:  # scale, mask and product in one operation
            scores = torch.baddbmm(mask, q, k, alpha=scale)
        else:
            scores = torch.tanh(torch.matmul(q, k) * (scale / softcap)) * softcap + mask
        probs = torch.softmax(scores, dim=-1)
        if dropout and module.training:
            probs = F.dropout(probs, p=dropout)
        outputs.append(torch.matmul(probs, v).view(heads, length, dim))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.transpose(0, 1).unsqueeze(0), None


_MASKS: dict[tuple, torch.Tensor] = {}


def _causal_mask(
    length: int, groups: int, window: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Added to the scores: -inf where a query may not look (the future, beyond a window)."""
    key = (length, groups, window, str(device), dtype)
    mask = _MASKS.get(key)
    if mask is None:
        i = torch.arange(length, device=device)
        hidden = i[None, :] > i[:, None]
        if window is not None:
            hidden |= i[:, None] - i[None, :] >= window
        mask = torch.zeros(hidden.shape, device=device, dtype=dtype)
        mask.masked_fill_(hidden, float("-inf"))
        mask = mask.repeat(groups, 1)
        if len(_MASKS) > 4096:
            _MASKS.clear()
        _MASKS[key] = mask
    return mask


def _register_attention() -> None:
    from transformers import AttentionInterface

    if PACKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED, _packed_attention)


def _core(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _use_packed_attention(model: Any) -> bool:
    core = _core(model)
    config = core.config
    if config.model_type not in PACKED_MODEL_TYPES or not core._can_set_attn_implementation():
        return False
    if getattr(config, "_attn_implementation", None) == PACKED:
        return True
    _register_attention()
    core._convtune_attention = config._attn_implementation
    core.set_attn_implementation(PACKED)
    return config._attn_implementation == PACKED


def _restore(model: Any) -> None:
    """Undo what training changed but the trained model must not keep."""
    core = _core(model)
    before = core.__dict__.pop("_convtune_attention", None)
    if before is not None:
        core.set_attn_implementation(before)
    for p, data in core.__dict__.pop("_convtune_originals", []):
        p.data = data
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = True


# -- set-up -------------------------------------------------------------------------------------


class _Distributed:
    """The process group under torchrun; a no-op in a single process."""

    def __init__(self, world: int, rank: int, local_rank: int, local_world: int) -> None:
        self.world, self.rank, self.local_rank, self.local_world = (
            world,
            rank,
            local_rank,
            local_world,
        )

    @classmethod
    def start(cls) -> _Distributed:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls(1, 0, 0, 1)
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        return cls(dist.get_world_size(), dist.get_rank(), local_rank, local_world)

    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return t.tolist()

    def sum_gradients_(self, params: list[torch.Tensor]) -> None:
        """Sum the gradients of all ranks, in buckets of at most 32M values."""
        if self.world == 1:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:  # a rank with no example in this batch
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in [*params, None]:
            if p is not None and (not bucket or size + p.numel() <= 1 << 25):
                bucket.append(p.grad)
                size += p.numel()
                continue
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            if p is not None:
                bucket, size = [p.grad], p.numel()

    def broadcast_(self, params: list[torch.Tensor]) -> None:
        """Rank 0's weights everywhere (they are equal already: this is a guarantee)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank)
            if torch.cuda.is_available()
            else torch.device("cpu")
        )


def _device(local_rank: int) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _precision(requested: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for float32."""
    if requested == "fp32":
        return None
    if requested == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_computes_bf16() else None
    return None


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic (avx512_bf16 or AMX), as /proc/cpuinfo says."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _set_threads(threads: int | None, device: torch.device, local_world: int) -> None:
    if device.type != "cpu":
        return
    if threads is None:
        if "OMP_NUM_THREADS" in os.environ:  # the user's (or torchrun's) choice
            return
        threads = max(1, _physical_cores() // local_world)
    torch.set_num_threads(threads)


def _physical_cores() -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    counts = [n for n in (available, physical, os.cpu_count()) if n]
    return min(counts) if counts else 1


def _fused(device: torch.device) -> dict:
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def _prepare(
    model: Any, config: TrainConfig, device: torch.device, precision: torch.dtype | None
) -> Any:
    """The model on its device, with LoRA adapters (float32) or every weight trainable.

    With LoRA in bfloat16, the frozen weights are bfloat16 copies while training (the float32
    originals are put back by `_restore`): autocast would otherwise convert every weight at
    every forward pass, and the stream between layers would be float32. peft's conversion of
    each LoRA input to float32 (which autocast converts straight back) is switched off.
    """
    model.to(device)
    if config.lora and not hasattr(model, "peft_config"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.lora_targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    if config.lora:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        for module in model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = False
        if precision is not None:
            originals = []
            for p in model.parameters():
                if not p.requires_grad and p.dtype == torch.float32:
                    originals.append((p, p.data))
                    p.data = p.data.to(precision)
            _core(model)._convtune_originals = originals
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    core = _core(model)
    core.config.use_cache = False
    if config.gradient_checkpointing:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif getattr(core, "is_gradient_checkpointing", False):
        core.gradient_checkpointing_disable()
    _use_packed_attention(model)
    return model


def _accepts_save(callback: Callable) -> bool:
    try:
        parameters = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in parameters)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10
    except ImportError:  # Windows
        return 0.0


# -- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(
    model: Any,
    optimizer: torch.optim.Optimizer,
    folder: Path,
    *,
    step: int,
    epoch: int,
    identity: dict | None = None,
) -> Path:
    """Write a checkpoint folder: the trainable weights, the optimizer, the step.

    With LoRA the weights are a peft adapter (``adapter/``, loadable on its own); otherwise
    ``trainable.safetensors``. The learning rate is a function of the step and the order of
    examples and dropout's random numbers are functions of the seed and the step, so nothing
    else is needed to continue identically. Written to a temporary folder renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if hasattr(model, "peft_config"):
            model.save_pretrained(staging / ADAPTER_DIR)
        else:
            weights = {
                n: p.detach().contiguous().cpu()
                for n, p in model.named_parameters()
                if p.requires_grad
            }
            save_file(weights, str(staging / WEIGHTS_FILE))
        torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        state = {"step": step, "epoch": epoch, "identity": identity or {}}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def load_checkpoint(
    model: Any, optimizer: torch.optim.Optimizer | None, folder: Path, *, expect: dict | None = None
) -> int:
    """Load a checkpoint written by `save_checkpoint` into `model` (and `optimizer`); its step.

    `expect` is what the checkpoint's run must have had (examples, batch size, seed...): a
    checkpoint of another run is an error, not a silently different training.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConvtuneError(
            "not a checkpoint: no readable trainer_state.json", path=folder
        ) from exc
    saved = state.get("identity", {})
    for key, value in (expect or {}).items():
        if key in saved and saved[key] != value:
            raise ConvtuneError(
                f"the checkpoint was made with {key}={saved[key]}, this run has {value}",
                path=folder,
                hint="resume with the same data and hyperparameters",
            )
    device = next(model.parameters()).device
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        weights = load_file(str(folder / ADAPTER_DIR / "adapter_model.safetensors"))
        result = set_peft_model_state_dict(model, weights)
        missing = [k for k in getattr(result, "unexpected_keys", []) or []]
        if missing:
            raise ConvtuneError(f"the checkpoint's adapter does not fit the model: {missing[:3]}")
    else:
        weights = load_file(str(folder / WEIGHTS_FILE))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in weights.items():
                params[name].copy_(tensor.to(device))
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(folder / OPTIMIZER_FILE, map_location=device, weights_only=True)
        )
    return int(state["step"])


# -- the finished model -------------------------------------------------------------------------


def merge_and_save(
    model: Any, tokenizer: Any, folder: Path, *, adapter_folder: Path | None = None
) -> None:
    """Save the fine-tuned model so that plain transformers loads it.

    With LoRA: the adapter (with the tokenizer) into `adapter_folder` when given, then the
    adapters merged into the weights (in place: `model` is the merged model afterwards) and the
    merged model with its tokenizer as safetensors into `folder`. Each folder is written under
    a temporary name and renamed into place.
    """
    folder = Path(folder)
    _restore(model)
    if hasattr(model, "peft_config"):
        if adapter_folder is not None:
            _atomic_save(Path(adapter_folder), model, tokenizer)
        model = model.merge_and_unload()
    model.config.use_cache = True
    _atomic_save(folder, model, tokenizer)


def _atomic_save(folder: Path, model: Any, tokenizer: Any) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
