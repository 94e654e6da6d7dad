"""`evaluate`: every model answers every prompt, every answer is graded, and the result summed up.

The pieces: `prompts` (what is asked, what should be answered), `answers` (asking, with the
cache), `graders` (scores), `results` (summaries, intervals, differences). Local models are also
scored by teacher forcing on the references (`FineTuningService.score_references`: OpenAI's
`valid_loss` and `valid_mean_token_accuracy`), and OpenAI's own models get the run's cost at list
price. A judge (`score_model`) is asked through the same cache as the models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ..contract import FineTuningService
from ..errors import ConvtuneError, InputError, TransientError
from .answers import Answer, AnswerCache, Settings, answer_key, ask, ask_one
from .graders import Grader, JudgeError
from .prompts import EvalData, Prompt, read_prompts
from .results import EvalResult, EvaluatedModel, ExampleResult, ModelAnswer, summarize
from .targets import Target

Services = Callable[[Target], FineTuningService]
OPENAI_ADDRESSES = (None, "https://api.openai.com/v1")


@dataclass
class Progress:
    """Callbacks a front end gives to show the run: a model starts, an answer arrives."""

    model: Callable[[Target, int], None] = lambda target, total: None
    answer: Callable[[Target, Prompt, Answer], None] = lambda target, prompt, answer: None
    retry: Callable[[TransientError, float], None] | None = None


def with_references(data: EvalData, golden: str | Path) -> EvalData:
    """`data`'s prompts with the answers of a golden file (`convtune record`) as references,
    matched by conversation; a prompt the golden file does not answer is an error with its line."""
    answers = {p.key(): p for p in read_prompts(golden).prompts}
    prompts = []
    for prompt in data.prompts:
        found = answers.get(prompt.key())
        if found is None:
            raise InputError(
                f"this example's conversation is not in {golden}",
                path=data.path,
                line=prompt.line,
                hint="record the golden file from the same data file",
            )
        messages = [*prompt.chat_messages(), {"role": "assistant", "content": found.reference}]
        prompts.append(replace(prompt, reference=found.reference, record={"messages": messages}))
    return replace(data, prompts=prompts)


class CachedJudge:
    """The judge of `score_model` graders: a model asked through the answer cache, so a rerun
    does not pay for the same verdict twice."""

    def __init__(self, target: Target, services: Services, cache: AnswerCache) -> None:
        self.target = target
        self.services = services
        self.cache = cache
        self.settings = Settings(temperature=0.0, max_tokens=400)

    def __call__(self, messages: list[dict]) -> str:
        prompt = Prompt(-1, 0, tuple((m["role"], m["content"]) for m in messages), "", {})
        key = answer_key(self.target, prompt, self.settings)
        answer = self.cache.get(key)
        if answer is None:
            answer = ask_one(self.services(self.target), self.target, prompt, self.settings)
            if answer.error is not None:
                raise JudgeError(f"the judge {self.target.label} failed: {answer.error}")
            self.cache.put(key, answer)
        return answer.text


def evaluate(
    data: EvalData,
    targets: list[Target],
    graders: list[Grader],
    services: Services,
    cache: AnswerCache,
    *,
    settings: Settings | None = None,
    concurrency: int = 4,
    seed: int = 0,
    teacher_forcing: bool = True,
    progress: Progress | None = None,
) -> EvalResult:
    """Ask, grade and summarize; models in the order given (the first is the one to beat)."""
    settings = settings or Settings()
    progress = progress or Progress()
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        raise ConvtuneError("a model is named twice: give each model once")
    examples = [
        ExampleResult(p.index, p.line, p.chat_messages(), p.reference) for p in data.prompts
    ]
    evaluated = []
    for target in targets:
        service = services(target)
        progress.model(target, len(data.prompts))
        answers = ask(
            service,
            target,
            data.prompts,
            settings,
            cache,
            concurrency=concurrency,
            on_answer=lambda prompt, answer, target=target: progress.answer(target, prompt, answer),
            on_retry=progress.retry,
        )
        for example, prompt, answer in zip(examples, data.prompts, answers, strict=True):
            example.answers[target.label] = _graded(answer, prompt, graders)
        loss = accuracy = None
        if teacher_forcing and service.capabilities.scores_references:
            loss, accuracy = service.score_references(
                target.model, [p.record for p in data.prompts]
            )
        evaluated.append(
            EvaluatedModel(target.label, target.backend, _cost(target, answers), loss, accuracy)
        )
    return summarize(
        examples,
        evaluated,
        [g.name for g in graders],
        seed=seed,
        data=str(data.path),
        settings={**asdict(settings), "unasked_lines": data.unasked},
    )


def _graded(answer: Answer, prompt: Prompt, graders: list[Grader]) -> ModelAnswer:
    if answer.error is not None:
        return ModelAnswer(error=answer.error, latency_s=answer.seconds)
    graded = ModelAnswer(
        answer=answer.text,
        latency_s=answer.seconds,
        completion_tokens=answer.completion_tokens,
    )
    for grader in graders:
        try:
            graded.scores[grader.name] = grader.score(
                answer.text, prompt.reference, prompt.chat_messages()
            )
        except JudgeError as error:
            graded.grader_errors[grader.name] = str(error)
    return graded


def _cost(target: Target, answers: list[Answer]) -> float | None:
    """What the answers cost at OpenAI's list price (OpenAI's own models only; a cached answer
    costs nothing in this run)."""
    if target.backend != "openai" or target.base_url not in OPENAI_ADDRESSES:
        return None
    from ..openai_backend.catalog import cost

    total = 0.0
    for answer in answers:
        if answer.cached or answer.error is not None:
            continue
        if answer.prompt_tokens is None or answer.completion_tokens is None:
            return None
        price = cost(target.model, answer.prompt_tokens, answer.completion_tokens)
        if price is None:
            return None
        total += price
    return round(total, 6)
