"""`/v1/models`: the fine-tuned models of the local store (list, retrieve, delete) and the base
models a job or a chat can start from (list, retrieve; `owned_by: "system"`, as OpenAI lists its
own), both as the service lists them. Deleting a base model is a 409.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..errors import Conflict, NotFound
from . import ids
from .context import Context
from .errors import APIError, from_library


def router(ctx: Context) -> APIRouter:
    api = APIRouter()

    @api.get("/models", operation_id="listModels")
    async def list_models() -> dict[str, Any]:
        models = await ctx.gate(ctx.service.models.list)
        return {"object": "list", "data": [m.to_dict() for m in models]}

    @api.get("/models/{model}", operation_id="retrieveModel")
    async def retrieve_model(model: str) -> dict[str, Any]:
        ids.check(ids.MODEL_ID, model, param="model")
        try:
            return (await ctx.gate(ctx.service.models.get, model)).to_dict()
        except NotFound:
            raise model_not_found(model) from None

    @api.delete("/models/{model}", operation_id="deleteModel")
    async def delete_model(model: str) -> dict[str, Any]:
        ids.check(ids.MODEL_ID, model, param="model")
        try:
            await ctx.gate(ctx.service.models.delete, model)
        except NotFound:
            raise model_not_found(model) from None
        except Conflict as exc:  # a base model, or one a job is training on
            raise from_library(exc, param="model") from None
        return {"id": model, "object": "model", "deleted": True}

    return api


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )
