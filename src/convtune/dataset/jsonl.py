"""JSON Lines in and out: atomic writes, and reading with line numbers."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError, OutputExistsError

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": ")).encode


# The C string encoder json.dumps itself uses (json.encoder keeps it, or its Python fallback).
_string = json.encoder.encode_basestring


def dumps(record: dict) -> str:
    """One JSON line: UTF-8 text as is (not \\u escapes), keys in the order given.

    Prompt/completion records, the bulk of large legacy datasets, skip the generic encoder;
    the bytes are the same as `json.dumps(record, ensure_ascii=False)`.
    """
    if len(record) == 2 and "prompt" in record:
        prompt, completion = record["prompt"], record.get("completion")
        if type(prompt) is str and type(completion) is str:
            return f'{{"prompt": {_string(prompt)}, "completion": {_string(completion)}}}'
    return _dumps(record)


class AtomicWriter:
    """Writes to a temporary file beside `path` and renames it into place on `commit`.

    A reader never sees half a file, and an interrupted run leaves the old file untouched. An
    existing `path` is an error unless `force`, checked before anything is written.
    """

    def __init__(self, path: str | Path, *, force: bool = False) -> None:
        self.path = Path(path)
        if self.path.exists() and not force:
            raise OutputExistsError(
                "already exists", path=self.path, hint="use --force to overwrite it"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "w", encoding="utf-8", newline="\n", buffering=1 << 20)
        self.write = self._file.write
        self.lines = 0

    def write_line(self, line: str) -> None:
        self.write(line)
        self.write("\n")
        self.lines += 1

    def commit(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.chmod(self._tmp, 0o644)
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def json_problem(exc: json.JSONDecodeError, line: str | None = None) -> str:
    """The parser's words with the column it stopped at: "Unterminated string starting at column
    12", "Expecting ',' delimiter at column 40" (its `msg` alone can end in a dangling "at").

    Given the `line` that failed, an error at its line break is the line's own (a string left
    open reads as "Invalid control character" at the break, not where it starts).
    """
    if line is not None:
        content = line.rstrip("\r\n")
        if exc.pos >= len(content) and content != line:
            try:
                json.loads(content)
            except json.JSONDecodeError as own:
                exc = own
    joint = " " if exc.msg.endswith(" at") else " at "
    return f"{exc.msg}{joint}column {exc.colno}"


def cr_line_endings(text: str, exc: json.JSONDecodeError) -> bool:
    """Whether `text` failed to parse because it is a whole file whose lines end in CR alone
    (old Mac line endings): one JSON value parsed, then a CR, then the next one ("Extra data")."""
    return exc.msg == "Extra data" and "\r" in text[: exc.pos]


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """`(line number, text)` for each non-blank line of a UTF-8 JSONL file.

    Lines are decoded one by one, so a bad byte is reported on its own line.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path=path)
    if path.is_dir():
        raise InputError("is a folder, not a JSONL file", path=path)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator is done
    except OSError as exc:
        raise InputError(f"cannot read: {exc.strerror}", path=path) from None
    with f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"not valid UTF-8 at byte {exc.start} of the line ({exc.reason})",
                    path=path,
                    line=number,
                    hint="JSONL files must be UTF-8",
                ) from None
            if text.strip():
                yield number, text
