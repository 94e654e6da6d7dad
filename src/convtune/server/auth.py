"""Bearer keys: where they come from, and the check in front of every request.

The check is ASGI middleware, not a route dependency, so that it runs before anything else:
an unknown URL, a malformed body or an upload gets 401 without a key, and no request body is
read for a caller without one. Keys are compared in constant time (`hmac.compare_digest` over
SHA-256 digests, so not even a key's length shows in the timing), and never written anywhere:
not in logs, not in error bodies. What comes after the check (the rate limits) knows a request's
key only by its digest, in the scope's `convtune.key_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ConvtuneError
from .errors import APIError
from .rate_limit import KEY_DIGEST

ENV = "CONVTUNE_API_KEYS"

MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header"
    " using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
WRONG = "Incorrect API key provided. Use one of the keys given to convtune serve."


def load_keys(key_file: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The keys of `key_file` (one a line, `#` comments, blank lines skipped) and of
    `$CONVTUNE_API_KEYS` (comma-separated); raises `ConvtuneError` if there is none."""
    environ = os.environ if environ is None else environ
    keys: list[str] = []
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConvtuneError(f"cannot read the key file: {exc}", path=key_file) from exc
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                keys.append(line)
    keys += [k.strip() for k in environ.get(ENV, "").split(",") if k.strip()]
    for key in keys:
        if any(c.isspace() for c in key) or not key.isprintable():
            raise ConvtuneError(
                "an API key contains spaces or control characters",
                path=key_file,
                hint="one key per line; in CONVTUNE_API_KEYS, keys are separated by commas",
            )
    if not keys:
        raise ConvtuneError(
            "no API key configured",
            hint=f"give --api-key-file FILE (one key per line) or set {ENV}=key1,key2",
        )
    return list(dict.fromkeys(keys))


class KeyRing:
    """The accepted keys, kept as digests; `accepts` takes as long whichever key (if any) matches."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    def accepts(self, key: str) -> bool:
        return self.match(key) is not None

    def match(self, key: str) -> bytes | None:
        """The key's digest if it is one of the keys (what rate limits count by), else None."""
        given = hashlib.sha256(key.encode()).digest()
        ok = False
        for digest in self._digests:  # no early exit: every key is compared
            ok |= hmac.compare_digest(given, digest)
        return given if ok else None


class BearerAuth:
    """ASGI middleware: 401 in OpenAI's envelope unless `Authorization: Bearer <a known key>`."""

    def __init__(
        self, app: ASGIApp, keys: KeyRing, public: Callable[[str, str], bool] | None = None
    ) -> None:
        self.app = app
        self.keys = keys
        self.public = public  # public(method, path): the web page's files, which hold no data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (
            self.public is not None and self.public(scope["method"], scope["path"])
        ):
            await self.app(scope, receive, send)
            return
        values = [v for k, v in scope["headers"] if k == b"authorization"]
        error = None
        digest = None
        if len(values) != 1:
            error = APIError(401, MISSING if not values else WRONG, code="invalid_api_key")
        else:
            scheme, _, key = values[0].decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer" or not key.strip():
                error = APIError(401, MISSING, code="invalid_api_key")
            elif (digest := self.keys.match(key.strip())) is None:
                error = APIError(401, WRONG, code="invalid_api_key")
        if error is not None:
            response = error.response(headers={"WWW-Authenticate": 'Bearer realm="convtune"'})
            await response(scope, receive, send)
            return
        # the key's digest, never the key, for what comes after (`rate_limit.RateLimit`)
        await self.app({**scope, KEY_DIGEST: digest}, receive, send)
