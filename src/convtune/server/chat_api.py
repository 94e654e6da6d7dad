"""`/v1/chat/completions`: a reply from a local model, whole or streamed (SSE), and the list of
completions kept with `store: true`.

Streaming follows OpenAI's wire format: `data: <chunk>` events (the role first, then content
deltas, then the finish reason, then, with `stream_options.include_usage`, a last chunk with no
choices and the usage), ended by `data: [DONE]`. A failure once the stream has begun can no
longer change the status code: it is sent as an `error` event, which the openai SDK raises.

At most `Context.chat_slots` requests generate at once (`convtune serve` makes it twice
`--max-batch`, so that the model's batch engine always has the next request at hand); the others
wait in the event loop, holding no thread. The threads that wait for pieces of replies come from
a pool of their own (`Context.chat_threads`), so that hundreds of chat requests cannot starve the
other routes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from ..errors import ConvtuneError
from ..service.contract import ChatReply, ChatRequest
from ..service.objects import new_id
from . import ids, list_envelope
from .chat_request import ChatBody, to_chat_request
from .context import Context
from .errors import APIError, envelope, from_library
from .models_api import model_not_found

log = logging.getLogger("convtune.serve")


def router(ctx: Context) -> APIRouter:
    api = APIRouter()

    @api.post("/chat/completions", operation_id="createChatCompletion")
    async def create(body: ChatBody) -> Any:
        request = to_chat_request(body)
        await _known_model(ctx, request.model)
        await anyio.to_thread.run_sync(_import_torch)  # seconds, once
        meta = _Meta(request, body)
        if body.stream:
            return StreamingResponse(
                _stream(ctx, request, meta),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        async with ctx.slots:
            reply = await ctx.gate(ctx.service.chat.create, request)
            try:
                text = await anyio.to_thread.run_sync(
                    lambda: "".join(reply), limiter=ctx.chat_threads
                )
            finally:
                await _close(reply)
        completion = meta.completion(text, reply)
        if body.store:
            await anyio.to_thread.run_sync(ctx.completions.add, completion)
        return completion

    @api.get("/chat/completions", operation_id="listChatCompletions")
    async def list_completions(
        request: Request,
        model: str | None = None,
        after: str | None = None,
        limit: int = 20,
        order: str = "asc",
    ) -> dict[str, Any]:
        list_envelope.check_limit(limit, 100)
        if order not in ("asc", "desc"):
            raise APIError(400, "order must be asc or desc.", param="order")
        if after is not None:
            ids.check(ids.COMPLETION_ID, after, param="after", status=400)
        metadata = {
            k[len("metadata[") : -1]: v
            for k, v in request.query_params.multi_items()
            if k.startswith("metadata[") and k.endswith("]")
        }
        found, more = await anyio.to_thread.run_sync(
            lambda: ctx.completions.list(
                model=model, metadata=metadata, after=after, limit=limit, order=order
            )
        )
        return list_envelope.envelope(found, more, to_dict=lambda c: c)

    return api


async def _known_model(ctx: Context, model: str) -> None:
    """404 for a model that is neither fine-tuned here nor a base model convtune can load."""
    if not await ctx.gate(ctx.service.models.knows, model):
        raise model_not_found(model)


class _Meta:
    """What every chunk and the whole completion share: id, creation time, model, options."""

    def __init__(self, request: ChatRequest, body: ChatBody) -> None:
        self.id = new_id("chatcmpl-")
        self.created = int(time.time())
        self.model = request.model
        self.store = bool(body.store)
        self.metadata = body.metadata
        self.include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def usage(self, reply: ChatReply) -> dict[str, Any]:
        prompt = reply.prompt_tokens or 0
        completion = reply.completion_tokens or 0
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _head(self, kind: str) -> dict[str, Any]:
        """What a completion and each of its chunks share (OpenAI repeats it in every chunk)."""
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "convtune",
        }

    def completion(self, text: str, reply: ChatReply) -> dict[str, Any]:
        body = {
            **self._head("chat.completion"),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": reply.finish_reason or "stop",
                }
            ],
            "usage": self.usage(reply),
        }
        if self.store:
            body["metadata"] = self.metadata or {}
        return body

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        data: dict[str, Any] = {
            **self._head("chat.completion.chunk"),
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            data["usage"] = None
        return _event(data)

    def usage_chunk(self, reply: ChatReply) -> str:
        return _event(
            {**self._head("chat.completion.chunk"), "choices": [], "usage": self.usage(reply)}
        )


async def _stream(ctx: Context, request: ChatRequest, meta: _Meta) -> AsyncIterator[str]:
    """The SSE events of one streamed reply.

    A client that goes away cancels this generator at an `await`: the `finally` then ends the
    generation.
    """
    async with ctx.slots:
        reply = None
        try:
            reply = await ctx.gate(ctx.service.chat.create, request)
            yield meta.chunk({"role": "assistant", "content": "", "refusal": None})
            pieces: list[str] = []
            while (
                piece := await anyio.to_thread.run_sync(_next, reply, limiter=ctx.chat_threads)
            ) is not None:
                pieces.append(piece)
                yield meta.chunk({"content": piece})
            finish = reply.finish_reason or "stop"
            yield meta.chunk({}, finish)
            if meta.include_usage:
                yield meta.usage_chunk(reply)
            if meta.store:
                completion = meta.completion("".join(pieces), reply)
                await anyio.to_thread.run_sync(ctx.completions.add, completion)
            yield "data: [DONE]\n\n"
        except ConvtuneError as exc:
            yield _event(from_library(exc).body())
        except Exception:
            log.exception("internal error while streaming %s", meta.id)
            yield _event(
                envelope(
                    "The server had an error while generating; its log has the details.",
                    type="server_error",
                    code="internal_error",
                )
            )
        finally:
            if reply is not None:
                await _close(reply)


def _import_torch() -> None:
    """Import what a chat model needs once, in a thread of its own: the seconds torch takes to
    import are not spent inside the first chat call."""
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, TextIteratorStreamer  # noqa: F401


def _next(reply: ChatReply) -> str | None:
    return next(reply, None)


async def _close(reply: ChatReply) -> None:
    """End a reply's generation, even from a request being cancelled (a client gone, shutdown):
    in a thread, since it waits for torch, and shielded, since it must run to its end."""
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(reply.close)


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
