"""The attention of packed examples: several examples in one row, none looking at another.

Padding costs a CPU as much as real tokens, so the examples of a step are packed end to end into
one row with no padding at all, and attention never crosses from one example into another
(`packed_attention`: each example attends to itself only, with position ids restarting at 0). No
token is computed for nothing, and the matrix products run on one tall matrix.

Attention runs in small products per example (one fused scale-mask-product, then softmax and
product): PyTorch's fused CPU attention is twice as slow backwards in bfloat16 on sequences this
short.

`use_packed_attention` registers the function in transformers' registry under `PACKED` and
switches a model to it; `restore_attention` puts the model's own attention back. Batches reach
it through the `SEGMENTS` keyword argument (the examples' bounds in the row).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PACKED = "convtune_packed"  # our attention implementation's name in transformers' registry
SEGMENTS = "convtune_segments"  # the keyword argument that carries the packed examples' bounds
# Model families whose attention takes only what `packed_attention` implements (scaling,
# sliding window, soft-capping); others train on padded batches with their own attention.
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

    Grouped-query attention without repeating keys and values: the query heads that share a
    key/value head are stacked along the sequence axis. Without segments (a call outside
    training, such as generation), this is transformers' own sdpa attention.
    """
    segments = kwargs.pop(SEGMENTS, None)
    if segments is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    lengths = [length for _, length in segments]
    outputs = []
    # split, not sliced one by one: the backward of a split is one concatenation, that of each
    # slice a zero tensor of the whole sequence
    for q, k, v in zip(
        query[0].split(lengths, dim=1),
        key[0].split(lengths, dim=1),
        value[0].split(lengths, dim=1),
        strict=True,
    ):
        length = q.shape[1]
        q = q.reshape(kv_heads, groups * length, dim)
        k = k.transpose(1, 2)
        mask = _causal_mask(length, groups, sliding_window, q.device, q.dtype)
        if softcap is None:  # scale, mask and product in one operation
            scores = torch.baddbmm(mask, q, k, alpha=scale)
        else:
            scores = torch.tanh(torch.matmul(q, k) * (scale / softcap)) * softcap + mask
        probs = torch.softmax(scores, dim=-1)
        if dropout and module.training:
            probs = F.dropout(probs, p=dropout)
        outputs.append(torch.matmul(probs, v).view(heads, length, dim))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.transpose(0, 1).unsqueeze(0), None


_MASKS: dict[tuple, torch.Tensor] = {}


def _causal_mask(
    length: int, groups: int, window: int | None, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Added to the scores: -inf where a query may not look (the future, beyond a window)."""
    key = (length, groups, window, str(device), dtype)
    mask = _MASKS.get(key)
    if mask is None:
        i = torch.arange(length, device=device)
        hidden = i[None, :] > i[:, None]
        if window is not None:
            hidden |= i[:, None] - i[None, :] >= window
        mask = torch.zeros(hidden.shape, device=device, dtype=dtype)
        mask.masked_fill_(hidden, float("-inf"))
        mask = mask.repeat(groups, 1)
        if len(_MASKS) > 4096:
            _MASKS.clear()
        _MASKS[key] = mask
    return mask


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
