"""The model as training wants it (`prepare_model`), and as the trained model must be left
(`restore_model`).

With LoRA in bfloat16 the frozen weights are bfloat16 copies during training: autocast would
otherwise convert each of them at every forward pass, and the stream between layers would be
float32. The adapters and the optimizer are float32, and the float32 base weights come back
when training ends, for an exact merge.

No gradient checkpointing by default: it recomputes the forward pass to save memory that a
small model does not need.
"""

from __future__ import annotations

from typing import Any

import torch

from .attention import restore_attention, use_packed_attention
from .config import TrainConfig


def core_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare_model(
    model: Any, config: TrainConfig, device: torch.device, precision: torch.dtype | None
) -> Any:
    """The model on its device, with LoRA adapters (float32) or every weight trainable.

    With LoRA in bfloat16, the frozen weights are bfloat16 copies while training (the float32
    originals are put back by `restore_model`): autocast would otherwise convert every weight at
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
            core_model(model)._convtune_originals = originals
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    core = core_model(model)
    core.config.use_cache = False
    if config.gradient_checkpointing:
        core.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif getattr(core, "is_gradient_checkpointing", False):
        core.gradient_checkpointing_disable()
    use_packed_attention(core)
    return model


def restore_model(model: Any) -> None:
    """Undo what training changed but the trained model must not keep: the packed attention,
    the bfloat16 copies of the frozen weights, peft's LoRA inputs left in their dtype."""
    core = core_model(model)
    restore_attention(core)
    for p, data in core.__dict__.pop("_convtune_originals", []):
        p.data = data
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = True
