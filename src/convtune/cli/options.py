"""Options shared by several commands, defined once so their meaning cannot drift apart."""

from __future__ import annotations

import click

MODEL_HELP = (
    "Model whose tokenizer, limit and price apply (default gpt-4o-mini-2024-07-18;"
    " davinci-002 for prompt-completion), or a local model folder, .gguf or SmolLM2-135M-Instruct."
)


def token_options(f):
    """--model, --max-tokens and --price-per-1m, as prepare and check both take them."""
    f = click.option(
        "--price-per-1m",
        type=click.FloatRange(min=0),
        default=None,
        help="Training price in USD per million tokens (default: the model's list price).",
    )(f)
    f = click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=None,
        help="Longest example in tokens (default: the model's limit).",
    )(f)
    return click.option("--model", default=None, help=MODEL_HELP)(f)
