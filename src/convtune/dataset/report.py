"""Dataset statistics: token counts, duplicates, length limits, epochs and cost.

`DatasetStats` takes examples one at a time (from `prepare` as it writes them, or from `check` as
it reads a file) and keeps only bounded state: a histogram of token counts, 8 bytes per example
for duplicate detection, and the first line numbers of each finding.
"""

from __future__ import annotations

from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field

from .findings import FIRST_LINES, Finding, Findings, count
from .modelinfo import ModelInfo, default_epochs

OPENAI_MIN_EXAMPLES = 10
OPENAI_ADVISED_EXAMPLES = 50


@dataclass
class TokenSummary:
    min: int = 0
    mean: float = 0.0
    p90: int = 0
    max: int = 0
    total: int = 0


@dataclass
class DatasetReport:
    """What a user needs before paying for training, for one JSONL file."""

    path: str
    format: str | None
    examples: int
    model: str
    tokenizer: str | None
    context_limit: int | None
    tokens: TokenSummary | None
    histogram: dict[int, int] = field(default_factory=dict)
    epochs: int | None = None
    billed_tokens: int | None = None
    price_per_1m: float | None = None
    cost: float | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> int:
        return count(self.findings, "error")

    @property
    def warnings(self) -> int:
        return count(self.findings, "warning")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["histogram"] = {str(k): v for k, v in sorted(self.histogram.items())}
        data["findings"] = [f.to_dict() for f in self.findings]
        data["errors"] = self.errors
        data["warnings"] = self.warnings
        return data


class DatasetStats:
    """Accumulates one file's statistics; `finish` turns them into a `DatasetReport`."""

    def __init__(
        self,
        path: str,
        model: ModelInfo,
        findings: Findings,
        *,
        tokenizer: str | None,
        max_tokens: int | None = None,
        price_per_1m: float | None = None,
        training: bool = True,
    ) -> None:
        self.path = path
        self.model = model
        self.findings = findings
        self.tokenizer = tokenizer
        self.limit = max_tokens if max_tokens is not None else model.context
        self.price = price_per_1m if price_per_1m is not None else model.price_per_1m
        self.training = training
        self.format: str | None = None
        self.examples = 0
        self.histogram: Counter[int] = Counter()
        self._duplicates = DuplicateFinder()

    def add(self, text: str, line: int, tokens: int | None) -> None:
        """Count one example: its JSON text (for duplicates), line and token count."""
        self.examples += 1
        self._duplicates.add(hash(text), line)
        if tokens is not None:
            self.histogram[tokens] += 1
            if self.limit is not None and tokens > self.limit:
                self.findings.warning(
                    "too_long",
                    f"examples longer than the limit of {self.limit:,} tokens"
                    " (the service truncates them; prepare --max-tokens drops or truncates)",
                    line,
                )

    def finish(self) -> DatasetReport:
        count, lines = self._duplicates.finish()
        if count:
            self.findings.warning(
                "duplicate", "duplicate examples (the same line as an earlier one)", count=count
            )
            self.findings.by_code["duplicate"].lines = lines
        if self.training and self.examples < OPENAI_MIN_EXAMPLES:
            self.findings.warning(
                "few_examples",
                f"fewer than {OPENAI_MIN_EXAMPLES} examples: OpenAI refuses to train on so few",
                count=1,
            )
        elif self.training and self.examples < OPENAI_ADVISED_EXAMPLES:
            self.findings.warning(
                "few_examples",
                f"fewer than {OPENAI_ADVISED_EXAMPLES} examples: OpenAI advises at least"
                f" {OPENAI_ADVISED_EXAMPLES} for a clear improvement",
                count=1,
            )
        summary = None
        epochs = billed = cost = None
        if self.histogram:
            summary = _summary(self.histogram)
            if self.training:
                epochs = default_epochs(self.examples)
                limit = self.limit
                per_epoch = sum(
                    (min(t, limit) if limit else t) * n for t, n in self.histogram.items()
                )
                billed = per_epoch * epochs
                if self.price is not None:
                    cost = round(billed / 1_000_000 * self.price, 4)
        return DatasetReport(
            path=self.path,
            format=self.format,
            examples=self.examples,
            model=self.model.name,
            tokenizer=self.tokenizer,
            context_limit=self.limit,
            tokens=summary,
            histogram=dict(self.histogram),
            epochs=epochs,
            billed_tokens=billed,
            price_per_1m=self.price if self.training else None,
            cost=cost,
            findings=self.findings.to_list(),
        )


def _summary(histogram: Counter[int]) -> TokenSummary:
    n = sum(histogram.values())
    total = sum(t * c for t, c in histogram.items())
    values = sorted(histogram)
    rank = max(1, -(-9 * n // 10))  # nearest-rank 90th percentile
    seen = 0
    p90 = values[-1]
    for t in values:
        seen += histogram[t]
        if seen >= rank:
            p90 = t
            break
    return TokenSummary(values[0], round(total / n, 1), p90, values[-1], total)


class DuplicateFinder:
    """Exact duplicate detection in 8 bytes per distinct example, with no growth spike.

    Hashes arrive in a small buffer; every `chunk` of them is sorted, compared with the sorted
    array of all hashes seen before (binary search), and merged into it. Only the first line
    numbers of duplicates are kept. Python's string hash is 64 bits: a false match between two
    different examples is a one-in-10^13 event at a million examples.
    """

    def __init__(self, chunk: int = 1 << 16) -> None:
        self.chunk = chunk
        self._hashes = array("q")
        self._lines = array("q")
        self._seen = None  # numpy int64 array, sorted
        self.count = 0
        self.lines: list[int] = []

    def add(self, value: int, line: int) -> None:
        self._hashes.append(value)
        self._lines.append(line)
        if len(self._hashes) >= self.chunk:
            self._flush()

    def _flush(self) -> None:
        import numpy as np

        if not self._hashes:
            return
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        lines = np.frombuffer(self._lines, dtype=np.int64)
        order = np.argsort(hashes, kind="stable")  # equal hashes keep their input order
        hashes, lines = hashes[order], lines[order]
        repeat = np.zeros(len(hashes), dtype=bool)
        repeat[1:] = hashes[1:] == hashes[:-1]
        seen = self._seen if self._seen is not None else np.empty(0, dtype=np.int64)
        if len(seen):
            at = np.searchsorted(seen, hashes)
            repeat |= seen[np.minimum(at, len(seen) - 1)] == hashes
        found = int(repeat.sum())
        if found:
            self.count += found
            if len(self.lines) < FIRST_LINES:
                self.lines = sorted([*self.lines, *lines[repeat].tolist()])[:FIRST_LINES]
        fresh = hashes[~repeat]
        self._seen = np.insert(seen, np.searchsorted(seen, fresh), fresh)
        self._hashes = array("q")
        self._lines = array("q")

    def finish(self) -> tuple[int, list[int]]:
        self._flush()
        return self.count, [int(x) for x in self.lines]
