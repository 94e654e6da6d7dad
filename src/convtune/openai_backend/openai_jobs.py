"""`service.jobs` of the openai backend: OpenAI's fine-tuning jobs, their events and checkpoints.

A job is created with only the parameters the user set, after its files are checked, and tagged
`metadata.created_by = "convtune"` (with this installation's id) so that deleting can stay within
what convtune made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import OptionError
from ..service.contract import JobRequest, Jobs
from ..service.objects import Checkpoint, Job, JobEvent
from ..service.training_options import refuse_trainer_options
from .conversions import to_checkpoint, to_event, to_job

if TYPE_CHECKING:
    from .openai_service import OpenAIService


class OpenAIJobs(Jobs):
    service: OpenAIService

    def create(self, request: JobRequest) -> Job:
        """Check the files, then create the job with only the parameters that were set."""
        refuse_trainer_options(request.options.changed_trainer_options())
        metadata = dict(request.metadata or {})
        for key in set(metadata) & set(self.service.tag):
            raise OptionError(f"the metadata key {key} is convtune's own tag")
        method = request.options.method
        self.service.files.check_uploaded(request.training_file, training=True, method=method)
        if request.validation_file:
            self.service.files.check_uploaded(
                request.validation_file, training=False, method=method
            )
        params: dict[str, Any] = {"model": request.model, "training_file": request.training_file}
        if request.validation_file:
            params["validation_file"] = request.validation_file
        hyperparameters = {
            k: v for k, v in request.options.requested_hyperparameters().items() if v != "auto"
        }
        if hyperparameters or method != "supervised":
            params["method"] = {"type": method, method: {"hyperparameters": hyperparameters}}
        if request.suffix is not None:
            params["suffix"] = request.suffix
        if request.seed is not None:
            params["seed"] = request.seed
        params["metadata"] = {**metadata, **self.service.tag}
        with self.service.call("create the fine-tuning job"):
            created = self.service.client.fine_tuning.jobs.create(**params)
        self.service.record.add_job(created.id)
        return to_job(created)

    def get(self, job_id: str) -> Job:
        with self.service.call(f"fine-tuning job {job_id}"):
            return to_job(self.service.client.fine_tuning.jobs.retrieve(job_id))

    def list(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> list[Job]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        if metadata:
            params["metadata"] = metadata
        with self.service.call("list fine-tuning jobs"):
            page = self.service.client.fine_tuning.jobs.list(**params)
            return [to_job(j) for j in page.data]

    def cancel(self, job_id: str) -> Job:
        with self.service.call(f"cancel {job_id}"):
            return to_job(self.service.client.fine_tuning.jobs.cancel(job_id))

    def pause(self, job_id: str) -> Job:
        with self.service.call(f"pause {job_id}"):
            return to_job(self.service.client.fine_tuning.jobs.pause(job_id))

    def resume(self, job_id: str) -> Job:
        with self.service.call(f"resume {job_id}"):
            return to_job(self.service.client.fine_tuning.jobs.resume(job_id))

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> list[JobEvent]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        with self.service.call(f"events of {job_id}"):
            page = self.service.client.fine_tuning.jobs.list_events(job_id, **params)
            return [to_event(e) for e in page.data]

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self.service.call(f"checkpoints of {job_id}"):
            pages = self.service.client.fine_tuning.jobs.checkpoints.list(job_id, limit=100)
            return [to_checkpoint(c) for c in pages]
