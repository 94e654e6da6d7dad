"""The web page at `/`: static files of the package (`server/ui/`), served without a key.

The page holds no data: it is a client of `/v1`, where every call needs a key, so its files are
the only paths `BearerAuth` lets through (`is_public`: `/` and the page's own files by their
exact names; nothing a request names becomes a path). Everything the page uses is here: no
CDN, no web font, so it works offline. The headers keep it to itself: a content security policy
that allows only this origin's scripts (and the hash of the eval report's one inline script, for
the sandboxed frame that shows it), no framing of the page, no referrer.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from .errors import APIError

UI = Path(__file__).with_name("ui")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
ASSETS = {p.name: p for p in sorted(UI.iterdir()) if p.suffix in TYPES} if UI.is_dir() else {}
PUBLIC = {"/", *(f"/ui/{name}" for name in ASSETS)}


def _report_script_hash() -> str:
    """The CSP source of `render_html`'s inline script, which a report shown in the page's
    sandboxed frame runs under the page's policy (a frame from `srcdoc` inherits it)."""
    from ..evaluation import report_html

    digest = hashlib.sha256(report_html._JS.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


HEADERS = {
    "Content-Security-Policy": "; ".join(
        [
            "default-src 'self'",
            f"script-src 'self' {_report_script_hash()}",
            "style-src 'self' 'unsafe-inline'",  # the report's <style>; the page's is a file
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "frame-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def is_public(method: str, path: str) -> bool:
    """Whether a request may go without a key: reading the page's own files, nothing else."""
    return method in ("GET", "HEAD") and path in PUBLIC


def router() -> APIRouter:
    api = APIRouter()

    @api.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> Response:
        return _asset("index.html")

    @api.api_route("/ui/{name}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(name: str) -> Response:
        return _asset(name)

    return api


def _asset(name: str) -> Response:
    path = ASSETS.get(name)
    if path is None:
        raise APIError(404, f"Unknown request URL: GET /ui/{name[:80]}.", code="unknown_url")
    return Response(path.read_bytes(), media_type=TYPES[path.suffix], headers=HEADERS)
