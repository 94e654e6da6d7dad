"""The options of `prepare`, defined once.

`convtune prepare`'s flags (`cli/prepare_cmd.py`), the request body of the web page's prepare
(`server/ui_api.py`, `PrepareBody`) and the page's form (`GET /v1/convtune/options`, built by
`ui/data.js`) are all made from `OPTIONS`, as training's are from `TrainOptions`. Each option
says its type, range, choices, help and label once; its default is the library's own (the
`SheetOptions`, `ExampleOptions` and `PrepareOptions` dataclasses it fills). `assemble` turns
the flat values any of them gathered into the library's `PrepareOptions`, checking every value
against its option and reporting every problem at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import OptionError
from .examples import FORMATS, LAYOUTS, ExampleOptions
from .modelinfo import OPENAI_MODELS
from .pipeline import OVERLONG, PrepareOptions
from .sheet_csv import DELIMITERS
from .spreadsheet import SheetOptions

ALL = "all"  # `context`: every earlier message (None in the library)
_PARTS = {"sheet": SheetOptions, "examples": ExampleOptions, "": PrepareOptions}


@dataclass(frozen=True)
class PrepareOption:
    name: str
    part: str  # the dataclass it fills: "sheet", "examples", or "" for PrepareOptions itself
    kind: type  # int, float, bool or str
    help: str  # the CLI's help and the form's hint
    label: str  # the form's label
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None  # inclusive
    below: float | None = None  # exclusive
    nullable: bool = False  # None is a value: detect, or the model's own
    all: bool = False  # "all" is a value (`context`)
    max_length: int | None = None  # characters of a text option
    api: bool = True  # the web page and its request take it (not --force or --no-tokens)
    form: str = "more"  # where the page shows it: "main", "more" (folded), "file" (the sheet
    # picker beside the file, filled from the workbook), "" (not on the page)
    suggestions: tuple[str, ...] = ()  # values the form offers
    closed_on_api: bool = False  # the page's request takes the suggestions only (no paths)
    cli: str | None = None  # the flags, where they are not --name (or --name/--no-name)

    @property
    def default(self) -> Any:
        return getattr(_PARTS[self.part](), self.name)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def problem(self, value: Any) -> str | None:
        """Why `value` does not fit, in the flag's words, or None."""
        if value is None and (self.nullable or self.all):
            return None
        if self.all and value == ALL:
            return None
        if self.kind is bool:
            return None if isinstance(value, bool) else f"{self.flag} must be true or false"
        if self.choices:
            if value in self.choices:
                return None
            return f"{self.flag} must be one of {', '.join(self.choices)}, not {value!r}"
        if self.kind is str:
            if not isinstance(value, str) or (self.max_length and len(value) > self.max_length):
                most = f" of at most {self.max_length} characters" if self.max_length else ""
                return f"{self.flag} must be a text{most}"
            return None
        number = isinstance(value, int | float) if self.kind is float else isinstance(value, int)
        if not number or isinstance(value, bool):
            noun = "an integer" if self.kind is int else "a number"
            return f"{self.flag} must be {noun}" + (" or 'all'" if self.all else "")
        if self.low is not None and value < self.low:
            return f"{self.flag} must be at least {self.low:g}"
        if self.high is not None and value > self.high:
            return f"{self.flag} must be at most {self.high:g}"
        if self.below is not None and value >= self.below:
            return f"{self.flag} must be below {self.below:g}"
        return None

    def describe(self) -> dict[str, Any]:
        """What the page builds its field from (`GET /v1/convtune/options`)."""
        return {
            "name": self.name,
            "kind": self.kind.__name__,
            "default": ALL if self.all and self.default is None else self.default,
            "help": self.help,
            "label": self.label,
            "choices": list(self.choices),
            "suggestions": list(self.suggestions),
            "low": self.low,
            "high": self.high,
            "below": self.below,
            "nullable": self.nullable,
            "all": self.all,
            "max_length": self.max_length,
            "closed": self.closed_on_api,
            "form": self.form,
        }


OPTIONS: tuple[PrepareOption, ...] = (
    PrepareOption(
        "format", "examples", str,
        "chat: OpenAI chat JSONL; prompt-completion: legacy GPT-3; sharegpt: Axolotl,"
        " LLaMA-Factory; preference: OpenAI DPO pairs, from a third column of rejected replies.",
        "Format", choices=FORMATS, form="main",
    ),
    PrepareOption(
        "context", "examples", int,
        "Messages before each reply to include, or 'all'. 0 gives empty prompts ('voice' data).",
        "Context", low=0, high=10_000, all=True, form="main",
    ),
    PrepareOption(
        "layout", "examples", str,
        "turn: one example per reply; conversation: one per conversation, every reply trained.",
        "Layout", choices=LAYOUTS, form="main",
    ),
    PrepareOption(
        "valid_ratio", "", float,
        "Share of conversations for validation (0: no validation file).",
        "Validation share", low=0, below=1, form="main",
    ),
    PrepareOption(
        "system", "examples", str,
        "A system message for every chat/sharegpt example.",
        "System message", nullable=True, max_length=1024, form="main",
    ),
    PrepareOption(
        "stop", "examples", bool,
        "prompt-completion: end completions with '\\n<actor 1>: ' so the model learns to stop.",
        "End completions with the next speaker's name", form="main",
    ),
    PrepareOption(
        "rejected_column", "sheet", str,
        "preference: the header's name of the rejected replies' column (default: the third).",
        "Rejected replies' column", nullable=True, max_length=200,
    ),
    PrepareOption(
        "allow_sft_rows", "examples", bool,
        "preference: write a reply with no rejected one as a supervised row (the local trainer"
        " trains it as supervised; OpenAI refuses such files).",
        "Allow rows without a rejected reply",
    ),
    PrepareOption("seed", "", int, "Seed of the split.", "Seed of the split", low=0, high=2**31 - 1),
    PrepareOption(
        "separator", "sheet", str, "Row text between conversations.", "Separator",
        max_length=100,
    ),
    PrepareOption(
        "delimiter", "sheet", str, "CSV delimiter (default: detected among ; , tab |).",
        "CSV delimiter", nullable=True, max_length=1, suggestions=DELIMITERS,
    ),
    PrepareOption(
        "encoding", "sheet", str, "Text encoding of a CSV, e.g. cp1252.", "Text encoding",
        max_length=40,
    ),
    PrepareOption(
        "sheet", "sheet", str, "Sheet of an .xlsx workbook (default: the first visible one).",
        "Sheet", nullable=True, max_length=200, form="file",
    ),
    PrepareOption(
        "model", "", str,
        "Model whose tokenizer, limit and price apply (default gpt-4o-mini-2024-07-18;"
        " davinci-002 for prompt-completion), or a local model folder, .gguf or"
        " SmolLM2-135M-Instruct.",
        "Count tokens and cost for", nullable=True, max_length=4096, suggestions=tuple(OPENAI_MODELS),
        closed_on_api=True,
    ),
    PrepareOption(
        "max_tokens", "", int, "Longest example in tokens (default: the model's limit).",
        "Longest example (tokens)", low=1, high=10_000_000, nullable=True,
    ),
    PrepareOption(
        "overlong", "", str,
        "Examples over --max-tokens: drop them, or cut their oldest context. Always reported.",
        "Longer examples", choices=OVERLONG,
    ),
    PrepareOption(
        "price_per_1m", "", float,
        "Training price in USD per million tokens (default: the model's list price).",
        "Price per 1M tokens (USD)", low=0, high=1_000_000, nullable=True,
    ),
    PrepareOption(
        "force", "", bool, "Overwrite existing output files.", "Overwrite", api=False, form="",
    ),
    PrepareOption(
        "count_tokens", "", bool,
        "Count tokens (--no-tokens is faster: no cost estimate, no length limit).",
        "Count tokens", api=False, form="", cli="--tokens/--no-tokens",
    ),
)  # fmt: skip
BY_NAME = {o.name: o for o in OPTIONS}


def assemble(values: Mapping[str, Any]) -> PrepareOptions:
    """The library's options from flat values (the CLI's flags, a request's body): names not
    given keep their default; every problem is reported at once, in the flags' words."""
    unknown = sorted(set(values) - set(BY_NAME))
    if unknown:
        raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
    problems = [p for n, v in values.items() if (p := BY_NAME[n].problem(v)) is not None]
    if problems:
        raise OptionError("; ".join(problems))
    given = dict(values)
    if given.get("context") == ALL:
        given["context"] = None
    if "system" in given:  # a system message of blanks is none
        given["system"] = (given["system"] or "").strip() or None
    parts: dict[str, dict[str, Any]] = {"sheet": {}, "examples": {}, "": {}}
    for name, value in given.items():
        parts[BY_NAME[name].part][name] = value
    return PrepareOptions(
        sheet=SheetOptions(**parts["sheet"]),
        examples=ExampleOptions(**parts["examples"]),
        **parts[""],
    )
