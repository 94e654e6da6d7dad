"""A Hugging Face model's shape as llama.cpp reads it: the `{arch}.*` metadata of a GGUF.

Only the families llama.cpp runs under an architecture whose metadata is written here are
exported: Llama and Mistral (llama.cpp's "llama") and Qwen2 ("qwen2"). Anything else is refused
with one line rather than written as a file llama.cpp would load and run as nonsense. Rope
scaling other than the default is refused for the same reason (llama3 and yarn scaling need
extra tensors and keys that are not written here).
"""

from __future__ import annotations

from typing import Any

from ..errors import ConvtuneError
from .gguf_writer import Metadata, float32, uint32

# Hugging Face model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}


def gguf_architecture(config: Any) -> str:
    """The llama.cpp architecture of a transformers config, or a one-line error."""
    model_type = getattr(config, "model_type", None)
    arch = ARCHITECTURES.get(model_type or "")
    if arch is None:
        raise ConvtuneError(
            f"cannot export a {model_type!r} model to GGUF: convtune writes llama, mistral and"
            " qwen2 models",
            hint="use --format hf, or llama.cpp's convert_hf_to_gguf.py on the exported folder",
        )
    return arch


def rope_theta(config: Any) -> float:
    """The rope base frequency (transformers 5 keeps it in `rope_parameters`)."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta if theta is not None else 10000.0)


def head_dim(config: Any) -> int:
    return int(
        getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    )


def model_metadata(config: Any, arch: str) -> Metadata:
    """The `{arch}.*` keys convert_hf_to_gguf writes for these families."""
    _refuse_rope_scaling(config)
    n_head = int(config.num_attention_heads)
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    dim = head_dim(config)
    meta: Metadata = {
        f"{arch}.context_length": uint32(config.max_position_embeddings),
        f"{arch}.embedding_length": uint32(config.hidden_size),
        f"{arch}.block_count": uint32(config.num_hidden_layers),
        f"{arch}.feed_forward_length": uint32(config.intermediate_size),
        f"{arch}.attention.head_count": uint32(n_head),
        f"{arch}.attention.head_count_kv": uint32(n_head_kv),
        f"{arch}.rope.freq_base": float32(rope_theta(config)),
        f"{arch}.attention.layer_norm_rms_epsilon": float32(config.rms_norm_eps),
        f"{arch}.vocab_size": uint32(config.vocab_size),
    }
    if arch == "llama":
        meta[f"{arch}.rope.dimension_count"] = uint32(dim)
    if dim != config.hidden_size // n_head:  # heads narrower or wider than hidden / heads
        meta[f"{arch}.attention.key_length"] = uint32(dim)
        meta[f"{arch}.attention.value_length"] = uint32(dim)
    return meta


def _refuse_rope_scaling(config: Any) -> None:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    kind = (params or {}).get("rope_type") or (params or {}).get("type") or "default"
    if kind != "default":
        raise ConvtuneError(
            f"cannot export a model with {kind!r} rope scaling to GGUF yet",
            hint="use --format hf, then llama.cpp's convert_hf_to_gguf.py",
        )
