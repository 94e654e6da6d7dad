"""What a training run is asked to do (`TrainConfig`) and what it reports (`StepMetrics`,
`TrainResult`).

Each option is a dataclass field with its type, default and help text in one place; the checks
in `TrainConfig.__post_init__` report every bad option at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import OptionError


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
