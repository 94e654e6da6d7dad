"""What a training callback can take: `train`'s `on_epoch_end` may take 2, 3 or 4 arguments
(epoch and step; then `save`; then `answering`), and gets as many as it takes."""

from __future__ import annotations

import inspect
from collections.abc import Callable


def positional_arguments(callback: Callable) -> int:
    """How many positional arguments an `on_epoch_end` callback takes (2 to 4)."""
    try:
        parameters = inspect.signature(callback).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return 4
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return min(4, max(2, len(positional)))
