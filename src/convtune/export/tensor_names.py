"""Hugging Face tensor names to llama.cpp's, and llama.cpp's permutation of q/k weights.

Names come from the `gguf` package's own table (`gguf.get_tensor_name_map`), the one llama.cpp's
`convert_hf_to_gguf.py` uses: `model.layers.3.self_attn.q_proj.weight` is `blk.3.attn_q.weight`,
`model.embed_tokens.weight` is `token_embd.weight`, `lm_head.weight` is `output.weight`.

The permutation. Hugging Face's Llama applies rotary embeddings to the two halves of each head
(`rotate_half`); llama.cpp's "llama" architecture rotates interleaved pairs. convert_hf_to_gguf
therefore reorders the rows of every q and k projection (weights and biases) per head:

    permute(w, n_head) = w.reshape(n_head, 2, d // n_head // 2, ...).swapaxes(1, 2).reshape(w.shape)

with the key/value head count for k, and transformers' GGUF loader undoes it on load
(`LlamaTensorProcessor._reverse_permute_weights`: reshape `(n_head, d // n_head // 2, 2, ...)`,
swap axes 1 and 2). `permute_qk` is the first, `unpermute_qk` the second; they are each other's
inverse for every shape (tests check both ways, and against the original SmolLM2 GGUF, whose q/k
weights llama.cpp itself permuted). Qwen2 uses NEOX-style rotation in llama.cpp: nothing to
permute.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import ConvtuneError

PERMUTED_ARCHS = frozenset({"llama"})  # llama.cpp architectures whose q/k rows are reordered
SKIPPED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some checkpoints carry, not weights


def name_mapper(arch: str, n_blocks: int) -> Callable[[str], str | None]:
    """A function from a Hugging Face tensor name to its GGUF name (None: no GGUF tensor)."""
    import gguf

    found = [key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch]
    if not found:
        raise ConvtuneError(f"the gguf package knows no architecture {arch!r}")
    table = gguf.get_tensor_name_map(found[0], n_blocks)

    def mapped(hf_name: str) -> str | None:
        if hf_name.endswith(SKIPPED_SUFFIXES):
            return None
        stem, _, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            stem, suffix = hf_name, ""
        name = table.get_name(stem)
        if name is None:
            return None
        return f"{name}.{suffix}" if suffix else name

    return mapped


def heads_of(gguf_name: str, n_head: int, n_head_kv: int) -> int | None:
    """How many heads a tensor's rows are split into for the permutation (None: not permuted)."""
    if gguf_name.endswith(("attn_q.weight", "attn_q.bias")):
        return n_head
    if gguf_name.endswith(("attn_k.weight", "attn_k.bias")):
        return n_head_kv
    return None


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Hugging Face rows to llama.cpp rows (convert_hf_to_gguf's `LlamaModel.permute`)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp rows back to Hugging Face rows (what transformers does when it loads a GGUF)."""
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )
