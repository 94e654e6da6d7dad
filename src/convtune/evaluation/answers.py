"""Asking models: every prompt once, answers kept as they arrive, nothing paid for twice.

Each answer is appended to a cache file (JSON Lines, flushed and synced) the moment it arrives,
keyed by the model, its backend, the prompt and the generation settings. A rerun, or a run
resumed after Ctrl-C or a crash, reads the cache and asks only what is missing; a line cut short
by a kill is ignored (and the next answer starts a line of its own). A file that is not a cache is
refused, never appended to. Remote models are asked by `concurrency` threads at once; 429s, 5xx and
dropped connections (`TransientError`) are retried with the same capped backoff as `follow`.
A local model is asked `concurrency` prompts at once too when its backend generates the
replies asked at the same time together (`Capabilities.batches_chat`), else one at a time.

Before anything is asked, a model that cannot answer at all is refused (`check_target`): a local
model this machine does not know, or a remote one whose first answer says the service does not
know it, refuses the key or is not there (a refused connection is given up within seconds, not
retried for `follow`'s half hour). A local model is loaded before its first answer is timed, so
that latency and speed are the answers' own (`warm_up`).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import (
    ConvtuneError,
    InputError,
    KeyRefused,
    NotFound,
    OptionError,
    TransientError,
    Unreachable,
)
from ..service.backoff import Backoff
from ..service.contract import ChatRequest, FineTuningService
from .prompts import Prompt
from .targets import Target

UNREACHABLE_PATIENCE = 5.0  # seconds of refused connections before giving up: nothing listens


class UnknownModel(ConvtuneError):
    """A model its backend does not have: nothing is asked of it."""


@dataclass(frozen=True)
class Settings:
    """How answers are generated: deterministic by default (greedy, seeded)."""

    temperature: float = 0.0
    max_tokens: int = 256
    seed: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.temperature <= 2:
            raise OptionError("the temperature must be from 0 to 2")
        if self.max_tokens < 1:
            raise OptionError("max_tokens must be 1 or more")
        if not 0 < self.top_p <= 1:
            raise OptionError("top_p must be above 0 and at most 1")


@dataclass
class Answer:
    """One model's answer to one prompt, and what it cost in time and tokens."""

    text: str
    seconds: float  # from the request to the last piece of the reply
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None  # the model could not answer this prompt (not cached)
    cached: bool = False  # read from the cache, not asked in this run


def default_cache_path(home: Path) -> Path:
    """The answers cache of a data folder: eval's and record's unless --cache, and the web
    page's comparisons', so that what one asked the others never ask again."""
    return home / "eval" / "answers.jsonl"


class AnswerCache:
    """Answers by key, in a JSON Lines file that only ever grows (append, flush, fsync)."""

    def __init__(self, path: Path | None) -> None:
        """Read the answers of `path` (None: keep them in memory only). A file that is not an
        answers cache (its first line is no cache entry, as a data file's is not) is refused
        with its line, before anything is appended to it."""
        self.path = path
        self._answers: dict[str, Answer] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            if path.is_dir():
                raise OptionError(f"the answers cache {path} is a folder: give a file")
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
            if lines and not _is_entry(lines[0]):
                raise InputError(
                    "not an answers cache: its first line is not an answer eval or record wrote",
                    path=path,
                    line=1,
                    hint="give --cache a new file, or the cache of an earlier run",
                )
            for line in lines:
                try:
                    entry = json.loads(line)
                    self._answers[entry["key"]] = Answer(**entry["answer"], cached=True)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill, or from another version

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> Answer | None:
        return self._answers.get(key)

    def put(self, key: str, answer: Answer) -> None:
        with self._lock:
            self._answers[key] = answer
            if self.path is None:
                return
            entry = {
                "key": key,
                "answer": {k: v for k, v in asdict(answer).items() if k != "cached"},
            }
            data = (json.dumps(entry, ensure_ascii=False) + "\n").encode()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab+") as f:
                if f.seek(0, os.SEEK_END) > 0:  # a line cut short by a kill: start a new one
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
                f.write(data)
                f.flush()
                os.fsync(f.fileno())


def _is_entry(line: str) -> bool:
    """Whether a line is a cache entry, or the start of one cut short by a kill."""
    try:
        entry = json.loads(line)
    except ValueError:
        return line.startswith('{"key": "')
    return isinstance(entry, dict) and "key" in entry and "answer" in entry


def answer_key(
    target: Target, prompt: Prompt, settings: Settings, engine: str | None = None
) -> str:
    """The cache key of an answer. A local model's engine other than transformers (the one
    earlier answers came from) is part of it: an int8 engine's answers are not transformers'."""
    model = target.key() if engine in (None, "transformers") else f"{target.key()}|{engine}"
    raw = json.dumps([model, prompt.key(), asdict(settings)], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:40]


def engine_name(service: FineTuningService, target: Target) -> str | None:
    """The engine that answers a local `target` (None for a remote one)."""
    engine_of = getattr(service.chat, "engine_of", None)
    if service.capabilities.remote or engine_of is None:
        return None
    return engine_of(target.model).name


def engine_label(service: FineTuningService, target: Target) -> str | None:
    """How results name a local target's engine: "ctranslate2 int8", "transformers float32"."""
    engine_of = getattr(service.chat, "engine_of", None)
    if service.capabilities.remote or engine_of is None:
        return None
    return engine_of(target.model).label


def ask(
    service: FineTuningService,
    target: Target,
    prompts: list[Prompt],
    settings: Settings,
    cache: AnswerCache,
    *,
    concurrency: int = 4,
    on_answer: Callable[[Prompt, Answer], None] | None = None,
    on_retry: Callable[[TransientError, float], None] | None = None,
    check: bool = True,
    on_load: Callable[[float], None] | None = None,
) -> list[Answer]:
    """Every prompt's answer by `target`, in prompt order (cached ones are not asked again).

    First (unless the caller did, `check=False`) the model is checked with `check_target`: a
    model that cannot answer at all is an error before the rest is asked. A local model with
    prompts to answer is loaded before the first is timed (`warm_up`; `on_load(seconds)`)."""
    if concurrency < 1:
        raise OptionError("--concurrency must be 1 or more")
    if check:
        check_target(service, target, prompts, settings, cache, on_retry)
    answers: dict[int, Answer] = {}
    missing: list[Prompt] = []
    engine = engine_name(service, target)
    for prompt in prompts:
        found = cache.get(answer_key(target, prompt, settings, engine))
        if found is not None:
            answers[prompt.index] = found
            if on_answer is not None:
                on_answer(prompt, found)
        else:
            missing.append(prompt)

    if missing and (seconds := warm_up(service, target)) is not None and on_load is not None:
        on_load(seconds)

    def one(prompt: Prompt) -> Answer:
        answer = ask_one(service, target, prompt, settings, on_retry)
        if answer.error is None:
            cache.put(answer_key(target, prompt, settings, engine), answer)
        return answer

    batches = service.capabilities.remote or service.capabilities.batches_chat
    workers = concurrency if batches else 1
    if workers == 1:
        for prompt in missing:
            answers[prompt.index] = answer = one(prompt)
            if on_answer is not None:
                on_answer(prompt, answer)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eval") as pool:
            futures = {pool.submit(one, prompt): prompt for prompt in missing}
            try:
                for future in as_completed(futures):
                    prompt = futures[future]
                    answers[prompt.index] = answer = future.result()
                    if on_answer is not None:
                        on_answer(prompt, answer)
            except BaseException:  # Ctrl-C: what arrived is cached; ask nothing more
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return [answers[p.index] for p in prompts]


def ask_one(
    service: FineTuningService,
    target: Target,
    prompt: Prompt,
    settings: Settings,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> Answer:
    """One answer, asked now (no cache); transient failures are retried with backoff, any other
    failure is the answer's `error`. An address where nothing answers (`Unreachable`) is given
    up after a few tries within seconds, and raised: every other prompt would fail the same."""
    started = time.perf_counter()
    try:
        return request_answer(service, target, prompt.chat_messages(), settings, on_retry)
    except TransientError:
        raise
    except ConvtuneError as error:
        return Answer("", time.perf_counter() - started, error=str(error))


def request_answer(
    service: FineTuningService,
    target: Target,
    messages: list[dict[str, str]],
    settings: Settings,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> Answer:
    """The answer to `messages`, or the `ConvtuneError` that says why there is none. 429s, 5xx
    and dropped connections are retried as `follow` retries them (up to `PATIENCE`); refused
    connections for `UNREACHABLE_PATIENCE` seconds only."""
    request = ChatRequest(
        model=target.model,
        messages=messages,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
    )
    patient = Backoff(on_retry=on_retry)
    quick = Backoff(patience=UNREACHABLE_PATIENCE, on_retry=on_retry)
    while True:
        started = time.perf_counter()
        try:
            reply = service.chat.create(request)
            try:
                text = "".join(reply)
            finally:
                reply.close()
        except Unreachable as error:
            quick.wait(error)
            continue
        except TransientError as error:
            patient.wait(error)
            continue
        return Answer(
            text.strip(),
            time.perf_counter() - started,
            reply.prompt_tokens,
            reply.completion_tokens,
            reply.finish_reason,
        )


def check_model(service: FineTuningService, target: Target) -> None:
    """Refuse a local model this machine does not know, before anything is asked (a remote
    service tells with its first answer: `first_answer`)."""
    if service.capabilities.remote or service.models.knows(target.model):
        return
    raise UnknownModel(
        f"unknown model {target.model!r} on this machine",
        hint="`convtune models list` shows the fine-tuned ones; a base model is"
        " SmolLM2-135M-Instruct, a model folder, a .gguf file or a hub id org/name",
    )


def first_answer(
    service: FineTuningService,
    target: Target,
    messages: list[dict[str, str]],
    settings: Settings,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> Answer | None:
    """Ask a remote model one prompt before the others: raise if it cannot answer at all (a model
    the service does not know, a refused key, nothing at the address), else the answer (None
    when this prompt failed on its own: it is asked again with the rest)."""
    try:
        return request_answer(service, target, messages, settings, on_retry)
    except NotFound as error:
        where = service.base_url or "OpenAI"
        raise UnknownModel(
            f"unknown model {target.model!r} at {where}: {error.message}", hint=error.hint
        ) from None
    except (KeyRefused, TransientError):
        raise
    except ConvtuneError:
        return None


def check_target(
    service: FineTuningService,
    target: Target,
    prompts: list[Prompt],
    settings: Settings,
    cache: AnswerCache,
    on_retry: Callable[[TransientError, float], None] | None = None,
) -> None:
    """Whether `target` can answer, before a run asks it everything: a local model must be one
    this machine knows (`check_model`); a remote one is asked the first prompt the cache lacks,
    alone (`first_answer`: its answer is cached, a model that cannot answer raised)."""
    check_model(service, target)
    if not service.capabilities.remote:
        return
    for prompt in prompts:
        key = answer_key(target, prompt, settings)
        if cache.get(key) is None:
            answer = first_answer(service, target, prompt.chat_messages(), settings, on_retry)
            if answer is not None:
                cache.put(key, answer)
            return


def warm_up(service: FineTuningService, target: Target) -> float | None:
    """Load a local model (converting it first if it must) with a one-token answer, so that
    the answers' latency and speed leave loading out; the seconds it took (None for a remote
    model, which is not loaded here). A model that cannot load is an error here, once."""
    if service.capabilities.remote:
        return None
    started = time.perf_counter()
    request_answer(service, target, [{"role": "user", "content": "Hi"}], Settings(max_tokens=1))
    return time.perf_counter() - started
