"""Did the job learn? Held-out prompts answered by the base model and by the fine-tune, scored as
`convtune eval` scores them.

A fine-tune is judged by what it answers, not by its loss: on the bundled example the validation
loss is lowest after a fraction of the run, while the answers keep getting closer to the data's
until the end (BENCHMARKS.md, "What the fine-tune answers"). So a local job with a validation file
of a modest size does two things with the file's prompts (`HeldOut`):

- **chooses its checkpoint**: at each epoch end from the middle of the run on, and at its last
  step, the model answers a small *probe* of the prompts (greedy, as `convtune eval` asks them),
  and the last model is kept unless an earlier one's answers score better by `MARGIN`
  (fuzzy_match): eight prompts are noisy, and a full fine-tune that starts to mix its facts up
  loses far more than that;
- **gives a verdict**: the base model's answers and the kept model's, on up to `VERDICT_LIMIT`
  prompts, compared by a paired bootstrap interval ("fuzzy_match +0.21 [+0.15, +0.27]: better").
  When the probe chose an earlier checkpoint, the verdict leaves its prompts out (they would read
  in that checkpoint's favour); a file too small for that uses them and says so.

Answers come from the batch engine of `chat` (every prompt of a set in one batch), on the model in
memory: no checkpoint is loaded to be asked.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..evaluation.answers import Answer, AnswerCache, Settings, answer_key
from ..evaluation.graders import Grader, parse_graders
from ..evaluation.prompts import Prompt, read_prompts
from ..evaluation.stats import Interval, paired_difference
from ..evaluation.targets import Target
from ..service.contract import ChatRequest

PROBE_SIZE = 8  # prompts answered at each probed epoch end: enough to rank a few checkpoints
VERDICT_LIMIT = 32  # prompts of the verdict, at most: "a validation file of a modest size"
MIN_VERDICT = 8  # fewer prompts left beside the probe: the verdict reuses the probe's
MAX_TOKENS = 48  # the length of an answer, as `make demo`'s eval asks them
GRADERS = ("fuzzy_match", "rouge_l")  # the first one decides; the second breaks ties
EXAMPLE_CHARS = 300  # of each text of the examples a verdict keeps
MARGIN = 0.02  # how much better (fuzzy_match) an earlier probe must be to be kept over the last


@dataclass
class HeldOut:
    """The validation prompts a job answers: `probe` chooses the checkpoint; the verdict judges
    the kept model on `whole` (up to `VERDICT_LIMIT`, the probe's among them) when the probe chose
    nothing (the last model is kept), else on `rest` (the others), so that prompts that chose
    a checkpoint never vouch for it."""

    probe: list[Prompt]
    whole: list[Prompt]
    rest: list[Prompt]
    total: int  # prompts in the file

    def verdict_prompts(self, *, chosen: bool) -> tuple[list[Prompt], bool]:
        """The verdict's prompts, and whether they include some that chose the checkpoint (a
        file too small for a verdict of its own beside the probe)."""
        if not chosen:
            return self.whole, False
        if len(self.rest) >= MIN_VERDICT:
            return self.rest, False
        return self.whole, True

    @property
    def answered(self) -> list[Prompt]:
        """Every prompt the base model answers, each once, in file order."""
        found = {p.index: p for p in [*self.probe, *self.whole, *self.rest]}
        return [found[i] for i in sorted(found)]


def held_out(path: Path, *, seed: int) -> HeldOut:
    """A seeded sample of the validation file's prompts: the probe, and the verdict's."""
    prompts = read_prompts(path).prompts
    order = list(prompts)
    random.Random(seed).shuffle(order)

    def in_order(chosen: list[Prompt]) -> list[Prompt]:
        return sorted(chosen, key=lambda p: p.index)

    return HeldOut(
        in_order(order[:PROBE_SIZE]),
        in_order(order[:VERDICT_LIMIT]),
        in_order(order[PROBE_SIZE : PROBE_SIZE + VERDICT_LIMIT]),
        len(prompts),
    )


def answer(chat: Any, prompts: Sequence[Prompt], *, max_tokens: int = MAX_TOKENS) -> list[Answer]:
    """Every prompt's greedy answer by a `LocalChat`, generated together (its batch engine), as
    `convtune eval` keeps them (`seconds` is the batch's: they were generated together)."""
    started = time.perf_counter()
    replies = [
        chat.reply(ChatRequest("check", p.chat_messages(), max_tokens=max_tokens, temperature=0))
        for p in prompts
    ]
    texts = ["".join(reply).strip() for reply in replies]
    seconds = time.perf_counter() - started
    return [
        Answer(text, seconds, r.prompt_tokens, r.completion_tokens, r.finish_reason)
        for text, r in zip(texts, replies, strict=True)
    ]


SETTINGS = Settings(max_tokens=MAX_TOKENS)  # how eval asks what a job asks: greedy, 48 tokens


def cache_answers(
    cache: AnswerCache, model: str, prompts: Sequence[Prompt], answers: Sequence[Answer]
) -> None:
    """Keep a job's answers where `convtune eval` finds them: the same model asked the same
    prompt the same way (`--max-tokens 48`, greedy) is not asked again."""
    target = Target(model, model)
    for prompt, given in zip(prompts, answers, strict=True):
        if given.text:
            cache.put(answer_key(target, prompt, SETTINGS), given)


def graders() -> list[Grader]:
    return parse_graders(GRADERS)


def scores(answers: Sequence[str], prompts: Sequence[Prompt], grader: Grader) -> list[float]:
    """Each answer's score against its prompt's reference."""
    return [
        grader.score(a, p.reference, p.chat_messages())
        for a, p in zip(answers, prompts, strict=True)
    ]


@dataclass
class ProbeResult:
    """What one epoch's model answered to the probe, and its mean score by grader."""

    epoch: int
    step: int
    answers: list[str]
    means: dict[str, float]

    def rank(self) -> tuple[float, ...]:
        """Higher is better: the graders in order, then the later step."""
        return (*(round(self.means[g], 6) for g in GRADERS), self.step)


def probe_result(
    epoch: int, step: int, answers: list[str], prompts: Sequence[Prompt]
) -> ProbeResult:
    means = {g.name: statistics.fmean(scores(answers, prompts, g)) for g in graders()}
    return ProbeResult(epoch, step, answers, means)


def best(results: Sequence[ProbeResult]) -> ProbeResult:
    """The probe whose answers scored best; the last one unless an earlier one beats it by
    `MARGIN` (a few prompts' noise is no reason to keep less training), ties to the later."""
    last = max(results, key=lambda r: r.step)
    top = max(results, key=ProbeResult.rank)
    first = GRADERS[0]
    return top if top.means[first] >= last.means[first] + MARGIN else last


def probed(step: int, total_steps: int) -> bool:
    """Whether an epoch end at `step` is probed: past the middle of the run (the epochs of its
    first half are rarely the best, and each probe costs a batch of answers)."""
    return 2 * step > total_steps


@dataclass
class GraderVerdict:
    grader: str
    base: float
    tuned: float
    difference: Interval

    @property
    def word(self) -> str:
        if self.difference.low > 0:
            return "better"
        if self.difference.high < 0:
            return "worse"
        return "no clear difference"

    def text(self) -> str:
        """'fuzzy_match +0.21 [+0.15, +0.27]: better'."""
        d = self.difference
        return f"{self.grader} {d.mean:+.2f} [{d.low:+.2f}, {d.high:+.2f}]: {self.word}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "grader": self.grader,
            "base": self.base,
            "fine_tuned": self.tuned,
            "difference": self.difference.to_json(),
            "verdict": self.word,
        }


@dataclass
class Verdict:
    """The fine-tune against its base model on held-out prompts, grader by grader."""

    base_model: str
    prompts: int
    shared: bool  # the prompts include those that chose the checkpoint
    graders: list[GraderVerdict] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)  # a few answers side by side

    @property
    def word(self) -> str:
        """The first grader's word: 'better', 'worse' or 'no clear difference'."""
        return self.graders[0].word

    def message(self) -> str:
        """The job event's line."""
        what = "; ".join(g.text() for g in self.graders)
        where = f"{self.prompts} validation prompt{'s' if self.prompts != 1 else ''}"
        note = ", including those that chose the checkpoint" if self.shared else ""
        return f"Did it learn? The fine-tune against {self.base_model} on {where}{note}: {what}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "prompts": self.prompts,
            "includes_probe": self.shared,
            "graders": [g.to_dict() for g in self.graders],
            "examples": self.examples,
        }


def verdict(
    base_model: str,
    prompts: Sequence[Prompt],
    base_answers: Sequence[str],
    tuned_answers: Sequence[str],
    *,
    shared: bool,
    seed: int = 0,
    examples: int = 3,
) -> Verdict:
    """Paired per-prompt differences (fine-tune minus base) with their 95% intervals."""
    result = Verdict(base_model, len(prompts), shared)
    for grader in graders():
        before = scores(base_answers, prompts, grader)
        after = scores(tuned_answers, prompts, grader)
        result.graders.append(
            GraderVerdict(
                grader.name,
                statistics.fmean(before),
                statistics.fmean(after),
                paired_difference(before, after, seed=seed),
            )
        )
    for p, b, t in list(zip(prompts, base_answers, tuned_answers, strict=True))[:examples]:
        question = p.messages[-1][1] if p.messages else ""
        result.examples.append(
            {k: v[:EXAMPLE_CHARS] for k, v in
             {"question": question, "base": b, "fine_tuned": t, "reference": p.reference}.items()}
        )  # fmt: skip
    return result
