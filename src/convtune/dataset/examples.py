"""Turning conversations into training examples, in the three formats convtune writes.

- chat: OpenAI chat fine-tuning, `{"messages": [system?, ...context, reply]}`.
- prompt-completion: the seed's legacy GPT-3 format, exactly as DESIGN.md gives it.
- sharegpt: `{"conversations": [{"from": "human"|"gpt", "value": ...}]}` (Axolotl, LLaMA-Factory).
- preference: OpenAI's preference (DPO) pairs, `{"input": {"messages": [system?, ...context]},
  "preferred_output": [reply], "non_preferred_output": [rejected reply]}` (see `preference.py`),
  one per reply, from a sheet with a column of rejected replies. The context holds the earlier
  replies as they were (the preferred ones), and always the user message the pair answers.

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
from .preference import pair_record

FORMATS = ("chat", "prompt-completion", "sharegpt", "preference")
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
    allow_sft_rows: bool = False  # preference: a reply with no rejected one is a supervised row

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
            raise OptionError("--system applies to the chat, sharegpt and preference formats only")
        if self.format == "preference" and self.layout != "turn":
            raise OptionError("the preference format has one pair per reply: use --layout turn")
        if self.allow_sft_rows and self.format != "preference":
            raise OptionError("--allow-sft-rows applies to --format preference only")


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
        if context is not None and self.options.format == "preference":
            context = max(context, 1)  # a pair answers a message: it is always in the input
        for i, message in enumerate(messages):
            if message.role == "assistant":
                start = 0 if context is None else max(0, i - context)
                yield self.build(conversation, start, i)

    def last_start(self, end: int) -> int:
        """The shortest window's start for the reply at `end` (cutting context to fit):
        the reply alone, or for a preference pair the message before it too."""
        return max(0, end - 1) if self.options.format == "preference" else end

    def build(self, conversation: Conversation, start: int, end: int) -> Example:
        """The example for messages[start:end] as context and messages[end] as the target."""
        window = conversation.messages[start : end + 1]
        fmt = self.options.format
        if fmt == "chat":
            record = {"messages": self._chat(window)}
        elif fmt == "prompt-completion":
            record = self._prompt_completion(window)
        elif fmt == "preference":
            *context, reply = window
            record = pair_record(self._plain(context), reply.text, reply.rejected)
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

    def _plain(self, messages: list[Message]) -> list[dict]:
        """Messages as a preference pair's input has them: no weights (no reply is trained
        there), the system message first."""
        out = [{"role": "system", "content": self.options.system}] if self.options.system else []
        out.extend({"role": m.role, "content": m.text} for m in messages)
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


def reply_problem(
    messages: list[Message], end: int, *, allow_sft_rows: bool
) -> tuple[str, str] | None:
    """Why the reply at `messages[end]` cannot be a preference pair, as (code, message), or None.

    A pair answers a user message (OpenAI refuses an input that ends otherwise), needs a rejected
    reply unless supervised rows are allowed, and one that differs from the preferred reply."""
    reply = messages[end]
    if end == 0 or messages[end - 1].role != "user":
        return (
            "pair_without_message",
            "a reply with no message before it in its row cannot be a preference pair: a pair"
            " answers the user's message (write the message it answers in the first column)",
        )
    if reply.rejected is None:
        if allow_sft_rows:
            return None
        return (
            "no_rejected_reply",
            "no rejected reply beside this reply: a preference pair needs one (give one, or"
            " --allow-sft-rows to train such rows as supervised)",
        )
    if reply.rejected == reply.text:
        return (
            "same_rejected_reply",
            "the rejected reply is the same as the reply: nothing to prefer (write a worse one)",
        )
    return None
