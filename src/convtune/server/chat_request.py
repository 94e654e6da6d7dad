"""The chat completion request body: OpenAI's fields, checked, turned into a `ChatRequest`.

Every field OpenAI defines is known here: those a local model honours are used, those that
change nothing for it (`user`, `service_tier`, `reasoning_effort`...) are accepted and ignored,
and those it cannot honour (tools, logprobs, `n` > 1, audio, a non-zero penalty) are a 400 that
names the parameter, rather than a reply that silently ignored what was asked. A field OpenAI
does not define is a 400 too, as OpenAI answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt

from ..service.contract import ChatRequest
from .errors import APIError

DEFAULT_MAX_TOKENS = 512
MAX_TOKENS = 8192


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool | None = None
    include_obfuscation: StrictBool | None = None


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=4096)
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    max_completion_tokens: StrictInt | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool | None = None
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(None, ge=1, le=128)
    store: StrictBool | None = None
    metadata: dict[str, str] | None = None
    # accepted, and no different for a local model
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    service_tier: str | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    parallel_tool_calls: StrictBool | None = None
    # known, honoured only at their neutral value
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, int] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    audio: dict[str, Any] | None = None
    prediction: dict[str, Any] | None = None
    web_search_options: dict[str, Any] | None = None
    moderation: Any = None


def to_chat_request(body: ChatBody) -> ChatRequest:
    """The service's request, or an `APIError` naming the first parameter that cannot be met."""
    _unsupported(body)
    if body.stream_options is not None and not body.stream:
        raise APIError(
            400, "stream_options is only allowed with stream: true.", param="stream_options"
        )
    both = (body.max_tokens, body.max_completion_tokens)
    if None not in both and both[0] != both[1]:
        raise APIError(
            400,
            "Give max_completion_tokens or max_tokens, not two different values.",
            param="max_tokens",
        )
    max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_MAX_TOKENS
    if max_tokens > MAX_TOKENS:
        raise APIError(
            400,
            f"max_tokens is too large: {max_tokens}; a local reply is at most {MAX_TOKENS} tokens.",
            param="max_completion_tokens" if body.max_completion_tokens else "max_tokens",
            code="invalid_value",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4 or any(not s for s in stop):
        raise APIError(400, "stop takes up to 4 non-empty strings.", param="stop")
    if body.metadata is not None and (
        len(body.metadata) > 16
        or any(len(k) > 64 or len(v) > 512 for k, v in body.metadata.items())
    ):
        raise APIError(
            400, "metadata: at most 16 keys of 64 characters, values of 512.", param="metadata"
        )
    return ChatRequest(
        model=body.model,
        messages=messages(body.messages),
        max_tokens=max_tokens,
        temperature=1.0 if body.temperature is None else body.temperature,  # OpenAI's defaults
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=stop,
    )


def _unsupported(body: ChatBody) -> None:
    def no(param: str, why: str) -> APIError:
        return APIError(
            400, f"{param} is not supported by convtune serve: {why}.", param=param,
            code="unsupported_parameter",
        )  # fmt: skip

    if body.n not in (None, 1):
        raise no("n", "a local model gives one choice per request")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name) not in (None, 0):
            raise no(name, "local generation has no penalties; leave it at 0")
    if body.logit_bias:
        raise no("logit_bias", "not available for local models")
    if body.logprobs or body.top_logprobs:
        raise no("logprobs", "log probabilities are not returned")
    if body.response_format not in (None, {"type": "text"}):
        raise no("response_format", "replies are plain text")
    if body.modalities not in (None, ["text"]):
        raise no("modalities", "replies are text only")
    if body.tools or body.functions:
        raise no("tools", "local models here do not call tools")
    if body.tool_choice not in (None, "none") or body.function_call not in (None, "none"):
        raise no("tool_choice", "local models here do not call tools")
    for name in ("audio", "prediction", "web_search_options", "moderation"):
        if getattr(body, name) is not None:
            raise no(name, "not available for local models")


def messages(raw: list[dict[str, Any]]) -> list[dict[str, str]]:
    """OpenAI's messages as role/content text pairs; `developer` is the local `system`."""
    out: list[dict[str, str]] = []
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise APIError(400, f"{where} is not an object.", param=where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise APIError(
                400,
                f"Invalid role in {where}: {role!r}; use system, developer, user or assistant"
                " (tool messages are not supported).",
                param=f"{where}.role",
            )
        unknown = set(message) - {"role", "content", "name", "refusal", "tool_calls"}
        if unknown:
            raise APIError(
                400,
                f"Unrecognized request argument supplied: {where}.{sorted(unknown)[0]}",
                param=where,
            )
        if message.get("tool_calls"):
            raise APIError(400, "tool calls are not supported.", param=f"{where}.tool_calls")
        out.append(
            {
                "role": "system" if role == "developer" else role,
                "content": _text(message.get("content"), f"{where}.content"),
            }
        )
    return out


def _text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif kind == "refusal" and isinstance(part.get("refusal"), str):
                parts.append(part["refusal"])
            else:
                raise APIError(
                    400,
                    f"Unsupported content part {kind!r} in {param}: local models read text only.",
                    param=param,
                    code="unsupported_value",
                )
        return "".join(parts)
    raise APIError(400, f"{param} must be a string or a list of text parts.", param=param)
