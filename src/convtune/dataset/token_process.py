"""The token-counting child process of `prepare`: `python -m convtune.dataset.token_process ENCODING`.

Frames on stdin and stdout: a 4-byte little-endian length, then a `marshal`ed list (strings in,
their token counts out). A plain subprocess rather than `multiprocessing`, so that calling
`convtune.prepare` from a script without an `if __name__ == "__main__"` guard stays safe.
"""

from __future__ import annotations

import marshal
import struct
import sys

HEADER = struct.Struct("<I")


def read_frame(stream) -> object | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return marshal.loads(stream.read(size))


def write_frame(stream, value: object) -> None:
    data = marshal.dumps(value)
    stream.write(HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def main() -> None:
    from .tokens import _tiktoken_encoding

    encode = _tiktoken_encoding(sys.argv[1]).encode_ordinary
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (texts := read_frame(source)) is not None:
        write_frame(sink, [len(encode(t)) for t in texts])  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
