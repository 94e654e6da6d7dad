"""The options of a fine-tuning job, defined once.

Every interface derives from the fields below, the way TRL's `SFTConfig` fields become its
command-line flags: `convtune train`'s options (`cli/train_options.py`), the request model of
`convtune serve` (`server/jobs_api.py`), what a job stores and its worker reads
(`local/worker.py`), and the trainer's configuration (`local/training/config.py`). A field's
`Spec` carries its help, its type and range, and where it applies:

- `hyperparameter`: one of OpenAI's (`n_epochs`, `batch_size`, `learning_rate_multiplier`, and
  `beta` for DPO), "auto" or a value, which every backend takes;
- `method`: OpenAI's fine-tuning method (`supervised` or `dpo`), which every backend takes;
- otherwise a trainer option of the local backend, which the openai backend refuses;
- `api`: whether a client of `convtune serve` may set it (a request cannot choose how many
  processes train on the server's machine).

Values are checked here, once, with every problem reported together (`OptionError`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import OptionError

AUTO = "auto"
METHODS = ("supervised", "dpo")  # the fine-tuning methods convtune trains (OpenAI's names)
DPO_BETA = 0.1  # beta's "auto": TRL's default and the DPO paper's


@dataclass(frozen=True)
class Spec:
    """What one option accepts, and its help text (the CLI's and the docs')."""

    help: str
    kind: type  # int, float, bool or str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    auto: bool = False  # "auto" is a value: the backend chooses (OpenAI's hyperparameters)
    nullable: bool = False  # None is a value: no limit
    hyperparameter: bool = False  # one of OpenAI's hyperparameters: every backend takes it
    method: bool = False  # OpenAI's `method.type`: every backend takes it
    only_for: str | None = None  # the method this hyperparameter belongs to (beta: dpo)
    api: bool = True  # a client of `convtune serve` may set it

    def problem(self, name: str, value: Any) -> str | None:
        """Why `value` is not acceptable for option `name`, or None if it is."""
        if value is None and self.nullable:
            return None
        if value == AUTO and self.auto:
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else f"{name} must be true or false"
        if self.choices:
            if value in self.choices:
                return None
            return f"{name} must be one of {', '.join(self.choices)}, not {value!r}"
        if self.kind is float:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.kind) and not isinstance(value, bool)
        if (
            ok
            and (self.low is None or value >= self.low)
            and (self.high is None or value <= self.high)
        ):
            return None
        return f"{name} must be {self.expected()}, not {value!r}"

    def expected(self) -> str:
        """'an integer from 1 to 50', "'auto' or a number from 1e-09 to 100"..."""
        noun = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            noun += f" from {self.low:g} to {self.high:g}"
        elif self.low is not None:
            noun += f" of at least {self.low:g}"
        return f"'auto' or {noun}" if self.auto else noun


def _option(default: Any, help: str, kind: type, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(help, kind, **spec)})


@dataclass(frozen=True)
class TrainOptions:
    """How a job trains: OpenAI's hyperparameters and the local trainer's options."""

    n_epochs: int | str = _option(
        AUTO,
        "Epochs, or auto: locally about 400 examples' worth of passes, 3 to 8 epochs (4 for 100"
        " examples); on OpenAI, its own rule.",
        int,
        low=1,
        high=50,
        auto=True,
        hyperparameter=True,
    )
    batch_size: int | str = _option(
        AUTO,
        "Examples per step, or auto: locally 1 per 25 examples, from 2 to 8 (4 for 100 examples).",
        int,
        low=1,
        high=256,
        auto=True,
        hyperparameter=True,
    )
    learning_rate_multiplier: float | str = _option(
        AUTO,
        "Times the base learning rate (2e-4 LoRA, 2e-5 full), or auto: locally 10 with LoRA (2e-3),"
        " 1 for a full fine-tune.",
        float,
        low=1e-9,
        high=100.0,
        auto=True,
        hyperparameter=True,
    )
    method: str = _option(
        "supervised",
        "supervised: learn the replies (chat, prompt-completion or sharegpt data); dpo: learn to"
        " prefer one reply over another (preference data, `prepare --format preference`), as"
        " OpenAI's preference fine-tuning.",
        str,
        choices=METHODS,
        method=True,
    )
    beta: float | str = _option(
        AUTO,
        "DPO only: how far the fine-tune may move from the base model to prefer the preferred"
        " replies (higher: closer to the base), or auto: 0.1, TRL's and the DPO paper's value.",
        float,
        low=1e-6,
        high=100.0,
        auto=True,
        hyperparameter=True,
        only_for="dpo",
    )
    lora_r: int = _option(16, "LoRA rank.", int, low=1, high=1024)
    lora_alpha: int = _option(
        32, "LoRA alpha (the adapters' scale is alpha / rank).", int, low=1, high=4096
    )
    full: bool = _option(False, "Full fine-tune instead of LoRA.", bool)
    max_length: int = _option(
        1024,
        "Longest example in tokens; longer ones lose their oldest tokens.",
        int,
        low=16,
        high=131072,
    )
    max_steps: int | None = _option(None, "Stop after this many steps.", int, low=1, nullable=True)
    precision: str = _option(
        AUTO,
        "auto: bf16 where the hardware computes in it (CUDA, avx512_bf16/AMX CPUs), else fp32.",
        str,
        choices=(AUTO, "fp32", "bf16"),
    )
    quantize_base: str = _option(
        "none",
        "4bit: QLoRA, the frozen base weights in 4 bits (NF4); needs a CUDA GPU and bitsandbytes.",
        str,
        choices=("none", "4bit"),
    )
    keep_last: bool = _option(
        False,
        "Keep the last epoch's model, without probing. Default: with a validation file, 8 of its"
        " prompts are answered at each epoch end past the middle, and an earlier epoch is kept"
        " only if its answers score 0.02 better (fuzzy_match) than the last's.",
        bool,
    )
    learning_check: bool = _option(
        True,
        "With a validation file, end the job by answering up to 32 of its prompts with the base"
        " model and the fine-tune, and say whether the fine-tune is better (95% interval).",
        bool,
    )
    nproc_per_node: int = _option(
        1, "Processes to train with (torchrun, DDP): one per GPU.", int, low=1, high=1024, api=False
    )
    nnodes: int = _option(
        1,
        "Machines to train on together (torchrun's rendezvous): run the same command on each,"
        " with its own --node-rank and the same --master-addr and --master-port.",
        int,
        low=1,
        high=1024,
        api=False,
    )
    node_rank: int = _option(
        0,
        "This machine's place among the nodes, 0 to nnodes-1; node 0 reports the metrics and"
        " saves the model.",
        int,
        low=0,
        high=1023,
        api=False,
    )
    master_addr: str | None = _option(
        None,
        "The address of node 0, which every node reaches (needed with --nnodes above 1).",
        str,
        nullable=True,
        api=False,
    )
    master_port: int = _option(
        29500, "The port on node 0 where the nodes meet.", int, low=1, high=65535, api=False
    )
    fsdp: bool = _option(
        False,
        "Shard the weights, gradients and optimizer state across the processes (PyTorch's FSDP2,"
        " fully_shard), LoRA included: for a model that does not fit one GPU. Needs several"
        " processes (--nproc-per-node or --nnodes).",
        bool,
        api=False,
    )

    def __post_init__(self) -> None:
        problems = [
            problem
            for name, spec in specs().items()
            if (problem := spec.problem(name, getattr(self, name))) is not None
        ]
        for name, spec in specs().items():
            if spec.only_for and self.method != spec.only_for and getattr(self, name) != AUTO:
                problems.append(f"{name} applies to method {spec.only_for} only")
        problems += self._launch_problems()
        if problems:
            raise OptionError("; ".join(problems))

    @property
    def keeps_last_epoch(self) -> bool:
        """Whether the job keeps its last epoch's model without probing earlier ones: asked
        (keep_last), or sharded (fsdp: the model answers only once training has ended)."""
        return bool(self.keep_last or self.fsdp)

    def _launch_problems(self) -> list[str]:
        """What is wrong with how the job's processes meet (ranges are checked already)."""
        problems = []
        if isinstance(self.node_rank, int) and isinstance(self.nnodes, int):
            if self.node_rank >= self.nnodes:
                problems.append(
                    f"node_rank must be below nnodes ({self.nnodes}), not {self.node_rank}"
                )
            if self.nnodes > 1 and not self.master_addr:
                problems.append("nnodes above 1 needs master_addr: the address of node 0")
            if self.fsdp and self.quantize_base != "none":
                problems.append("fsdp: not with quantize_base 4bit (FSDP2 shards float weights)")
            if self.fsdp and self.nnodes * int(self.nproc_per_node or 1) < 2:
                problems.append(
                    "fsdp shards across processes: give nproc_per_node or nnodes above 1"
                )
        if self.master_addr is not None and not (
            isinstance(self.master_addr, str) and self.master_addr.strip()
        ):
            problems.append("master_addr must be a host name or an address")
        return problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainOptions:
        """From a mapping of option names (a stored job, a request body); unknown names are
        errors, as TRL's parser has them, not silently ignored."""
        unknown = sorted(set(data) - set(specs()))
        if unknown:
            raise OptionError(
                f"unknown training option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                hint="the options are " + ", ".join(specs()),
            )
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def requested_hyperparameters(self) -> dict[str, Any]:
        """OpenAI's hyperparameters as the user gave them ("auto" or a value), as OpenAI's
        `method.<type>.hyperparameters` has them (beta for DPO only); a job's resolved ones are
        its trainer configuration's (`TrainConfig.resolved_hyperparameters`)."""
        return {
            n: getattr(self, n)
            for n, s in specs().items()
            if s.hyperparameter and s.only_for in (None, self.method)
        }

    def trainer_options(self) -> dict[str, Any]:
        """The local trainer's options (everything but the hyperparameters and the method)."""
        return {
            n: getattr(self, n) for n, s in specs().items() if not (s.hyperparameter or s.method)
        }

    def changed_trainer_options(self) -> list[str]:
        """The trainer options set to something else than their default."""
        defaults = TrainOptions()
        return [n for n, v in self.trainer_options().items() if v != getattr(defaults, n)]


METHOD_FORMATS = {  # the data each method trains on (`convtune check` detects the format)
    "supervised": ("chat", "prompt-completion", "sharegpt"),
    "dpo": ("preference",),
}


def method_data_problem(method: str, fmt: str | None) -> str | None:
    """Why a file of format `fmt` cannot train with `method` (None: it can, or the format is
    unknown, which the file's own check reports)."""
    if fmt is None or fmt in METHOD_FORMATS.get(method, (fmt,)):
        return None
    if method == "dpo":
        return (
            f"DPO trains on preference pairs, not {fmt} examples"
            " (make them with convtune prepare --format preference)"
        )
    return f"{method} fine-tuning trains on chat examples, not {fmt} data (use --method dpo)"


def specs() -> dict[str, Spec]:
    """Every option's `Spec`, by name, in declaration order."""
    return _SPECS


def default(name: str) -> Any:
    """An option's default value."""
    return _DEFAULTS[name]


def refuse_trainer_options(
    names: Iterable[str], backend: str = "openai", *, flags: bool = False
) -> None:
    """The one refusal of local trainer options on a backend that has no trainer of ours;
    `flags` names them as the command line spells them (`--lora-r`)."""
    names = sorted(names)
    if names:
        listed = ", ".join(("--" + n.replace("_", "-")) if flags else n for n in names)
        raise OptionError(
            f"{listed}: options of the local backend only, not of the {backend} backend",
            hint="OpenAI's parameters are n_epochs, batch_size, learning_rate_multiplier,"
            " method, beta (dpo), suffix, seed and metadata",
        )


_SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(TrainOptions)}
_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
