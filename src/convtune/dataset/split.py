"""Deterministic, streaming train/validation split by conversation.

A whole conversation goes to one side, never both. The stream is cut into blocks of `block`
conversations; in each block the number sent to validation keeps the running total at
round(ratio x conversations seen so far), and which ones is drawn with a generator seeded by
`seed`. The result is an exact ratio, stratified along the file (a file sorted by topic still has
every topic on both sides), reproducible byte for byte, and never holds more than one block.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import TypeVar

from ..errors import OptionError

T = TypeVar("T")

BLOCK = 100


def _quota(seen: int, ratio: float) -> int:
    return int(seen * ratio + 0.5)  # round half up, the same on every platform


def split_stream(
    items: Iterable[T], ratio: float, seed: int = 0, block: int = BLOCK
) -> Iterator[tuple[T, bool]]:
    """Yield `(item, is_validation)` for every item, in input order within each block."""
    if not 0 <= ratio < 1:
        raise OptionError("the validation ratio must be at least 0 and below 1")
    if ratio == 0:
        for item in items:
            yield item, False
        return
    rng = random.Random(seed)
    buffer: list[T] = []
    seen = 0
    chosen = 0
    first_block = True

    def flush() -> Iterator[tuple[T, bool]]:
        nonlocal seen, chosen, first_block
        n = len(buffer)
        seen += n
        want = _quota(seen, ratio) - chosen
        if first_block and seen == n and n >= 2:
            want = max(want, 1)  # a small set still gets a validation conversation
        want = max(0, min(want, n - (1 if first_block else 0)))
        picked = set(rng.sample(range(n), want))
        chosen += want
        first_block = False
        for i, item in enumerate(buffer):
            yield item, i in picked
        buffer.clear()

    for item in items:
        buffer.append(item)
        if len(buffer) == block:
            yield from flush()
    if buffer:
        yield from flush()
