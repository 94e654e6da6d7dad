"""A GGUF file's metadata and tensor list, read without its tensor data.

`gguf.GGUFReader` builds a numpy view per value and takes 5 seconds on SmolLM2's 49,152 tokens
and 48,900 merges (two cores); reading the same header with `struct` takes a fraction of a
second. Values come back as plain Python values with their GGUF types, ready to be written again
(`gguf_writer.Field`). `read_tensor` reads one tensor's values, to check what was written.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ConvtuneError
from .gguf_writer import Field, Metadata

STRING, ARRAY = 8, 9
_SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]  # numpy order (ggml's dimensions reversed)
    ggml_type: int
    offset: int = 0  # where its bytes start in the file


def read_header(path: Path) -> tuple[Metadata, list[TensorEntry]]:
    """Every metadata field (the `GGUF.*` header counts excluded) and every tensor's entry."""
    import gguf

    try:
        with open(path, "rb", buffering=1 << 20) as f:
            if f.read(4) != b"GGUF":
                raise ConvtuneError("not a GGUF file", path=path)
            version, n_tensors, n_fields = struct.unpack("<IQQ", f.read(20))
            if version not in (2, 3):
                raise ConvtuneError(f"GGUF version {version} is not supported", path=path)
            metadata: Metadata = {}
            for _ in range(n_fields):
                key = _string(f)
                (kind,) = struct.unpack("<I", f.read(4))
                if kind == ARRAY:
                    (sub,) = struct.unpack("<I", f.read(4))
                    (count,) = struct.unpack("<Q", f.read(8))
                    value = (
                        [_value(f, sub) for _ in range(count)]
                        if sub in (STRING, ARRAY)
                        else (list(_array(f, sub, count)))
                    )
                    metadata[key] = Field(value, gguf.GGUFValueType(kind), gguf.GGUFValueType(sub))
                else:
                    metadata[key] = Field(_value(f, kind), gguf.GGUFValueType(kind))
            entries = []
            for _ in range(n_tensors):
                name = _string(f)
                (n_dims,) = struct.unpack("<I", f.read(4))
                dims = struct.unpack(f"<{n_dims}Q", f.read(8 * n_dims))
                ggml_type, offset = struct.unpack("<IQ", f.read(12))
                entries.append((name, tuple(reversed(dims)), ggml_type, offset))
            align = int(metadata.get("general.alignment", Field(32, None)).value)
            start = -(-f.tell() // align) * align  # tensor data begins at the next multiple
            tensors = [TensorEntry(n, s, t, start + o) for n, s, t, o in entries]
    except (OSError, struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ConvtuneError(f"cannot read the GGUF file: {exc}", path=path) from exc
    return metadata, tensors


def _string(f: BinaryIO) -> str:
    (size,) = struct.unpack("<Q", f.read(8))
    return f.read(size).decode("utf-8")


def _value(f: BinaryIO, kind: int):
    if kind == STRING:
        return _string(f)
    if kind == ARRAY:
        raise ValueError("nested arrays are not supported")
    fmt = "<" + _SCALARS[kind]
    (value,) = struct.unpack(fmt, f.read(struct.calcsize(fmt)))
    return value


def _array(f: BinaryIO, kind: int, count: int):
    fmt = f"<{count}{_SCALARS[kind]}"
    return struct.unpack(fmt, f.read(struct.calcsize(fmt)))


def read_tensor(path: Path, entry: TensorEntry) -> np.ndarray:
    """A tensor's values as float32, dequantized with the gguf package."""
    import gguf

    qtype = gguf.GGMLQuantizationType(entry.ggml_type)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    byte_shape = (*entry.shape[:-1], entry.shape[-1] // block * size)
    count = int(np.prod(byte_shape))
    data = np.fromfile(path, dtype=np.uint8, count=count, offset=entry.offset).reshape(byte_shape)
    return gguf.quants.dequantize(data, qtype).reshape(entry.shape)
