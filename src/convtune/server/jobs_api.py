"""`/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events, checkpoints.

The request body is OpenAI's, checked field by field (an unknown field is a 400, as OpenAI
answers), plus one field of convtune's own: ``"convtune": {"max_steps": 4, "lora_r": 8, ...}``,
the local trainer's options that OpenAI's API has no words for (the openai SDK sends it with
``extra_body={"convtune": {...}}``). Both models are made from `TrainOptions` (the options'
one definition): the hyperparameters OpenAI's, the rest `LocalOptions`, without the options a
request may not set (how many processes train). Its `model` may be a base model name, a fine-tuned
model, or the path of a model folder the server's user can read (the README says so: a key
holder is trusted that far).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Request
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    create_model,
)

from ..errors import ConvtuneError, OptionError
from ..service.contract import JobRequest
from ..service.training_options import METHODS, Spec, TrainOptions, specs
from . import ids, list_envelope
from .context import Context
from .errors import APIError, from_library

MAX_LIST = 1000  # page size limit of jobs, events and checkpoints


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _annotation(spec: Spec) -> Any:
    """The pydantic type of an option: strict (no "3" for 3), with its range."""
    if spec.kind is bool:
        kind: Any = StrictBool
    elif spec.choices:
        kind = Literal[spec.choices]  # type: ignore[valid-type]
    else:
        number = StrictInt if spec.kind is int else StrictInt | StrictFloat
        kind = Annotated[number, Field(ge=spec.low, le=spec.high)]
    if spec.auto:
        kind = Literal["auto"] | kind
    return kind | None


def _options_model(name: str, wanted: Callable[[Spec], bool], doc: str) -> type[BaseModel]:
    fields = {n: (_annotation(s), None) for n, s in specs().items() if wanted(s)}
    model = create_model(name, __base__=_Body, __doc__=doc, **fields)  # type: ignore[call-overload]
    return model


Hyperparameters = _options_model(
    "Hyperparameters",
    lambda s: s.hyperparameter and s.only_for is None,
    "OpenAI's hyperparameters (supervised, and at the top level).",
)
DpoHyperparameters = _options_model(
    "DpoHyperparameters",
    lambda s: s.hyperparameter and s.only_for in (None, "dpo"),
    "OpenAI's DPO hyperparameters: the supervised ones and beta.",
)
LocalOptions = _options_model(
    "LocalOptions",
    lambda s: s.api and not (s.hyperparameter or s.method),
    "convtune's trainer options, as `convtune train` has them (what a client may set).",
)


class Supervised(_Body):
    hyperparameters: Hyperparameters | None = None


class Dpo(_Body):
    hyperparameters: DpoHyperparameters | None = None


class Method(_Body):
    type: Literal["supervised", "dpo", "reinforcement"]
    supervised: Supervised | None = None
    dpo: Dpo | None = None
    reinforcement: dict[str, Any] | None = None


class CreateJob(_Body):
    model: str = Field(min_length=1, max_length=4096)
    training_file: str = Field(min_length=1, max_length=100)
    validation_file: str | None = Field(None, max_length=100)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    suffix: str | None = Field(None, min_length=1, max_length=64)
    seed: StrictInt | None = Field(None, ge=0, le=2147483647)
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    convtune: LocalOptions | None = None


def router(ctx: Context) -> APIRouter:
    api = APIRouter()

    @api.post("/fine_tuning/jobs", operation_id="createFineTuningJob")
    async def create_job(body: CreateJob) -> dict[str, Any]:
        request = await _job_request(ctx, body)
        return (await ctx.gate(ctx.service.jobs.create, request)).to_dict()

    @api.get("/fine_tuning/jobs", operation_id="listPaginatedFineTuningJobs")
    async def list_jobs(
        request: Request, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        list_envelope.check_limit(limit, MAX_LIST)
        if after is not None:
            await _known_cursor(ctx, after)
        metadata, no_metadata = _metadata_filter(request)
        if no_metadata:  # metadata=null: the jobs that have none (a scan: a local list is short)
            jobs = await ctx.gate(ctx.service.jobs.list, after=after, limit=1 << 30)
            jobs = [j for j in jobs if not j.metadata]
        else:
            jobs = await ctx.gate(
                ctx.service.jobs.list, after=after, limit=limit + 1, metadata=metadata
            )
        return list_envelope.envelope(jobs[:limit], len(jobs) > limit, ids=False)

    @api.get("/fine_tuning/jobs/{fine_tuning_job_id}", operation_id="retrieveFineTuningJob")
    async def retrieve_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return await _act(ctx, ctx.service.jobs.get, fine_tuning_job_id)

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/cancel", operation_id="cancelFineTuningJob")
    async def cancel_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return await _act(ctx, ctx.service.jobs.cancel, fine_tuning_job_id)

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/pause", operation_id="pauseFineTuningJob")
    async def pause_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return await _act(ctx, ctx.service.jobs.pause, fine_tuning_job_id)

    @api.post("/fine_tuning/jobs/{fine_tuning_job_id}/resume", operation_id="resumeFineTuningJob")
    async def resume_job(fine_tuning_job_id: str) -> dict[str, Any]:
        return await _act(ctx, ctx.service.jobs.resume, fine_tuning_job_id)

    @api.get("/fine_tuning/jobs/{fine_tuning_job_id}/events", operation_id="listFineTuningEvents")
    async def list_events(
        fine_tuning_job_id: str, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        ids.check(ids.JOB_ID, fine_tuning_job_id, param="fine_tuning_job_id")
        list_envelope.check_limit(limit, MAX_LIST)
        if after is not None:
            ids.check(ids.EVENT_ID, after, param="after", status=400)
        events = await ctx.gate(
            ctx.service.jobs.list_events, fine_tuning_job_id, after=after, limit=limit + 1
        )
        return list_envelope.envelope(events[:limit], len(events) > limit, ids=False)

    @api.get(
        "/fine_tuning/jobs/{fine_tuning_job_id}/checkpoints",
        operation_id="listFineTuningJobCheckpoints",
    )
    async def list_checkpoints(
        fine_tuning_job_id: str, after: str | None = None, limit: int = 10
    ) -> dict[str, Any]:
        ids.check(ids.JOB_ID, fine_tuning_job_id, param="fine_tuning_job_id")
        list_envelope.check_limit(limit, MAX_LIST)
        if after is not None:
            ids.check(ids.CHECKPOINT_ID, after, param="after", status=400)
        checkpoints = await ctx.gate(ctx.service.jobs.list_checkpoints, fine_tuning_job_id)
        checkpoints = list_envelope.after_cursor(checkpoints, after)  # newest first
        return list_envelope.envelope(checkpoints[:limit], len(checkpoints) > limit)

    return api


async def _act(ctx: Context, method, job_id: str) -> dict[str, Any]:
    ids.check(ids.JOB_ID, job_id, param="fine_tuning_job_id")
    return (await ctx.gate(method, job_id)).to_dict()


async def _known_cursor(ctx: Context, after: str) -> None:
    ids.check(ids.JOB_ID, after, param="after", status=400)
    try:
        await ctx.gate(ctx.service.jobs.get, after)
    except ConvtuneError as exc:
        raise APIError(400, f"Invalid 'after': {exc}", param="after") from None


def _metadata_filter(request: Request) -> tuple[dict[str, str] | None, bool]:
    """`metadata[k]=v` pairs (OpenAI's deepObject style), and whether `metadata=null` was sent."""
    pairs: dict[str, str] = {}
    no_metadata = False
    for key, value in request.query_params.multi_items():
        if key == "metadata":
            if value != "null":
                raise APIError(
                    400, "Filter with metadata[key]=value, or metadata=null.", param="metadata"
                )
            no_metadata = True
        elif key.startswith("metadata[") and key.endswith("]"):
            pairs[key[len("metadata[") : -1]] = value
    return (pairs or None), no_metadata


async def _job_request(ctx: Context, body: CreateJob) -> JobRequest:
    """OpenAI's body as the service's `JobRequest`; what convtune cannot honour is a 400."""
    method = body.method.type if body.method is not None else "supervised"
    if method not in METHODS:
        raise APIError(
            400,
            f"Fine-tuning method {method!r} is not available: convtune trains"
            f" {' and '.join(METHODS)}.",
            param="method.type",
            code="unsupported_value",
        )
    for other in ("supervised", "dpo", "reinforcement"):
        if other != method and getattr(body.method, other, None) is not None:
            raise APIError(
                400,
                f"method.{other} is given but method.type is {method!r}.",
                param=f"method.{other}",
            )
    section = getattr(body.method, method, None) if body.method is not None else None
    method_hp = section.hyperparameters if section is not None else None
    if method_hp is not None and body.hyperparameters is not None:
        raise APIError(
            400,
            f"Give hyperparameters in method.{method}.hyperparameters or at the top level,"
            " not both.",
            param="hyperparameters",
        )
    hp = method_hp or body.hyperparameters
    if body.integrations:
        raise APIError(
            400, "Integrations (wandb) are not available in convtune.", param="integrations"
        )
    if body.metadata is not None:
        _check_metadata(body.metadata)
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is None:
            continue
        ids.check(ids.FILE_ID, file_id, param=param, status=400)
        try:
            await ctx.gate(ctx.service.files.get, file_id)
        except ConvtuneError as exc:
            error = from_library(exc, param=param)
            raise APIError(400, f"Invalid {param}: {exc}", param=param, code=error.code) from None
    given = {
        "method": method,
        **(hp.model_dump(exclude_none=True) if hp is not None else {}),
        **(body.convtune.model_dump(exclude_none=True) if body.convtune else {}),
    }
    try:
        options = TrainOptions(**given)
    except OptionError as exc:
        raise APIError(400, f"Invalid options: {exc.message}.", param="convtune") from None
    return JobRequest(
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        suffix=body.suffix,
        seed=body.seed,
        metadata=body.metadata,
        options=options,
    )


def _check_metadata(metadata: dict[str, str]) -> None:
    """OpenAI's limits: 16 pairs, keys up to 64 characters, values up to 512."""
    if len(metadata) > 16:
        raise APIError(400, "metadata may have at most 16 keys.", param="metadata")
    for key, value in metadata.items():
        if len(key) > 64 or len(value) > 512:
            raise APIError(
                400,
                "metadata keys are at most 64 characters, values at most 512.",
                param=f"metadata.{key[:64]}",
            )
