"""FSDP2 (PyTorch's `fully_shard`): every process keeps a share of each weight, gradient and
optimizer state, for a model that does not fit one GPU (``fsdp=True``, several processes).

Each decoder layer is one unit, gathered whole just before it computes and freed after; the
embeddings and the head are the root's unit. LoRA needs nothing special: the frozen weights
are sharded as the adapters are, and only the adapters have gradients and optimizer state.
What changes around the loop:

- the gradients are reduce-scattered by FSDP, which averages them; each rank's loss is divided
  by the loss tokens of the whole step and multiplied by the world (`Distributed.loss_scale`),
  so the average is the sum an unsharded run makes and one process and N processes train
  alike (`Distributed` neither sums the gradients nor broadcasts the weights, which are equal
  by construction: the same seed makes the same adapters);
- a checkpoint is the trainable weights and the optimizer state gathered whole on rank 0 (a
  collective: every rank takes part) and written by it, by the parameters' names, so it does
  not depend on how many processes wrote it; a resumed run gives rank 0's copy to every rank;
- the finished model is gathered the same way: rank 0 loads the trained weights into a plain
  copy of the model (`worker`'s recipe) and saves, chats and exports that.

The model is sharded from the CPU, one layer at a time, so no process ever holds it whole on
its GPU. Mixed precision is FSDP's: the gathered weights compute in bfloat16, the gradients are
reduced and the adapters kept in float32.
"""

from __future__ import annotations

from typing import Any

import torch

from ...errors import OptionError
from .adapters import core_model


def shard(model: Any, device: torch.device, precision: torch.dtype | None, world: int) -> None:
    """Shard `model` in place across the `world` processes of the group, onto `device`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (world,))
    policy = MixedPrecisionPolicy(param_dtype=precision, reduce_dtype=torch.float32)
    for layer in core_model(model).get_decoder().layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def shard_run(model: Any, config: Any, dist: Any, device: torch.device, precision) -> None:
    """FSDP2 over the run's process group (`config.fsdp`), or one line saying why it cannot."""
    problems = []
    if dist.world == 1:
        problems.append("it shards across processes: run it under several (torchrun)")
    if config.compile:
        problems.append("not with compile yet")
    if config.quantize_base != "none":
        problems.append("not with quantize_base 4bit (FSDP2 shards float weights)")
    if config.cross_entropy not in ("auto", "plain"):
        problems.append(
            f"not with cross_entropy {config.cross_entropy} (it reads the sharded head)"
        )
    if problems:
        raise OptionError("fsdp: " + "; ".join(problems))
    shard(model, device, precision, dist.world)
    dist.sharded = True


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def gather(model: Any, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """The trainable weights (and the optimizer's state), whole, by name, on rank 0's CPU; empty
    dicts on the other ranks. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = _options(cpu_offload=True, ignore_frozen_params=True)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    weights = get_model_state_dict(model, options=options)
    weights = {name: w for name, w in weights.items() if name in trainable}  # not a tied head
    state = get_optimizer_state_dict(model, optimizer, options=options) if optimizer else {}
    return weights, state


def scatter(model: Any, optimizer: torch.optim.Optimizer, weights: dict, state: dict) -> None:
    """Rank 0's `weights` and optimizer `state` (as `gather` made them) into every rank's
    shards. Every rank must call it; the other ranks' dicts are not read."""
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = _options(broadcast_from_rank0=True, strict=False)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, state, options=options)
