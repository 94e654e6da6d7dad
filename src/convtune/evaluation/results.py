"""What `convtune eval` found: every example's answers and scores, and each model's summary.

`summarize` turns the examples (each model's answer to each prompt, already graded) into an
`EvalResult`: per model and grader the mean score with its bootstrap interval, latency p50/p90,
tokens per second, errors; and per grader the paired difference of every other model against the
first one (the model to beat, e.g. the base model). `EvalResult.to_json()` is the JSON report:

    {
      "data": "valid.jsonl",              # the validation file, as given
      "examples": 120,                    # examples asked (one per line of the file)
      "graders": ["fuzzy_match", "bleu", "rouge_l"],
      "models": [
        {
          "model": "gpt-4o-mini",         # the label as the user wrote it
          "backend": "openai",
          "metrics": {                    # per grader: mean score in [0, 1], its interval
            "bleu": {"mean": 0.31, "low": 0.27, "high": 0.35},
            "rouge_l": null,              # null when no answer of this model got this score
            ...
          },
          "latency": {"p50": 0.82, "p90": 1.9},   # seconds per answer, null without answers
          "tokens_per_second": 61.5,      # completion tokens / seconds; null when unknown
          "cost_usd": 0.0123,             # null when unknown
          "errors": 0,                    # examples without an answer or without a score
          "error_messages": [],           # why: each distinct reason, with its examples
                                          # [{"message": "...", "examples": 3}]
          "load_seconds": 4.2,            # local models loaded in this run; absent otherwise
          "valid_loss": 1.23,             # local fine-tuned models only; absent otherwise
          "valid_mean_token_accuracy": 0.61   # likewise
        }
      ],
      "differences": [                    # each model after the first, minus the first
        {"metric": "bleu", "a": "gpt-4o-mini", "b": "ft:gpt-4o-mini:acme::abc",
         "mean": 0.08, "low": 0.04, "high": 0.12}
      ],
      "intervals": {"method": "percentile bootstrap", "level": 0.95, "resamples": 2000,
                    "seed": 0},
      "settings": {"temperature": 0, "max_tokens": 512}     # how the models were asked
    }

Means are over the examples a model answered (and the grader scored); `errors` counts the
examples the model did not answer or a grader (a judge) could not score, and `error_messages`
says why, once per distinct reason (a grader's reason starts with its name).
A difference pairs the examples both models have a score for, and is absent when there are none;
an interval that excludes 0 says the second model is reliably better (above 0) or worse (below).
`to_json(examples=True)` adds ``"results"``: per example its ``index``, ``line``, ``prompt``,
``reference`` and per model label its ``answer``, ``scores``, ``latency_s``,
``completion_tokens`` and ``error``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .stats import LEVEL, RESAMPLES, Interval, mean_interval, paired_difference, percentile


@dataclass
class ModelAnswer:
    """One model's answer to one example, and its scores by grader name.

    `error` is set (and `answer` None) when the model failed on the example; a grader that failed
    on an answer (a judge without a score) leaves its score out and says why in `grader_errors`.
    """

    answer: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    latency_s: float | None = None
    completion_tokens: int | None = None
    error: str | None = None
    grader_errors: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.error is not None or self.answer is None


@dataclass
class ExampleResult:
    """An example of the validation file, and every model's answer to it (by model label)."""

    index: int  # 0-based, in file order
    line: int  # 1-based line of the data file
    prompt: list[dict[str, Any]]  # the messages the models were given
    reference: str  # the example's last trained assistant message
    answers: dict[str, ModelAnswer] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatedModel:
    """A model as the runner knows it: what `summarize` cannot compute from the answers."""

    label: str
    backend: str
    cost_usd: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    load_seconds: float | None = None  # loading the local model before its answers were timed
    engine: str | None = None  # what generated a local model's answers: "ctranslate2 int8"


@dataclass
class ModelSummary:
    """One model over all examples: `metrics` maps grader name to its interval (None: no score)."""

    model: str
    backend: str
    metrics: dict[str, Interval | None]
    latency_p50: float | None
    latency_p90: float | None
    tokens_per_second: float | None
    cost_usd: float | None
    errors: int
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    error_messages: list[tuple[str, int]] = field(default_factory=list)  # reason, examples
    load_seconds: float | None = None
    engine: str | None = None  # a local model's engine

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "backend": self.backend,
            "metrics": {
                name: (interval.to_json() if interval is not None else None)
                for name, interval in self.metrics.items()
            },
            "latency": {"p50": self.latency_p50, "p90": self.latency_p90},
            "tokens_per_second": self.tokens_per_second,
            "cost_usd": self.cost_usd,
            "errors": self.errors,
            "error_messages": [
                {"message": message, "examples": count} for message, count in self.error_messages
            ],
        }
        if self.load_seconds is not None:
            out["load_seconds"] = round(self.load_seconds, 3)
        if self.engine is not None:
            out["engine"] = self.engine
        if self.valid_loss is not None:
            out["valid_loss"] = self.valid_loss
        if self.valid_mean_token_accuracy is not None:
            out["valid_mean_token_accuracy"] = self.valid_mean_token_accuracy
        return out


@dataclass(frozen=True)
class Difference:
    """Model `b`'s mean score minus model `a`'s on `metric`, paired by example."""

    metric: str
    a: str
    b: str
    interval: Interval

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "a": self.a, "b": self.b, **self.interval.to_json()}


@dataclass
class EvalResult:
    """Everything an evaluation found; `to_json()` is the documented report (module docstring)."""

    data: str
    graders: list[str]
    models: list[ModelSummary]
    differences: list[Difference]
    examples: list[ExampleResult]
    seed: int = 0
    settings: dict[str, Any] = field(default_factory=dict)
    level: float = LEVEL
    resamples: int = RESAMPLES

    @property
    def example_count(self) -> int:
        return len(self.examples)

    def to_json(self, *, examples: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data": self.data,
            "examples": self.example_count,
            "graders": list(self.graders),
            "models": [model.to_json() for model in self.models],
            "differences": [difference.to_json() for difference in self.differences],
            "intervals": {
                "method": "percentile bootstrap",
                "level": self.level,
                "resamples": self.resamples,
                "seed": self.seed,
            },
            "settings": dict(self.settings),
        }
        if examples:
            out["results"] = [_example_json(example) for example in self.examples]
        return out


def summarize(
    examples: Sequence[ExampleResult],
    models: Sequence[EvaluatedModel],
    graders: Sequence[str],
    *,
    seed: int = 0,
    data: str = "",
    settings: dict[str, Any] | None = None,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> EvalResult:
    """The `EvalResult` of graded examples: summaries per model, differences against the first.

    `graders` are grader names (`Grader.name`); `models` are in the order the user gave them.
    """
    examples = list(examples)
    graders = list(graders)
    summaries = [
        _summarize_model(examples, model, graders, seed=seed, resamples=resamples, level=level)
        for model in models
    ]
    differences: list[Difference] = []
    if models:
        base = models[0].label
        for model in models[1:]:
            for grader in graders:
                first, second = [], []
                for example in examples:
                    a = _scored(example, base, grader)
                    b = _scored(example, model.label, grader)
                    if a is not None and b is not None:
                        first.append(a.scores[grader])
                        second.append(b.scores[grader])
                if not first:
                    continue
                interval = paired_difference(
                    first, second, seed=seed, resamples=resamples, level=level
                )
                differences.append(Difference(grader, base, model.label, interval))
    return EvalResult(
        data=data,
        graders=graders,
        models=summaries,
        differences=differences,
        examples=examples,
        seed=seed,
        settings=dict(settings or {}),
        level=level,
        resamples=resamples,
    )


def _scored(example: ExampleResult, label: str, grader: str) -> ModelAnswer | None:
    answer = example.answers.get(label)
    if answer is None or answer.failed or grader not in answer.scores:
        return None
    return answer


def _summarize_model(
    examples: list[ExampleResult],
    model: EvaluatedModel,
    graders: list[str],
    *,
    seed: int,
    resamples: int,
    level: float,
) -> ModelSummary:
    answers = [example.answers.get(model.label) for example in examples]
    answered = [answer for answer in answers if answer is not None and not answer.failed]
    metrics: dict[str, Interval | None] = {}
    for grader in graders:
        values = [answer.scores[grader] for answer in answered if grader in answer.scores]
        metrics[grader] = (
            mean_interval(values, seed=seed, resamples=resamples, level=level) if values else None
        )
    latencies = [answer.latency_s for answer in answered if answer.latency_s is not None]
    timed = [
        answer
        for answer in answered
        if answer.latency_s is not None and answer.completion_tokens is not None
    ]
    reasons: dict[str, int] = {}
    failed = 0
    for answer in answers:
        why = _failures(answer)
        failed += bool(why)
        for message in dict.fromkeys(why):
            reasons[message] = reasons.get(message, 0) + 1
    seconds = sum(answer.latency_s for answer in timed)  # type: ignore[misc]
    tokens = sum(answer.completion_tokens for answer in timed)  # type: ignore[misc]
    return ModelSummary(
        model=model.label,
        backend=model.backend,
        metrics=metrics,
        latency_p50=percentile(latencies, 50) if latencies else None,
        latency_p90=percentile(latencies, 90) if latencies else None,
        tokens_per_second=tokens / seconds if seconds > 0 else None,
        cost_usd=model.cost_usd,
        errors=failed,
        valid_loss=model.valid_loss,
        valid_mean_token_accuracy=model.valid_mean_token_accuracy,
        error_messages=list(reasons.items()),
        load_seconds=model.load_seconds,
        engine=model.engine,
    )


def _failures(answer: ModelAnswer | None) -> list[str]:
    """Why an example has no answer or a missing score (empty: it has all it should)."""
    if answer is None:
        return ["no answer"]
    if answer.failed:
        return [answer.error or "no answer"]
    return [f"{grader}: {message}" for grader, message in answer.grader_errors.items()]


def _example_json(example: ExampleResult) -> dict[str, Any]:
    return {
        "index": example.index,
        "line": example.line,
        "prompt": example.prompt,
        "reference": example.reference,
        "answers": {
            label: {
                "answer": answer.answer,
                "scores": dict(answer.scores),
                "latency_s": answer.latency_s,
                "completion_tokens": answer.completion_tokens,
                "error": answer.error,
                **({"grader_errors": dict(answer.grader_errors)} if answer.grader_errors else {}),
            }
            for label, answer in example.answers.items()
        },
    }
