"""The server's one error boundary: every failure becomes OpenAI's error envelope.

``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI uses: 400 for a bad
request (body validation included: FastAPI's 422 becomes 400, as OpenAI answers), 401 for a
missing or wrong key, 404, 409 for an object in the wrong state, 413 for an upload past the
limit, 500 for a bug, without its traceback (which goes to the server's log only).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import Conflict, ConvtuneError, NotFound

log = logging.getLogger("convtune.serve")


class APIError(Exception):
    """An error the server answers with as is: status, message, and OpenAI's type/param/code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return envelope(self.message, type=self.type, param=self.param, code=self.code)

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = dict(headers or {})
        if self.status == 409:  # a state conflict, not a lock timeout: the SDK would retry twice
            headers["x-should-retry"] = "false"
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def envelope(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def from_library(exc: ConvtuneError, *, param: str | None = None) -> APIError:
    """A library error as the API says it: NotFound 404, Conflict 409, anything else 400."""
    if isinstance(exc, NotFound):
        return APIError(404, str(exc), param=param, code="not_found")
    if isinstance(exc, Conflict):
        return APIError(409, str(exc), param=param, code="conflict")
    return APIError(400, str(exc), param=param, code="invalid_value" if param else None)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every exception into the envelope."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(ConvtuneError)
    async def library_error(request: Request, exc: ConvtuneError) -> JSONResponse:
        return from_library(exc).response()

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
            return APIError(404, message, code="unknown_url").response()
        if exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
            return APIError(405, message, code="method_not_allowed").response()
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return APIError(
            500,
            "The server had an error while processing your request; its log has the details.",
            type="server_error",
            code="internal_error",
        ).response()


def validation_error(errors: list[Any]) -> APIError:
    """FastAPI's list of pydantic errors as OpenAI's one message with its `param`."""
    if not errors:
        return APIError(400, "Invalid request.")
    first = errors[0]
    kind = first.get("type", "")
    if kind == "json_invalid":
        return APIError(
            400,
            "We could not parse the JSON body of your request: send a JSON object"
            " with Content-Type: application/json.",
        )
    where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    while where and _union_tag(where[-1]):  # "n_epochs.literal['auto']" -> "n_epochs"
        where.pop()
    param = where[0] if where else None
    for part in where[1:]:
        param = f"{param}[{part}]" if part.isdigit() else f"{param}.{part}"
    if kind == "extra_forbidden":
        return APIError(
            400, f"Unrecognized request argument supplied: {param}", param=param, code=None
        )
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param)
    if param is None:  # the body as a whole: not an object
        return APIError(400, "The request body must be a JSON object.")
    message = first.get("msg", "invalid value")
    return APIError(
        400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value"
    )


def _union_tag(part: str) -> bool:
    """A pydantic union member's name in an error location, not a field of the body."""
    return part in ("int", "float", "str", "bool", "dict", "list", "none") or any(
        c in part for c in "[]'\"-,"
    )
