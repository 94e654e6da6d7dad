"""The lines of a CSV file for csv.reader, checked on their way in, at C speed.

`LineFeed` gives csv.reader the file's lines, split at the file's own line ending only, from a C
TextIOWrapper (faster than the universal newlines a bare csv.reader is usually given). Below it,
`_Checked` searches the bytes 32k at a time for NUL (an error at once) and for quotes: the lines
that hold one are noted, so that only rows on them take a closer look (`next_flag`), and the last
chunks are kept, so that such a row's raw text can be looked at again (`raw`). A file that is not
ASCII-compatible (UTF-16, UTF-32) is turned into UTF-8 on the way, so the same byte checks apply.
"""

from __future__ import annotations

import codecs
import io
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputError

CHUNK = 1 << 15  # bytes checked, decoded and split at a time
NEVER = 1 << 62  # a line number past any file


class LineFeed:
    """The file's lines for csv.reader, split at `newline` only, checked on their way in.

    The lines come from a C TextIOWrapper; below it, the file's bytes pass through `_Checked`
    32k at a time, where each chunk is searched at C speed for NUL and for quotes. The lines
    that hold a quote are noted (`next_flag`: the first such line not yet passed; their numbers
    come from csv's own line count when the chunk is read, plus the line breaks before each
    quote) and the last chunks are kept, so that a suspicious row's raw text can be looked at
    again. A file that is not ASCII-compatible (UTF-16, UTF-32) is turned into UTF-8 on the way,
    so the same byte checks apply.
    """

    def __init__(self, path: Path, source: io.RawIOBase, encoding: str, newline: str) -> None:
        self.path = path
        self.source = source
        self.encoding = encoding
        self.newline = newline
        self.reader: Any = None  # the csv.reader reading these lines: its line count
        transcode = None if _ascii_compatible(encoding) else encoding
        self.checked = _Checked(self, source, newline.encode("ascii"), transcode)
        self.text_encoding = "utf-8" if transcode else encoding
        self.text = io.TextIOWrapper(self.checked, encoding=self.text_encoding, newline=newline)
        self.text._CHUNK_SIZE = CHUNK  # type: ignore[attr-defined]
        self.next_flag = NEVER  # the first line not yet passed of the flagged range ahead
        self.flag_end = NEVER  # the last line of that range
        self.flags: deque[list[int]] = deque()  # [first, last] line ranges that hold a quote

    def __iter__(self) -> Iterator[str]:
        return iter(self.text)

    def close(self) -> None:
        self.text.close()

    def lines_read(self) -> int:
        """Lines handed to csv so far: all the lines before the chunk now being read."""
        return self.reader.line_num if self.reader is not None else 0

    def flag(self, first: int, last: int) -> None:
        """Lines `first`..`last` hold a quote: rows on them take the slow path."""
        if self.flags and self.flags[-1][1] >= first - 1:
            self.flags[-1][1] = max(self.flags[-1][1], last)
        else:
            self.flags.append([first, last])
        self.next_flag, self.flag_end = self.flags[0]

    def passed(self, line: int) -> None:
        """Rows up to `line` are read: move `next_flag` (and `flag_end`) past it.

        Rows inside a flagged range need not call this until one reaches its end.
        """
        flags = self.flags
        while flags and flags[0][1] <= line:
            flags.popleft()
        if flags and flags[0][0] <= line:
            flags[0][0] = line + 1
        self.next_flag, self.flag_end = flags[0] if flags else (NEVER, NEVER)

    def raw(self, first: int, last: int) -> str:
        """The text of lines `first`..`last` (1-based), from the kept chunks or read again."""
        data = self.checked.lines(first, last)
        if data is not None:
            text = data.decode(self.text_encoding.replace("-sig", ""), errors="replace")
            if first == 1 and self.text_encoding == "utf-8-sig" and text[:1] == "\ufeff":
                text = text[1:]  # the decoder dropped it from what csv read
            return text
        text = self.text_from(first, NEVER, last - first + 1)  # a very long row: slow path
        return text

    def text_from(self, first: int, limit: int, count: int = NEVER) -> str:
        """Up to `limit` characters (or `count` lines) from line `first` on, reading the file
        again (slow path)."""
        with open(self.path, "rb", buffering=0) as f:
            again = LineFeed(self.path, f, self.encoding, self.newline)
            out: list[str] = []
            size = 0
            for number, line in enumerate(again, start=1):
                if number >= first:
                    out.append(line)
                    size += len(line)
                    if size >= limit or len(out) >= count:
                        break
            again.close()
            return "".join(out)


def _ascii_compatible(encoding: str) -> bool:
    """True when the encoding writes NUL, quotes, delimiters and line breaks as ASCII bytes."""
    probe = '\x00\n\r";,\t|'
    try:
        return probe.encode(encoding.replace("-sig", "")) == probe.encode("ascii")
    except (UnicodeError, LookupError):
        return False


class _Checked(io.BufferedIOBase):
    """The bytes of the file on their way to the decoder, searched for NUL and quotes."""

    KEEP = 16  # chunks kept for `lines`: 512k, more than a row usually spans
    DENSE = 16  # quote lines noted one by one per chunk; beyond, the rest of it is flagged

    def __init__(
        self, feed: LineFeed, source: io.RawIOBase, nl: bytes, transcode: str | None
    ) -> None:
        self.feed = feed
        self.source = source
        self.nl = nl
        self.decoder = codecs.getincrementaldecoder(transcode)() if transcode else None
        self.pending = b""  # transcoded bytes not handed out yet
        self.done = False
        self.count = 0  # chunks read so far
        # kept chunks: (its number, lines before it, its bytes, where its quote lines start)
        self.kept: deque[tuple[int, int, bytes, dict[int, int]]] = deque(maxlen=self.KEEP)
        self.cursor = (-1, 0, 0)  # (chunk number, line breaks before offset, offset)

    def readable(self) -> bool:
        return True

    def read1(self, size: int = -1) -> bytes:
        data = self._read(size if size > 0 else CHUNK)
        if data:
            self._check(data)
        return data

    read = read1

    def _read(self, size: int) -> bytes:
        if self.decoder is None:
            return self.source.read(size) or b""
        while len(self.pending) < size and not self.done:
            raw = self.source.read(size) or b""
            self.done = not raw
            self.pending += self.decoder.decode(raw, final=self.done).encode("utf-8")
        data, self.pending = self.pending[:size], self.pending[size:]
        return data

    def _check(self, data: bytes) -> None:
        base = self.feed.lines_read()
        nl = self.nl
        if b"\x00" in data:
            text = data.decode("latin-1")  # one character per byte: offsets stay those of bytes
            raise nul_error(self.feed.path, text, data.index(b"\x00"), base, nl.decode())
        starts: dict[int, int] = {}  # line -> its offset, for the lines that hold a quote
        self.kept.append((self.count, base, data, starts))
        self.count += 1
        at = data.find(b'"')
        if at < 0:
            return
        feed = self.feed
        line = base + 1 + data.count(nl, 0, at)
        while at >= 0:
            if len(starts) == self.DENSE:  # quotes on most lines: flag the rest of the chunk
                feed.flag(line, line + data.count(nl, at))
                return
            feed.flag(line, line)
            begin = data.rfind(nl, 0, at)
            if begin >= 0:
                starts[line] = begin + 1
            end = data.find(nl, at)
            if end < 0:
                break
            nxt = data.find(b'"', end)
            if nxt < 0:
                break
            line += 1 + data.count(nl, end + 1, nxt)
            at = nxt

    def lines(self, first: int, last: int) -> bytes | None:
        """The bytes of lines `first`..`last` (1-based) if the kept chunks hold them all."""
        a = self._start(first)
        b = a if last == first else self._start(last)
        if a is None or b is None:
            return None
        kept = self.kept
        oldest = kept[0][0]
        if a[0] == b[0]:  # one chunk (nearly always): one slice
            data = kept[a[0] - oldest][2]
            end = data.find(self.nl, b[1])
            if end >= 0 or a[0] == kept[-1][0]:
                return data[a[1] : end + 1 if end >= 0 else len(data)]
        parts: list[bytes] = []
        for index in range(a[0] - oldest, len(kept)):
            number, _, data, _ = kept[index]
            low = a[1] if number == a[0] else 0
            if number < b[0]:
                parts.append(data[low:])
                continue
            end = data.find(self.nl, b[1] if number == b[0] else 0)
            if end >= 0:
                parts.append(data[low : end + 1])
                break
            parts.append(data[low:])
        return b"".join(parts)

    def _start(self, line: int) -> tuple[int, int] | None:
        """(chunk number, offset) where `line` starts, or None if that is no longer kept.

        A line that holds a quote (the first and last line of every row looked at) was noted
        when its chunk was read; otherwise the search goes on from where the last one ended
        (rows are looked at in order).
        """
        wanted = line - 1  # the line starts after this many line breaks
        if wanted == 0:
            return (0, 0) if self.kept and self.kept[0][0] == 0 else None
        following = NEVER  # the line breaks before the next newer chunk
        for number, base, data, starts in reversed(self.kept):  # the row is recent
            if not base < wanted <= following:
                following = base
                continue
            if line in starts:
                return number, starts[line]
            _, seen, at = self.cursor if self.cursor[0] == number else (number, base, 0)
            if seen > wanted:
                seen, at = base, 0
            while seen < wanted:
                found = data.find(self.nl, at)
                if found < 0:
                    return None
                seen += 1
                at = found + 1
            self.cursor = (number, seen, at)
            return number, at
        return None


def nul_error(path: Path, text: str, at: int, lines_before: int, newline: str) -> InputError:
    """A NUL character: a damaged or binary file, or UTF-16 read as a byte encoding."""
    line = lines_before + 1 + text.count(newline, 0, at)
    sample = text[:2000]
    nuls = sample.count("\x00")
    if nuls * 4 >= len(sample):
        odd = sum(1 for i, ch in enumerate(sample) if ch == "\x00" and i % 2)
        order = "le" if odd * 2 >= nuls else "be"
        return InputError(
            "the file looks like UTF-16 text without a byte-order mark (NUL between letters)",
            path=path,
            line=line,
            hint=f"give --encoding utf-16-{order}, or save it from Excel as 'CSV UTF-8'",
        )
    return InputError(
        "a NUL character (byte 0x00) in the text: the file is damaged, or not a text file",
        path=path,
        line=line,
        hint="save it again as 'CSV UTF-8', or give its encoding with --encoding",
    )
