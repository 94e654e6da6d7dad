"""Chatting with a local model: a fine-tuned one from the store, or a base model by name.

Chat-format models answer through their chat template and stop at its end-of-turn token. Models
trained on legacy prompt/completion data speak the same `Human:`/`AI:` protocol they learned:
the history written as the prompt was, and generation stops at the stop separator.

A loaded model serves many callers (`convtune serve` takes hundreds of requests at once). The
engine that generates (`engines.choose`: the service's `engine`; "auto" is transformers for now)
is transformers or CTranslate2 (`ct2_engine.Ct2Engine`: the model converted once, the replies
waiting generated together in batches). With transformers and `max_batch` above 1, the
replies asked of one model at the same time are generated together by its `BatchEngine`
(`generation.py`: continuous batching, up to `max_batch` rows per forward pass); with
`max_batch=1`, or a model whose cache the engine cannot batch, each reply is one `generate` call
in a thread of its own, one at a time per model (a lock per model).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvtuneError
from ..service.contract import ChatReply, ChatRequest
from .engines import EngineChoice
from .generation import BatchEngine, Generation


class Reply(ChatReply):
    """A local model's reply (`ChatReply`), generated in a thread of its own or in a batch.

    `prompt_tokens` is known from the start; `close()` waits until generation has let go of the
    reply (its thread ended, or its row left the batch).
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
        self._wait: Callable[[], None] = lambda: None  # until generation has let go of the reply
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
        self._wait()

    def _ended(self, tokens: int, eos: bool, error: BaseException | None) -> None:
        """What the batch engine says when it lets go of the reply."""
        self.completion_tokens = tokens
        self.ended_with_eos = eos
        self.error = error

    def _run(self, pieces: Iterator[str]) -> Iterator[str]:
        """Yield the pieces; however the reader stops, end generation and wait until it has let
        go of the reply.

        A process must not exit while torch still runs in another thread ("terminate called").
        """
        try:
            yield from pieces
        finally:
            self.done.set()
            self._wait()
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
    max_batch: int = 1  # replies generated together; 1: one at a time (`load` takes the service's)
    engine: EngineChoice = field(default_factory=lambda: EngineChoice("transformers"))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _engine: BatchEngine | None = field(default=None, init=False, repr=False, compare=False)
    _ct2: Any = field(default=None, init=False, repr=False, compare=False)  # a Ct2Engine
    _eos: frozenset[int] = field(default=frozenset(), init=False, repr=False, compare=False)
    _torch: Callable[[], Any] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model is not None and self.max_batch > 1 and BatchEngine.supports(self.model):
            self._engine = BatchEngine(self.model, self.tokenizer, self.max_batch, self._lock)

    @property
    def batched(self) -> bool:
        """Whether replies are generated together (else one `generate` call at a time)."""
        return self._engine is not None or (self._ct2 is not None and self.max_batch > 1)

    def close(self) -> None:
        """End the replies under way (as if their readers had gone)."""
        if self._engine is not None:
            self._engine.close()
        if self._ct2 is not None:
            self._ct2.close()

    @classmethod
    def load(cls, service, model_id: str) -> LocalChat:
        """The model and tokenizer of a fine-tuned model of `service`'s store, or of a base model,
        ready to chat with `service.max_batch` replies at a time."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        from .base_models import base_folder, load_base_model, resolve_base_model
        from .engines import choose

        hf_logging.disable_progress_bar()  # a chat prints replies, not loading bars

        record = service.store.get_model(model_id)
        if record is not None:
            path = Path(record["path"])
            if not (path / "config.json").is_file():
                raise ConvtuneError(
                    f"the weights of {model_id} are missing from {path}",
                    hint=f"delete it with: convtune models delete {model_id}",
                )
            choice = choose(service.engine, path)
            if choice.name != "transformers":
                return cls._converted(service, path, record["format"], record["actors"], choice)
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            fmt, actors = record["format"], record["actors"]
        else:
            ref = resolve_base_model(model_id)
            choice = EngineChoice("transformers")
            if service.engine not in ("auto", "transformers"):  # it reads the model's folder
                folder = base_folder(ref)
                choice = choose(service.engine, folder)  # or why it cannot (no folder: a hub id)
                return cls._converted(service, folder, "chat", None, choice)  # type: ignore[arg-type]
            model, tokenizer, _ = load_base_model(ref)
            fmt, actors = "chat", None
        model.eval()
        return cls(model, tokenizer, fmt, actors, service.max_batch, choice)

    @classmethod
    def _converted(
        cls, service, folder: Path, fmt: str, actors: Any, choice: EngineChoice
    ) -> LocalChat:
        """A chat whose replies CTranslate2 generates, from the model converted once."""
        import ctranslate2
        from transformers import AutoTokenizer

        from .ct2_engine import Ct2Engine, choosing_options, end_tokens
        from .engines import QUANTIZATION, converted, threads

        tokenizer = AutoTokenizer.from_pretrained(folder)
        if not tokenizer.chat_template and fmt == "chat":
            raise ConvtuneError(f"{folder.name} has no chat template", path=folder)
        model = str(converted(folder, service.home, choice.name))

        def generator() -> Any:
            return ctranslate2.Generator(
                model,
                device="cpu",
                compute_type=QUANTIZATION[choice.name],
                intra_threads=threads(),
            )

        chat = cls(None, tokenizer, fmt, actors, service.max_batch, choice)
        chat._ct2 = Ct2Engine(
            generator(),
            tokenizer,
            service.max_batch,
            fresh=generator,
            choosing=choosing_options(folder),
        )
        chat._eos = end_tokens(folder, tokenizer)

        def torch_model() -> Any:  # scoring (teacher forcing) needs the model itself
            import torch
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
            return model.eval()

        chat._torch = torch_model
        return chat

    def score(self, records: list[dict], *, max_length: int = 1024) -> tuple[float, float]:
        """Mean loss and next-token accuracy on the trained parts of `records` (teacher forcing
        with training's loss masks); replies on this model wait meanwhile."""
        from .loss_masks import tokenize_records
        from .training import evaluate

        examples, _ = tokenize_records(records, self.tokenizer, max_length=max_length)
        if not examples:
            raise ConvtuneError("no example has a trained token to score")
        with self._lock:
            if self.model is None and self._torch is not None:
                self.model = self._torch()
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
        """Start generating the reply (in the batch, or in a thread); the `Reply` yields it piece
        by piece.

        `request.stop` (if the request has it: the server's requests do) adds stop strings to
        the model's own; like OpenAI, the reply ends before the first one and does not show it.
        """
        from transformers import TextIteratorStreamer

        text, stops = self.prompt(request.messages)
        stops = [*stops, *(s for s in request.stop if s)]
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        reply = Reply(len(ids), request.max_tokens)
        # the batch engines put only the reply's tokens; `generate` puts the prompt first
        batched = self._engine is not None or self._ct2 is not None
        streamer = TextIteratorStreamer(
            self.tokenizer, skip_prompt=not batched, skip_special_tokens=True
        )
        if self._ct2 is not None:
            self._submit_ct2(request, ids, stops, reply, streamer)
        elif self._engine is not None:
            self._submit(request, ids, stops, reply, streamer)
        else:
            self._start_thread(request, ids, stops, reply, streamer)

        def stopped() -> None:
            reply.hit_stop = True

        strip_first = self.format == "prompt-completion"
        reply._pieces = reply._run(
            _until_stop(streamer, stops, strip_first=strip_first, on_stop=stopped)
        )
        return reply

    def _submit(
        self, request: ChatRequest, ids: list[int], stops: list[str], reply: Reply, streamer: Any
    ) -> None:
        import torch

        sample = request.temperature > 0
        processors, eos = self._choosing(request, ids, sample)
        generator = None
        if sample:
            generator = torch.Generator()
            if request.seed is not None:
                generator.manual_seed(request.seed)
            else:
                generator.seed()
        job = Generation(
            prompt=ids,
            max_tokens=request.max_tokens,
            stops=stops,
            do_sample=sample,
            processors=processors,
            generator=generator,
            streamer=streamer,
            cancelled=reply.done,
            on_end=reply._ended,
            eos=eos,
        )
        reply._wait = job.wait
        try:
            self._engine.submit(job)  # type: ignore[union-attr]
        except RuntimeError as exc:  # the model was unloaded meanwhile
            raise ConvtuneError(f"cannot generate: {exc}") from None

    def _submit_ct2(
        self, request: ChatRequest, ids: list[int], stops: list[str], reply: Reply, streamer: Any
    ) -> None:
        from .ct2_engine import Ct2Generation

        job = Ct2Generation(
            prompt=ids,
            max_tokens=request.max_tokens,
            stops=stops,
            do_sample=request.temperature > 0,
            processors=None,
            generator=None,
            streamer=streamer,
            cancelled=reply.done,
            on_end=reply._ended,
            eos=self._eos,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        reply._wait = job.wait
        try:
            self._ct2.submit(job)
        except RuntimeError as exc:  # the model was unloaded meanwhile
            raise ConvtuneError(f"cannot generate: {exc}") from None

    def _choosing(
        self, request: ChatRequest, ids: list[int], sample: bool
    ) -> tuple[Any, frozenset[int]]:
        """The logits processors and end tokens `generate` would use for this request alone,
        built by transformers' own (private) helpers from the model's generation config: a reply
        chooses its tokens the same way in a batch and alone."""
        import torch
        from transformers import LogitsProcessorList

        options: dict[str, Any] = dict(
            do_sample=sample, max_new_tokens=request.max_tokens, pad_token_id=self._pad_id()
        )
        if sample:
            options.update(temperature=request.temperature, top_p=request.top_p)
        config, _ = self.model._prepare_generation_config(None, **options)
        self.model._prepare_special_tokens(config, True, device="cpu")
        processors = self.model._get_logits_processor(
            generation_config=config,
            input_ids_seq_length=len(ids),
            encoder_input_ids=torch.tensor([ids]),
            logits_processor=LogitsProcessorList(),
            device="cpu",
            model_kwargs={},
        )
        eos = config.eos_token_id
        ids_ = eos if isinstance(eos, list) else [] if eos is None else [eos]
        return processors, frozenset(int(i) for i in ids_)

    def _pad_id(self) -> int:
        return self.tokenizer.pad_token_id or self.tokenizer.eos_token_id

    def _start_thread(
        self, request: ChatRequest, ids: list[int], stops: list[str], reply: Reply, streamer: Any
    ) -> None:
        """The serial path: one `generate` call in a thread, one at a time on this model."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        input_ids = torch.tensor([ids])
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=request.max_tokens,
            streamer=streamer,
            pad_token_id=self._pad_id(),
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
        thread = threading.Thread(
            target=self._generate, args=(kwargs, request.seed, reply, streamer), daemon=True
        )
        reply._wait = thread.join
        thread.start()

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
