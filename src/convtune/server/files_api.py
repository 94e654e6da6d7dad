"""`/v1/files`: upload (multipart, streamed, checked), list, retrieve, delete, content."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, Response

from ..dataset.check import check_file
from ..dataset.findings import first_error
from ..errors import ConvtuneError
from . import ids, list_envelope
from .context import Context
from .errors import APIError
from .upload import receive_upload

OCTETS = "application/octet-stream"
# Checks are pure Python (the GIL runs one at a time anyway) and the first one of a process
# builds the token tables (0.5 s): 50 uploads checked at once spent 25 s building them 50 times.
CHECKS = threading.BoundedSemaphore(2)
FIELDS = {"purpose", "expires_after[anchor]", "expires_after[seconds]"}  # expiry: accepted, unused


def router(ctx: Context) -> APIRouter:
    api = APIRouter()

    @api.post("/files", operation_id="createFile")
    async def create_file(request: Request) -> dict[str, Any]:
        async with ctx.upload_folder() as folder:
            upload = await receive_upload(request, folder, ctx.max_upload_bytes)
            for name in upload.fields:
                if name not in FIELDS and name != "file":
                    raise APIError(
                        400, f"Unrecognized request argument supplied: {name}", param=name
                    )
            purpose = upload.fields.get("purpose")
            if purpose is None:
                raise APIError(400, "Missing required parameter: 'purpose'.", param="purpose")
            if purpose != "fine-tune":
                raise APIError(
                    400,
                    f"Invalid 'purpose': {purpose!r}; convtune serve stores fine-tune files only.",
                    param="purpose",
                    code="invalid_value",
                )
            if upload.path is None:
                raise APIError(400, "Missing required parameter: 'file'.", param="file")
            await anyio.to_thread.run_sync(check_upload, upload.path)
            uploaded = await ctx.gate(
                ctx.service.files.upload, upload.path, purpose, filename=upload.filename
            )
            return uploaded.to_dict()

    @api.get("/files", operation_id="listFiles")
    async def list_files(
        purpose: str | None = None,
        limit: int = 10000,
        order: str = Query("desc", pattern="^(asc|desc)$"),
        after: str | None = None,
    ) -> dict[str, Any]:
        list_envelope.check_limit(limit, 10000)
        if after is not None:
            ids.check(ids.FILE_ID, after, param="after", status=400)
        files = await ctx.gate(ctx.service.files.list)  # newest first
        if purpose is not None:
            files = [f for f in files if f.purpose == purpose]
        if order == "asc":
            files.reverse()
        files = list_envelope.after_cursor(files, after)
        return list_envelope.envelope(files[:limit], len(files) > limit)

    @api.get("/files/{file_id}", operation_id="retrieveFile")
    async def retrieve_file(file_id: str) -> dict[str, Any]:
        ids.check(ids.FILE_ID, file_id, param="file_id")
        return (await ctx.gate(ctx.service.files.get, file_id)).to_dict()

    @api.delete("/files/{file_id}", operation_id="deleteFile")
    async def delete_file(file_id: str) -> dict[str, Any]:
        ids.check(ids.FILE_ID, file_id, param="file_id")
        await ctx.gate(ctx.service.files.delete, file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    @api.get("/files/{file_id}/content", operation_id="downloadFile")
    async def download_file(file_id: str) -> Response:
        ids.check(ids.FILE_ID, file_id, param="file_id")
        found = await ctx.gate(ctx.service.files.get, file_id)
        if ctx.service.capabilities.file_paths:  # stream from disk
            path = await ctx.gate(ctx.service.files.path, file_id)
            return FileResponse(path, media_type=OCTETS, filename=found.filename)
        content = await ctx.gate(ctx.service.files.content, file_id)
        return Response(content, media_type=OCTETS)

    return api


def sweep_uploads(folder: Path, *, older_than: float = 3600.0) -> None:
    """Remove what uploads cut short by a killed server left behind (an hour old or more: a
    second server on the same data folder may be receiving one right now)."""
    if not folder.is_dir():
        return
    for leftover in folder.glob("upload-*"):
        try:
            if time.time() - leftover.stat().st_mtime > older_than:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def check_upload(path: Path) -> None:
    """Refuse a fine-tune file with format errors (400, first error with its line), as
    `convtune check` and the job's own validation would find them."""
    try:
        with CHECKS:
            report = check_file(path)  # errors only: the format's default model counts
    except ConvtuneError as exc:
        where = f"line {exc.line}: " if exc.line is not None else ""
        hint = f" ({exc.hint})" if exc.hint else ""
        raise APIError(
            400, f"Invalid file: {where}{exc.message}{hint}", param="file", code="invalid_file"
        ) from None
    first = first_error(report.findings)
    if first is None:
        return
    more = first.more_text()
    raise APIError(
        400,
        f"Invalid file format for fine-tuning: {first.located()}"
        + (f"; {more} (convtune check lists them)" if more else "")
        + ".",
        param="file",
        code="invalid_file_format",
    )
