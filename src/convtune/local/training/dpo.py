"""Direct preference optimisation (DPO), as OpenAI's `method: {"type": "dpo"}` trains.

For a prompt x with a preferred reply y_w and a rejected one y_l, the loss is

    -log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x))])

(Rafailov et al., 2023): the fine-tune π learns to give the preferred reply more probability,
relative to the reference model π_ref, than the rejected one, and β (OpenAI's `beta`) says how
far it may move from the reference to do so.

The reference is the model before training. Its log-probabilities are computed once, before the
first step, with the same forward passes as training (TRL's `precompute_ref_log_probs`): with
LoRA that is the base model (the fresh adapters add nothing), for a full fine-tune the base
weights as loaded. So memory holds one model, not two, and a step costs one forward and backward
pass over both replies. A resumed run recomputes them before loading its checkpoint.

A pair without a rejected reply (`prepare --allow-sft-rows`) is learned as supervised
fine-tuning learns it: the preferred reply's mean token loss.

What a step reports (OpenAI's DPO metrics and TRL's): the loss, the token accuracy of the
preferred replies, the reward accuracy (the share of pairs where the fine-tune prefers the
preferred reply more than the reference did) and the mean reward margin,
β [(log π(y_w) - log π_ref(y_w)) - (log π(y_l) - log π_ref(y_l))].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ...dataset.preference import PreferencePair
from ...errors import InputError
from ..loss_masks import DataStats, TokenizedExample, tokenize_records
from .batching import Examples, micro_batches, rank_share
from .loop import Measured, TrainingLoop, _Context


@dataclass
class PreferenceExample:
    """A pair as token ids: the prompt with each reply, the loss on the reply only."""

    preferred: TokenizedExample
    rejected: TokenizedExample | None  # None: a supervised row
    line: int = 0


def tokenize_pairs(
    pairs: Sequence[PreferencePair], tokenizer: Any, *, max_length: int
) -> tuple[list[PreferenceExample], DataStats]:
    """Each pair's prompt with its preferred and its rejected reply, through the chat template
    as chat examples are (`loss_masks`): the loss falls on the reply and its end-of-turn token,
    not on the prompt's earlier assistant messages. The statistics count both replies."""

    def record(pair: PreferencePair, reply: str) -> tuple[int, dict]:
        context = [
            {**m, "weight": 0} if m["role"] == "assistant" else dict(m) for m in pair.messages
        ]
        return pair.line, {"messages": [*context, {"role": "assistant", "content": reply}]}

    preferred, stats = tokenize_records(
        [record(p, p.preferred) for p in pairs], tokenizer, max_length=max_length, fmt="chat"
    )
    contrasted = [p for p in pairs if p.rejected is not None]
    rejected, rejected_stats = tokenize_records(
        [record(p, p.rejected or "") for p in contrasted],
        tokenizer,
        max_length=max_length,
        fmt="chat",
    )
    skipped = stats.skipped_lines + rejected_stats.skipped_lines
    if skipped:  # a reply that left nothing to learn would unpair the two lists
        raise InputError(
            "a reply has no token left to learn after the prompt",
            line=skipped[0],
            hint=f"raise --max-length above {max_length}",
        )
    others = iter(rejected)
    examples = [
        PreferenceExample(kept, next(others) if p.rejected is not None else None, p.line)
        for p, kept in zip(pairs, preferred, strict=True)
    ]
    both = DataStats(
        examples=len(examples),
        tokens=stats.tokens + rejected_stats.tokens,
        trained_tokens=stats.trained_tokens + rejected_stats.trained_tokens,
        truncated=stats.truncated + rejected_stats.truncated,
        format="preference",
    )
    return examples, both


class PairSet:
    """Pairs for batching: each pair's sequences are rows of one `Examples` (preferred, then
    rejected), and the reference model's log-probability of each row once it is measured."""

    def __init__(self, pairs: list[PreferenceExample]) -> None:
        rows: list[TokenizedExample] = []
        self.rows: list[tuple[int, int | None]] = []  # (preferred row, rejected row or None)
        for pair in pairs:
            first = len(rows)
            rows.append(pair.preferred)
            if pair.rejected is not None:
                rows.append(pair.rejected)
            self.rows.append((first, first + 1 if pair.rejected is not None else None))
        self.sequences = Examples(rows, share=False)
        self.examples = len(pairs)
        self.lengths = [
            sum(self.sequences.lengths[r] for r in p if r is not None) for p in self.rows
        ]
        self.reference: torch.Tensor | None = None  # log π_ref of every row

    def __len__(self) -> int:
        return len(self.rows)

    def all(self) -> list[int]:
        return list(range(len(self.rows)))

    def rows_per_step(self, batch_size: int) -> int:
        return max(1, batch_size)

    @property
    def tokens(self) -> int:
        return self.sequences.tokens

    def batch(self, step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[int]:
        """The pairs of a step: a permutation of the set per epoch, fixed by (seed, epoch)."""
        epoch, k = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        order = torch.randperm(len(self.rows), generator=generator)
        return order[k * batch_size : (k + 1) * batch_size].tolist()

    def flat(self, pairs: list[int]) -> list[int]:
        """The rows of some pairs, in order."""
        return [r for p in pairs for r in self.rows[p] if r is not None]


def sequence_log_probs(
    model: Any, sequences: Examples, rows: list[int], ctx: _Context
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its reply's tokens, how many tokens that is, and
    how many of them the model ranks first."""
    if ctx.packed:
        inputs, keep, targets = sequences.packed(rows, ctx.device, ctx.kernel, ctx.windows)
        logits = model(**inputs, logits_to_keep=keep, use_cache=False).logits[0]
    else:
        inputs, keep, targets = sequences.padded(rows, ctx.device)
        logits = model(**inputs, use_cache=False).logits[keep]
    floats = logits.float()
    token_log_probs = floats.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)
    counts = torch.tensor([sequences.loss_tokens[r] for r in rows], device=floats.device)
    owner = torch.repeat_interleave(torch.arange(len(rows), device=floats.device), counts)
    summed = torch.zeros(len(rows), device=floats.device).index_add(0, owner, token_log_probs)
    hits = (floats.detach().argmax(-1) == targets).float()
    correct = torch.zeros(len(rows), device=floats.device).index_add(0, owner, hits)
    return summed, counts, correct


def dpo_losses(
    policy: torch.Tensor,
    reference: torch.Tensor,
    counts: torch.Tensor,
    pairs: list[tuple],
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: its loss, its reward margin and whether the margin is positive (NaN for a
    supervised row, which has no margin). `pairs` index rows of `policy` (preferred, rejected
    or None)."""
    losses, margins = [], []
    for preferred, rejected in pairs:
        if rejected is None:  # supervised: the reply's mean token loss
            losses.append(-policy[preferred] / counts[preferred].clamp(min=1))
            margins.append(torch.tensor(float("nan"), device=policy.device))
            continue
        ratio = (policy[preferred] - reference[preferred]) - (
            policy[rejected] - reference[rejected]
        )
        losses.append(-F.logsigmoid(beta * ratio))
        margins.append(beta * ratio.detach())
    margin = torch.stack(margins)
    return torch.stack(losses), margin, (margin > 0).float()


class PreferenceLoop(TrainingLoop):
    """The training loop with DPO's data, step and measures; everything else (the schedule,
    checkpoints, exact resume, validation's timing, data parallel) is `TrainingLoop`'s."""

    def __init__(self, model, train, valid, config, ctx: _Context) -> None:
        super().__init__(model, train, valid, config, ctx)
        for pairs in filter(None, (self.train_set, self.valid_set)):
            pairs.reference = self._reference(pairs)

    def _dataset(self, pairs: list[PreferenceExample]) -> PairSet:  # type: ignore[override]
        return PairSet(pairs)

    def _reference(self, pairs: PairSet) -> torch.Tensor:
        """log π_ref of every row, by the model as it is before its first step."""
        was_training = self.model.training
        self.model.eval()
        values = torch.zeros(len(pairs.sequences), dtype=torch.float64)
        rows = pairs.sequences.all()
        with torch.no_grad():
            for micro in micro_batches(rows, pairs.sequences.lengths, self.ctx.micro_batch_tokens):
                with self.ctx.autocast():
                    summed, _, _ = sequence_log_probs(self.model, pairs.sequences, micro, self.ctx)
                values[micro] = summed.double().cpu()
        self.model.train(was_training)
        return values

    def _pass(self, pairs: PairSet, chosen: list[int], *, backward: bool, scale: float = 1.0):
        """Forward (and backward) over some pairs; the sums a step reports."""
        sums = torch.zeros(8, dtype=torch.float64)
        micros = micro_batches(chosen, pairs.lengths, self.ctx.micro_batch_tokens)
        for micro, counted in self.dist.passes(micros, [0]):
            rows = pairs.flat(micro)
            local = {row: k for k, row in enumerate(rows)}
            indexed = [
                (local[w], local[r] if r is not None else None)
                for w, r in (pairs.rows[p] for p in micro)
            ]
            with self.ctx.autocast():
                policy, counts, correct = sequence_log_probs(
                    self.model, pairs.sequences, rows, self.ctx
                )
            reference = pairs.reference[rows].to(policy.device, torch.float32)
            losses, margins, wins = dpo_losses(policy, reference, counts, indexed, self.config.beta)
            if backward:
                weight = self.dist.loss_scale / scale if counted else 0.0
                (losses.sum() * weight).backward()
            if not counted:
                continue
            preferred = [w for w, _ in indexed]
            contrasted = ~torch.isnan(margins)
            sums += torch.tensor(
                [
                    float(losses.detach().sum()),
                    float(correct[preferred].sum()),
                    float(counts[preferred].sum()),
                    float(sum(pairs.sequences.lengths[r] for r in rows)),
                    float(wins[contrasted].sum()),
                    float(margins[contrasted].sum()),
                    float(contrasted.sum()),
                    float(len(micro)),
                ],
                dtype=torch.float64,
            )
        return sums.tolist()

    def _step(self, batch: list[int]) -> list[float]:
        mine = rank_share(batch, self.train_set.lengths, self.dist.rank, self.dist.world)
        sums = self._pass(self.train_set, mine, backward=True, scale=max(1, len(batch)))
        self.dist.sum_gradients_(self.params)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums

    def _measure(self, sums: list[float]) -> Measured:
        loss, correct, tokens, forwarded, wins, margins, contrasted, pairs = sums
        extra = {}
        if contrasted:
            extra = {"reward_accuracy": wins / contrasted, "reward_margin": margins / contrasted}
        return Measured(loss / max(pairs, 1), correct / max(tokens, 1), tokens, forwarded, extra)

    def _validate(self, indices: list[int]) -> Measured:
        mine = rank_share(indices, self.valid_set.lengths, self.dist.rank, self.dist.world)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            sums = self._pass(self.valid_set, mine, backward=False)
        self.model.train(was_training)
        return self._measure(self.dist.sum(sums))
