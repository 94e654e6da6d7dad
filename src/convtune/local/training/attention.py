"""The attention of packed examples: several examples in one row, none looking at another.

Padding costs as much as real tokens, so the examples of a step are packed end to end into one
row with no padding at all, and attention never crosses from one example into another: each
example attends to itself only, causally, with position ids restarting at 0. The row's examples
reach the attention through the `SEGMENTS` keyword argument: a `PackedRow`, made once per forward
pass and shared by every layer, with what each kernel needs (bounds, cumulative lengths, a block
mask).

Four kernels compute the same thing (`kernels.py`; the tests check each against the others):

- ``segments``: small products per example. The fastest on a CPU (PyTorch's fused CPU attention
  is twice as slow backwards in bfloat16 on sequences this short), and it runs everywhere; on a
  GPU its thousands of small kernels per step leave the device idle.
- ``varlen``: PyTorch's own variable-length flash attention (``torch.nn.attention.varlen``,
  CUDA, bf16/fp16, no soft-capping).
- ``flash``: flash-attn's ``flash_attn_varlen_func`` when that package is installed (CUDA).
- ``flex``: PyTorch's FlexAttention with a document mask (compiled on CUDA; on a CPU PyTorch
  runs it forwards only, so it evaluates there but does not train).

``auto`` (`choose_kernel`) takes ``segments`` on a CPU and the first of varlen, flash, flex that
runs the model on a GPU. `use_packed_attention` registers `packed_attention` in transformers'
registry under `PACKED` and switches a model to it; `restore_attention` puts the model's own
attention back.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from ...errors import OptionError
from . import kernels

PACKED = "convtune_packed"  # our attention implementation's name in transformers' registry
SEGMENTS = "convtune_segments"  # the keyword argument that carries the packed row
KERNELS = ("segments", "varlen", "flash", "flex")
ATTENTION_CHOICES = ("auto", *KERNELS)
# Model families whose attention takes only what the kernels implement (scaling, sliding
# window, soft-capping); others train on padded batches with their own attention.
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


class PackedRow:
    """The examples packed in one row, as the chosen kernel wants them.

    Made once per forward pass (before it, outside any compiled code) and shared by every layer:
    the cumulative lengths (varlen, flash) and the block masks (flex, one per sliding window the
    model uses) are built here, once. `max_length` bounds the longest example, rounded up to a
    power of two: the flash kernels only need a bound, and compiled layers then see a few
    values of it rather than one per batch.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        kernel: str,
        device: torch.device,
        windows: Iterable[int | None] = (None,),
    ) -> None:
        self.lengths = tuple(int(n) for n in lengths)
        self.kernel = kernel
        self.device = device
        self.max_length = 1 << (max(self.lengths) - 1).bit_length()
        self.cu_seqlens: torch.Tensor | None = None
        self.block_masks: dict[int | None, Any] = {}
        if kernel in ("varlen", "flash"):
            bounds = torch.tensor([0, *self.lengths], dtype=torch.int32).cumsum(0)
            self.cu_seqlens = bounds.to(torch.int32).to(device)
        elif kernel == "flex":
            for window in windows:
                self.block_masks[window] = kernels.document_block_mask(self.lengths, window, device)

    def __len__(self) -> int:
        return len(self.lengths)

    def block_mask(self, window: int | None) -> Any:
        mask = self.block_masks.get(window)
        if mask is None:  # a window the row was not made for
            mask = self.block_masks[window] = kernels.document_block_mask(
                self.lengths, window, self.device
            )
        return mask


def packed_attention(
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

    Without a packed row (a call outside training, such as generation), this is transformers'
    own sdpa attention.
    """
    row = kwargs.pop(SEGMENTS, None)
    if row is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    dropout = dropout if module.training else 0.0
    kernel = getattr(kernels, row.kernel)
    return kernel(query, key, value, row, scale, sliding_window, softcap, dropout), None


# -- which kernel -------------------------------------------------------------------------------


def model_windows(config: Any) -> tuple[int | None, ...]:
    """The sliding windows a model's layers attend with (None: the whole example)."""
    window = getattr(config, "sliding_window", None)
    if window is None or getattr(config, "use_sliding_window", True) is False:
        return (None,)
    return (None, int(window))


def kernel_problem(
    kernel: str, device: torch.device, dtype: torch.dtype, config: Any, *, training: bool = True
) -> str | None:
    """Why `kernel` cannot run this model here (None: it can). `dtype` is what attention
    computes in (the autocast dtype, else the weights')."""
    if kernel == "segments":
        return None
    if kernel not in KERNELS:
        return f"unknown kernel {kernel!r}"
    if device.type != "cuda" and not (kernel == "flex" and device.type == "cpu" and not training):
        if kernel == "flex":
            return "FlexAttention trains on CUDA only (PyTorch has no CPU backward for it)"
        return "needs a CUDA GPU"
    if (getattr(config, "attention_dropout", 0.0) or 0.0) > 0 and kernel != "flash":
        return "has no attention dropout, and this model uses it"
    if kernel == "varlen" and getattr(config, "attn_logit_softcapping", None):
        return "has no soft-capping, and this model uses it"
    if kernel in ("varlen", "flash"):
        if dtype not in (torch.bfloat16, torch.float16):
            return "computes in bf16 or fp16 only (precision is fp32)"
        if torch.cuda.get_device_capability(device) < (8, 0):
            return "needs an Ampere or newer GPU"
    if kernel == "varlen" and importlib.util.find_spec("torch.nn.attention.varlen") is None:
        return f"needs torch.nn.attention.varlen (torch {torch.__version__} has none)"
    if kernel == "flash" and importlib.util.find_spec("flash_attn") is None:
        return "needs the flash-attn package (pip install flash-attn)"
    return None


def choose_kernel(
    requested: str, device: torch.device, dtype: torch.dtype, config: Any, *, training: bool = True
) -> str:
    """The kernel for packed rows: `requested` if it can run here (else an `OptionError` that
    says why), or for "auto" segments on a CPU and the first that runs on a GPU."""
    if requested != "auto":
        problem = kernel_problem(requested, device, dtype, config, training=training)
        if problem is not None:
            raise OptionError(f"attention {requested}: {problem}", hint="attention auto chooses")
        return requested
    if device.type == "cuda":
        for kernel in ("varlen", "flash", "flex"):
            if kernel_problem(kernel, device, dtype, config, training=training) is None:
                return kernel
    return "segments"


# -- the model's attention ------------------------------------------------------------------------


def _register_attention() -> None:
    from transformers import AttentionInterface

    if PACKED not in AttentionInterface._global_mapping:
        AttentionInterface.register(PACKED, packed_attention)


def is_packed(core: Any) -> bool:
    """Whether a transformers model attends with `packed_attention` (takes packed rows)."""
    return getattr(core.config, "_attn_implementation", None) == PACKED


def use_packed_attention(core: Any) -> bool:
    """Switch a transformers model (not a peft wrapper) to `packed_attention` where its family
    allows it; whether it uses it now. `restore_attention` switches it back."""
    config = core.config
    if config.model_type not in PACKED_MODEL_TYPES or not core._can_set_attn_implementation():
        return False
    if is_packed(core):
        return True
    _register_attention()
    core._convtune_attention = config._attn_implementation
    core.set_attn_implementation(PACKED)
    return config._attn_implementation == PACKED


def restore_attention(core: Any) -> None:
    """The attention the model had before `use_packed_attention`."""
    before = core.__dict__.pop("_convtune_attention", None)
    if before is not None:
        core.set_attn_implementation(before)
