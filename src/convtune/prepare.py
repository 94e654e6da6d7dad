"""`prepare`: a conversation spreadsheet in, checked train and validation JSONL files out.

One streaming pass: read a conversation, build its examples, count their tokens, write them to
the train or validation file, update the report. Memory is bounded by one block of the split (100
conversations), not by the file. Outputs are written to temporary files and renamed into place
only when the whole input was read without error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .check import example_tokens
from .errors import InputError, OptionError
from .examples import Example, ExampleBuilder, ExampleOptions
from .findings import Findings
from .jsonl import AtomicWriter, dumps
from .modelinfo import default_model, resolve_model
from .report import DatasetReport, DatasetStats
from .split import split_stream
from .spreadsheet import SheetOptions, open_sheet
from .tokens import LegacyTokens, TokenCounter, counter_for

OVERLONG = ("drop", "truncate")


@dataclass(frozen=True)
class PrepareOptions:
    """Everything `prepare` can be told; the defaults are the CLI's defaults."""

    sheet: SheetOptions = field(default_factory=SheetOptions)
    examples: ExampleOptions = field(default_factory=ExampleOptions)
    valid_ratio: float = 0.2
    seed: int = 0
    model: str | None = None  # whose tokenizer and limits apply; default by format
    max_tokens: int | None = None  # default: the model's context limit
    overlong: str = "drop"  # what to do with an example over max_tokens
    price_per_1m: float | None = None
    force: bool = False
    count_tokens: bool = True

    def __post_init__(self) -> None:
        if self.overlong not in OVERLONG:
            raise OptionError(f"unknown policy {self.overlong!r}; choose drop or truncate")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise OptionError("--max-tokens must be a positive number of tokens")
        if not 0 <= self.valid_ratio < 1:
            raise OptionError("--valid-ratio must be at least 0 and below 1")


@dataclass
class PrepareReport:
    """What happened: counts from the input, and a dataset report per output file."""

    input: str
    actors: tuple[str, str]
    delimiter: str | None
    format: str
    conversations: int = 0
    replies: int = 0
    examples: int = 0
    train_conversations: int = 0
    valid_conversations: int = 0
    dropped: int = 0
    truncated: int = 0
    findings: list[dict] = field(default_factory=list)
    train: DatasetReport | None = None
    valid: DatasetReport | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> int:
        return sum(f["count"] for f in self.findings if f["level"] == "warning")

    def to_dict(self) -> dict:
        return {
            "input": self.input,
            "actors": list(self.actors),
            "delimiter": self.delimiter,
            "format": self.format,
            "conversations": self.conversations,
            "replies": self.replies,
            "examples": self.examples,
            "train_conversations": self.train_conversations,
            "valid_conversations": self.valid_conversations,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "warnings": self.warnings,
            "findings": self.findings,
            "train": self.train.to_dict() if self.train else None,
            "valid": self.valid.to_dict() if self.valid else None,
            "outputs": self.outputs,
        }


def output_paths(input_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    stem = Path(input_path).stem
    out = Path(out_dir)
    return out / f"{stem}.train.jsonl", out / f"{stem}.valid.jsonl"


def prepare(
    input_path: str | Path,
    out_dir: str | Path,
    options: PrepareOptions | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> PrepareReport:
    """Prepare train/validation JSONL from a spreadsheet; see the module docstring.

    Raises `InputError` (naming the file and line of the first problem) when the input has
    errors; then nothing is written. `progress(done, total)` is called now and then.
    """
    options = options or PrepareOptions()
    ex_options = options.examples
    input_findings = Findings()
    sheet = open_sheet(input_path, options.sheet, input_findings)
    model = resolve_model(options.model or default_model(ex_options.format))
    counter: TokenCounter | None = counter_for(model) if options.count_tokens else None
    limit = options.max_tokens if options.max_tokens is not None else model.context
    tokenizer = counter.name if counter else None
    train_path, valid_path = output_paths(input_path, out_dir)
    report = PrepareReport(str(input_path), sheet.actors, sheet.delimiter, ex_options.format)

    train = AtomicWriter(train_path, force=options.force)
    valid: AtomicWriter | None = None
    try:
        if options.valid_ratio > 0:
            valid = AtomicWriter(valid_path, force=options.force)
        train_stats = DatasetStats(
            str(train_path),
            model,
            Findings(),
            tokenizer=tokenizer,
            max_tokens=limit,
            price_per_1m=options.price_per_1m,
        )
        valid_stats = DatasetStats(
            str(valid_path),
            model,
            Findings(),
            tokenizer=tokenizer,
            max_tokens=limit,
            training=False,
        )
        for s in (train_stats, valid_stats):
            s.format = ex_options.format
        builder = ExampleBuilder(sheet.actors, ex_options)
        legacy_labels = (
            (f"{sheet.actors[0]}:", f"{sheet.actors[1]}:")
            if ex_options.format == "prompt-completion"
            else ()
        )
        fmt = ex_options.format
        legacy_tokens = (
            LegacyTokens(counter, sheet.actors, ex_options.stop)  # type: ignore[arg-type]
            if counter is not None
            and fmt == "prompt-completion"
            and LegacyTokens.applies(counter, sheet.actors)
            else None
        )
        voice = ex_options.context == 0
        for conversation, to_valid in split_stream(
            sheet.conversations, options.valid_ratio, options.seed
        ):
            report.conversations += 1
            report.replies += conversation.replies
            if to_valid:
                report.valid_conversations += 1
                writer, stats = valid, valid_stats
            else:
                report.train_conversations += 1
                writer, stats = train, train_stats
            for label in legacy_labels:
                for m in conversation.messages:
                    if label in m.text:
                        input_findings.warning(
                            "delimiter_in_message",
                            f"an actor delimiter such as {label!r} inside a message: in the"
                            " legacy format the model would learn to speak for the other side",
                            m.line,
                        )
            for example in builder.examples(conversation):
                tokens = None
                if legacy_tokens is not None:
                    window = conversation.messages[example.start : example.end + 1]
                    tokens = legacy_tokens.example(window, voice)
                elif counter is not None:
                    tokens = example_tokens(example.record, fmt, counter)
                if tokens is not None and limit is not None and tokens > limit:
                    assert counter is not None
                    fitted = _fit(builder, example, counter, limit, options.overlong)
                    if fitted is None:
                        report.dropped += 1
                        input_findings.warning(
                            "dropped_too_long",
                            f"examples dropped: longer than {limit:,} tokens"
                            + (
                                " even with no context"
                                if options.overlong == "truncate"
                                else " (--overlong truncate shortens their context instead)"
                            ),
                            example.line,
                        )
                        continue
                    example, tokens = fitted
                    report.truncated += 1
                    input_findings.warning(
                        "truncated_too_long",
                        f"examples over {limit:,} tokens: their oldest context was cut",
                        example.line,
                    )
                text = dumps(example.record)
                writer.write_line(text)  # type: ignore[union-attr]
                stats.add(text, example.line, tokens)
                report.examples += 1
            if progress is not None and report.conversations % 256 == 0:
                progress(sheet.position(), sheet.size)
        errors = input_findings.errors
        if errors:
            first = errors[0]
            more = sum(f.count for f in errors) - 1
            raise InputError(
                first.message + (f": {first.example}" if first.example else ""),
                path=input_path,
                line=first.lines[0] if first.lines else None,
                hint=f"and {more} more error{'s' if more != 1 else ''}" if more else None,
            )
        train.commit()
        report.outputs.append(str(train_path))
        if valid is not None:
            valid.commit()
            report.outputs.append(str(valid_path))
    except BaseException:
        train.abort()
        if valid is not None:
            valid.abort()
        raise
    if progress is not None:
        progress(sheet.size, sheet.size)
    report.findings = input_findings.to_list()
    report.train = train_stats.finish()
    if valid is not None:
        report.valid = valid_stats.finish()
    return report


prepare_dataset = prepare  # the CLI's name for it: its own command is called `prepare`


def _fit(
    builder: ExampleBuilder, example: Example, counter: TokenCounter, limit: int, policy: str
) -> tuple[Example, int] | None:
    """The example with its oldest context dropped until it fits, or None (policy drop)."""
    if policy == "drop":
        return None
    fmt = builder.options.format
    start = example.start
    while start < example.end:
        start += 1
        shorter = builder.build(example.conversation, start, example.end)
        tokens = example_tokens(shorter.record, fmt, counter)
        if tokens <= limit:
            return shorter, tokens
    return None
