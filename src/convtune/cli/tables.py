"""Tables of ids: printed at their natural width, so that no id is cut or folded.

A rich table shrinks to the console (80 columns when writing to a pipe) by cutting cells with
an ellipsis; an OpenAI model id alone is 50 characters, and a cut id cannot be copied.
"""

from __future__ import annotations

from datetime import datetime

from rich.measure import Measurement
from rich.table import Table

from . import render


def when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "—"


def print_table(table: Table) -> None:
    out = render.out
    width = out.width
    natural = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if natural <= width:
        out.print(table)
        return
    out.width = natural  # print clips its width= to the console's: widen the console itself
    try:
        out.print(table)
    finally:
        out.width = width
