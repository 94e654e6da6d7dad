"""Multipart uploads, streamed to a temporary file under a size limit.

FastAPI's own `UploadFile` reads the whole body before the route runs and sets no size limit;
here the body is parsed as it arrives (python-multipart's push parser): the file part goes
straight to disk, byte-counted, and the upload is refused with 413 once it passes the limit.
Past the limit the rest of the body is read and dropped (up to `DRAIN` bytes more) so that the
client, still sending, gets the 413 rather than a reset connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import APIError

DRAIN = 16 << 20  # bytes read and dropped past the limit before answering 413
MAX_FIELD = 1024  # bytes in a text field (purpose, expires_after[...])
MAX_PARTS = 8


@dataclass
class Upload:
    path: Path | None = None  # where the file part was written; None if there was none
    filename: str = ""
    size: int = 0
    fields: dict[str, str] = field(default_factory=dict)


def too_large(max_bytes: int) -> APIError:
    return APIError(
        413,
        f"The file is larger than this server accepts ({_size(max_bytes)};"
        " convtune serve --max-upload-mb sets the limit).",
        param="file",
        code="file_too_large",
    )


async def receive_upload(request: Request, folder: Path, max_bytes: int) -> Upload:
    """Parse a multipart/form-data body: the `file` part into `folder`, text fields kept."""
    kind, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise APIError(400, "Uploads must be sent as multipart/form-data.", code="invalid_body")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + DRAIN:
        raise too_large(max_bytes)
    state = _Parts(folder, max_bytes)
    parser = MultipartParser(boundary, state.callbacks())
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if state.over and received > max_bytes + DRAIN:
                break
            parser.write(chunk)
        else:
            parser.finalize()
    except MultipartParseError as exc:
        raise APIError(400, f"Malformed multipart body: {exc}", code="invalid_body") from None
    except ClientDisconnect:
        raise APIError(400, "The upload was interrupted.", code="invalid_body") from None
    finally:
        state.close()
    if state.over:
        raise too_large(max_bytes)
    if not state.ended:
        raise APIError(400, "The multipart body ended early.", code="invalid_body")
    return state.upload


class _Parts:
    """python-multipart's callbacks: headers of each part, then its data, to a file or a field."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.upload = Upload()
        self.over = False
        self.ended = False
        self.parts = 0
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: BinaryIO | None = None
        self._value: bytearray | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise APIError(400, f"Too many form fields (at most {MAX_PARTS}).")
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if self._name == "file" and filename is not None:
            if self.upload.path is not None:
                raise APIError(400, "Only one file per upload.", param="file")
            self.upload.filename = safe_filename(filename.decode("utf-8", "replace"))
            self.upload.path = self.folder / "upload.jsonl"
            self._file = open(self.upload.path, "wb")  # noqa: SIM115 - closed in _part_end/close
        else:
            self._value = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                self.over = True
                self._file.close()
                self._file = None
                assert self.upload.path is not None
                self.upload.path.unlink(missing_ok=True)
            else:
                self._file.write(data[start:end])
        elif self._value is not None and not self.over:
            self._value.extend(data[start:end])
            if len(self._value) > MAX_FIELD:
                raise APIError(400, f"The form field {self._name!r} is too long.")

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self._value is not None:
            try:
                self.upload.fields[self._name] = self._value.decode("utf-8")
            except UnicodeDecodeError:
                raise APIError(400, f"The form field {self._name!r} is not UTF-8.") from None
            self._value = None

    def _end(self) -> None:
        self.ended = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def safe_filename(name: str) -> str:
    """The last component of a client's file name, printable, at most 200 characters."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable()).strip()
    if name in ("", ".", ".."):
        name = "upload.jsonl"
    return name[-200:]


def _size(n: int) -> str:
    return f"{n / (1 << 20):g} MB" if n >= 1 << 20 else f"{n:,} bytes"
