"""Checkpoints of a run, and the finished model as plain transformers loads it.

Exact resume: the order of examples comes from (seed, epoch) and dropout's random numbers from
(seed, step, rank), so a checkpoint (weights, optimizer, step) is all a run needs to continue as
if it had never stopped. A checkpoint also records what its run was (examples, batch size,
seed...): resuming another run from it is an error, not a silently different training.

Every folder here is written under a temporary name beside its place and renamed into place
(`staged_folder`): a crash leaves the previous folder or none, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from ...errors import ConvtuneError
from .adapters import restore_model

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_DIR = "adapter"
WEIGHTS_FILE = "trainable.safetensors"  # full fine-tuning: every trainable weight


@contextmanager
def staged_folder(folder: Path) -> Iterator[Path]:
    """A temporary folder beside `folder` to write into; when the block ends without an error
    it replaces `folder`, else it is removed and `folder` is left as it was."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield staging
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint(
    model: Any,
    optimizer: torch.optim.Optimizer,
    folder: Path,
    *,
    step: int,
    epoch: int,
    identity: dict | None = None,
    gathered: tuple[dict, dict] | None = None,
) -> Path:
    """Write a checkpoint folder: the trainable weights, the optimizer, the step.

    With LoRA the weights are a peft adapter (``adapter/``, loadable on its own); otherwise
    ``trainable.safetensors``. The learning rate is a function of the step and the order of
    examples and dropout's random numbers are functions of the seed and the step, so nothing
    else is needed to continue identically. Written to a temporary folder renamed into place.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    with staged_folder(folder) as staging:
        if gathered is not None:  # a sharded run's (`sharding.gather`), by parameter names
            weights, optimizer_state = gathered
            save_file(_unshared(weights), str(staging / WEIGHTS_FILE))
            torch.save(optimizer_state, staging / OPTIMIZER_FILE)
        elif hasattr(model, "peft_config"):
            model.save_pretrained(staging / ADAPTER_DIR)
        else:
            weights = {
                n: p.detach().contiguous().cpu()
                for n, p in model.named_parameters()
                if p.requires_grad
            }
            save_file(weights, str(staging / WEIGHTS_FILE))
        if gathered is None:
            torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        state = {"step": step, "epoch": epoch, "identity": identity or {}}
        (staging / STATE_FILE).write_text(json.dumps(state, indent=1))
    return folder


def load_checkpoint(
    model: Any, optimizer: torch.optim.Optimizer | None, folder: Path, expect: dict | None = None
) -> int:
    """Load a checkpoint written by `save_checkpoint` into `model` (and `optimizer`); its step.

    `expect` is what the checkpoint's run must have had (examples, batch size, seed...): a
    checkpoint of another run is an error, not a silently different training.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    step = read_state(folder, expect)
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
    return step


def read_state(folder: Path, expect: dict | None = None) -> int:
    """A checkpoint's step, once its run is known to be this one (`expect`)."""
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
    return int(state["step"])


def read_gathered(folder: Path, expect: dict | None = None) -> tuple[int, dict, dict]:
    """A sharded run's checkpoint: its step, weights and optimizer state, by parameter names."""
    from safetensors.torch import load_file

    step = read_state(folder, expect)
    weights = load_file(str(Path(folder) / WEIGHTS_FILE))
    state = torch.load(Path(folder) / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
    return step, weights, state


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors as safetensors writes them: contiguous, none sharing another's memory (tied
    embeddings gather as one tensor under two names)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in weights.items():
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone().contiguous() if pointer in seen else tensor.contiguous()
        seen.add(pointer)
    return out


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
    restore_model(model)
    if hasattr(model, "peft_config"):
        if adapter_folder is not None:
            _save_pretrained(Path(adapter_folder), model, tokenizer)
        model = model.merge_and_unload()
    model.config.use_cache = True
    _save_pretrained(folder, model, tokenizer)


def _save_pretrained(folder: Path, model: Any, tokenizer: Any) -> None:
    with staged_folder(folder) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
