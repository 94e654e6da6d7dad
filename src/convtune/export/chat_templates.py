"""The chat template an exported model carries, and the text that ends its turns.

A chat model keeps its own template (the one it was trained with). A model trained on legacy
prompt/completion data learned a protocol instead: the history written as ``Human: ...`` and
``AI: ...`` lines, and the reply after ``AI:``, ended by ``\\nHuman:`` (`local.chat.LocalChat`
prompts it this way). Its GGUF gets a Jinja template that writes exactly that prompt, so that
llama.cpp's chat endpoints prompt it as convtune does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Render = Callable[[list[dict[str, str]]], str]  # messages -> prompt with the generation prompt


def legacy_chat_template(actors: tuple[str, str] | None) -> str:
    """A Jinja template writing the `Human:`/`AI:` prompt of a prompt-completion model."""
    first, second = actors or ("Human", "AI")
    user, assistant = _jinja_string(first + ": "), _jinja_string(second + ": ")
    return (
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{{ " + user + " + message['content'] + '\\n' }}"
        "{%- elif message['role'] == 'assistant' %}"
        "{{ " + assistant + " + message['content'] + '\\n' }}"
        "{%- endif %}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{ " + _jinja_string(second + ":") + " }}{%- endif %}"
    )


def legacy_stop(actors: tuple[str, str] | None) -> str:
    """The text a prompt-completion model writes when its reply is over."""
    return f"\n{(actors or ('Human', 'AI'))[0]}:"


def template_renderer(tokenizer: Any, template: str) -> Render:
    """Render `template` as transformers does (`apply_chat_template`), with the generation
    prompt: the reference every exported template is checked against."""

    def render(messages: list[dict[str, str]]) -> str:
        return tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )

    return render


def _jinja_string(text: str) -> str:
    """A single-quoted Jinja string literal of `text`."""
    escaped = text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"
