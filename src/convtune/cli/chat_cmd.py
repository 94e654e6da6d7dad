"""`convtune chat`: talk to a fine-tuned (or base) model."""

from __future__ import annotations

import sys

import click

from ..service.contract import ChatRequest
from . import render
from .backend import Backend, backend_option, service_for


@click.command(
    short_help="Chat with a fine-tuned or base model.",
    epilog="""
\b
Examples:
  convtune chat ft:SmolLM2-135M-Instruct:support:ftjob-abc123
  convtune chat ft:SmolLM2-135M-Instruct:support:ftjob-abc123 --message "Hello"
  convtune chat SmolLM2-135M-Instruct --message "Hello"      # the base model, to compare
  convtune chat ft:gpt-4.1-mini-2025-04-14:acme:support:AbC123 --backend openai
""",
)
@click.argument("model")
@click.option("-m", "--message", default=None, help="One message: print the reply and exit.")
@click.option("--system", default=None, help="A system message.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=200, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.7, show_default=True)
@click.option("--seed", type=int, default=None, help="Seed for sampling.")
@backend_option(engine=True)
def chat(
    model: str,
    message: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float,
    seed: int | None,
    backend: Backend,
) -> None:
    """Chat with a model; with no --message, an interactive session (Ctrl-D ends it)."""
    service = service_for(backend)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []

    def ask(text: str) -> str:
        history.append({"role": "user", "content": text})
        request = ChatRequest(model, list(history), max_tokens, temperature, seed=seed)
        pieces = []
        for piece in service.chat.create(request):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        reply = "".join(pieces).strip()
        history.append({"role": "assistant", "content": reply})
        return reply

    if message is not None:
        ask(message)
        return
    render.err.print(f"Chatting with {model}. Ctrl-D or 'exit' ends.")
    while True:
        try:
            text = input("you> ")
        except EOFError:
            break
        if text.strip() in ("exit", "quit"):
            break
        if text.strip():
            ask(text)
