"""A local job's answers to held-out prompts: the checkpoint it keeps, and whether it learned.

The worker's side of `learning_check`: with a validation file, the job answers its held-out
prompts with the base model before training, with the model of each probed epoch end while
training (on the model in memory: `answering()` of the training loop), and with the model it keeps
at the end. Each step is an event of the job (OpenAI's events carry `data`: the probe's scores,
the verdict's intervals), so `follow`, `train` and the web page show them, and a resumed job
reads the probes of its earlier run back from them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..dataset.findings import counted
from ..evaluation.answers import AnswerCache, default_cache_path
from ..evaluation.prompts import Prompt
from .chat import LocalChat
from .learning_check import (
    GRADERS,
    Answer,
    HeldOut,
    ProbeResult,
    answer,
    best,
    cache_answers,
    graders,
    held_out,
    probe_result,
    probed,
    scores,
    verdict,
)

BATCH = 32  # answers generated together: a held-out set is answered in one or two batches


class AnswerCheck:
    """Held-out prompts answered along a job; `start` returns None when the job has none."""

    def __init__(self, run: Any, held: HeldOut, tokenizer: Any, fmt: str, actors: Any) -> None:
        self.run = run
        self.held = held
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.actors = actors
        self.base: dict[int, Answer] = {}  # prompt index -> the base model's answer
        self.results: list[ProbeResult] = []
        self.probe_answers: dict[int, list[Answer]] = {}  # step -> its answers to the probe
        self.kept_step: int | None = None  # the earlier epoch's step `_keep_best` chose

    @classmethod
    def start(
        cls, run: Any, valid_path: Path | None, model: Any, tokenizer: Any, fmt: str, actors: Any
    ) -> AnswerCheck | None:
        """Answer the held-out prompts with the base `model` (before it trains), or None when
        there is nothing to check: no validation file, not rank 0, or both uses turned off."""
        options = run.options
        if valid_path is None or run.rank != 0:
            return None
        if options.keeps_last_epoch and not options.learning_check:
            return None
        check = cls(run, held_out(valid_path, seed=run.job.seed), tokenizer, fmt, actors)
        prompts = check._base_prompts()
        answers = check._answer(model, prompts)
        check.base = dict(zip([p.index for p in prompts], answers, strict=True))
        check._cache(run.job.model, prompts, answers)
        check.results = check._earlier()
        run.event(
            f"Answered {counted(len(prompts), 'held-out validation prompt')} with the base model,"
            " to compare the fine-tune's answers with"
        )
        return check

    def _base_prompts(self) -> list:
        """The prompts the base model answers: the probe's (when checkpoints are chosen) and the
        verdict's (when there is a verdict: which ones depends on the choice), each once."""
        options = self.run.options
        if options.learning_check:
            return self.held.answered
        return list(self.held.probe)

    def _cache(self, model: str, prompts: list[Prompt], answers: list[Answer]) -> None:
        """Where `convtune eval ... --max-tokens 48` finds them: not asked again."""
        if self.run.options.learning_check:
            cache_answers(AnswerCache(default_cache_path(self.run.home)), model, prompts, answers)

    def _answer(self, model: Any, prompts: list) -> list[Answer]:
        chat = LocalChat(model, self.tokenizer, self.fmt, self.actors, max_batch=BATCH)
        try:
            return answer(chat, prompts)
        finally:
            chat.close()

    def _earlier(self) -> list[ProbeResult]:
        """The probes of an earlier run of this job (a resumed one), from its events."""
        found = []
        for _, event in self.run.store.events_since(self.run.job_id):
            data = event.data.get("answer_probe") if event.type == "message" else None
            if isinstance(data, dict):
                found.append(ProbeResult(data["epoch"], data["step"], [], dict(data["means"])))
        return found

    def probe(self, epoch: int, step: int, total_steps: int, answering: Callable[[], Any]) -> None:
        """At an epoch end in the run's second half: the model as it is answers the probe (the
        last step's answers are `finish`'s, in one batch with the verdict's)."""
        keeps_last = self.run.options.keeps_last_epoch
        if keeps_last or not probed(step, total_steps) or step >= total_steps:
            return
        with answering() as model:
            self._record(epoch, step, self._answer(model, self.held.probe))

    def _record(self, epoch: int, step: int, answers: list[Answer]) -> None:
        prompts = self.held.probe
        result = probe_result(epoch, step, [a.text for a in answers], prompts)
        self.results = [r for r in self.results if r.step != step] + [result]
        self.probe_answers[step] = answers
        base = self._base_means(prompts)
        shown = ", ".join(f"{g} {result.means[g]:.2f} (base {base[g]:.2f})" for g in GRADERS)
        self.run.event(
            f"Step {step} (epoch {epoch}): the answers to"
            f" {counted(len(prompts), 'held-out prompt')} score {shown}",
            data={"answer_probe": {"epoch": epoch, "step": step, "means": result.means}},
        )

    def _base_means(self, prompts: list) -> dict[str, float]:
        answers = [self.base[p.index].text for p in prompts]
        return {g.name: sum(scores(answers, prompts, g)) / len(prompts) for g in graders()}

    def finish(self, model: Any, step: int, epoch: int, *, keep_last: bool, verdict: bool) -> None:
        """Keep the model whose answers scored best (a checkpoint loaded into `model`; the last
        step is probed too when it is not an epoch end), then the verdict. The last step's
        answers to the probe and to the verdict's prompts are one batch."""
        final: dict[int, Answer] = {}
        if not keep_last and not any(r.step == step for r in self.results):
            prompts = self.held.answered if verdict else self.held.probe
            with self._answering(model):
                final = dict(
                    zip([p.index for p in prompts], self._answer(model, prompts), strict=True)
                )
            self._record(epoch, step, [final[p.index] for p in self.held.probe])
        chosen = False
        if self.results and not keep_last:
            chosen = self._keep_best(model, step)
        if verdict:
            with self._answering(model):
                self._verdict(model, {} if chosen else final, chosen=chosen)

    @staticmethod
    @contextmanager
    def _answering(model: Any) -> Iterator[None]:
        """The trained model as it answers: eval mode, the cache on, no gradients."""
        import torch

        from .training.adapters import core_model

        model.eval()
        core_model(model).config.use_cache = True
        with torch.no_grad():
            yield

    def _keep_best(self, model: Any, last_step: int) -> bool:
        """Load the best probe's checkpoint into `model`; whether it is not the last step's."""
        from .training import load_checkpoint

        last = next(r for r in self.results if r.step == last_step)
        chosen = best(self.results)
        score = f"{GRADERS[0]} {chosen.means[GRADERS[0]]:.3f}"
        if chosen is last:
            self.run.event(
                f"Keeping the model of the last step ({last_step}): no earlier epoch's answers"
                f" scored better ({score} at the last)"
            )
            return False
        folder = self.run.folder / "checkpoints" / f"step-{chosen.step}"
        load_checkpoint(model, None, folder)
        self.kept_step = chosen.step
        self.run.event(
            f"Keeping the model of epoch {chosen.epoch} (step {chosen.step}): its answers scored"
            f" best ({score}, against {last.means[GRADERS[0]]:.3f} at the last step, {last_step});"
            " --keep-last keeps the last",
            data={"kept": {"epoch": chosen.epoch, "step": chosen.step}},
        )
        return True

    def _verdict(self, model: Any, known: dict[int, Answer], *, chosen: bool) -> None:
        """The kept model's answers (those of `known` not asked again) against the base's."""
        prompts, shared = self.held.verdict_prompts(chosen=chosen)
        missing = [p for p in prompts if p.index not in known]
        if missing:
            known = {
                **known,
                **dict(zip([p.index for p in missing], self._answer(model, missing), strict=True)),
            }
        tuned = [known[p.index] for p in prompts]
        self._cache(self.run.model_id(), prompts, tuned)
        if chosen and self.kept_step in self.probe_answers:  # the kept model's, at its probe
            self._cache(self.run.model_id(), self.held.probe, self.probe_answers[self.kept_step])
        result = verdict(
            self.run.base_name,
            prompts,
            [self.base[p.index].text for p in prompts],
            [a.text for a in tuned],
            shared=shared,
            seed=self.run.job.seed,
        )
        self.run.event(result.message(), data={"verdict": result.to_dict()})
