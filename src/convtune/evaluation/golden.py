"""`record`: a model's answers written as a chat fine-tuning file (a "golden" set).

The same prompts as the data file, each with the model's answer as its final assistant message.
The file passes `convtune check`, serves as the reference of a later `eval --reference`, and
trains an open model on what the old one said (distillation). Nothing is written unless every
prompt got a non-empty answer: the answers so far are in the cache, so a rerun asks only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..dataset.jsonl import AtomicWriter, dumps
from ..errors import ConvtuneError
from .answers import Answer
from .prompts import Prompt


@dataclass
class GoldenReport:
    path: Path
    examples: int
    cached: int  # answers read from the cache, not asked in this run


def write_golden(
    path: str | Path, prompts: list[Prompt], answers: list[Answer], *, force: bool = False
) -> GoldenReport:
    """Write the chat file atomically; refuse (nothing written) if an answer is missing."""
    missing = [
        (p.line, a.error or "an empty answer")
        for p, a in zip(prompts, answers, strict=True)
        if a.error or not a.text
    ]
    if missing:
        lines = ", ".join(str(line) for line, _ in missing[:5])
        raise ConvtuneError(
            f"{len(missing)} of {len(prompts)} prompts got no answer (data lines {lines}"
            f"{', ...' if len(missing) > 5 else ''}): first, {missing[0][1]}",
            hint="nothing was written; run it again to ask only those (the answers so far are"
            " cached)",
        )
    with AtomicWriter(path, force=force) as out:
        for prompt, answer in zip(prompts, answers, strict=True):
            messages = [*prompt.chat_messages(), {"role": "assistant", "content": answer.text}]
            out.write_line(dumps({"messages": messages}))
    return GoldenReport(Path(path), len(prompts), sum(1 for a in answers if a.cached))
