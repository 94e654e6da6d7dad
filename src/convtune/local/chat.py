"""Chatting with a local model: a fine-tuned one from the store, or a base model by name.

Chat-format models answer through their chat template and stop at its end-of-turn token. Models
trained on legacy prompt/completion data speak the same `Human:`/`AI:` protocol they learned:
the history written as the prompt was, and generation stops at the stop separator.

A loaded model serves many callers (`convtune serve` takes hundreds of requests at once): each
reply generates in its own thread, but one model generates one reply at a time (a lock per
model), which keeps a seeded reply reproducible and two cores from thrashing between replies.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..contract import ChatReply, ChatRequest
from ..errors import ConvtuneError


class Reply(ChatReply):
    """A local model's reply (`ChatReply`), generated in a thread of its own.

    `prompt_tokens` is known from the start; `close()` waits for the generating thread.
    """

    def __init__(self, prompt_tokens: int, max_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.ended_with_eos = False
        self.hit_stop = False
        self.done = threading.Event()  # set when the reader stops: generation stops too
        self._thread: threading.Thread | None = None
        self._pieces: Iterator[str] = iter(())

    def __next__(self) -> str:
        return next(self._pieces)

    def close(self) -> None:
        self.done.set()
        close = getattr(self._pieces, "close", None)
        if close is not None:
            # ValueError: being iterated in another thread, which `done` now stops soon
            with contextlib.suppress(ValueError):
                close()
        if self._thread is not None:
            self._thread.join()

    def _run(self, pieces: Iterator[str]) -> Iterator[str]:
        """Yield the pieces; however the reader stops, end generation and wait for its thread.

        A process must not exit while torch still runs in another thread ("terminate called").
        """
        try:
            yield from pieces
        finally:
            self.done.set()
            if self._thread is not None:
                self._thread.join()
        if self.error is not None:
            raise ConvtuneError(f"generation failed: {_brief(self.error)}") from self.error
        if self.hit_stop or self.ended_with_eos:
            self.finish_reason = "stop"
        elif self.completion_tokens >= self.max_tokens:
            self.finish_reason = "length"
        else:
            self.finish_reason = "stop"


@dataclass
class LocalChat:
    model: Any
    tokenizer: Any
    format: str = "chat"
    actors: tuple[str, str] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def load(cls, service, model_id: str) -> LocalChat:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .base_models import load_base_model, resolve_base_model

        hf_logging.disable_progress_bar()  # a chat prints replies, not loading bars

        record = service.store.get_model(model_id)
        if record is not None:
            path = Path(record["path"])
            if not (path / "config.json").is_file():
                raise ConvtuneError(
                    f"the weights of {model_id} are missing from {path}",
                    hint=f"delete it with: convtune models delete {model_id}",
                )
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            fmt, actors = record["format"], record["actors"]
        else:
            model, tokenizer, _ = load_base_model(resolve_base_model(model_id))
            fmt, actors = "chat", None
        model.eval()
        return cls(model, tokenizer, fmt, actors)

    def score(self, records: list[dict], *, max_length: int = 1024) -> tuple[float, float]:
        """Mean loss and next-token accuracy on the trained parts of `records` (teacher forcing
        with training's loss masks); replies on this model wait meanwhile."""
        from .loss_masks import tokenize_records
        from .training import evaluate

        examples, _ = tokenize_records(records, self.tokenizer, max_length=max_length)
        if not examples:
            raise ConvtuneError("no example has a trained token to score")
        with self._lock:
            return evaluate(self.model, examples)

    def prompt(self, messages: list[dict[str, str]]) -> tuple[str, list[str]]:
        """The text the model continues, and the strings that end its reply."""
        if self.format == "prompt-completion":
            first, second = self.actors or ("Human", "AI")
            labels = {"user": first, "assistant": second}
            lines = [
                f"{labels[m['role']]}: {m['content']}" for m in messages if m["role"] in labels
            ]
            return "\n".join([*lines, f"{second}:"]), [f"\n{first}:"]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )
        return text, []

    def reply(self, request: ChatRequest) -> Reply:
        """Start generating the reply in a thread; the `Reply` yields it piece by piece.

        `request.stop` (if the request has it: the server's requests do) adds stop strings to
        the model's own; like OpenAI, the reply ends before the first one and does not show it.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        text, stops = self.prompt(request.messages)
        stops = [*stops, *(s for s in request.stop if s)]
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        reply = Reply(int(inputs["input_ids"].shape[1]), request.max_tokens)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = dict(
            **inputs,
            max_new_tokens=request.max_tokens,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
        )
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(do_sample=False)
        if stops:
            kwargs.update(stop_strings=stops, tokenizer=self.tokenizer)
        done = reply.done

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw) -> torch.Tensor:
                return torch.full((input_ids.shape[0],), done.is_set(), dtype=torch.bool)

        kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        reply._thread = threading.Thread(
            target=self._generate, args=(kwargs, request.seed, reply, streamer), daemon=True
        )
        reply._thread.start()

        def stopped() -> None:
            reply.hit_stop = True

        strip_first = self.format == "prompt-completion"
        reply._pieces = reply._run(
            _until_stop(streamer, stops, strip_first=strip_first, on_stop=stopped)
        )
        return reply

    def _generate(self, kwargs: dict, seed: int | None, reply: Reply, streamer: Any) -> None:
        import torch

        try:
            with self._lock:  # one reply at a time on this model
                if reply.done.is_set():  # the reader left while this reply waited its turn
                    streamer.end()
                    return
                if seed is not None:
                    torch.manual_seed(seed)
                with torch.inference_mode():
                    output = self.model.generate(**kwargs)
            new = output[0, reply.prompt_tokens :]
            reply.completion_tokens = int(new.shape[0])
            reply.ended_with_eos = bool(new.numel()) and int(new[-1]) in self._eos_ids()
        except Exception as exc:  # the reader must not wait forever for the streamer's end
            reply.error = exc
            streamer.end()

    def _eos_ids(self) -> set[int]:
        ids = getattr(self.model.generation_config, "eos_token_id", None)
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(self.tokenizer.eos_token_id)
        return found


def _until_stop(
    pieces: Iterator[str], stops: list[str], *, strip_first: bool, on_stop=lambda: None
) -> Iterator[str]:
    """Pass pieces through, holding back what might be the start of a stop string."""
    held = ""
    first = strip_first
    for piece in pieces:
        held += piece
        if first and held:
            held = held.lstrip()
            first = not held
        cut = min((held.find(s) for s in stops if s in held), default=-1)
        if cut >= 0:
            on_stop()
            if held[:cut]:
                yield held[:cut]
            return
        keep = max((len(s) - 1 for s in stops), default=0)
        if len(held) > keep:
            out, held = held[: len(held) - keep], held[len(held) - keep :]
            if out:
                yield out
    if held:
        yield held


def _brief(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
