"""`service.files` of the openai backend: uploads checked first, reused when identical.

A fine-tuning file is checked before it is sent (a file with errors is refused with its first
error's line), and again before a job uses it: read where convtune uploaded it from, if it has not
changed, else downloaded where the service allows. Where each upload came from is recorded
(`provenance`), so that deleting stays within what convtune sent.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..dataset.check import check_file
from ..dataset.findings import counted, first_error
from ..dataset.report import OPENAI_MIN_EXAMPLES
from ..errors import ConvtuneError, InputError, NotFound, TransientError
from ..metrics.results_csv import decode_base64_results
from ..service.contract import Files, UploadProgress
from ..service.objects import FileObject
from ..service.training_options import method_data_problem
from ..state.digest import file_sha256
from .conversions import ProgressReader, to_file

if TYPE_CHECKING:
    from .openai_service import OpenAIService


class OpenAIFiles(Files):
    service: OpenAIService

    def __init__(self, service: OpenAIService) -> None:
        super().__init__(service)
        # reports of the files this process checked before uploading them, by digest: creating
        # the job right after (`convtune train`) need not read the same bytes again
        self._checked: dict[str, Any] = {}

    def upload(
        self,
        path: Path,
        purpose: str = "fine-tune",
        *,
        filename: str | None = None,
        reuse: bool = True,
        progress: UploadProgress | None = None,
    ) -> FileObject:
        """Upload a file and wait until the service has processed it.

        A fine-tuning file is checked first (a file with errors is refused, with its first
        error's line). With `reuse`, a file already on the service with the same name, size and
        purpose is used instead, as OpenAI's old CLI did, unless its content is known to differ
        (convtune recorded a different digest, or the service lets it be downloaded and compared).
        """
        path = Path(path)
        if not path.is_file():
            raise ConvtuneError("no such file", path=path)
        name = filename or path.name
        stat = path.stat()
        digest = file_sha256(path)
        if purpose == "fine-tune":
            report = check_file(path, training=False)
            _refuse_errors(report, path)
            self._checked[digest] = report
        if reuse:
            existing = self._identical(name, stat.st_size, purpose, digest)
            if existing is not None:
                self._record_upload(
                    existing.id, existing.filename, purpose, path, digest, ours=False
                )
                if progress is not None:
                    progress(stat.st_size, stat.st_size)
                return self._processed(existing)
        with ProgressReader(path, progress) as reader, self.service.call(f"upload {name}"):
            created = self.service.client.files.create(file=(name, reader), purpose=purpose)
        if progress is not None:
            progress(stat.st_size, stat.st_size)
        self._record_upload(created.id, name, purpose, path, digest, ours=True)
        return self._processed(to_file(created))

    def _record_upload(
        self, file_id: str, filename: str, purpose: str, path: Path, digest: str, *, ours: bool
    ) -> None:
        """Remember where a file on the service came from (and whether convtune sent it): its
        checks can then read the local copy, and deleting stays within what convtune sent."""
        stat = path.stat()
        self.service.record.add_file(
            file_id,
            filename=filename,
            size=stat.st_size,
            purpose=purpose,
            sha256=digest,
            path=path.resolve(),
            mtime_ns=stat.st_mtime_ns,
            ours=ours,
        )

    def _identical(self, name: str, size: int, purpose: str, digest: str) -> FileObject | None:
        known = self.service.record.files()
        for candidate in self.list():
            if (
                candidate.filename != name
                or candidate.bytes != size
                or candidate.purpose != purpose
                or candidate.status in ("error", "deleted")
            ):
                continue
            recorded = known.get(candidate.id)
            if recorded is not None:
                if recorded["sha256"] == digest:
                    return candidate
                continue
            same = self._same_content(candidate.id, digest)
            if same or same is None:  # None: the service does not let it be read back
                return candidate
        return None

    def _same_content(self, file_id: str, digest: str) -> bool | None:
        try:
            content = self.raw_content(file_id)
        except TransientError:
            raise
        except ConvtuneError:
            return None
        return hashlib.sha256(content).hexdigest() == digest

    def _processed(self, file: FileObject) -> FileObject:
        """Wait until the service has processed `file` (or say why it could not)."""
        deadline = time.monotonic() + self.service.processing_timeout
        delay = 0.2
        while file.status not in ("processed", None, ""):
            if file.status in ("error", "deleted"):
                raise ConvtuneError(
                    f"the service could not process {file.filename} ({file.id}): {file.status}"
                )
            if time.monotonic() > deadline:
                raise ConvtuneError(
                    f"{file.filename} ({file.id}) is still {file.status} after"
                    f" {self.service.processing_timeout:g} s",
                    hint="try again later; convtune files list --backend openai shows its status",
                )
            self.service.sleep(delay)
            delay = min(delay * 2, 5.0)
            file = self.get(file.id)
        return file

    def get(self, file_id: str) -> FileObject:
        with self.service.call(f"file {file_id}"):
            return to_file(self.service.client.files.retrieve(file_id))

    def list(self) -> list[FileObject]:
        with self.service.call("list files"):
            return [to_file(f) for f in self.service.client.files.list()]

    def delete(self, file_id: str) -> None:
        with self.service.call(f"delete file {file_id}"):
            self.service.client.files.delete(file_id)
        self.service.record.forget_file(file_id)

    def content(self, file_id: str) -> bytes:
        """The file's bytes; a results file OpenAI serves base64-encoded comes back decoded."""
        return decode_base64_results(self.raw_content(file_id))

    def raw_content(self, file_id: str) -> bytes:
        with self.service.call(f"download file {file_id}"):
            return self.service.client.files.content(file_id).read()

    def uploaded_from(self, file_id: str) -> Path | None:
        recorded = self.service.record.file(file_id)
        if recorded is None or not recorded["path"]:
            return None
        path = Path(recorded["path"])
        try:
            stat = path.stat()
        except OSError:
            return None
        unchanged = (stat.st_size, stat.st_mtime_ns) == (recorded["bytes"], recorded["mtime_ns"])
        return path if unchanged else None

    def check_uploaded(self, file_id: str, *, training: bool, method: str = "supervised") -> None:
        """Refuse a file with errors (or, for OpenAI, too few examples) before a job uses it.

        The file is read where it was uploaded from, if convtune uploaded it and it has not
        changed since; else downloaded, if the service allows; else left to the service.
        """
        recorded = self.service.record.file(file_id)
        path = self.uploaded_from(file_id)
        if recorded is not None and path is not None:
            # errors and the number of examples, all `_refuse` reads, do not depend on
            # `training`: a report from the upload serves
            report = self._checked.get(recorded["sha256"]) or check_file(path, training=training)
            self._refuse(report, path, training, method)
            return
        try:
            content = self.raw_content(file_id)
        except NotFound:
            raise
        except TransientError:
            raise
        except ConvtuneError:  # OpenAI does not let fine-tuning files be downloaded
            return
        name = recorded["filename"] if recorded else file_id
        with tempfile.TemporaryDirectory(prefix="convtune-") as folder:
            copy = Path(folder) / f"{file_id}.jsonl"
            copy.write_bytes(content)
            report = check_file(copy, training=training)
        report.path = name
        self._refuse(report, Path(name), training, method)

    def _refuse(self, report, path: Path, training: bool, method: str = "supervised") -> None:
        _refuse_errors(report, path)
        if (problem := method_data_problem(method, report.format)) is not None:
            raise InputError(problem, path=path)
        if training and self.service.is_openai and report.examples < OPENAI_MIN_EXAMPLES:
            raise ConvtuneError(
                f"{counted(report.examples, 'example')}: OpenAI refuses to train on fewer than"
                f" {OPENAI_MIN_EXAMPLES}",
                path=path,
            )


def _refuse_errors(report, path: Path) -> None:
    """A `ConvtuneError` at the first error's line, if the report has errors."""
    first = first_error(report.findings)
    if first is None:
        return
    raise ConvtuneError(
        first.message,
        path=path,
        line=first.line,
        hint=f"{counted(report.errors, 'error')} in all; convtune check {path} lists them"
        if first.more
        else "the service would refuse this file",
    )
