"""Where a run computes: the device, its precision, CPU threads and the process group.

Precision: bfloat16 autocast where the hardware computes in it (``avx512_bf16``/AMX CPUs, CUDA):
2.5x faster matrix products than float32 on such a CPU (`autocast_dtype`, `cpu_computes_bf16`).
The optimizer is PyTorch's fused AdamW where the device has one (`fused_kwargs`).

Tokens per forward pass (`default_micro_batch_tokens`): 4,096 on a CPU, where more gains
nothing; a GPU idles on so few, so there a pass takes what fits in half its free memory, by an
estimate of the activations each token keeps for the backward pass.

Data parallel: a run works unchanged under ``torchrun --nproc_per_node N``. When ``WORLD_SIZE``
> 1, the process group starts (gloo on CPU, NCCL on CUDA) and `Distributed` sums the metrics and
the gradients across ranks (the gradients once per step) and makes rank 0's weights everyone's;
in a single process each of its operations is a no-op.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class Distributed:
    """The process group under torchrun; a no-op in a single process."""

    def __init__(self, world: int, rank: int, local_rank: int, local_world: int) -> None:
        self.world, self.rank, self.local_rank, self.local_world = (
            world,
            rank,
            local_rank,
            local_world,
        )
        # FSDP2 (`sharding`) reduces the gradients itself and each rank holds only its share of
        # the weights: summing the gradients or broadcasting the weights here would be wrong
        self.sharded = False

    @property
    def loss_scale(self) -> int:
        """What a rank's loss is multiplied by before its backward pass. The gradients must be
        the sum of the ranks' (each loss is divided by the loss tokens of the whole step); FSDP
        averages them, and gloo has no sum with a factor (PREMUL_SUM) to undo that, so a sharded
        run scales its losses by the world instead."""
        return self.world if self.sharded else 1

    @classmethod
    def start(cls) -> Distributed:
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
        if self.world == 1 or self.sharded:
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
        if self.world == 1 or self.sharded:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for p in params:
                dist.broadcast(p.data, src=0)

    def passes(self, micros: list[list[int]], filler: list[int]) -> list[tuple[list[int], bool]]:
        """This rank's forward passes, each with whether it counts. Under FSDP every forward
        gathers weights and every backward reduces gradients with all ranks, so every rank must
        make as many passes: one with fewer (a smaller share of the batch, or none) adds passes
        over `filler` that count for nothing (a zero loss)."""
        counted = [(micro, True) for micro in micros]
        if not self.sharded:
            return counted
        most = max(self.gather(len(micros)))
        return counted + [(filler, False)] * (most - len(micros))

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def _comm_device(self) -> torch.device:
        return (
            torch.device("cuda", self.local_rank)
            if torch.cuda.is_available()
            else torch.device("cpu")
        )


def pick_device(local_rank: int) -> torch.device:
    """CUDA (this rank's GPU), else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(requested: str, device: torch.device) -> torch.dtype | None:
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


def set_threads(threads: int | None, device: torch.device, local_world: int) -> None:
    """CPU threads for this process: `threads`, else the user's OMP_NUM_THREADS, else the
    physical cores shared among the processes of this machine."""
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


def fused_kwargs(device: torch.device) -> dict:
    """AdamW's keyword for its fused implementation, on the devices that have one."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


CPU_MICRO_BATCH_TOKENS = 4096
GPU_MICRO_BATCH_TOKENS = (4096, 65536)  # the least and the most a GPU's pass takes by default


def activation_bytes_per_token(config, precision: torch.dtype | None) -> int:
    """What one token's activations take until the backward pass, all layers together.

    Per layer about 18 values of the hidden size and 4 of the MLP's intermediate size; this
    matches the peak memory measured on an H200 (SmolLM2-135M and a model of SmolLM2-1.7B's
    dimensions, LoRA, bf16, 4,096 tokens a pass: 4.8 and 23.0 GB with the weights).
    """
    hidden = int(getattr(config, "hidden_size", 1024))
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    layers = int(getattr(config, "num_hidden_layers", 24))
    size = 2 if precision is not None else 4
    return size * layers * (18 * hidden + 4 * intermediate)


def default_micro_batch_tokens(
    config, device: torch.device, precision: torch.dtype | None, *, checkpointing: bool = False
) -> int:
    """The default token budget of one forward pass on `device` for a model of `config`."""
    if device.type != "cuda":
        return CPU_MICRO_BATCH_TOKENS
    free, _ = torch.cuda.mem_get_info(device)
    per_token = activation_bytes_per_token(config, precision)
    if checkpointing:  # only each layer's input is kept, and one layer's activations at a time
        per_token = max(1, per_token // 8)
    least, most = GPU_MICRO_BATCH_TOKENS
    tokens = int(free * 0.5 / per_token) // 1024 * 1024
    return max(least, min(most, tokens))


def peak_memory_mb(device: torch.device) -> float:
    """The process's peak resident memory (CUDA: peak allocated), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if os.uname().sysname == "Darwin" else peak / 2**10
    except ImportError:  # Windows
        return 0.0
