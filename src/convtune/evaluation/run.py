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

from ..errors import ConvtuneError, InputError, KeyRefused, NotFound, TransientError
from ..service.contract import FineTuningService
from .answers import (
    Answer,
    AnswerCache,
    Settings,
    answer_key,
    ask,
    check_model,
    check_target,
    engine_label,
    engine_name,
    first_answer,
    request_answer,
)
from .graders import Grader, JudgeError
from .prompts import EvalData, Prompt, read_prompts
from .results import EvalResult, EvaluatedModel, ExampleResult, ModelAnswer, summarize
from .targets import Target

Services = Callable[[Target], FineTuningService]
OPENAI_ADDRESSES = (None, "https://api.openai.com/v1")


@dataclass
class EvalProgress:
    """Callbacks a front end gives to show the run: a model starts, an answer arrives."""

    model: Callable[[Target, int], None] = lambda target, total: None
    answer: Callable[[Target, Prompt, Answer], None] = lambda target, prompt, answer: None
    retry: Callable[[TransientError, float], None] | None = None
    load: Callable[[Target, float], None] = lambda target, seconds: None  # a local model loaded


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
    does not pay for the same verdict twice.

    `check()` refuses a judge that cannot answer before the run asks anything. A judge that
    fails during the run is a `JudgeError` for that verdict (the grader counts it, and the run
    says why); one that cannot answer at all any more (unknown model, refused key, nothing at
    the address) is not asked again: its later verdicts fail at once with the same reason."""

    PROBE = ({"role": "user", "content": "Reply with the number 10."},)

    def __init__(self, target: Target, services: Services, cache: AnswerCache) -> None:
        self.target = target
        self.services = services
        self.cache = cache
        self.settings = Settings(temperature=0.0, max_tokens=400)
        self._broken: str | None = None  # why the judge cannot answer at all

    def check(self, on_retry: Callable[[TransientError, float], None] | None = None) -> None:
        """A local judge must be a model this machine knows; a remote one is asked a one-token
        question (its answer cached, so a rerun does not ask it again)."""
        service = self.services(self.target)
        try:
            check_model(service, self.target)
            if not service.capabilities.remote:
                return
            settings = Settings(max_tokens=1)
            probe = _judge_prompt(list(self.PROBE))
            key = answer_key(self.target, probe, settings)
            if self.cache.get(key) is None:
                answer = first_answer(service, self.target, list(self.PROBE), settings, on_retry)
                if answer is not None:
                    self.cache.put(key, answer)
        except ConvtuneError as error:
            raise ConvtuneError(f"the judge (--judge): {error.message}", hint=error.hint) from None

    def __call__(self, messages: list[dict]) -> str:
        if self._broken is not None:
            raise JudgeError(self._broken)
        service = self.services(self.target)
        engine = engine_name(service, self.target)  # a local judge's engine keys its answers
        key = answer_key(self.target, _judge_prompt(messages), self.settings, engine)
        answer = self.cache.get(key)
        if answer is None:
            try:
                answer = request_answer(service, self.target, messages, self.settings)
            except (NotFound, KeyRefused, TransientError) as error:
                self._broken = f"the judge {self.target.label} failed: {error}"
                raise JudgeError(self._broken) from None
            except ConvtuneError as error:
                raise JudgeError(f"the judge {self.target.label} failed: {error}") from None
            self.cache.put(key, answer)
        return answer.text


def _judge_prompt(messages: list[dict]) -> Prompt:
    return Prompt(-1, 0, tuple((m["role"], m["content"]) for m in messages), "", {})


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
    progress: EvalProgress | None = None,
    judge: CachedJudge | None = None,
) -> EvalResult:
    """Ask, grade and summarize; models in the order given (the first is the one to beat).

    Every model, and the `judge` of score_model graders, is checked before anything is asked
    (`check_target`): a model that cannot answer at all is an error, not a column of failures."""
    settings = settings or Settings()
    progress = progress or EvalProgress()
    labels = [t.label for t in targets]
    if len(set(labels)) != len(labels):
        raise ConvtuneError("a model is named twice: give each model once")
    for target in targets:  # what costs nothing first: the models this machine must know
        check_model(services(target), target)
    if judge is not None:
        judge.check(progress.retry)
    for target in targets:
        check_target(services(target), target, data.prompts, settings, cache, progress.retry)
    examples = [
        ExampleResult(p.index, p.line, p.chat_messages(), p.reference) for p in data.prompts
    ]
    evaluated = []
    for target in targets:
        service = services(target)
        progress.model(target, len(data.prompts))
        loaded: list[float] = []

        def on_load(seconds: float, target: Target = target, loaded: list = loaded) -> None:
            loaded.append(seconds)
            progress.load(target, seconds)

        answers = ask(
            service,
            target,
            data.prompts,
            settings,
            cache,
            concurrency=concurrency,
            on_answer=lambda prompt, answer, target=target: progress.answer(target, prompt, answer),
            on_retry=progress.retry,
            check=False,
            on_load=on_load,
        )
        for example, prompt, answer in zip(examples, data.prompts, answers, strict=True):
            example.answers[target.label] = _graded(answer, prompt, graders)
        loss = accuracy = None
        if teacher_forcing and service.capabilities.scores_references:
            loss, accuracy = service.models.score_references(
                target.model, [p.record for p in data.prompts]
            )
        evaluated.append(
            EvaluatedModel(
                target.label,
                target.backend,
                _cost(target, answers),
                loss,
                accuracy,
                load_seconds=loaded[0] if loaded else None,
                engine=engine_label(service, target),
            )
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
