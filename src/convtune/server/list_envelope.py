"""OpenAI's list envelope: `{"object": "list", "data", "has_more", "first_id", "last_id"}`.

The service returns whole lists for files and checkpoints, and pages (newest first) for jobs
and events; either way the client sees the same cursor pagination: `after` is the id of the
last object of the previous page.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .errors import APIError


def envelope(
    items: Sequence[Any], has_more: bool, *, ids: bool = True, to_dict: Callable | None = None
) -> dict[str, Any]:
    data = [to_dict(i) if to_dict else i.to_dict() for i in items]
    body: dict[str, Any] = {"object": "list", "data": data, "has_more": has_more}
    if ids:  # OpenAI sends null for an empty list (its schema says string: see tests/servers.py)
        body["first_id"] = data[0]["id"] if data else None
        body["last_id"] = data[-1]["id"] if data else None
    return body


def check_limit(limit: int, high: int) -> int:
    if not 1 <= limit <= high:
        raise APIError(
            400, f"Invalid 'limit': {limit}; it must be from 1 to {high}.", param="limit"
        )
    return limit


def after_cursor(items: Sequence[Any], after: str | None, *, id_of=lambda i: i.id) -> list[Any]:
    """The items that follow the one whose id is `after` (all of them when `after` is None).

    An `after` that is not in the list is a 400, not the first page again: a client that loops
    while `has_more` would otherwise loop forever on a cursor deleted meanwhile.
    """
    if after is None:
        return list(items)
    for index, item in enumerate(items):
        if id_of(item) == after:
            return list(items[index + 1 :])
    raise APIError(400, f"Invalid 'after': no object {after!r} in this list.", param="after")
