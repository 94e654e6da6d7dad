"""The model as training wants it (`prepare_model`), and as the trained model must be left
(`restore_model`).

With LoRA in bfloat16 the frozen weights are bfloat16 copies during training: autocast would
otherwise convert each of them at every forward pass, and the stream between layers would be
float32. The adapters and the optimizer are float32, and the float32 base weights come back
when training ends, for an exact merge.

No gradient checkpointing by default: it recomputes the forward pass to save memory that a
small model does not need.

QLoRA (``quantize_base="4bit"``, CUDA and bitsandbytes only): the adapters are made on the
float model, then the frozen linear layer inside each adapter is swapped for a 4-bit NF4 copy;
the float layers wait on the CPU and come back when training ends, so the adapters merge into
the exact float weights. `compile_layers` compiles each decoder layer (``compile=True``).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from ...errors import OptionError
from .attention import restore_attention, use_packed_attention
from .config import TrainConfig


def core_model(model: Any) -> Any:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def prepare_model(
    model: Any,
    config: TrainConfig,
    device: torch.device,
    precision: torch.dtype | None,
    *,
    sharded: bool = False,
) -> Any:
    """The model on its device, with LoRA adapters (float32) or every weight trainable.

    With LoRA in bfloat16, the frozen weights are bfloat16 copies while training (the float32
    originals are put back by `restore_model`): autocast would otherwise convert every weight at
    every forward pass, and the stream between layers would be float32. peft's conversion of
    each LoRA input to float32 (which autocast converts straight back) is switched off.

    `sharded`: the model stays on the CPU and in float32; FSDP2 moves each share to the device
    and computes in `precision` itself (`sharding.shard`).
    """
    quantize = config.quantize_base == "4bit"
    if quantize:  # the model moves to the GPU once quantized, not before
        problem = quantization_problem(device)
        if problem is not None:
            raise OptionError(f"quantize_base 4bit: {problem}", hint="quantize_base none")
    elif not sharded:
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
    if quantize:
        _quantize_base_layers(model, precision)
        model.to(device)
    if config.lora:
        for p in model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        for module in model.modules():
            if hasattr(module, "lora_A"):
                module.cast_input_dtype_enabled = False
        if precision is not None and not sharded:
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
    elif any(getattr(m, "gradient_checkpointing", False) is True for m in core.modules()):
        core.gradient_checkpointing_disable()
    use_packed_attention(core)
    return model


def restore_model(model: Any) -> None:
    """Undo what training changed but the trained model must not keep: the packed attention,
    the bfloat16 copies of the frozen weights, peft's LoRA inputs left in their dtype."""
    core = core_model(model)
    restore_attention(core)
    uncompile_layers(core)
    for p, data in core.__dict__.pop("_convtune_originals", []):
        p.data = data
    for module, layer in core.__dict__.pop("_convtune_quantized", []):
        module.base_layer = layer.to(module.lora_A.default.weight.device)
    for module in model.modules():
        if hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = True


# -- QLoRA ----------------------------------------------------------------------------------------


def quantization_problem(device: torch.device) -> str | None:
    """Why the base weights cannot be quantized to 4 bits here (None: they can)."""
    if device.type != "cuda" or importlib.util.find_spec("bitsandbytes") is None:
        return "QLoRA needs a CUDA GPU and bitsandbytes"
    return None


def _linear_4bit(layer: torch.nn.Linear, precision: torch.dtype | None) -> torch.nn.Module:
    """A 4-bit NF4 copy of a linear layer (quantized when it moves to the GPU)."""
    import bitsandbytes as bnb

    quantized = bnb.nn.Linear4bit(
        layer.in_features,
        layer.out_features,
        bias=layer.bias is not None,
        compute_dtype=precision or torch.float32,
        quant_type="nf4",
    )
    quantized.weight = bnb.nn.Params4bit(layer.weight.data, requires_grad=False, quant_type="nf4")
    if layer.bias is not None:
        quantized.bias = torch.nn.Parameter(layer.bias.data, requires_grad=False)
    return quantized


def _quantize_base_layers(model: Any, precision: torch.dtype | None) -> None:
    """Swap the frozen linear layer inside each LoRA adapter for a 4-bit copy; the float layers
    are kept (on the CPU) for `restore_model`."""
    swapped = []
    for module in model.modules():
        layer = getattr(module, "base_layer", None)
        if hasattr(module, "lora_A") and type(layer) is torch.nn.Linear:
            swapped.append((module, layer))
            module.base_layer = _linear_4bit(layer, precision)
    core_model(model)._convtune_quantized = swapped


# -- torch.compile --------------------------------------------------------------------------------


def compile_layers(core: Any) -> None:
    """Compile each decoder layer's call. Layers share their code, so one compilation serves
    them all; the first row length that differs makes the sequence axis dynamic (automatic
    dynamic shapes), and the rows' longest-example lengths are rounded to powers of two
    (`PackedRow`), so a run compiles a handful of times, not once per batch."""
    for layer in core.get_decoder().layers:
        layer.compile()


def uncompile_layers(core: Any) -> None:
    decoder = core.get_decoder()
    for layer in getattr(decoder, "layers", []):
        layer._compiled_call_impl = None
