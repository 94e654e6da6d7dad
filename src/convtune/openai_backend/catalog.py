"""What OpenAI retires, and when: the dates its fine-tuned models stop answering, the date it
stops taking new fine-tuning jobs, and the list prices of their inference.

A fine-tuned model lives as long as its base model: `ft:gpt-4o-mini-2024-07-18:acme:support:AbC123`
stops answering on the day `gpt-4o-mini-2024-07-18` shuts down. The table below is dated and
sourced; OpenAI moves dates, so a JSON file overrides it without a new release (`load_table`):

    {"shutdowns": {"gpt-4o-mini": "2027-01-14"}, "new_jobs_until": "2027-01-06"}

Nothing is guessed. A base model the table does not name (gpt-4.1-nano, gpt-3.5-turbo, a local
model behind `convtune serve`) has an unknown date and no price, never its neighbour's: a key
covers itself and its dated snapshots (`gpt-4o` covers `gpt-4o-2024-08-06`), not its longer
relatives (`gpt-4o-mini-...`, `gpt-4o-audio-preview`), and an exact key beats its family's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from ..dataset.jsonl import json_problem
from ..errors import ConvtuneError
from ..state.home import data_dir
from .openai_service import WIND_DOWN

TABLE_FILE = "openai-shutdowns.json"  # in convtune's data directory; read when it exists

# When fine-tuned models (and their bases) stop answering. Source: OpenAI's deprecations page
# (developers.openai.com/api/docs/deprecations), notice of 2026-10-14, as quoted by several
# copies read on 2026-11-30 (dev.to/leighefford, dev.to/bigcircle, codersera.com): the GPT-4o,
# GPT-4o mini, GPT-4.1 and GPT-4.1 mini snapshots "and fine-tunes built on them" shut down on
# 2027-01-14. gpt-4o-2024-05-13 went earlier (2026-10-23, notice of 2026-04-22): named here, or the
# `gpt-4o` family would give it a date it does not have. gpt-4.1-nano and gpt-3.5-turbo are left
# out, as issue 11 asks (their models say "unknown"), although the same copies give both
# 2026-10-23 (nano's fine-tunes included): an override file adds them, one line each.
SHUTDOWNS: dict[str, date] = {
    "gpt-4o": date(2027, 1, 14),  # gpt-4o-2024-08-06 (the fine-tunable one), gpt-4o-2024-11-20
    "gpt-4o-2024-05-13": date(2026, 10, 23),
    "gpt-4o-mini": date(2027, 1, 14),  # gpt-4o-mini-2024-07-18
    "gpt-4.1": date(2027, 1, 14),  # gpt-4.1-2025-04-14
    "gpt-4.1-mini": date(2027, 1, 14),  # gpt-4.1-mini-2025-04-14
}

# List prices of inference, USD per 1M tokens (input, output), standard tier, uncached input.
# Source: OpenAI's pricing page (developers.openai.com/api/docs/pricing; "Fine-tuning" section
# for ft: models), as copies of it read on 2026-11-30 give them: pydantic/genai-prices
# (prices/providers/openai.yml), oreateai.com (gpt-4.1 and gpt-4.1-mini fine-tuning),
# tokonomics.ca (gpt-4o and gpt-4o-mini fine-tuning), deploybase.ai (GPT-4.1 family, 2026-03).
# Keys are exact: gpt-4o-2024-05-13 cost more than later gpt-4o snapshots, so no family prices.
FINE_TUNED_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-2024-08-06": (3.75, 15.00),
    "gpt-4o-mini-2024-07-18": (0.30, 1.20),
    "gpt-4.1-2025-04-14": (3.00, 12.00),
    "gpt-4.1-mini-2025-04-14": (0.80, 3.20),
    "gpt-4.1-nano-2025-04-14": (0.20, 0.80),  # the 2025 page as remembered; no copy found
}
BASE_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-2024-08-06": (2.50, 10.00),
    "gpt-4o-2024-11-20": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o-mini-2024-07-18": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-2025-04-14": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-mini-2025-04-14": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-nano-2025-04-14": (0.10, 0.40),
}

_SNAPSHOT = re.compile(r"^(?P<family>.+)-\d{4}-\d{2}-\d{2}$")
_CHECKPOINT = re.compile(r":ckpt-step-\d+$")
_ALLOWED_KEYS = ("shutdowns", "new_jobs_until")


def base_of(model_id: str) -> str | None:
    """The base model of a fine-tuned id (`ft:BASE:org:suffix:id`, a checkpoint's
    `...:ckpt-step-N` too); a base model's id is its own base. None for an `ft:` id without one."""
    model_id = model_id.strip()
    if not model_id.startswith("ft:"):
        return model_id or None
    return _CHECKPOINT.sub("", model_id).split(":")[1] or None


@dataclass(frozen=True)
class ShutdownTable:
    """Shutdown dates by family (`gpt-4o-mini`) or snapshot, and the last day of new jobs."""

    shutdowns: Mapping[str, date] = field(default_factory=lambda: dict(SHUTDOWNS))
    new_jobs_until: date = WIND_DOWN
    source: Path | None = None  # the file that overrode the built-in table, if any

    def shuts_down(self, base: str | None) -> date | None:
        """When `base` (and the models fine-tuned from it) stops answering; None if unknown."""
        if not base:
            return None
        if base in self.shutdowns:
            return self.shutdowns[base]
        snapshot = _SNAPSHOT.match(base)
        return self.shutdowns.get(snapshot["family"]) if snapshot else None


@dataclass(frozen=True)
class Retirement:
    model: str
    base: str | None
    shuts_down: date | None  # None: no date known (never a guess)
    days_left: int | None  # negative once it has shut down

    def to_dict(self) -> dict:
        return {
            "base": self.base,
            "shuts_down": self.shuts_down.isoformat() if self.shuts_down else None,
            "days_left": self.days_left,
        }


def current_date() -> date:
    """Today; tests replace this function to fix the date."""
    return date.today()


def days_until(day: date, today: date | None = None) -> int:
    return (day - (today or current_date())).days


def retirement(
    model_id: str, today: date | None = None, table: ShutdownTable | None = None
) -> Retirement:
    """When `model_id` stops answering, by its base model, from `table` (default: the built-in
    table with the data directory's override file, `load_table()`)."""
    table = table if table is not None else load_table()
    base = base_of(model_id)
    when = table.shuts_down(base)
    days = days_until(when, today) if when else None
    return Retirement(model_id, base, when, days)


def default_table_path() -> Path:
    return data_dir() / TABLE_FILE


def load_table(path: str | Path | None = None) -> ShutdownTable:
    """The built-in table, overridden by `path`, else by `$CONVTUNE_HOME/openai-shutdowns.json`
    when it exists. A file's entries override or add families; a missing or malformed given file
    is a `ConvtuneError` naming the file (and the line, where there is one)."""
    if path is None:
        path = default_table_path()
        if not path.is_file():
            return ShutdownTable()
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM (Windows editors write one) is fine
    except FileNotFoundError:
        raise ConvtuneError("no such file", path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConvtuneError(f"cannot read the shutdown table: {reason}", path=path) from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        problem = json_problem(exc)
        raise ConvtuneError(f"not valid JSON: {problem}", path=path, line=exc.lineno) from None
    except _DuplicateKey as exc:
        raise ConvtuneError(
            f"{json.dumps(exc.key, ensure_ascii=False)} is given twice",
            path=path,
            line=_line_of(text, exc.key, nth=2),
            hint="keep one of them",
        ) from None
    hint = 'expected {"shutdowns": {"gpt-4o-mini": "2027-01-14"}, "new_jobs_until": "2027-01-06"}'
    if not isinstance(data, dict):
        raise ConvtuneError("the shutdown table is not a JSON object", path=path, hint=hint)
    unknown = [k for k in data if k not in _ALLOWED_KEYS]
    if unknown:
        raise ConvtuneError(
            f"unknown key {unknown[0]!r}", path=path, line=_line_of(text, unknown[0]), hint=hint
        )
    shutdowns = dict(SHUTDOWNS)
    given = data.get("shutdowns", {})
    if not isinstance(given, dict):
        raise ConvtuneError(
            '"shutdowns" is not an object', path=path, line=_line_of(text, "shutdowns"), hint=hint
        )
    named: set[str] = set()
    for family, value in given.items():
        if not family.strip():
            raise ConvtuneError("an empty model name in shutdowns", path=path, hint=hint)
        if family.strip() in named:  # "gpt-4o" and " gpt-4o": one model named twice
            raise ConvtuneError(
                f"{json.dumps(family.strip(), ensure_ascii=False)} is given twice",
                path=path,
                line=_line_of(text, family),
                hint="keep one of them",
            )
        named.add(family.strip())
        shutdowns[family.strip()] = _date(value, family, text, path)
    until = WIND_DOWN
    if "new_jobs_until" in data:
        until = _date(data["new_jobs_until"], "new_jobs_until", text, path)
    return ShutdownTable(shutdowns, until, path)


def _date(value: object, key: str, text: str, path: Path) -> date:
    try:
        if not isinstance(value, str):
            raise ValueError
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ConvtuneError(
            f"{key}: {json.dumps(value, ensure_ascii=False)} is not a date",
            path=path,
            line=_line_of(text, key),
            hint="write it as YYYY-MM-DD",
        ) from None


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict; a key given twice is an error, not "the last one wins"."""
    seen: dict = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


def _line_of(text: str, key: str, nth: int = 1) -> int | None:
    """The line where `"key"` appears the `nth` time in the file's text (None if it is not
    written so)."""
    written = json.dumps(key, ensure_ascii=False)
    at = -1
    for _ in range(nth):
        at = text.find(written, at + 1)
        if at < 0:
            return None
    return text.count("\n", 0, at) + 1


def inference_price(model_id: str) -> tuple[float, float] | None:
    """OpenAI's list price of `model_id`'s inference, USD per 1M (input, output) tokens: a
    fine-tuned model's (its checkpoints' too) by its base snapshot. None when unknown."""
    if model_id.startswith("ft:"):
        base = base_of(model_id)
        return FINE_TUNED_PRICES.get(base) if base else None
    return BASE_PRICES.get(model_id.strip())


def cost(model_id: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    """What `prompt_tokens` in and `completion_tokens` out cost in USD at list price; None when
    the price is unknown."""
    price = inference_price(model_id)
    if price is None:
        return None
    return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000
