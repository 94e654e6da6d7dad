"""`create_app`: the OpenAI fine-tuning API (files, jobs, models, chat) over a `LocalService`.

The app is a thin adapter: it checks keys, parses and bounds requests, calls the service, and
shapes its objects (which are already OpenAI's) into OpenAI's envelopes. Jobs, files and models
are the service's business; the only state of the server's own is the stored chat completions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fastapi import FastAPI

from ..service.contract import FineTuningService
from . import chat_api, errors, files_api, jobs_api, models_api, ui_api, ui_static
from .auth import BearerAuth, KeyRing
from .context import Context
from .rate_limit import Limiter, Rate, RateLimit
from .stored_completions import StoredCompletions
from .threaded_calls import ThreadedCalls

PREFIX = "/v1"


def create_app(
    service: FineTuningService,
    keys: list[str],
    *,
    max_upload_bytes: int = 512 << 20,
    chat_slots: int = 4,
    home: Path | None = None,
    rate_limit: Rate | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The ASGI app. `keys` are the accepted bearer keys (at least one); `home` is where the
    server keeps uploads in progress and stored completions (default: the service's home);
    `rate_limit` caps each key's requests (429 past it), none by default. `clock` is the rate
    limiter's, in seconds: tests pass one of their own, so that a bucket refills without
    anybody waiting."""
    home = Path(home or service.home)
    ctx = Context(
        service=service,
        gate=ThreadedCalls(),
        max_upload_bytes=max_upload_bytes,
        uploads=home / "uploads",
        completions=StoredCompletions(home / "stored-completions.db"),
        chat_slots=chat_slots,
    )
    files_api.sweep_uploads(ctx.uploads)
    app = FastAPI(
        title="convtune serve",
        docs_url=None,  # the API is OpenAI's, documented there; no unauthenticated pages
        redoc_url=None,
        openapi_url=None,
    )
    app.state.context = ctx
    errors.install(app)
    for module in (files_api, jobs_api, models_api, chat_api):
        app.include_router(module.router(ctx), prefix=PREFIX)
    app.include_router(ui_api.router(ctx, home), prefix=PREFIX)  # what the web page needs
    app.include_router(ui_static.router())  # the web page at /, its files without a key
    if rate_limit is not None:  # added first, so inside the key check: only known keys count
        app.add_middleware(RateLimit, limiter=Limiter(rate_limit, clock))
    app.add_middleware(BearerAuth, keys=KeyRing(keys), public=ui_static.is_public)
    return app
