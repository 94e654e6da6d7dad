"""Writing a GGUF file: metadata fields, then tensors quantized one at a time.

`gguf.GGUFWriter` keeps every tensor in memory until the file is written; a 1.5B model in f16
would hold 3 GB. Here the tensors are declared first (name, shape, type: all known before any
weight is read), then read, converted and written one by one, so memory holds one tensor.

The quantization rules are llama.cpp's `convert_hf_to_gguf.py` rules: one-dimensional tensors
(norms, biases) stay float32; matrices take the chosen type, and a matrix whose rows do not split
into whole Q8_0 blocks (32 values) falls back to f16.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

Quantization = Literal["f16", "bf16", "q8_0"]
QUANTIZATIONS: tuple[str, ...] = ("f16", "bf16", "q8_0")


class Field(NamedTuple):
    """One metadata value with its GGUF type (and the type of an array's items)."""

    value: Any
    type: Any  # gguf.GGUFValueType
    sub_type: Any = None


Metadata = dict[str, Field]


def string(value: str) -> Field:
    import gguf

    return Field(value, gguf.GGUFValueType.STRING)


def uint32(value: int) -> Field:
    import gguf

    return Field(int(value), gguf.GGUFValueType.UINT32)


def float32(value: float) -> Field:
    import gguf

    return Field(float(value), gguf.GGUFValueType.FLOAT32)


def boolean(value: bool) -> Field:
    import gguf

    return Field(bool(value), gguf.GGUFValueType.BOOL)


def strings(values: list[str]) -> Field:
    import gguf

    return Field(list(values), gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.STRING)


def int32s(values: list[int]) -> Field:
    import gguf

    return Field([int(v) for v in values], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)


@dataclass(frozen=True)
class TensorPlan:
    """A tensor to write: its GGUF name, its shape (numpy order) and where its values come from.

    `load()` returns the float32 values, already in llama.cpp's layout (q/k permuted).
    """

    name: str
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray]


def tensor_type(name: str, shape: tuple[int, ...], quantize: Quantization):
    """The GGML type a tensor is stored as, by convert_hf_to_gguf's rules."""
    import gguf

    q = gguf.GGMLQuantizationType
    if len(shape) <= 1 or name.endswith("_norm.weight"):
        return q.F32
    if quantize == "bf16":
        return q.BF16
    if quantize == "q8_0":
        block = gguf.GGML_QUANT_SIZES[q.Q8_0][0]
        return q.Q8_0 if shape[-1] % block == 0 else q.F16
    return q.F16


def file_type(quantize: Quantization) -> int:
    """`general.file_type`: what most tensors are (llama.cpp shows it as the model's type)."""
    import gguf

    return {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[quantize]


def encode(values: np.ndarray, qtype) -> np.ndarray:
    """float32 values as stored bytes of `qtype` (F32 and F16 as their numpy types)."""
    import gguf

    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == gguf.GGMLQuantizationType.F32:
        return values
    if qtype == gguf.GGMLQuantizationType.F16:
        return values.astype(np.float16)
    return gguf.quants.quantize(values, qtype)


def write_gguf(
    path: Path,
    arch: str,
    metadata: Metadata,
    tensors: Iterable[TensorPlan],
    quantize: Quantization,
) -> dict[str, int]:
    """Write the file; return how many tensors were stored as each type (`{"Q8_0": 210, ...}`).

    `metadata` must not hold `general.architecture` (the writer adds it from `arch`) nor the
    `GGUF.*` header fields.
    """
    import gguf

    writer = gguf.GGUFWriter(path, arch)
    for key, field in metadata.items():
        writer.add_key_value(key, field.value, field.type, field.sub_type)
    plans = list(tensors)
    types = [tensor_type(p.name, p.shape, quantize) for p in plans]
    for plan, qtype in zip(plans, types, strict=True):
        dtype, byte_shape = _stored(plan.shape, qtype)
        nbytes = int(np.prod(byte_shape)) * np.dtype(dtype).itemsize
        raw = None if dtype != np.uint8 else qtype
        writer.add_tensor_info(plan.name, byte_shape, np.dtype(dtype), nbytes, raw_dtype=raw)
    counts: dict[str, int] = {}
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for plan, qtype in zip(plans, types, strict=True):
            values = plan.load()
            if tuple(values.shape) != plan.shape:
                raise ValueError(f"{plan.name}: shape {values.shape}, declared {plan.shape}")
            writer.write_tensor_data(encode(values, qtype))
            counts[qtype.name] = counts.get(qtype.name, 0) + 1
    finally:
        writer.close()
    return counts


def _stored(shape: tuple[int, ...], qtype) -> tuple[Any, tuple[int, ...]]:
    """The numpy dtype and shape of a tensor's bytes as `encode` returns them."""
    import gguf

    q = gguf.GGMLQuantizationType
    if qtype == q.F32:
        return np.float32, shape
    if qtype == q.F16:
        return np.float16, shape
    return np.uint8, gguf.quants.quant_shape_to_byte_shape(shape, qtype)
