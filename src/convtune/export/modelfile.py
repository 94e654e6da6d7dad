"""Ollama's `Modelfile` and the README of an export folder.

Ollama does not run the GGUF's Jinja chat template: it runs a Go template (`TEMPLATE`), and a
model imported without one is prompted with the bare text (the reply is nonsense). The template
written here is built for the two prompt shapes convtune's models speak, ChatML (SmolLM2, Qwen2)
and the legacy `Human:`/`AI:` protocol, and kept only when it renders the same text as the
model's own template on probe conversations (rendered by `gotemplate`, with Ollama's inputs:
`.Messages` holds every message, system ones included, and `.System` their system text). When
no equivalent can be written, the Modelfile says so and Ollama falls back on its own detection.

Ollama's Modelfile parser takes quoted values verbatim (no escapes): a stop string with a newline
is written with a real newline inside triple quotes.
"""

from __future__ import annotations

from .chat_templates import Render
from .gotemplate import render as render_go

CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
CHATML_MESSAGES = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
)

PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are Nimbus."}, {"role": "user", "content": "Hi!\nWho?"}],
    [
        {"role": "user", "content": "Open the pod bay doors"},
        {"role": "assistant", "content": "No."},
        {"role": "user", "content": "Why? «Türen»"},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ],
]


def ollama_values(messages: list[dict[str, str]]) -> dict:
    """What Ollama passes a `.Messages` template (its `template.Execute` and `collate`):
    consecutive messages of one role merged, and `.System` the system messages joined."""
    merged: list[dict[str, str]] = []
    for m in messages:
        if merged and merged[-1]["Role"] == m["role"]:
            merged[-1]["Content"] += "\n\n" + m["content"]
        else:
            merged.append({"Role": m["role"], "Content": m["content"]})
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    return {"System": system, "Messages": merged}


def chatml_template(render: Render) -> str | None:
    """A Go template for a ChatML chat template, with its default system prompt (SmolLM2's
    template adds one when the conversation has none); None when it is not ChatML."""
    text = render([{"role": "user", "content": "Hello"}])
    tail = CHATML_TURN.format(role="user", content="Hello") + "<|im_start|>assistant\n"
    if not text.endswith(tail):
        return None
    head = text[: -len(tail)]
    if not head:
        return CHATML_MESSAGES + "<|im_start|>assistant\n"
    start, end = "<|im_start|>system\n", "<|im_end|>\n"
    if not (head.startswith(start) and head.endswith(end)):
        return None
    default = head[len(start) : -len(end)]
    return (
        "{{- if .System }}{{ else }}"
        + start
        + default
        + end
        + "{{ end }}"
        + CHATML_MESSAGES
        + "<|im_start|>assistant\n"
    )


def legacy_template(actors: tuple[str, str] | None) -> str:
    """The Go template of the `Human:`/`AI:` protocol (system messages are not part of it)."""
    first, second = actors or ("Human", "AI")
    return (
        "{{- range .Messages }}"
        '{{- if eq .Role "user" }}' + first + ": {{ .Content }}\n"
        '{{ else if eq .Role "assistant" }}' + second + ": {{ .Content }}\n"
        "{{ end }}{{- end }}" + second + ":"
    )


def ollama_template(render: Render, candidate: str | None) -> str | None:
    """`candidate` when it renders what `render` renders on every probe, else None."""
    if candidate is None or '"""' in candidate:
        return None
    for messages in PROBES:
        try:
            same = render_go(candidate, ollama_values(messages)) == render(messages)
        except ValueError:
            return None
        if not same:
            return None
    return candidate


def modelfile_text(model: str, template: str | None, stops: list[str]) -> str:
    """The Modelfile: the weights beside it, the prompt template, the stop strings."""
    lines = [f"# {model}, exported by convtune", "FROM ./model.gguf", ""]
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append(
            "# No TEMPLATE: convtune could not write one equivalent to the model's chat template;"
            " Ollama uses the template it recognises in model.gguf."
        )
    for stop in stops:
        quoted = f'"""{stop}"""' if "\n" in stop or '"' in stop else f'"{stop}"'
        lines.append(f"PARAMETER stop {quoted}")
    return "\n".join(lines) + "\n"


def ollama_name(model: str) -> str:
    """A name Ollama accepts for the model (letters, digits, '.', '_', '-')."""
    import re

    return re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-._") or "convtune-model"
