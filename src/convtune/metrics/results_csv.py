"""OpenAI's results CSV: the per-step metrics file of a fine-tuning job, written and read.

Its columns are ``step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy``; a local
job writes exactly these (`write_results`), and OpenAI's files may have more (`full_valid_loss`,
`train_mean_reward`...). Metrics events name the training accuracy
`train_mean_token_accuracy`: a metrics row (`metrics_row`) uses the events' names, whichever it
came from. OpenAI has served results files base64-encoded (`decode_base64_results`).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import csv
import io
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

COLUMNS = ("step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy")
# What a metrics row may hold, as OpenAI's events name it (the results CSV says train_accuracy).
METRICS = (
    "train_loss",
    "train_mean_token_accuracy",
    "valid_loss",
    "valid_mean_token_accuracy",
    "full_valid_loss",
    "full_valid_mean_token_accuracy",
    "epoch",
    *(
        REWARDS := (  # DPO's: a local DPO job's results CSV has these columns too
            "train_reward_accuracy",
            "train_reward_margin",
            "valid_reward_accuracy",
            "valid_reward_margin",
        )
    ),
)
_ALIASES = {"train_accuracy": "train_mean_token_accuracy"}
_BASE64 = re.compile(rb"^[A-Za-z0-9+/\s]+={0,2}\s*$")


def write_results(rows: Iterable[Mapping[str, Any]]) -> str:
    """The results CSV of metrics rows (events' names): one line per row, empty cells for the
    steps without a validation loss; a DPO job's rows add the reward columns."""
    rows = list(rows)
    rewards = [name for name in REWARDS if any(name in r for r in rows)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *rewards])
    for r in rows:
        writer.writerow(
            [
                r.get("step"),
                r.get("train_loss"),
                r.get("train_mean_token_accuracy"),
                r.get("valid_loss", ""),
                r.get("valid_mean_token_accuracy", ""),
                *(r.get(name, "") for name in rewards),
            ]
        )
    return out.getvalue()


def read_results(content: bytes | str | Path) -> list[dict[str, Any]]:
    """The rows of a results CSV (OpenAI's, or a local job's), one per step, in step order.

    Robust to what real files have: extra or reordered columns, empty cells, `nan`, a BOM, CRLF,
    base64-encoded content, rows without a step (skipped). `train_accuracy` is read as
    `train_mean_token_accuracy`, the name metrics events use.
    """
    if isinstance(content, Path):
        content = content.read_bytes()
    reader = csv.DictReader(io.StringIO(_text(content)))
    if reader.fieldnames is None or "step" not in [f.strip().lower() for f in reader.fieldnames]:
        return []
    rows = []
    for record in reader:
        data = {str(k).strip().lower(): v for k, v in record.items() if k is not None}
        row = metrics_row(data)
        if row is not None:
            rows.append(row)
    return in_step_order(rows)


def decode_base64_results(content: bytes) -> bytes:
    """The results CSV that `content` encodes when it is base64 (OpenAI has served results files
    so), else `content` unchanged.

    Decoded only when the start of `content` is all base64 and what it decodes to is a CSV with
    a `step` column: a plain CSV, a JSONL file or any other file comes back as it is.
    """
    if not content or _has_step_column(content) or not _BASE64.match(content[:4096]):
        return content
    try:
        decoded = base64.b64decode(content, validate=False)
    except (binascii.Error, ValueError):
        return content
    return decoded if _has_step_column(decoded) else content


def _has_step_column(data: bytes) -> bool:
    """Whether `data` starts with a CSV header that has a `step` column (BOM, case aside)."""
    header = data[:4096].removeprefix(codecs.BOM_UTF8).lstrip().split(b"\n", 1)[0]
    return b"step" in [column.strip().strip(b'"').lower() for column in header.split(b",")]


def _text(content: bytes | str) -> str:
    if isinstance(content, str):
        content = content.lstrip("\ufeff").encode("utf-8", errors="surrogatepass")
    return decode_base64_results(content).decode("utf-8-sig", errors="replace")


# -- metrics rows --------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None for an empty cell, 'nan', 'null', a bad value."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def metrics_row(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """A normalized metrics row (`step` an int >= 0, the rest floats) or None without a step.

    `data` is a results CSV's row or a metrics event's data; unknown names and empty or
    non-finite values are left out.
    """
    step = _number(data.get("step"))
    if step is None or step < 0:
        return None
    row: dict[str, Any] = {"step": int(step)}
    for key, value in data.items():
        name = _ALIASES.get(str(key).strip().lower(), str(key).strip().lower())
        if name in METRICS and name not in row:
            number = _number(value)
            if number is not None:
                row[name] = number
    return row


def in_step_order(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step, in step order; a later row of the same step wins (a resumed run)."""
    by_step: dict[int, dict[str, Any]] = {}
    for row in rows:
        by_step[row["step"]] = {**by_step.get(row["step"], {}), **row}
    return [by_step[s] for s in sorted(by_step)]
