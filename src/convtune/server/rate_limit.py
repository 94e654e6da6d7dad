"""Per-key rate limits (`convtune serve --rate-limit 60/min`): a token bucket per API key.

Each key has a bucket of N requests that refills continuously, N per period: a burst of N
passes, then one request every period/N. A request that finds its bucket empty is answered
429 in OpenAI's envelope (`type: requests`, `code: rate_limit_exceeded`, as OpenAI says it for
a requests-per-minute limit) with `Retry-After` in whole seconds and `retry-after-ms`, both of
which the openai SDK honours before it retries; every response of a known key carries OpenAI's
`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and `x-ratelimit-reset-requests`
(the time until the bucket is full again, written as OpenAI writes it: `1s`, `6m0s`, `120ms`).

The middleware sits inside `BearerAuth`: a request without a known key is refused there and
never counted, and buckets are keyed by the digest the check computed (never the key itself),
so memory is one small entry per configured key. One lock makes taking a token atomic for
whichever thread asks.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import OptionError
from .errors import APIError

KEY_DIGEST = "convtune.key_digest"  # the ASGI scope entry `BearerAuth` sets for a known key

# unit -> (seconds, OpenAI's abbreviation of the limit, the word in its messages)
UNITS = {
    "s": (1, "RPS", "second"),
    "sec": (1, "RPS", "second"),
    "second": (1, "RPS", "second"),
    "min": (60, "RPM", "min"),
    "minute": (60, "RPM", "min"),
    "h": (3600, "RPH", "hour"),
    "hour": (3600, "RPH", "hour"),
}
RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class Rate:
    """`requests` per `seconds`, for each key."""

    requests: int
    seconds: int
    unit: str  # "second", "min", "hour"
    abbreviation: str  # "RPS", "RPM", "RPH"

    def __str__(self) -> str:
        return f"{self.requests}/{self.unit}"


def parse_rate(text: str) -> Rate:
    """`60/min`, `5/s`, `1000/h` (also `sec`, `second`, `minute`, `hour`); `OptionError` else."""
    match = RATE.match(text.lower())
    unit = UNITS.get(match.group(2)) if match else None
    if match is None or unit is None:
        raise OptionError(
            f"--rate-limit {text!r} is not a rate",
            hint="give requests per key as N/s, N/min or N/h, such as 60/min",
        )
    requests = int(match.group(1))
    if requests < 1:
        raise OptionError(
            f"--rate-limit {text!r} would refuse every request",
            hint="give 1 or more requests; leave --rate-limit out for no limit",
        )
    return Rate(requests, unit[0], unit[2], unit[1])


@dataclass(frozen=True)
class Decision:
    """One request's answer: whether it passes, and what the headers say."""

    allowed: bool
    limit: int
    remaining: int  # whole requests left in the bucket after this one
    reset: float  # seconds until the bucket is full again
    retry_after: float  # seconds until one more request passes (0 when this one passed)

    def headers(self) -> dict[str, str]:
        """OpenAI's rate-limit headers; on a refusal, when to retry too."""
        headers = {
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": str(self.remaining),
            "x-ratelimit-reset-requests": duration(self.reset),
        }
        if not self.allowed:
            headers["retry-after"] = str(max(1, math.ceil(self.retry_after)))
            headers["retry-after-ms"] = str(max(1, math.ceil(self.retry_after * 1000)))
        return headers


class Limiter:
    """Token buckets, one per key digest: `take(digest)` answers one request."""

    def __init__(self, rate: Rate, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self._per_second = rate.requests / rate.seconds
        self._clock = clock
        self._buckets: dict[bytes, tuple[float, float]] = {}  # digest -> (tokens, as of when)
        self._lock = threading.Lock()

    def take(self, digest: bytes) -> Decision:
        capacity = self.rate.requests
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(digest, (float(capacity), now))
            tokens = min(float(capacity), tokens + max(0.0, now - then) * self._per_second)
            allowed = tokens >= 1.0 - 1e-9  # a float's rounding never costs a whole request
            if allowed:
                tokens = max(0.0, tokens - 1.0)
            self._buckets[digest] = (tokens, now)
        return Decision(
            allowed=allowed,
            limit=capacity,
            remaining=int(tokens + 1e-9),
            reset=(capacity - tokens) / self._per_second,
            retry_after=0.0 if allowed else (1.0 - tokens) / self._per_second,
        )


def duration(seconds: float) -> str:
    """A duration as OpenAI's `x-ratelimit-reset-*` headers write it (Go's way): `120ms`,
    `1.5s`, `6m0s`, `1h0m0s`; rounded up to the millisecond."""
    ms = math.ceil(seconds * 1000 - 1e-6)
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    text = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text


class RateLimit:
    """ASGI middleware, inside `BearerAuth`: 429 for a key past its rate, OpenAI's rate-limit
    headers on every response of a known key."""

    def __init__(self, app: ASGIApp, limiter: Limiter) -> None:
        self.app = app
        self.limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        digest = scope.get(KEY_DIGEST) if scope["type"] == "http" else None
        if digest is None:  # not an HTTP request of a known key: nothing to count
            await self.app(scope, receive, send)
            return
        decision = self.limiter.take(digest)
        headers = decision.headers()
        if not decision.allowed:
            await refusal(self.limiter.rate, decision).response(headers=headers)(
                scope, receive, send
            )
            return
        extra = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def refusal(rate: Rate, decision: Decision) -> APIError:
    """OpenAI's 429 for a requests limit, its message in OpenAI's words."""
    return APIError(
        429,
        f"Rate limit reached for this API key on requests per {rate.unit} ({rate.abbreviation}):"
        f" Limit {rate.requests}, Used {rate.requests - decision.remaining}, Requested 1."
        f" Please try again in {duration(decision.retry_after)}."
        " The server's --rate-limit sets the limit.",
        type="requests",
        code="rate_limit_exceeded",
    )
