"""Continuous batching: the replies one local model is asked for at the same time are generated
together, one forward pass per token for all of them.

Why: a decode step of one row reads all the weights (540 MB of float32 for SmolLM2-135M) for a
few hundred million multiply-adds, and leaves the arithmetic units idle; more rows share the
reading. Measured with one torch thread on this machine's shared cores (load 3.5), a step took
72 ms for 1 row, 144 ms for 8, 297 ms for 32 and 365 ms for 64: 14, 55, 108 and 175 tokens/s.
Prefilling a prompt, on the other hand, is arithmetic, as costly per token as a batched step;
the chat template's system prompt is most of a short chat's prompt, so prompts reuse the keys
and values of the longest prefix they share with a recent prompt (`PrefixStore`).

How: one thread per model (started by the first request, ended when no request is left) loops:
take the waiting requests that fit (at most `max_batch` rows in all), prefill them together
(left-padded, on top of their cached prefixes), then one decode step for every row. A request
joins between two steps and leaves as soon as it is done (its end-of-turn token, `max_tokens`, a
stop string, or its reader gone), without waiting for the others.

The batch's keys and values are one `DynamicCache` of [rows, heads, columns, head_dim]; a 0/1
mask of [rows, columns] says which columns are a row's own tokens (rows are left-padded, and a
prefilled row may have a gap between its cached prefix and the rest of its prompt); the position
of a row's next token is the number of its own columns. Columns no row uses any more are cut.

Each request keeps what makes its reply its own: the logits processors `generate` would build
from the model's generation config and the request, a `torch.Generator` seeded with the request's
seed (sampling draws from it as `generate` draws from the global generator after
`torch.manual_seed(seed)`), and its own streamer. A reply is therefore the one the serial path
gives, up to rounding: a matrix product of 16 rows does not round every row exactly as a product
of one row does, nor does a prompt computed on top of a cached prefix round as one computed
whole (float32 differences of about 1e-6 in the logits, with or without padding). That can
change a greedy or sampled token only where two tokens are that close: the tests, and 96
SmolLM2 replies of 24 tokens (48 greedy, 48 seeded, prompts of three lengths) compared with the
serial path's, found none.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .kv_cache import (
    PrefixStore,
    RoomyLayer,
    multinomial_from,
)

PREFILL_TOKENS = 1024  # prompt tokens (padding included) per prefill pass, unless one is longer


@dataclass(eq=False)
class Generation:
    """One request inside the engine: its prompt, how it chooses tokens, where they go."""

    prompt: list[int]
    max_tokens: int
    stops: list[str]
    do_sample: bool
    processors: Any  # a transformers LogitsProcessorList (empty: raw logits)
    generator: torch.Generator | None
    streamer: Any  # a transformers streamer: put(token ids), end()
    cancelled: threading.Event  # set by the reader that went away
    on_end: Callable[[int, bool, BaseException | None], None]  # (tokens, ended by eos, error)
    eos: frozenset[int] = frozenset()  # tokens that end the reply
    tokens: list[int] = field(default_factory=list)
    ended: threading.Event = field(default_factory=threading.Event)
    hit_stop: bool = False

    def wait(self) -> None:
        self.ended.wait()


class BatchEngine:
    """Runs the `Generation`s submitted to it, `max_batch` rows at a time, in a thread of its own.

    `lock` is the model's: the engine holds it during each pass, so that other users of the
    model (scoring) run between two steps.
    """

    def __init__(self, model: Any, tokenizer: Any, max_batch: int, lock: threading.Lock) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.lock = lock
        self.pad_id = int(tokenizer.pad_token_id or tokenizer.eos_token_id or 0)
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._logits_to_keep = "logits_to_keep" in params
        self.prefixes = PrefixStore()
        self._guard = threading.Lock()  # the waiting list and the thread
        self._waiting: list[Generation] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reset()

    @staticmethod
    def supports(model: Any) -> bool:
        """Whether the model's cache is plain full attention in every layer (a sliding window or a
        recurrent state cannot be padded and merged this way)."""
        if getattr(model.config, "is_encoder_decoder", False):
            return False
        if model.config._attn_implementation not in ("sdpa", "eager"):
            return False
        try:
            cache = DynamicCache(config=model.config)
        except Exception:  # a model this engine does not know: the serial path
            return False
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)

    # -- the callers' side -----------------------------------------------------------------------

    def submit(self, job: Generation) -> None:
        with self._guard:
            if self._closed:
                raise RuntimeError("the model was unloaded")
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="convtune-generate", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """End every reply (as if its reader had gone) and wait for the thread to stop."""
        with self._guard:
            self._closed = True
            jobs = [*self._waiting, *self._rows]
            thread = self._thread
        for job in jobs:
            job.cancelled.set()
        if thread is not None:
            thread.join()

    # -- the engine's thread ---------------------------------------------------------------------

    def _reset(self) -> None:
        self._rows: list[Generation] = []
        self._cache: Any = None
        self._mask = torch.zeros(0, 0, dtype=torch.long)  # [rows, columns]: 1 = the row's token
        self._next = torch.zeros(0, dtype=torch.long)  # each row's last token, not yet cached

    def _loop(self) -> None:
        while True:
            with self._guard:
                for job in [j for j in self._waiting if j.cancelled.is_set()]:
                    self._waiting.remove(job)
                    self._end(job, None)
                if not self._waiting and not self._rows:
                    self._thread = None
                    return
                new = self._take()
            try:
                with self.lock, torch.inference_mode():
                    if new:
                        self._prefill(new)
                    if self._rows:
                        self._step()
            except Exception as exc:  # every reader hears of it, none waits forever
                failed = [job for job in (*new, *self._rows) if not job.ended.is_set()]
                self._reset()
                for job in dict.fromkeys(failed):
                    self._end(job, exc)

    def _take(self) -> list[Generation]:
        """The waiting jobs that join now: first come first, within the free rows and the prefill
        budget (one job always, however long its prompt).

        While the batch generates and more jobs wait than rows are free, they join a quarter of
        the batch at a time: a prefill pass of a few short prompts costs about one decode step
        (the weights are read once either way), and it holds up every row of the batch.
        """
        taken: list[Generation] = []
        longest = 0
        free = self.max_batch - len(self._rows)
        if self._rows and free < min(len(self._waiting), max(1, self.max_batch // 4)):
            return taken
        for job in list(self._waiting):
            if len(taken) >= free:
                break
            longest_with = max(longest, len(job.prompt))
            if taken and longest_with * (len(taken) + 1) > PREFILL_TOKENS:
                break
            taken.append(job)
            longest = longest_with
            self._waiting.remove(job)
        return taken

    def _prefill(self, jobs: list[Generation]) -> None:
        """Compute the jobs' prompts (on top of their cached prefixes), choose their first tokens,
        and merge them into the batch."""
        matches = [self.prefixes.match(job.prompt) for job in jobs]
        cached = max(n for n, _ in matches)  # columns of cached prefixes, right-aligned
        rest = max(len(job.prompt) - n for job, (n, _) in zip(jobs, matches, strict=True))
        ids = torch.full((len(jobs), rest), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(jobs), cached + rest, dtype=torch.long)
        positions = torch.zeros(len(jobs), rest, dtype=torch.long)
        for i, (job, (n, _)) in enumerate(zip(jobs, matches, strict=True)):
            todo = job.prompt[n:]
            ids[i, rest - len(todo) :] = torch.tensor(todo)
            mask[i, cached - n : cached] = 1
            mask[i, cached + rest - len(todo) :] = 1
            positions[i, rest - len(todo) :] = torch.arange(n, len(job.prompt))
        cache = self._new_cache()
        if cached:
            like = next(m for n, m in matches if n)  # for the shape of rows without a prefix
            for layer in range(len(cache.layers)):
                keys, values = [], []
                for n, m in matches:
                    k, v = m[layer] if n else like[layer]
                    keys.append(self._left_pad(k[:, :, :n], cached))
                    values.append(self._left_pad(v[:, :, :n], cached))
                cache.update(torch.cat(keys), torch.cat(values), layer)
        logits = self._forward(ids, mask, positions, cache)
        for i, job in enumerate(jobs):  # each prompt's keys and values, for the next prompts
            own = mask[i].nonzero().squeeze(1)
            self.prefixes.add(
                job.prompt,
                [
                    (layer.keys[i : i + 1, :, own].clone(), layer.values[i : i + 1, :, own].clone())
                    for layer in cache.layers
                ],
            )
        tokens = self._choose(jobs, logits)
        self._merge(jobs, cache, mask, tokens)
        self._settle(tokens)

    def _new_cache(self) -> Any:
        cache = DynamicCache(config=self.model.config)
        cache.layers = [RoomyLayer() for _ in cache.layers]
        return cache

    def _step(self) -> None:
        """One token for every row."""
        rows = len(self._rows)
        mask = torch.cat([self._mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
        positions = (self._mask.sum(dim=1)).unsqueeze(1)
        logits = self._forward(self._next.unsqueeze(1), mask, positions, self._cache)
        self._mask = mask
        tokens = self._choose(self._rows, logits)
        self._next = torch.tensor(tokens, dtype=torch.long)
        self._settle(tokens)

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """The float32 logits of each row's last column, [rows, vocabulary]."""
        kwargs: dict[str, Any] = {self._cache_arg: cache}
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **kwargs
        )
        return out.logits[:, -1].to(copy=True, dtype=torch.float32)

    def _choose(self, jobs: list[Generation], logits: torch.Tensor) -> list[int]:
        """Each row's next token, chosen as `generate` chooses it for that request alone: its
        logits processors, then the greedy token or a draw from its own generator."""
        scores = logits
        for i, job in enumerate(jobs):
            if job.processors:
                ids = torch.tensor([job.prompt + job.tokens], dtype=torch.long)
                scores[i : i + 1] = job.processors(ids, scores[i : i + 1])
        sampled = [i for i, job in enumerate(jobs) if job.do_sample]
        greedy = [i for i, job in enumerate(jobs) if not job.do_sample]
        chosen = torch.zeros(len(jobs), dtype=torch.long)
        if greedy:
            chosen[greedy] = scores[greedy].argmax(dim=-1)
        if sampled:
            probs = torch.nn.functional.softmax(scores[sampled], dim=-1)
            draws = torch.empty(probs.shape, dtype=torch.float64)
            for row, i in enumerate(sampled):
                draws[row].uniform_(0, 1, generator=jobs[i].generator)
            chosen[sampled] = multinomial_from(probs, draws)
        return chosen.tolist()

    def _merge(
        self, jobs: list[Generation], cache: Any, mask: torch.Tensor, tokens: list[int]
    ) -> None:
        """Add prefilled rows to the batch, left-padding whichever side is shorter."""
        if not self._rows:
            self._rows, self._cache, self._mask = list(jobs), cache, mask
            self._next = torch.tensor(tokens, dtype=torch.long)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.add_rows(new.keys, new.values)
        self._mask = torch.cat(
            [self._left_pad(self._mask, width, dim=1), self._left_pad(mask, width, dim=1)]
        )
        self._rows.extend(jobs)
        self._next = torch.cat([self._next, torch.tensor(tokens, dtype=torch.long)])

    def _settle(self, tokens: list[int]) -> None:
        """Give each row its new token (the first of the prefilled ones too: they are the last
        rows), and let the rows that are done leave the batch.

        They are told last, once the batch no longer uses torch for them: a process may exit as
        soon as its last reply has ended, and must not while torch runs in another thread.
        """
        first = len(self._rows) - len(tokens)
        keep: list[int] = []
        done: list[Generation] = []
        for i, job in enumerate(self._rows):
            if i >= first:
                self._give(job, tokens[i - first])
            if self._done(job):
                done.append(job)
            else:
                keep.append(i)
        if done and not keep:
            self._reset()
        elif done:  # the last rows move into the places of those that left
            count = len(keep)
            kept = set(keep)
            places = [i for i in range(count) if i not in kept]
            movers = [i for i in keep if i >= count]
            order = list(range(count))
            for place, row in zip(places, movers, strict=True):
                order[place] = row
            index = torch.tensor(order, dtype=torch.long)
            self._rows = [self._rows[i] for i in order]
            self._mask = self._mask[index]
            self._next = self._next[index]
            used = self._mask.any(dim=0).nonzero()
            start = int(used[0, 0]) if used.numel() else self._mask.shape[1]
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.move_rows(places, movers, count)
                layer.drop_columns(start)
        for job in done:
            self._end(job, None)

    def _give(self, job: Generation, token: int) -> None:
        job.tokens.append(token)
        job.streamer.put(torch.tensor([token]))
        if job.stops:
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
            job.hit_stop = any(stop in text for stop in job.stops)

    def _done(self, job: Generation) -> bool:
        return (
            job.cancelled.is_set()
            or job.hit_stop
            or len(job.tokens) >= job.max_tokens
            or (bool(job.tokens) and job.tokens[-1] in job.eos)
        )

    def _end(self, job: Generation, error: BaseException | None) -> None:
        eos = bool(job.tokens) and job.tokens[-1] in job.eos
        job.on_end(len(job.tokens), eos, error)
        job.streamer.end()
        job.ended.set()

    @staticmethod
    def _left_pad(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
        missing = width - t.shape[dim]
        if missing <= 0:
            return t
        shape = list(t.shape)
        shape[dim] = missing
        return torch.cat([t.new_zeros(shape), t], dim=dim)
