"""Graders: how close a model's answer is to an example's reference, as a score in [0, 1].

Named as OpenAI's graders are (`string_check`, `text_similarity` metrics, `score_model`), so a
`convtune eval` score means what the same grader means on OpenAI's platform, and computed with the
libraries that define the metrics, not by hand:

=================  ===========================================================================
``--grader``       score
=================  ===========================================================================
fuzzy_match        ``rapidfuzz.fuzz.ratio / 100``: the normalised Indel similarity of the two
                   strings, character by character, case-sensitive (OpenAI: "fuzzy string match
                   ... using rapidfuzz"; it names no scorer. `ratio` is symmetric and 1 only for
                   equal strings; `WRatio` is a blend of heuristics that gives 0.6 to an answer
                   that merely contains a short reference, and 0 to two empty strings)
bleu               sacrebleu's sentence BLEU / 100 (its defaults: 13a tokens, case-sensitive,
                   up to 4-grams, ``exp`` smoothing, effective order)
gleu               NLTK's ``sentence_gleu`` (Google-BLEU: min of n-gram precision and recall,
                   n = 1..4) over the same 13a tokens as bleu
rouge_1..rouge_5,  rouge-score's ROUGE-N / ROUGE-L F-measure, lower-cased, stemming off (the
rouge_l            reference ROUGE has it off by default, and Porter stems only English); words
                   are runs of Unicode letters and digits (rouge-score's own tokenizer keeps
                   only ``[a-z0-9]`` and would drop every word of a non-English answer; for
                   ASCII text both tokenize alike)
string_check:OP    1 or 0 as OpenAI's string_check: ``eq`` answer == reference, ``ne`` answer !=
                   reference, ``like`` the answer contains the reference, ``ilike`` contains it
                   ignoring case (OpenAI documents like/ilike as "contains", not SQL wildcards:
                   a ``%`` or ``_`` in a reference is a plain character)
score_model:FILE   an LLM judge given the rubric in FILE, the conversation, the reference and the
                   answer replies "Score: N", N from 0 to 10; the score is N / 10 (a reply with
                   no score in range is a `JudgeError`, never a silent 0)
=================  ===========================================================================

Edge cases are defined, never a crash: two texts with no words (or two empty strings) are equal
(1.0) for every similarity metric; one empty and the other not scores 0.0. ``meteor`` needs
NLTK's WordNet data and ``cosine`` an embedding model: where they are unavailable, asking for
them is an `OptionError` before any model is asked.

Libraries load on first use (rouge-score and NLTK take about 0.4 s each), not with this module.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvtuneError, OptionError

Judge = Callable[[list[dict]], str]
"""A judge model: chat messages in, the reply's text out (the runner wires it to a service)."""

ScoreFunction = Callable[[str, str, list[dict]], float]

DEFAULT_GRADERS = ("fuzzy_match", "bleu", "rouge_l")
ROUGE_ORDERS = (1, 2, 3, 4, 5)
STRING_CHECK_OPERATIONS = ("eq", "ne", "like", "ilike")
JUDGE_SCALE = 10  # the judge scores 0..JUDGE_SCALE; the grader reports score / JUDGE_SCALE
KNOWN = (
    "fuzzy_match",
    "bleu",
    "gleu",
    "meteor",
    "cosine",
    *(f"rouge_{n}" for n in ROUGE_ORDERS),
    "rouge_l",
    *(f"string_check:{op}" for op in STRING_CHECK_OPERATIONS),
    "score_model:RUBRIC_FILE",
)


class JudgeError(ConvtuneError):
    """The judge's reply holds no score in range: the example has no score, not a silent 0."""


@dataclass(frozen=True)
class Grader:
    """A named way to score an answer against the reference; `name` is what reports show."""

    name: str
    description: str
    function: ScoreFunction = field(repr=False, compare=False)
    uses_model: bool = False  # True for score_model: each score is a paid, slow call

    def score(self, answer: str, reference: str, prompt: list[dict]) -> float:
        """The answer's score in [0, 1]. `prompt` is the conversation the answer follows."""
        value = float(self.function(answer or "", reference or "", prompt))
        # BLEU of equal texts comes back as 100.00000000000004 / 100: keep scores in [0, 1]
        return min(1.0, max(0.0, value))


def parse_grader(spec: str, *, judge: Judge | None = None) -> Grader:
    """The grader a ``--grader`` value names (see the module's table)."""
    name, _, argument = spec.strip().partition(":")
    name = name.strip().lower()
    argument = argument.strip()
    if name == "fuzzy_match":
        return Grader(name, "rapidfuzz ratio (normalised Indel similarity)", _fuzzy_match)
    if name == "bleu":
        return Grader(name, "sacrebleu sentence BLEU", _bleu)
    if name == "gleu":
        return Grader(name, "NLTK sentence GLEU (Google-BLEU)", _gleu)
    if name.startswith("rouge_") and name[6:] in {*map(str, ROUGE_ORDERS), "l"}:
        kind = "rougeL" if name == "rouge_l" else "rouge" + name[6:]
        return Grader(name, f"{kind} F-measure", functools.partial(_rouge, kind))
    if name == "string_check":
        return _string_check(argument.lower())
    if name == "score_model":
        return _score_model(argument, judge)
    if name == "meteor":
        _need_wordnet()
        return Grader(name, "NLTK METEOR (WordNet synonyms)", _meteor)
    if name == "cosine":
        raise OptionError(
            "the cosine grader needs an embedding model, which convtune eval does not run",
            hint="OpenAI embeds with text-embedding-3-large; use score_model for meaning, "
            "or a text metric: " + ", ".join(DEFAULT_GRADERS),
        )
    raise OptionError(f"unknown grader {spec!r}", hint="known: " + ", ".join(KNOWN))


def parse_graders(specs: Iterable[str], *, judge: Judge | None = None) -> list[Grader]:
    """The graders of several ``--grader`` values, in order; a name given twice is an error."""
    graders: list[Grader] = []
    for spec in specs:
        grader = parse_grader(spec, judge=judge)
        if any(g.name == grader.name for g in graders):
            raise OptionError(f"grader {grader.name!r} given twice", hint="give each grader once")
        graders.append(grader)
    return graders


# ---- text similarity ---------------------------------------------------------------------------


def _fuzzy_match(answer: str, reference: str, prompt: list[dict]) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(answer, reference) / 100.0  # 100 for two empty strings


def _empty_case(answer_tokens: Sequence[str], reference_tokens: Sequence[str]) -> float | None:
    """1.0 when neither text has a word, 0.0 when only one has none, else None (compute it)."""
    if not answer_tokens and not reference_tokens:
        return 1.0
    if not answer_tokens or not reference_tokens:
        return 0.0
    return None


@functools.cache
def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU(effective_order=True)  # sentence-level: sacrebleu's recommended setting


@functools.cache
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _words_13a(text: str) -> list[str]:
    return _tokenizer_13a()(text.strip()).split()


def _bleu(answer: str, reference: str, prompt: list[dict]) -> float:
    edge = _empty_case(_words_13a(answer), _words_13a(reference))
    if edge is not None:
        return edge
    return _bleu_metric().sentence_score(answer, [reference]).score / 100.0


def _gleu(answer: str, reference: str, prompt: list[dict]) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    hypothesis, ref = _words_13a(answer), _words_13a(reference)
    edge = _empty_case(hypothesis, ref)
    if edge is not None:
        return edge
    return float(sentence_gleu([ref], hypothesis, min_len=1, max_len=4))


class _UnicodeWords:
    """rouge-score's tokenizer with Unicode letters: lower-case, runs of letters and digits."""

    _WORD = re.compile(r"[^\W_]+")

    def tokenize(self, text: str) -> list[str]:
        return self._WORD.findall(text.lower())


@functools.cache
def _rouge_scorer(kind: str):
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer([kind], use_stemmer=False, tokenizer=_UnicodeWords())


def _rouge(kind: str, answer: str, reference: str, prompt: list[dict]) -> float:
    words = _UnicodeWords()
    edge = _empty_case(words.tokenize(answer), words.tokenize(reference))
    if edge is not None:
        return edge
    return float(_rouge_scorer(kind).score(reference, answer)[kind].fmeasure)


def _need_wordnet() -> None:
    import nltk.data

    try:
        nltk.data.find("corpora/wordnet")  # also finds corpora/wordnet.zip
    except LookupError:
        raise OptionError(
            "the meteor grader is unavailable here: it needs NLTK's WordNet data, "
            "which is not installed",
            hint="install it where a download is allowed (python -m nltk.downloader wordnet), "
            "or use another grader: " + ", ".join(DEFAULT_GRADERS),
        ) from None


def _meteor(answer: str, reference: str, prompt: list[dict]) -> float:
    from nltk.translate.meteor_score import meteor_score

    hypothesis, ref = _words_13a(answer), _words_13a(reference)
    edge = _empty_case(hypothesis, ref)
    if edge is not None:
        return edge
    return float(meteor_score([ref], hypothesis))


# ---- string check ------------------------------------------------------------------------------


def _string_check(operation: str) -> Grader:
    checks: dict[str, Callable[[str, str], bool]] = {
        "eq": lambda answer, reference: answer == reference,
        "ne": lambda answer, reference: answer != reference,
        "like": lambda answer, reference: reference in answer,
        "ilike": lambda answer, reference: reference.casefold() in answer.casefold(),
    }
    if operation not in checks:
        raise OptionError(
            f"unknown string_check operation {operation!r}",
            hint="one of " + ", ".join(f"string_check:{op}" for op in STRING_CHECK_OPERATIONS),
        )
    check = checks[operation]
    return Grader(
        f"string_check_{operation}",
        f"1 if {_STRING_CHECK_WORDS[operation]}, else 0",
        lambda answer, reference, prompt: 1.0 if check(answer, reference) else 0.0,
    )


_STRING_CHECK_WORDS = {
    "eq": "the answer equals the reference",
    "ne": "the answer differs from the reference",
    "like": "the answer contains the reference",
    "ilike": "the answer contains the reference, ignoring case",
}


# ---- score model -------------------------------------------------------------------------------

JUDGE_INSTRUCTIONS = f"""\
You grade an assistant's answer to a conversation against a reference answer.

Rubric:
{{rubric}}

Score the answer from 0 (useless or wrong) to {JUDGE_SCALE} (as good as the reference) by the \
rubric. You may explain briefly; end your reply with a last line of the form
Score: N
where N is a whole number from 0 to {JUDGE_SCALE}."""

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_LINE = re.compile(r"score\s*(?:is|[:=])?\s*\**\s*" + _NUMBER, re.IGNORECASE)
_OUT_OF = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*" + str(JUDGE_SCALE) + r"\b", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def judge_messages(rubric: str, answer: str, reference: str, prompt: list[dict]) -> list[dict]:
    """The judge's chat: the instructions with the rubric, then the case to grade."""
    case = (
        "## Conversation\n"
        + (_render_conversation(prompt) or "(none)")
        + "\n\n## Reference answer\n"
        + (reference or "(empty)")
        + "\n\n## Answer to grade\n"
        + (answer or "(empty)")
    )
    return [
        {"role": "system", "content": JUDGE_INSTRUCTIONS.format(rubric=rubric.strip())},
        {"role": "user", "content": case},
    ]


def parse_judge_score(reply: str) -> float:
    """The judge's score in [0, 1] from its reply, or `JudgeError`.

    Looked for in this order: the last ``Score: N``; ``N/10`` or ``N out of 10``; the first
    number from 0 to 10 anywhere. A number found by the first two rules but out of range is an
    error, not clamped.
    """
    text = reply or ""
    for found in (_SCORE_LINE.findall(text)[-1:], _OUT_OF.findall(text)[:1]):
        if found:
            value = float(found[0])
            if 0 <= value <= JUDGE_SCALE:
                return value / JUDGE_SCALE
            raise JudgeError(
                f"the judge's score {found[0]} is outside 0..{JUDGE_SCALE}: {_start(text)!r}"
            )
    for number in _ANY_NUMBER.findall(text):
        value = float(number)
        if 0 <= value <= JUDGE_SCALE:
            return value / JUDGE_SCALE
    raise JudgeError(
        f"no score from 0 to {JUDGE_SCALE} in the judge's reply: {_start(text)!r}",
        hint="use a stronger judge model, or make the rubric ask for the score plainly",
    )


def _score_model(rubric_file: str, judge: Judge | None) -> Grader:
    if not rubric_file:
        raise OptionError("score_model needs a rubric file", hint="--grader score_model:rubric.txt")
    path = Path(rubric_file)
    try:
        rubric = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise OptionError("no such rubric file", path=path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise OptionError(f"cannot read the rubric: {error}", path=path) from None
    if not rubric.strip():
        raise OptionError("the rubric file is empty", path=path, hint="describe a good answer")
    if judge is None:
        raise OptionError(
            "score_model needs a judge model to ask, and none was given",
            hint="give --judge MODEL[@BACKEND], e.g. --judge gpt-4.1-mini@openai, or use a text"
            " metric",
        )

    def score(answer: str, reference: str, prompt: list[dict]) -> float:
        return parse_judge_score(judge(judge_messages(rubric, answer, reference, prompt)))

    return Grader("score_model", f"LLM judge, rubric {path.name}", score, uses_model=True)


def _render_conversation(prompt: list[dict]) -> str:
    return "\n\n".join(
        f"{message.get('role', '?')}: {message_text(message)}" for message in prompt or []
    )


def message_text(message: dict[str, Any]) -> str:
    """A chat message's text: its string content, its text parts joined, or its JSON."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [part.get("text", "") for part in content if isinstance(part, dict)]
        if any(parts):
            return "\n".join(p for p in parts if p)
    if content is None and not message.get("tool_calls"):
        return ""
    rest = {k: v for k, v in message.items() if k != "role"}
    return json.dumps(rest, ensure_ascii=False, default=str)


def _start(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
