"""Turning conversations into training examples, in the three formats convtune writes.

- chat: OpenAI chat fine-tuning, `{"messages": [system?, ...context, reply]}`.
- prompt-completion: the seed's legacy GPT-3 format, exactly as DESIGN.md gives it.
- sharegpt: `{"conversations": [{"from": "human"|"gpt", "value": ...}]}` (Axolotl, LLaMA-Factory).

Layouts: `turn` gives one example per reply, with the last `context` messages before it; earlier
assistant messages in that window carry `"weight": 0` in chat data, so every reply is trained
exactly once. `conversation` gives one example per conversation with every reply trained: the same
signal for far fewer tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import OptionError
from .conversation import Conversation, Message

FORMATS = ("chat", "prompt-completion", "sharegpt")
LAYOUTS = ("turn", "conversation")
# ShareGPT's speakers and chat's roles, both ways: the one map every reader and writer uses
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}  # role -> "from"
SHAREGPT_ROLE = {speaker: role for role, speaker in SHAREGPT_FROM.items()}  # "from" -> role


@dataclass(frozen=True)
class ExampleOptions:
    """How examples are built. `context=None` keeps the whole history before each reply."""

    format: str = "chat"
    context: int | None = 5
    layout: str = "turn"
    system: str | None = None
    stop: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise OptionError(f"unknown format {self.format!r}; choose from {', '.join(FORMATS)}")
        if self.layout not in LAYOUTS:
            raise OptionError(f"unknown layout {self.layout!r}; choose from {', '.join(LAYOUTS)}")
        if self.context is not None and self.context < 0:
            raise OptionError("the context must be 0 or more messages, or 'all'")
        if self.format == "prompt-completion" and self.layout != "turn":
            raise OptionError(
                "the prompt-completion format has one example per reply: use --layout turn"
            )
        if self.format == "prompt-completion" and self.system:
            raise OptionError("--system applies to the chat and sharegpt formats only")


@dataclass(slots=True)
class Example:
    """One training example and where it came from.

    `start` is the index of the first message of the window in `conversation.messages`, and
    `end` the index of the reply (turn layout) or of the last message (conversation layout).
    Keeping them lets a too-long example be rebuilt with a shorter window.
    """

    record: dict
    conversation: Conversation
    start: int
    end: int

    @property
    def line(self) -> int:
        """The input line of the reply this example teaches (its first reply, per conversation)."""
        return self.conversation.messages[self.end].line


class ExampleBuilder:
    """Builds the examples of one format and layout for a pair of actors."""

    def __init__(self, actors: tuple[str, str], options: ExampleOptions) -> None:
        self.actors = actors
        self.options = options
        self._labels = {"user": actors[0], "assistant": actors[1]}
        self._stop = f"\n{actors[0]}: " if options.stop else ""

    def examples(self, conversation: Conversation) -> Iterator[Example]:
        messages = conversation.messages
        if self.options.layout == "conversation":
            last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
            if last >= 0:
                yield self.build(conversation, 0, last)
            return
        context = self.options.context
        for i, message in enumerate(messages):
            if message.role == "assistant":
                start = 0 if context is None else max(0, i - context)
                yield self.build(conversation, start, i)

    def build(self, conversation: Conversation, start: int, end: int) -> Example:
        """The example for messages[start:end] as context and messages[end] as the target."""
        window = conversation.messages[start : end + 1]
        fmt = self.options.format
        if fmt == "chat":
            record = {"messages": self._chat(window)}
        elif fmt == "prompt-completion":
            record = self._prompt_completion(window)
        else:
            record = {"conversations": self._sharegpt(window)}
        return Example(record, conversation, start, end)

    def _chat(self, window: list[Message]) -> list[dict]:
        out: list[dict] = []
        if self.options.system:
            out.append({"role": "system", "content": self.options.system})
        per_turn = self.options.layout == "turn"
        last = len(window) - 1
        for i, m in enumerate(window):
            if per_turn and i < last and m.role == "assistant":
                out.append({"role": "assistant", "content": m.text, "weight": 0})
            else:
                out.append({"role": m.role, "content": m.text})
        return out

    def _prompt_completion(self, window: list[Message]) -> dict:
        *context, reply = window
        if self.options.context == 0:
            prompt = ""  # 'voice' data: the completion alone carries the style
        else:
            labels = self._labels
            lines = [f"{labels[m.role]}: {m.text}" for m in context]
            lines.append(f"{self.actors[1]}:")
            prompt = "\n".join(lines)
        return {"prompt": prompt, "completion": f" {reply.text}{self._stop}"}

    def _sharegpt(self, window: list[Message]) -> list[dict]:
        # ShareGPT trainers expect alternating turns: consecutive messages of one actor are
        # joined with a newline into one turn.
        out: list[dict] = []
        if self.options.system:
            out.append({"from": "system", "value": self.options.system})
        for m in window:
            who = SHAREGPT_FROM[m.role]
            if out and out[-1]["from"] == who:
                out[-1]["value"] += "\n" + m.text
            else:
                out.append({"from": who, "value": m.text})
        return out
