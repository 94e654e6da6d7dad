"""Examples as tensors, and which of them each step, each process and each forward pass takes.

A step's examples are a permutation of the set per epoch fixed by (seed, epoch), so a resumed
run takes the same batches as one that never stopped. With packed attention they go into one
row end to end (`Examples.packed`: a `PackedRow` for the attention kernel, position ids
restarting at 0, no padding); other models get a right-padded batch with its attention mask
(`Examples.padded`). Under torchrun each rank takes a deterministic share of every batch,
balanced by tokens (`rank_share`); a share longer than the token budget of one forward pass
(a few thousand tokens on a CPU, tens of thousands on a GPU:
`runtime.default_micro_batch_tokens`) is split into micro-batches whose gradients accumulate
(`micro_batches`).

Shared prefixes: in the `turn` layout a conversation gives one example per reply, and the
example of an early reply is often the start of the next one's (the same tokens, the reply there
with weight 0). Training on the longer example with both replies weighted computes exactly the
same losses (attention is causal: each reply sees the same context), so `share_prefixes` merges
such examples into one row. On the bundled example (context 5) it trains 7,522 tokens an epoch
instead of 13,089, with every reply's loss unchanged. A step still takes about `batch_size`
examples: its rows are scaled by how many examples each holds (`rows_per_step`).
"""

from __future__ import annotations

import torch

from ..loss_masks import IGNORE, TokenizedExample
from .attention import SEGMENTS, PackedRow


def share_prefixes(examples: list[TokenizedExample]) -> tuple[list[TokenizedExample], list[int]]:
    """Rows where an example whose tokens start the next example is merged into it, and how many
    examples each row holds.

    Only consecutive examples are compared (convtune writes a conversation's examples one after
    the other), and only where no position is trained in both (a repeated example keeps its
    weight: it stays two rows). The merged row trains the union of their trained positions.
    """
    rows: list[TokenizedExample] = []
    counts: list[int] = []
    for e in examples:
        if rows and _starts(rows[-1], e):
            last = rows[-1]
            labels = list(e.labels)
            labels[: len(last.labels)] = [
                a if a != IGNORE else b for a, b in zip(last.labels, labels, strict=False)
            ]
            rows[-1] = TokenizedExample(e.input_ids, labels)
            counts[-1] += 1
        else:
            rows.append(e)
            counts.append(1)
    return rows, counts


def _starts(first: TokenizedExample, then: TokenizedExample) -> bool:
    """Whether `first` is the beginning of `then`, with no position trained in both."""
    n = len(first.input_ids)
    if n > len(then.input_ids) or then.input_ids[:n] != first.input_ids:
        return False
    return all(
        a == IGNORE or b == IGNORE for a, b in zip(first.labels, then.labels[:n], strict=True)
    )


class Examples:
    """Examples as tensors, with what batching needs: lengths and loss tokens.

    A position has a loss when the next token of its example has a label; its target is that
    label. The last position of each example has none (it has no next token). With `share`,
    examples that start the next one are merged into it (`share_prefixes`): `examples` stays
    the number of examples, `len()` is the number of rows.
    """

    def __init__(self, examples: list[TokenizedExample], *, share: bool = True) -> None:
        self.examples = len(examples)
        if share:
            examples, self.counts = share_prefixes(examples)
        else:
            self.counts = [1] * len(examples)
        self.ids = [torch.tensor(e.input_ids, dtype=torch.long) for e in examples]
        self.targets = []
        for e in examples:
            shifted = torch.tensor([*e.labels[1:], IGNORE], dtype=torch.long)
            self.targets.append(shifted)
        self.lengths = [len(e.input_ids) for e in examples]
        self.loss_tokens = [int((t != IGNORE).sum()) for t in self.targets]

    def __len__(self) -> int:
        return len(self.ids)

    def all(self) -> list[int]:
        return list(range(len(self.ids)))

    def rows_per_step(self, batch_size: int) -> int:
        """The rows of a step of `batch_size` examples: fewer where rows hold several."""
        return max(1, round(batch_size * len(self.ids) / max(1, self.examples)))

    @property
    def tokens(self) -> int:
        """Tokens of one pass over the rows."""
        return sum(self.lengths)

    def batch(self, step: int, steps_per_epoch: int, batch_size: int, seed: int) -> list[int]:
        """The examples of a step: a permutation of the set per epoch, fixed by (seed, epoch)."""
        epoch, k = divmod(step, steps_per_epoch)
        generator = torch.Generator().manual_seed(seed * 7_919 + epoch)
        order = torch.randperm(len(self.ids), generator=generator)
        return order[k * batch_size : (k + 1) * batch_size].tolist()

    def packed(
        self,
        indices: list[int],
        device: torch.device,
        kernel: str = "segments",
        windows: tuple[int | None, ...] = (None,),
    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One row with the examples end to end, positions restarting at each one; the
        positions that have a loss, and their targets. The row's `PackedRow` is made for the
        attention `kernel` (and the model's sliding `windows`)."""
        ids = torch.cat([self.ids[i] for i in indices])
        targets = torch.cat([self.targets[i] for i in indices])
        position_ids = torch.cat([torch.arange(self.lengths[i]) for i in indices])
        keep = (targets != IGNORE).nonzero().squeeze(1)
        lengths = [self.lengths[i] for i in indices]
        inputs = {
            "input_ids": ids[None].to(device),
            "position_ids": position_ids[None].to(device),
            SEGMENTS: PackedRow(lengths, kernel, device, windows),
        }
        return inputs, keep.to(device), targets[keep].to(device)

    def padded(self, indices: list[int], device: torch.device):
        """A right-padded batch with its attention mask: for models without packed attention."""
        width = max(self.lengths[i] for i in indices)
        ids = torch.zeros(len(indices), width, dtype=torch.long)
        mask = torch.zeros(len(indices), width, dtype=torch.long)
        targets = torch.full((len(indices), width), IGNORE, dtype=torch.long)
        for row, i in enumerate(indices):
            n = self.lengths[i]
            ids[row, :n], mask[row, :n], targets[row, :n] = self.ids[i], 1, self.targets[i]
        keep = targets != IGNORE
        inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        return inputs, keep.to(device), targets[keep].to(device)


def rank_share(batch: list[int], lengths: list[int], rank: int, world: int) -> list[int]:
    """This rank's examples of a batch: longest first, each to the least loaded rank."""
    if world == 1:
        return list(batch)
    loads = [0] * world
    shares: list[list[int]] = [[] for _ in range(world)]
    for i in sorted(batch, key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (loads[r], r))
        shares[r].append(i)
        loads[r] += lengths[i]
    return shares[rank]


def micro_batches(indices: list[int], lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive groups of at most `budget` tokens (an example longer than that goes alone)."""
    groups: list[list[int]] = []
    size = 0
    for i in indices:
        if groups and size + lengths[i] <= budget:
            groups[-1].append(i)
            size += lengths[i]
        else:
            groups.append([i])
            size = lengths[i]
    return groups
