"""Counting tokens in a child process, beside `prepare`: `python -m convtune.dataset.token_process ENC`.

`CountingProcess` is the parent's side; `main` the child's. Frames on stdin and stdout: a 4-byte little-endian length, then a `marshal`ed list (strings in,
their token counts out). A plain subprocess rather than `multiprocessing`, so that calling
`convtune.prepare` from a script without an `if __name__ == "__main__"` guard stays safe.
"""

from __future__ import annotations

import contextlib
import marshal
import queue
import struct
import subprocess
import sys
import threading

from ..errors import ConvtuneError
from .encodings import tiktoken_encoding

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


class CountingProcess:
    """Counts batches of strings in a child process, so counting overlaps the pipeline's work.

    `submit` never blocks (a thread feeds the child's stdin); `result` returns the counts of the
    oldest batch not yet returned. On a 2-core machine this takes the token count, the slowest
    step of `prepare`, off the critical path.
    """

    def __init__(self, encoding: str) -> None:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "convtune.dataset.token_process", encoding],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        stdin = self._child.stdin
        try:
            while (texts := self._outbox.get()) is not None:
                write_frame(stdin, texts)
        except (BrokenPipeError, OSError):
            pass  # the child died; result() reports it
        finally:
            with contextlib.suppress(OSError):
                stdin.close()  # type: ignore[union-attr]

    def submit(self, texts: list[str]) -> None:
        self._outbox.put(texts)

    def result(self) -> list[int]:
        counts = read_frame(self._child.stdout)
        if counts is None:
            self._child.wait(timeout=5)
            detail = (self._child.stderr.read() or b"").decode(errors="replace").strip()  # type: ignore[union-attr]
            last = detail.splitlines()[-1] if detail else f"exit code {self._child.returncode}"
            raise ConvtuneError(f"the token counting process stopped: {last}")
        return counts  # type: ignore[return-value]

    def count_many(self, texts: list[str]) -> list[int]:
        """Counts of a few strings, synchronously (only when no batch is in flight)."""
        self.submit(texts)
        return self.result()

    def close(self) -> None:
        self._outbox.put(None)
        self._feeder.join(timeout=5)
        try:
            self._child.wait(timeout=5)
        except Exception:  # pragma: no cover - only if the child hangs
            self._child.kill()
            self._child.wait()
        for stream in (self._child.stdout, self._child.stderr):
            if stream is not None:
                stream.close()


def main() -> None:
    encode = tiktoken_encoding(sys.argv[1]).encode_ordinary
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while (texts := read_frame(source)) is not None:
        write_frame(sink, [len(encode(t)) for t in texts])  # type: ignore[union-attr]


if __name__ == "__main__":
    main()
