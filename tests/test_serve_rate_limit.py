"""`convtune serve --rate-limit`: a token bucket per key, OpenAI's 429 and rate-limit headers.

The bucket on its own with a clock of the test's (bursts, refills, keys apart, threads at
once). Then the app on a real server on 127.0.0.1, in this process, with that clock: the
headers, the 429, a refill after what `Retry-After` said, and the real openai SDK, whose waits
before a retry move the server's clock instead of the machine's. Nothing waits for a bucket to
refill. Last, the real `convtune serve --rate-limit 5/h`, whose clock is the machine's: at one
request per 12 minutes nothing refills while it runs, so what it answers is exact.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import httpx
import openai
import pytest

from convtune.errors import OptionError
from convtune.server.rate_limit import Limiter, Rate, duration, parse_rate

from .servers import Conformance, serve, wait_for

KEYS = ("sk-rate-1-9f8e7d", "sk-rate-2-1a2b3c", "sk-rate-3-4d5e6f")


@pytest.mark.parametrize(
    "text,requests,seconds",
    [
        ("60/min", 60, 60),
        ("5/s", 5, 1),
        ("1000/h", 1000, 3600),
        (" 2 / Minute ", 2, 60),
        ("3/sec", 3, 1),
        ("1/hour", 1, 3600),
    ],
)
def test_rates_parse(text, requests, seconds):
    rate = parse_rate(text)
    assert (rate.requests, rate.seconds) == (requests, seconds)


@pytest.mark.parametrize(
    "text", ["", "60", "60/", "/min", "fast", "-1/s", "1.5/s", "5/ms", "5/d", "0/min", "5/min/s"]
)
def test_bad_rates_say_how_to_write_one(text):
    with pytest.raises(OptionError) as caught:
        parse_rate(text)
    message = str(caught.value)
    assert "\n" not in message and "--rate-limit" in message
    assert "N/s, N/min or N/h" in message or "1 or more" in message


def test_durations_as_openai_writes_them():
    assert [duration(s) for s in (0, 0.0004, 0.2, 1, 1.5, 12.345, 60, 360, 3600, 3725.5)] == [
        "0s",
        "1ms",
        "200ms",
        "1s",
        "1.5s",
        "12.345s",
        "1m0s",
        "6m0s",
        "1h0m0s",
        "1h2m5.5s",
    ]


class Clock:
    """A clock of the test's: it moves when the test (or a `sleep` of its) says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_bucket_per_key_refills_at_the_rate():
    clock = Clock()
    limiter = Limiter(Rate(5, 1, "second", "RPS"), clock)
    answers = [limiter.take(b"a") for _ in range(6)]
    assert [a.allowed for a in answers] == [True] * 5 + [False]
    assert [a.remaining for a in answers] == [4, 3, 2, 1, 0, 0]
    assert answers[0].reset == pytest.approx(0.2) and answers[4].reset == pytest.approx(1.0)
    refused = answers[5]
    assert refused.retry_after == pytest.approx(0.2)
    assert refused.headers() == {
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1s",
        "retry-after": "1",  # whole seconds, at least 1
        "retry-after-ms": "200",
    }
    assert "retry-after" not in answers[0].headers()
    assert limiter.take(b"b").remaining == 4  # another key, another bucket
    clock.now += 0.2  # one request's worth
    assert limiter.take(b"a").allowed and not limiter.take(b"a").allowed
    clock.now += 60  # a long pause fills the bucket, no more
    assert [limiter.take(b"a").allowed for _ in range(6)] == [True] * 5 + [False]


def test_threads_at_once_get_exactly_the_burst():
    limiter = Limiter(Rate(50, 3600, "hour", "RPH"))  # no refill worth a request meanwhile
    allowed: list[bool] = []
    start = threading.Barrier(8)

    def hammer() -> None:
        start.wait()
        answers = [limiter.take(b"key").allowed for _ in range(25)]
        allowed.extend(answers)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(allowed) == 200 and allowed.count(True) == 50


def test_a_bad_rate_is_one_line_before_anything_starts(tmp_path, capsys):
    from convtune.cli.main import main

    keys = tmp_path / "keys.txt"
    keys.write_text("sk-x\n")
    keys.chmod(0o600)
    assert main(["serve", "--api-key-file", str(keys), "--rate-limit", "lots"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "--rate-limit 'lots' is not a rate" in captured.err and "60/min" in captured.err
    assert main(["serve", "--help"]) == 0
    assert "--rate-limit" in capsys.readouterr().out


# -- the app on a real server, on the test's clock ----------------------------------------------


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@contextmanager
def serve_here(app) -> Iterator[str]:
    """`app` served by uvicorn on 127.0.0.1 from a thread of this process (so that its clock is
    the test's); yields the base URL, stops the server at exit."""
    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=60, every=0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def here(tmp_path) -> Iterator[SimpleNamespace]:
    """The server's app at 5 requests a second per key, on a clock of the test's."""
    from convtune.local.local_service import LocalService
    from convtune.server import create_app

    clock = Clock()
    service = LocalService(tmp_path)
    app = create_app(service, list(KEYS), rate_limit=parse_rate("5/s"), clock=clock)
    try:
        with serve_here(app) as url:
            yield SimpleNamespace(url=url, clock=clock)
    finally:
        app.state.context.completions.close()
        service.close()


def test_headers_on_every_response_and_429_past_the_limit(here, conformance):
    hooks = {"response": [conformance.check]}
    with httpx.Client(base_url=here.url, event_hooks=hooks) as anon:
        for _ in range(10):  # unknown keys are refused before anything is counted
            response = anon.get("models", headers={"Authorization": "Bearer sk-unknown"})
            assert response.status_code == 401
            assert "x-ratelimit-limit-requests" not in response.headers
    key = {"Authorization": f"Bearer {KEYS[0]}"}
    with httpx.Client(base_url=here.url, headers=key, event_hooks=hooks) as client:
        responses = [client.get("models") for _ in range(6)]
        passed, refused = responses[:5], responses[5]
        assert [r.status_code for r in responses] == [200] * 5 + [429]
        assert {r.headers["x-ratelimit-limit-requests"] for r in responses} == {"5"}
        # untouched by the unknown keys; the reset is the time until the bucket is full again
        assert [r.headers["x-ratelimit-remaining-requests"] for r in passed] == list("43210")
        assert [r.headers["x-ratelimit-reset-requests"] for r in passed] == [
            "200ms", "400ms", "600ms", "800ms", "1s"
        ]  # fmt: skip
        assert "retry-after" not in passed[0].headers

        assert refused.json() == {
            "error": {
                "message": "Rate limit reached for this API key on requests per second (RPS):"
                " Limit 5, Used 5, Requested 1. Please try again in 200ms."
                " The server's --rate-limit sets the limit.",
                "type": "requests",
                "param": None,
                "code": "rate_limit_exceeded",
            }
        }
        assert refused.headers["retry-after"] == "1"  # whole seconds, at least 1
        assert refused.headers["retry-after-ms"] == "200"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"

        other = {"Authorization": f"Bearer {KEYS[1]}"}  # another key, its own bucket
        assert client.get("models", headers=other).headers["x-ratelimit-remaining-requests"] == "4"

        here.clock.now += 0.1  # half of what Retry-After said: still refused, 100ms to go
        early = client.get("models")
        assert early.status_code == 429 and early.headers["retry-after-ms"] == "100"
        assert early.headers["retry-after"] == "1"
        here.clock.now += int(early.headers["retry-after-ms"]) / 1000  # what it said: enough
        assert client.get("models").status_code == 200
        assert client.get("models").status_code == 429  # one request's worth, no more
        here.clock.now += 3600  # a long pause fills the bucket, no more
        assert [client.get("models").status_code for _ in range(6)] == [200] * 5 + [429]


def test_the_sdk_waits_what_retry_after_says_and_gets_through(here, conformance, monkeypatch):
    # The SDK waits with the `time.sleep` of its module: there, a wait moves the server's clock.
    monkeypatch.setattr(
        openai._base_client, "time", SimpleNamespace(sleep=here.clock.sleep, time=time.time)
    )
    statuses: list[tuple[int, int]] = []  # each status, and the milliseconds a 429 asked for

    def record(response: httpx.Response) -> None:
        statuses.append((response.status_code, int(response.headers.get("retry-after-ms", 0))))

    http = httpx.Client(event_hooks={"response": [conformance.check, record]}, timeout=60)
    client = openai.OpenAI(base_url=here.url, api_key=KEYS[0], http_client=http, max_retries=5)
    for _ in range(12):  # more than the burst: the SDK is refused, waits, retries
        assert client.models.list().data
    # 5 at once, then each request refused once, and let through after one request's worth
    assert statuses == [(200, 0)] * 5 + [(429, 200), (200, 0)] * 7
    assert here.clock.slept == pytest.approx([0.2] * 7)  # what retry-after-ms said, each time


# -- the real command, on the machine's clock ------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-home"), "--rate-limit", "5/h", keys=KEYS) as server:
        yield server


def test_convtune_serve_limits_each_key(served, conformance):
    with conformance.client(served, key=KEYS[0]) as client:
        responses = [client.get("models") for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert [r.headers["x-ratelimit-remaining-requests"] for r in responses] == list("432100")
    refused = responses[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert "requests per hour (RPH): Limit 5, Used 5" in refused.json()["error"]["message"]
    # a request every 12 minutes: Retry-After is a positive whole number of seconds, up to 720
    retry_after, wait_ms = refused.headers["retry-after"], refused.headers["retry-after-ms"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 720
    assert 0 < int(wait_ms) <= 720_000 and int(retry_after) == math.ceil(int(wait_ms) / 1000)
    with conformance.client(served, key=KEYS[1]) as other:  # another key, its own bucket
        assert other.get("models").headers["x-ratelimit-remaining-requests"] == "4"
    log = served.log()
    assert all(key not in log for key in KEYS)


def test_without_retries_the_sdk_raises_rate_limit_error(served, conformance):
    http = httpx.Client(event_hooks={"response": [conformance.check]}, timeout=120)
    client = openai.OpenAI(base_url=served.url, api_key=KEYS[2], http_client=http, max_retries=0)
    for _ in range(5):
        assert client.models.list().data
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.type == "requests" and error.param is None
    assert int(error.response.headers["retry-after"]) >= 1
