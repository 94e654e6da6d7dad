"""`prepare`: a conversation spreadsheet in, checked train and validation JSONL files out.

One streaming pass: read a conversation, build its examples, count their tokens, write them to
the train or validation file, update the report. Memory is bounded by one block of the split (100
conversations), not by the file. Outputs are written to temporary files and renamed into place
only when the whole input was read without error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, OptionError
from .check import example_tokens
from .examples import Example, ExampleBuilder, ExampleOptions, reply_problem
from .findings import Finding, Findings, count, first_error
from .jsonl import AtomicWriter, dumps
from .modelinfo import default_model, resolve_model
from .report import DatasetReport, DatasetStats
from .split import split_stream
from .spreadsheet import SheetOptions, open_sheet
from .token_process import CountingProcess
from .tokens import MessageCounts, OpenAICounter, TokenCounter, counter_for

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
        if self.price_per_1m is not None and self.price_per_1m < 0:
            raise OptionError("--price-per-1m cannot be negative")
        if not 0 <= self.valid_ratio < 1:
            raise OptionError("--valid-ratio must be at least 0 and below 1")

    @property
    def reads_rejected(self) -> bool:
        """Whether the sheet's column of rejected replies is read (preference data, or a
        column named: then other formats read it too, and leave it out)."""
        return self.examples.format == "preference" or self.sheet.rejected_column is not None


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
    supervised: int = 0  # preference pairs written without a rejected reply (--allow-sft-rows)
    findings: list[Finding] = field(default_factory=list)
    train: DatasetReport | None = None
    valid: DatasetReport | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def warnings(self) -> int:
        return count(self.findings, "warning")

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
            "supervised": self.supervised,
            "warnings": self.warnings,
            "findings": [f.to_dict() for f in self.findings],
            "train": self.train.to_dict() if self.train else None,
            "valid": self.valid.to_dict() if self.valid else None,
            "outputs": self.outputs,
        }


def output_paths(input_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    stem = Path(input_path).stem
    out = Path(out_dir)
    return out / f"{stem}.train.jsonl", out / f"{stem}.valid.jsonl"


PARALLEL_MIN_BYTES = 2 << 20  # smaller inputs are done before a counting process would start
BATCH = 100  # conversations per batch sent to the counting process


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
    input_findings = Findings()
    sheet = open_sheet(input_path, options.sheet, input_findings, rejected=options.reads_rejected)
    _rejected_column(sheet, options, input_findings)
    train_path, valid_path = output_paths(input_path, out_dir)
    train = AtomicWriter(train_path, force=options.force)
    valid: AtomicWriter | None = None
    run: _PrepareRun | None = None
    try:
        if options.valid_ratio > 0:
            valid = AtomicWriter(valid_path, force=options.force)
        run = _PrepareRun(sheet, options, input_findings, train, valid)
        run.all(progress)
        first = first_error(input_findings.errors)
        if first is not None:
            raise first.to_error(input_path)
        _refuse_empty(input_path, run, train, valid)
        train.commit()
        if valid is not None and not valid.lines:
            # An empty file is not a validation set: write none, and say so (a stale one from
            # an earlier run would pass for this run's, so --force removes it).
            valid.abort()
            valid = None
            stale = valid_path.exists()
            if stale:
                valid_path.unlink()
            input_findings.warning(
                "no_validation_examples",
                "no validation file written: the split left no example on the validation side"
                " (it needs 2 or more conversations with replies)",
                detail=f"removed the earlier {valid_path.name}" if stale else None,
            )
        if valid is not None:
            valid.commit()
    except BaseException:
        train.abort()
        if valid is not None:
            valid.abort()
        raise
    finally:
        if run is not None:
            run.close()
    if progress is not None:
        progress(sheet.size, sheet.size)
    report = run.report
    report.outputs = [str(train_path)] + ([str(valid_path)] if valid is not None else [])
    report.findings = input_findings.to_list()
    report.train = run.train_stats.finish()
    if valid is not None:
        report.valid = run.valid_stats.finish()
    return report


def _rejected_column(sheet, options: PrepareOptions, findings: Findings) -> None:
    """Preference data from a sheet with no column of rejected replies is an error (unless
    every row may be supervised); another format leaves a named column out, and says so."""
    ex = options.examples
    if ex.format == "preference":
        if sheet.rejected is None and not ex.allow_sft_rows:
            raise InputError(
                "the header row names no column of rejected replies: preference data needs"
                " one, after the two actors' (such as 'Human;AI;Rejected')",
                path=sheet.path,
                line=sheet.header_line,
                hint="add it, or give --allow-sft-rows to write rows without a rejected reply"
                " as supervised ones",
            )
    elif sheet.rejected is not None:
        findings.warning(
            "rejected_not_written",
            f"the rejected replies (column {sheet.rejected!r}) are in no {ex.format} example:"
            " --format preference writes them",
        )


def _refuse_empty(
    input_path: str | Path, run: _PrepareRun, train: AtomicWriter, valid: AtomicWriter | None
) -> None:
    """An input whose every example was dropped, or whose training side is empty, is an error.

    (An input with no exchange at all is already an error of the reader: `no exchanges: ...`.)
    An empty output presented as success would be trained on, or uploaded, and fail later.
    """
    if train.lines:
        return
    report = run.report
    if valid is None or not valid.lines:
        limit = f"{run.limit:,}" if run.limit is not None else "the limit of"
        which = (
            "the one example is" if report.dropped == 1 else f"all {report.dropped:,} examples are"
        )
        raise InputError(
            f"no examples: {which} longer than {limit} tokens and dropped",
            path=input_path,
            hint="raise --max-tokens, lower --context, or shorten them with --overlong truncate",
        )
    dropped = f" or were dropped as too long ({report.dropped:,})" if report.dropped else ""
    raise InputError(
        "no training examples: "
        + ("the one example" if valid.lines == 1 else f"all {valid.lines:,} examples")
        + f" went to the validation file{dropped}",
        path=input_path,
        hint="lower --valid-ratio, or add conversations with replies",
    )


class _PrepareRun:
    """One pass of `prepare`: split, build, count, limit, write, account.

    Conversations go in batches; with per-message counting (`MessageCounts`) each batch's strings
    are counted, in a child process for large inputs, while the previous batch is written.
    """

    def __init__(self, sheet, options: PrepareOptions, findings: Findings, train, valid) -> None:
        ex = options.examples
        self.sheet = sheet
        self.options = options
        self.findings = findings
        self.fmt = ex.format
        self.model = resolve_model(options.model or default_model(ex.format))
        self.counter: TokenCounter | None = (
            counter_for(self.model) if options.count_tokens else None
        )
        self.limit = options.max_tokens if options.max_tokens is not None else self.model.context
        tokenizer = self.counter.name if self.counter else None
        self.report = PrepareReport(str(sheet.path), sheet.actors, sheet.delimiter, ex.format)
        self.train, self.valid = train, valid
        self.train_stats = DatasetStats(
            str(train.path),
            self.model,
            Findings(),
            tokenizer=tokenizer,
            max_tokens=self.limit,
            price_per_1m=options.price_per_1m,
        )
        self.valid_stats = DatasetStats(
            str(valid.path) if valid else "",
            self.model,
            Findings(),
            tokenizer=tokenizer,
            max_tokens=self.limit,
            training=False,
        )
        for s in (self.train_stats, self.valid_stats):
            s.format = ex.format
        self.builder = ExampleBuilder(sheet.actors, ex)
        self.legacy_labels = (
            (f"{sheet.actors[0]}:", f"{sheet.actors[1]}:")
            if ex.format == "prompt-completion"
            else ()
        )
        self.per_message: MessageCounts | None = None
        self.process: CountingProcess | None = None
        if MessageCounts.applies(self.counter, ex.format, sheet.actors):
            assert isinstance(self.counter, OpenAICounter)
            self.per_message = MessageCounts(
                ex.format, sheet.actors, stop=ex.stop, voice=ex.context == 0, system=ex.system
            )
            if sheet.size >= PARALLEL_MIN_BYTES and sheet.delimiter is not None:  # CSV: bytes
                self.process = CountingProcess(self.counter.name)
                self.process.submit(self.per_message.label_texts())  # the first result, later
            else:
                self.per_message.set_labels(self.counter.count_many(self.per_message.label_texts()))

    def all(self, progress: Callable[[int, int], None] | None) -> None:
        items = split_stream(self.sheet.conversations, self.options.valid_ratio, self.options.seed)
        previous: list | None = None
        labels_pending = self.process is not None
        for batch in _batches(items, BATCH):
            if progress is not None:
                progress(self.sheet.position(), self.sheet.size)
            texts: list[str] | None = None
            if self.per_message is not None:
                texts = []
                for conversation, _ in batch:
                    self.per_message.texts(conversation.messages, texts)
                if self.process is not None:
                    self.process.submit(texts)
                    if labels_pending:  # counted while the first batch was being read
                        self.per_message.set_labels(self.process.result())
                        labels_pending = False
                    if previous is not None:
                        self.batch(previous, self.process.result())
                    previous = batch
                    continue
                texts = [self.counter.count(t) for t in texts]  # type: ignore[union-attr]
            self.batch(batch, texts)
        if previous is not None:
            assert self.process is not None
            self.batch(previous, self.process.result())

    def close(self) -> None:
        if self.process is not None:
            self.process.close()
            self.process = None

    def batch(self, batch: list, counts: list[int] | None) -> None:
        offset = 0
        per_message = self.per_message
        for conversation, to_valid in batch:
            n = len(conversation.messages)
            own = None
            if counts is not None and per_message is not None:
                width = 2 * n if (self.fmt == "prompt-completion" and not per_message.stop) else n
                own = counts[offset : offset + width]
                offset += width
            self.conversation(conversation, to_valid, own)

    def conversation(self, conversation, to_valid: bool, counts: list[int] | None) -> None:
        report = self.report
        report.conversations += 1
        report.replies += conversation.replies
        if to_valid:
            report.valid_conversations += 1
            writer, stats = self.valid, self.valid_stats
        else:
            report.train_conversations += 1
            writer, stats = self.train, self.train_stats
        for label in self.legacy_labels:
            for m in conversation.messages:
                if label in m.text:
                    self.findings.warning(
                        "delimiter_in_message",
                        f"an actor delimiter such as {label!r} inside a message: in the legacy"
                        " format the model would learn to speak for the other side",
                        m.line,
                    )
        limit = self.limit
        pairs = self.fmt == "preference"
        for example in self.builder.examples(conversation):
            if pairs and not self.pair_ok(example):
                continue
            tokens = None
            if counts is not None:
                tokens = self.per_message.example(  # type: ignore[union-attr]
                    conversation.messages, counts, example.start, example.end
                )
            elif self.counter is not None:
                tokens = example_tokens(example.record, self.fmt, self.counter)
            if tokens is not None and limit is not None and tokens > limit:
                fitted = self.fit(example, limit)
                if fitted is None:
                    continue
                example, tokens = fitted
            text = dumps(example.record)
            writer.write_line(text)
            stats.add(text, example.line, tokens)
            report.examples += 1

    def pair_ok(self, example: Example) -> bool:
        """Whether a preference pair can be written (an error with its line otherwise);
        a supervised row is counted, and warned of."""
        allow = self.options.examples.allow_sft_rows
        messages = example.conversation.messages
        problem = reply_problem(messages, example.end, allow_sft_rows=allow)
        if problem is not None:
            self.findings.error(*problem, example.line)
            return False
        if messages[example.end].rejected is None:
            self.report.supervised += 1
            self.findings.warning(
                "supervised_rows",
                "replies with no rejected reply, written as supervised rows (--allow-sft-rows):"
                " the local trainer trains them as supervised fine-tuning; OpenAI refuses a"
                " preference file that has any",
                example.line,
            )
        return True

    def fit(self, example: Example, limit: int) -> tuple[Example, int] | None:
        """The example with its oldest context cut until it fits (policy truncate), or None."""
        assert self.counter is not None
        if self.options.overlong == "truncate":
            last = self.builder.last_start(example.end)
            for start in range(example.start + 1, last + 1):
                shorter = self.builder.build(example.conversation, start, example.end)
                tokens = example_tokens(shorter.record, self.fmt, self.counter)
                if tokens <= limit:
                    self.report.truncated += 1
                    self.findings.warning(
                        "truncated_too_long",
                        f"examples over {limit:,} tokens: their oldest context was cut",
                        example.line,
                    )
                    return shorter, tokens
        self.report.dropped += 1
        how = (
            " even with no context"
            if self.options.overlong == "truncate"
            else " (--overlong truncate shortens their context instead)"
        )
        self.findings.warning(
            "dropped_too_long", f"examples dropped: longer than {limit:,} tokens{how}", example.line
        )
        return None


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
