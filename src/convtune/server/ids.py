"""Ids from URLs and bodies, checked with strict patterns before anything looks them up.

The store never turns an id into a path, but the server does not rely on it: an id that does not
match its pattern (`../x`, `%2e%2e`, a NUL, 10 kB of text) is refused before the store or the
disk is touched, with the same 404 a well-formed id that does not exist gets.
"""

from __future__ import annotations

import re

from .errors import APIError

_TAIL = r"[A-Za-z0-9]{1,64}"
FILE_ID = re.compile(rf"^file-{_TAIL}$")
JOB_ID = re.compile(rf"^ftjob-{_TAIL}$")
EVENT_ID = re.compile(rf"^ftevent-{_TAIL}$")
CHECKPOINT_ID = re.compile(rf"^ftckpt-{_TAIL}$")
COMPLETION_ID = re.compile(rf"^chatcmpl-{_TAIL}$")
# ft:<base>:<suffix>:<job id>, or a base model's name; never a path separator, never ".."
MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.:-]{0,255}$")

_WHAT = {
    FILE_ID: ("file", "file-abc123"),
    JOB_ID: ("fine-tuning job", "ftjob-abc123"),
    EVENT_ID: ("fine-tuning event", "ftevent-abc123"),
    CHECKPOINT_ID: ("checkpoint", "ftckpt-abc123"),
    COMPLETION_ID: ("chat completion", "chatcmpl-abc123"),
    MODEL_ID: ("model", "ft:SmolLM2-135M-Instruct:support:ftjob-abc123"),
}


def check(pattern: re.Pattern[str], value: str, *, param: str, status: int = 404) -> str:
    """`value` if it matches `pattern`; else an `APIError` (404 for a URL id, 400 for a body's)."""
    if not pattern.match(value):
        what, example = _WHAT[pattern]
        shown = value if len(value) <= 80 and value.isprintable() else value[:40].encode()
        raise APIError(
            status,
            f"No such {what}: {shown!r} is not a valid id (ids look like {example}).",
            param=param,
            code="model_not_found" if pattern is MODEL_ID and status == 404 else "invalid_id",
        )
    return value
