"""Chatting with a local model: a fine-tuned one from the store, or a base model by name.

Chat-format models answer through their chat template and stop at its end-of-turn token. Models
trained on legacy prompt/completion data speak the same `Human:`/`AI:` protocol they learned:
the history written as the prompt was, and generation stops at the stop separator.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..service import ChatRequest


@dataclass
class LocalChat:
    model: Any
    tokenizer: Any
    format: str = "chat"
    actors: tuple[str, str] | None = None

    @classmethod
    def load(cls, service, model_id: str) -> LocalChat:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .models import load_base_model, resolve_base_model

        hf_logging.disable_progress_bar()  # a chat prints replies, not loading bars

        record = service.store.get_model(model_id)
        if record is not None:
            path = Path(record["path"])
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            fmt, actors = record["format"], record["actors"]
        else:
            model, tokenizer, _ = load_base_model(resolve_base_model(model_id))
            fmt, actors = "chat", None
        model.eval()
        return cls(model, tokenizer, fmt, actors)

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

    def reply(self, request: ChatRequest) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        text, stops = self.prompt(request.messages)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        if request.seed is not None:
            torch.manual_seed(request.seed)
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
        done = threading.Event()  # set when the reader stops: generation stops too

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw) -> bool:
                return done.is_set()

        kwargs["stopping_criteria"] = StoppingCriteriaList([Cancelled()])
        thread = threading.Thread(target=self._generate, args=(kwargs,), daemon=True)
        thread.start()
        return _joined(
            _until_stop(streamer, stops, strip_first=self.format == "prompt-completion"),
            done,
            thread,
        )

    def _generate(self, kwargs: dict) -> None:
        import torch

        with torch.inference_mode():
            self.model.generate(**kwargs)


def _joined(
    pieces: Iterator[str], done: threading.Event, thread: threading.Thread
) -> Iterator[str]:
    """Yield the pieces; however the reader stops, end generation and wait for its thread.

    A process must not exit while torch still runs in another thread ("terminate called").
    """
    try:
        yield from pieces
    finally:
        done.set()
        thread.join()


def _until_stop(pieces: Iterator[str], stops: list[str], *, strip_first: bool) -> Iterator[str]:
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
