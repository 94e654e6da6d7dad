"""The attention kernels of packed rows: one function per kernel, the same signature, the same
result (`attention.py` says which runs where; the tests check each against `segments`).

Each takes the model's query (1, heads, T, dim) and key and value (1, kv_heads, T, dim), the
`PackedRow`, the scale, the sliding window (a query sees itself and the ``window - 1`` tokens
before it) and the soft-cap of the scores, and returns (1, T, heads, dim). Grouped-query attention
never repeats the keys and values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def segments(query, key, value, row, scale, window, softcap, dropout):
    """Small products per example: one fused scale-mask-product, then softmax and product.

    The query heads that share a key/value head are stacked along the sequence axis, so the
    keys and values are used as they are.
    """
    _, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    lengths = list(row.lengths)
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
        mask = _causal_mask(length, groups, window, q.device, q.dtype)
        if softcap is None:  # scale, mask and product in one operation
            scores = torch.baddbmm(mask, q, k, alpha=scale)
        else:
            scores = torch.tanh(torch.matmul(q, k) * (scale / softcap)) * softcap + mask
        probs = torch.softmax(scores, dim=-1)
        if dropout:
            probs = F.dropout(probs, p=dropout)
        outputs.append(torch.matmul(probs, v).view(heads, length, dim))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=1)
    return out.transpose(0, 1).unsqueeze(0)


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


# -- variable-length flash attention: PyTorch's own, or flash-attn's ------------------------------


def _varlen_attn():
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def _flash_attn_varlen():
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func


def _flash_window(window: int | None) -> tuple[int, int]:
    """A sliding window as flash attention counts it: (keys before the query, keys after it)."""
    return (-1 if window is None else window - 1, 0)


def _rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """(1, heads, T, dim) -> (T, heads, dim), as the variable-length kernels take them."""
    return [t[0].transpose(0, 1).contiguous() for t in tensors]


def varlen(query, key, value, row, scale, window, softcap, dropout):
    """``torch.nn.attention.varlen.varlen_attn``: flash attention over the cumulative lengths."""
    q, k, v = _rows(query, key, value)
    out = _varlen_attn()(
        q,
        k,
        v,
        row.cu_seqlens,
        row.cu_seqlens,
        row.max_length,
        row.max_length,
        scale=scale,
        window_size=_flash_window(window),
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out.unsqueeze(0)


def flash(query, key, value, row, scale, window, softcap, dropout):
    """flash-attn's ``flash_attn_varlen_func`` (grouped-query attention is native there)."""
    q, k, v = _rows(query, key, value)
    extra = {"softcap": softcap} if softcap else {}
    out = _flash_attn_varlen()(
        q,
        k,
        v,
        row.cu_seqlens,
        row.cu_seqlens,
        row.max_length,
        row.max_length,
        dropout_p=dropout,
        softmax_scale=scale,
        causal=True,
        window_size=_flash_window(window),
        **extra,
    )
    return out.unsqueeze(0)


# -- FlexAttention with a document mask -----------------------------------------------------------

_FLEX: dict[str, Any] = {}
_SOFTCAPS: dict[float, Any] = {}


def _flex_attention(device: torch.device):
    """FlexAttention, compiled on CUDA (eager it materialises every score: for the tests)."""
    function = _FLEX.get(device.type)
    if function is None:
        from torch.nn.attention.flex_attention import flex_attention

        function = flex_attention
        if device.type == "cuda":
            function = torch.compile(flex_attention, dynamic=None)
        _FLEX[device.type] = function
    return function


def _softcap(cap: float):
    """The score modification of soft-capping (one function per cap: compiled code is reused)."""
    function = _SOFTCAPS.get(cap)
    if function is None:

        def function(score, b, h, q, k):
            return torch.tanh(score / cap) * cap

        _SOFTCAPS[cap] = function
    return function


def document_block_mask(lengths: tuple[int, ...], window: int | None, device: torch.device):
    """FlexAttention's block mask of a packed row: each token sees the tokens of its own example
    up to itself (and no further back than the window)."""
    from torch.nn.attention.flex_attention import create_block_mask

    sizes = torch.tensor(lengths, device=device)
    document = torch.repeat_interleave(torch.arange(len(lengths), device=device), sizes)

    def visible(b, h, q, k):
        seen = (document[q] == document[k]) & (q >= k)
        if window is not None:
            seen = seen & (q - k < window)
        return seen

    total = int(sum(lengths))
    return create_block_mask(
        visible, None, None, total, total, device=str(device), _compile=device.type == "cuda"
    )


def flex(query, key, value, row, scale, window, softcap, dropout):
    """``flex_attention`` over the row's block mask; soft-capping as a score modification."""
    out = _flex_attention(query.device)(
        query,
        key,
        value,
        score_mod=None if softcap is None else _softcap(float(softcap)),
        block_mask=row.block_mask(window),
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2)
