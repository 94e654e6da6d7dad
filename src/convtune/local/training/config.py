"""What a training run is asked to do (`TrainConfig`) and what it reports (`StepMetrics`,
`TrainResult`).

The options a user gives (`TrainOptions`, defined once for the CLI, the server and the worker)
reach the trainer through `TrainConfig.from_options`, which resolves OpenAI's "auto" values for
the data at hand. The fields they share take their help text and range from that definition
(`_option`); the fields only the trainer has (dropout, threads, micro-batches, the attention
and cross-entropy kernels...) are defined here. `__post_init__` reports every bad value at
once; what depends on the device (a GPU-only kernel asked for on a CPU) is checked when
training starts (`loop.train`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from ...errors import OptionError
from ...service.training_options import AUTO, DPO_BETA, TrainOptions, default, specs
from .attention import ATTENTION_CHOICES
from .losses import CROSS_ENTROPY

BASE_LEARNING_RATE = {True: 2e-4, False: 2e-5}  # LoRA, full fine-tune (x the multiplier)
# options that shape the job rather than the loop: the worker reads them (tokenizing, processes)
WORKER_OPTIONS = (
    "max_length",
    "nproc_per_node",
    "nnodes",
    "node_rank",
    "master_addr",
    "master_port",
    "keep_last",
    "learning_check",
)

# What "auto" resolves to, measured by bench/quality.py (BENCHMARKS.md, "What the fine-tune
# answers"): on SmolLM2-135M, OpenAI's own rule (3 epochs at the base rate) leaves the answers
# where the base model's were. On the bundled example, 4 epochs at 10x the LoRA base rate answer
# the validation prompts as well as 6 epochs at 5x (fuzzy_match +0.05 against the base) and their
# own training prompts better (median fuzzy_match 1.0), in two thirds of the time; 3 epochs at 5x
# do not learn the training data (0.5).
AUTO_PASSES = 400  # examples trained per run: 4 epochs of 100 examples
AUTO_EPOCHS = (3, 8)  # fewest and most epochs auto gives
AUTO_MULTIPLIER = 10.0  # x the LoRA base rate: 2e-3
AUTO_STEP_EXAMPLES = 25  # examples per step in auto: 1 per 25 examples, from 2 to 8
# DPO moves a model that already answers: its auto rate is the LoRA base rate (2e-4; TRL's DPO
# examples use 5e-6 to 5e-5 for full fine-tunes), measured by tests/test_dpo.py's learning test
# and bench/quality.py's dpo recipe
AUTO_DPO_MULTIPLIER = 1.0


def auto_epochs(n_examples: int) -> int:
    """About `AUTO_PASSES` examples' worth of passes: 4 epochs of 100 examples, 3 of 135 or more,
    8 for 50 or fewer (a small model learns a small set's facts in several passes)."""
    low, high = AUTO_EPOCHS
    return min(high, max(low, round(AUTO_PASSES / max(1, n_examples))))


def auto_batch_size(n_examples: int) -> int:
    """One example per step for every 25 examples, from 2 to 8 (never more than the examples):
    enough steps for a small set to learn from, few enough that a step is worth its overhead."""
    return max(1, min(n_examples, 8, max(2, round(n_examples / AUTO_STEP_EXAMPLES))))


def _option(name: str, value: Any = None) -> Any:
    """A field that is one of the `TrainOptions`: its help and range from there; its default
    too, unless the trainer needs a resolved value where the option says "auto"."""
    spec = specs()[name]
    return field(
        default=default(name) if value is None else value,
        metadata={"help": spec.help, "option": name},
    )


@dataclass
class TrainConfig:
    n_epochs: int = _option("n_epochs", 3)
    batch_size: int = _option("batch_size", 8)
    learning_rate: float = field(
        default=BASE_LEARNING_RATE[True],
        metadata={"help": "peak learning rate (the base rate x learning_rate_multiplier)"},
    )
    learning_rate_multiplier: float | None = field(
        default=None,
        metadata={"help": "the multiplier the learning rate came from (`from_options` sets it)"},
    )
    lora: bool = field(default=True, metadata={"help": "train LoRA adapters, not every weight"})
    lora_r: int = _option("lora_r")
    lora_alpha: int = _option("lora_alpha")
    lora_dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA inputs"})
    lora_targets: str | list[str] = field(
        default="all-linear",
        metadata={"help": "modules that get adapters: 'all-linear' or a list of module names"},
    )
    max_steps: int | None = _option("max_steps")
    seed: int = field(default=0, metadata={"help": "seed of the order, adapters and dropout"})
    eval_every: int | None = field(
        default=None,
        metadata={
            "help": "steps between validation losses (on one batch of validation examples, also"
            " at each epoch end; the whole set at the last step); default: about 10 times per run"
        },
    )
    precision: str = _option("precision")
    threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads per process; default: physical cores / processes"},
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the gradient's norm to this (None: no clipping)"}
    )
    micro_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "most tokens in one forward pass; a larger batch is accumulated (bounds"
            " memory); default: 4096 on a CPU, on a GPU what fits in half its free memory"
        },
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations: less memory, about 30% slower"}
    )
    attention: str = field(
        default="auto",
        metadata={
            "help": "kernel of packed attention: segments (per-example products, the fastest on"
            " a CPU), varlen (PyTorch's flash attention), flash (flash-attn), flex"
            " (FlexAttention); auto: segments on a CPU, the first of varlen, flash, flex that"
            " runs on a GPU",
            "choices": ATTENTION_CHOICES,
        },
    )
    cross_entropy: str = field(
        default="auto",
        metadata={
            "help": "plain (logits at the loss positions), chunked (a few hundred rows of"
            " logits at a time), liger (liger-kernel, CUDA); auto: plain on a CPU, liger or"
            " chunked on a GPU",
            "choices": CROSS_ENTROPY,
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each decoder layer (dynamic shapes); not with the segments"
            " attention; not measured yet to pay on any device, so off by default"
        },
    )
    quantize_base: str = _option("quantize_base")
    method: str = _option("method")
    beta: float = _option("beta", DPO_BETA)
    fsdp: bool = _option("fsdp")

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            option = f.metadata.get("option")
            if option is None:
                continue
            value = getattr(self, f.name)
            if value == AUTO and option in ("n_epochs", "batch_size", "beta"):
                problems.append(f"{f.name} must be a number here: resolve 'auto' first")
            elif (problem := specs()[option].problem(f.name, value)) is not None:
                problems.append(problem)
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(
                    f"{f.name} must be one of {', '.join(choices)}, not {getattr(self, f.name)!r}"
                )
        if self.quantize_base != "none" and not self.lora:
            problems.append("quantize_base 4bit (QLoRA) trains LoRA adapters: not with full=True")
        for name in ("eval_every", "threads", "micro_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a positive integer or None, not {value!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive, not {self.learning_rate!r}")
        if not 0 <= self.lora_dropout < 1:
            problems.append(f"lora_dropout must be in [0, 1), not {self.lora_dropout!r}")
        if problems:
            raise OptionError("; ".join(problems))

    @classmethod
    def from_options(
        cls, options: TrainOptions, examples: int, *, seed: int = 0, **trainer: Any
    ) -> TrainConfig:
        """The run `options` ask for on `examples` training examples, "auto" resolved by the
        rules above (`auto_epochs`, `auto_batch_size`, `AUTO_MULTIPLIER` with LoRA, 1 for a
        full fine-tune). `trainer` sets the trainer-only fields."""
        lora = not options.full
        multiplier = options.learning_rate_multiplier
        dpo = options.method == "dpo"
        if multiplier == AUTO:
            multiplier = AUTO_DPO_MULTIPLIER if dpo else AUTO_MULTIPLIER if lora else 1.0
        return cls(
            n_epochs=auto_epochs(examples) if options.n_epochs == AUTO else options.n_epochs,
            batch_size=(
                auto_batch_size(examples) if options.batch_size == AUTO else options.batch_size
            ),
            learning_rate=BASE_LEARNING_RATE[lora] * multiplier,
            learning_rate_multiplier=multiplier,
            lora=lora,
            lora_r=options.lora_r,
            lora_alpha=options.lora_alpha,
            max_steps=options.max_steps,
            precision=options.precision,
            quantize_base=options.quantize_base,
            method=options.method,
            beta=DPO_BETA if options.beta == AUTO else options.beta,
            fsdp=options.fsdp,
            seed=seed,
            **trainer,
        )

    def auto_choices(self, options: TrainOptions, examples: int) -> list[str]:
        """What each "auto" of `options` became here, and why, as the job's event says it (OpenAI
        reports its auto choices in the job's hyperparameters; this says the rule too)."""
        said = []
        if options.n_epochs == AUTO:
            said.append(
                f"n_epochs {self.n_epochs} (about {AUTO_PASSES} examples' worth of passes over"
                f" {examples}, from {AUTO_EPOCHS[0]} to {AUTO_EPOCHS[1]} epochs)"
            )
        if options.batch_size == AUTO:
            said.append(
                f"batch_size {self.batch_size} (1 per {AUTO_STEP_EXAMPLES} examples, from 2 to 8)"
            )
        if options.learning_rate_multiplier == AUTO:
            what = "LoRA" if self.lora else "a full fine-tune"
            what = f"DPO with {what}" if self.method == "dpo" else what
            multiplier = self.resolved_hyperparameters()["learning_rate_multiplier"]
            said.append(
                f"learning_rate_multiplier {multiplier:g} ({what}: a learning rate of"
                f" {self.learning_rate:g})"
            )
        if self.method == "dpo" and options.beta == AUTO:
            said.append(f"beta {self.beta:g} (TRL's and the DPO paper's)")
        return said

    def resolved_hyperparameters(self) -> dict[str, Any]:
        """What the run resolved OpenAI's hyperparameters to (the job shows these)."""
        multiplier = self.learning_rate_multiplier  # as resolved, not divided back
        if multiplier is None:  # a configuration made with a learning rate of its own
            multiplier = self.learning_rate / BASE_LEARNING_RATE[self.lora]
        resolved: dict[str, Any] = {
            "n_epochs": self.n_epochs,
            "batch_size": self.batch_size,
            "learning_rate_multiplier": round(multiplier, 12),
        }
        if self.method == "dpo":
            resolved["beta"] = self.beta
        return resolved


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
    # DPO only: the share of pairs whose preferred reply the model prefers more than the
    # reference does (reward accuracy), and the mean reward margin, beta x the log-ratio gap
    train_reward_accuracy: float | None = None
    train_reward_margin: float | None = None
    valid_reward_accuracy: float | None = None
    valid_reward_margin: float | None = None


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
    paused: bool = False  # the stop was a pause (any rank's should_pause)
    # a sharded (fsdp) run's trained weights, whole, by name, on rank 0 (None elsewhere): what
    # a plain copy of the model loads to be saved and to answer (`model` stays sharded)
    weights: dict[str, Any] | None = None
