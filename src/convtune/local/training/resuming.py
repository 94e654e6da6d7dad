"""Where a run of several processes starts again: every rank at rank 0's place.

Over several machines only node 0's job has checkpoints (it alone writes them), so a resumed run
cannot have each rank read its own: rank 0 reads the checkpoint and the others receive what
they need of it. Without sharding that is the step and the optimizer's state (the weights follow
by `Distributed.broadcast_`); with FSDP it is the whole trainable state, which every rank takes
its shards of (`sharding.scatter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ...errors import ConvtuneError
from .checkpoints import load_checkpoint, read_gathered
from .runtime import Distributed
from .sharding import scatter


def resume_unsharded(
    dist: Distributed,
    model: Any,
    optimizer: torch.optim.Optimizer,
    resume: Path | None,
    identity: dict,
) -> int:
    """An unsharded run's resume: each rank reads the checkpoint it has (on several machines,
    node 0's ranks alone), then every rank takes rank 0's place (`share_resume`); the step."""
    step, problem = 0, None
    try:
        if resume is not None:
            step = load_checkpoint(model, optimizer, resume, identity)
    except (ConvtuneError, OSError, ValueError, RuntimeError) as exc:
        if dist.world == 1:
            raise
        problem = f"cannot resume from {resume}: {exc}"  # every rank's error
    return share_resume(dist, optimizer, step, problem)


def share_resume(
    dist: Distributed, optimizer: torch.optim.Optimizer, step: int, problem: str | None = None
) -> int:
    """Rank 0's step and optimizer state on every rank (an unsharded run); the step. A rank
    that could not read its checkpoint (`problem`) makes every rank fail with that reason,
    rather than leave the others waiting for it."""
    if dist.world == 1:
        return step
    problems = [p for p in dist.gather(problem) if p]
    if problems:
        raise ConvtuneError(problems[0])
    leader = dist.from_rank0(step)
    if dist.sum([float(step != leader)])[0]:
        mine = optimizer.state_dict() if dist.rank == 0 else None
        state = dist.from_rank0(_on_cpu(mine))  # sent as bytes, loaded on any device
        if step != leader:
            optimizer.load_state_dict(state)
    return leader


def resume_sharded(
    dist: Distributed,
    model: Any,
    optimizer: torch.optim.Optimizer,
    resume: Path | None,
    identity: dict,
) -> int:
    """A sharded run's resume: rank 0 reads the checkpoint (a problem with it is every rank's
    error) and every rank takes its shards of it; the step it resumes at (0: none)."""
    found: tuple[int, dict, dict] | None = None
    said: int | str | None = None  # what every rank learns: the step, or why not
    if dist.rank == 0 and resume is not None:
        try:
            found = read_gathered(resume, expect=identity)
            said = found[0]
        except (ConvtuneError, OSError, ValueError, RuntimeError) as exc:
            said = f"cannot resume from {resume}: {exc}"
    said = dist.from_rank0(said)
    if isinstance(said, str):
        raise ConvtuneError(said)
    if said is None:
        return 0
    step, weights, state = found if found is not None else (said, {}, {})
    scatter(model, optimizer, weights, state)
    return step


def _on_cpu(value: Any) -> Any:
    """An optimizer's state with its tensors on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_on_cpu(v) for v in value)
    return value
