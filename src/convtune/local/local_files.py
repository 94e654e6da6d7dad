"""`service.files` of the local backend: uploads copied into the data folder, rows in the store.

An identical upload (same bytes, name and purpose) is stored once, however many threads send it
at once; a file is refused for deleting while a job that has not ended still reads it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Conflict, ConvtuneError, NotFound, OptionError
from ..service.contract import Files, UploadProgress
from ..service.objects import ACTIVE, FileObject, new_id
from ..state.digest import file_sha256

if TYPE_CHECKING:
    from .local_service import LocalService

PURPOSES = ("fine-tune", "fine-tune-results")


class LocalFiles(Files):
    service: LocalService

    def __init__(self, service: LocalService) -> None:
        super().__init__(service)
        self._uploading = threading.Lock()

    def upload(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        reuse: bool = True,
        progress: UploadProgress | None = None,
    ) -> FileObject:
        """Copy a JSONL file into the data directory; with `reuse`, an earlier upload of the
        very same bytes, name and purpose is returned instead.

        `filename` names the file as the uploader called it (the server receives uploads into
        temporary files); by default the path's own name.
        """
        path = Path(path)
        if purpose not in PURPOSES:
            raise OptionError(f"unknown purpose {purpose!r}; use fine-tune")
        if not path.is_file():
            raise ConvtuneError("no such file", path=path)
        name = filename or path.name
        total = path.stat().st_size
        digest = file_sha256(path)
        with self._uploading:  # the same bytes uploaded twice at once are stored once
            existing = self.service.store.find_file(digest, name, purpose) if reuse else None
            if existing is not None:
                if progress is not None:
                    progress(total, total)
                return existing
            return self._store_file(path, name, purpose, digest, total, progress)

    def _store_file(
        self,
        path: Path,
        name: str,
        purpose: str,
        digest: str,
        total: int,
        progress: UploadProgress | None,
    ) -> FileObject:
        file_id = new_id("file-")
        target = self.service.home / "files" / f"{file_id}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp")
        done = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
        os.replace(tmp, target)
        return self.service.store.add_file(
            name, target.stat().st_size, purpose, target, digest, file_id
        )

    def path(self, file_id: str) -> Path:
        found = self.service.store.get_file(file_id)
        if found is None:
            raise NotFound(f"no file {file_id!r}")
        return found[1]

    def get(self, file_id: str) -> FileObject:
        found = self.service.store.get_file(file_id)
        if found is None:
            raise NotFound(f"no file {file_id!r}")
        return found[0]

    def list(self) -> list[FileObject]:
        return self.service.store.list_files()

    def delete(self, file_id: str) -> None:
        """Remove a file; refused (`Conflict`) while a job that has not ended still reads it."""
        path = self.path(file_id)
        for job_id in self.service.store.job_ids_with_status((*ACTIVE, "paused")):
            job = self.service.store.get_job(job_id)
            if job is not None and file_id in (job.training_file, job.validation_file):
                raise Conflict(
                    f"file {file_id} is in use by job {job_id} ({job.status})",
                    hint="cancel the job first",
                )
        self.service.store.delete_file(file_id)
        path.unlink(missing_ok=True)

    def content(self, file_id: str) -> bytes:
        return self.path(file_id).read_bytes()
