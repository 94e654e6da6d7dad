"""`convtune serve --rate-limit`: a token bucket per key, OpenAI's 429 and rate-limit headers.

The bucket on its own with a clock of the test's (bursts, refills, keys apart, threads at
once); then a real server at 5 requests a second per key, driven with httpx for the headers and
with the real openai SDK, which waits what `Retry-After` says and retries.
"""

from __future__ import annotations

import itertools
import threading
import time

import httpx
import openai
import pytest

from convtune.errors import OptionError
from convtune.server.rate_limit import Limiter, Rate, duration, parse_rate

from .servers import Conformance, serve

KEYS = ("sk-rate-1-9f8e7d", "sk-rate-2-1a2b3c")


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
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


# -- a real server -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conformance() -> Conformance:
    return Conformance()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-home"), "--rate-limit", "5/s", keys=KEYS) as server:
        yield server


def until_refused(client: httpx.Client, most: int = 30) -> list[httpx.Response]:
    """Requests as fast as they go until one is refused (the last of the list)."""
    responses = []
    for _ in range(most):
        responses.append(client.get("models"))
        if responses[-1].status_code == 429:
            return responses
    raise AssertionError("never refused")


def refill(seconds: float = 1.1) -> None:
    time.sleep(seconds)  # a 5/s bucket is full again after 1 s


def test_headers_on_every_response_and_429_past_the_limit(served, conformance):
    refill()
    with httpx.Client(base_url=served.url, event_hooks={"response": [conformance.check]}) as anon:
        for _ in range(10):  # unknown keys are refused before anything is counted
            response = anon.get("models", headers={"Authorization": "Bearer sk-unknown"})
            assert response.status_code == 401
            assert "x-ratelimit-limit-requests" not in response.headers
    with conformance.client(served, key=KEYS[0]) as client:
        responses = until_refused(client)
    passed, refused = responses[:-1], responses[-1]
    assert len(passed) >= 5  # the burst, and what refilled while it ran
    first = passed[0].headers
    assert first["x-ratelimit-limit-requests"] == "5"
    assert first["x-ratelimit-remaining-requests"] == "4"  # untouched by the unknown keys
    assert first["x-ratelimit-reset-requests"].endswith("ms")  # one request's worth: 200ms
    assert all(0 <= int(r.headers["x-ratelimit-remaining-requests"]) <= 4 for r in passed)

    assert refused.json() == {
        "error": {
            "message": refused.json()["error"]["message"],
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    message = refused.json()["error"]["message"]
    assert message.startswith("Rate limit reached") and "Limit 5" in message
    assert refused.headers["retry-after"] == "1"
    wait_ms = int(refused.headers["retry-after-ms"])
    assert 0 < wait_ms <= 200
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"

    with conformance.client(served, key=KEYS[1]) as other:  # another key, its own bucket
        assert other.get("models").headers["x-ratelimit-remaining-requests"] == "4"
    time.sleep(wait_ms / 1000)
    with conformance.client(served, key=KEYS[0]) as client:
        assert client.get("models").status_code == 200  # what Retry-After said: enough
    log = served.log()
    assert all(key not in log for key in KEYS)


def test_the_sdk_waits_and_gets_through(served, conformance):
    refill()
    statuses: list[tuple[float, int, float]] = []  # when, status, the wait a 429 asked for

    def record(response: httpx.Response) -> None:
        wait = int(response.headers.get("retry-after-ms", 0)) / 1000
        statuses.append((time.monotonic(), response.status_code, wait))

    http = httpx.Client(event_hooks={"response": [conformance.check, record]}, timeout=60)
    client = openai.OpenAI(base_url=served.url, api_key=KEYS[0], http_client=http, max_retries=5)
    start = time.monotonic()
    for _ in range(12):  # more than the burst: the SDK is refused, waits, retries
        assert client.models.list().data
    elapsed = time.monotonic() - start
    codes = [code for _, code, _ in statuses]
    assert codes.count(200) == 12 and 429 in codes
    assert elapsed >= (12 - 5) / 5 - 0.05  # 5 at once, then one per 200 ms
    for (refused_at, code, wait), (retried_at, _, _) in itertools.pairwise(statuses):
        if code == 429:  # the SDK waited what the server asked before it asked again
            assert 0 < wait <= 0.2 and retried_at - refused_at >= wait


def test_without_retries_the_sdk_raises_rate_limit_error(served, conformance):
    refill()
    client = conformance.openai(served, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(30):
            client.models.list()
    error = caught.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.type == "requests" and error.param is None
    assert int(error.response.headers["retry-after"]) >= 1
