"""`convtune export MODEL -o DIR`: a model as a GGUF for Ollama and llama.cpp, or as files."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape

from ..export import FORMATS, QUANTIZATIONS, export_model
from . import render


@click.command(
    short_help="Export a model: GGUF for Ollama and llama.cpp, Hugging Face folder or adapter.",
    epilog="""
\b
Examples:
  convtune export ft:SmolLM2-135M-Instruct:support:ftjob-abc123 -o support-gguf
  ollama create support -f support-gguf/Modelfile && ollama run support
  convtune export ft:SmolLM2-135M-Instruct:support:ftjob-abc123 -o out --quantize f16 --force
  convtune export ft:SmolLM2-135M-Instruct:support:ftjob-abc123 -o support-hf --format hf
  convtune export ft:SmolLM2-135M-Instruct:support:ftjob-abc123 -o lora --format adapter
  convtune export SmolLM2-135M-Instruct -o smollm2-gguf   # a base model, to compare
""",
)
@click.argument("model")
@click.option(
    "-o",
    "--output",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The folder to write (it must not exist, unless --force).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="gguf",
    show_default=True,
    help="gguf: model.gguf + Ollama Modelfile; hf: the merged safetensors folder; adapter: the"
    " LoRA adapter.",
)
@click.option(
    "--quantize",
    type=click.Choice(QUANTIZATIONS),
    default=None,
    help="How GGUF weights are stored: f16, bf16 or q8_0 (default q8_0, about half the size of"
    " f16; small models answer closest to convtune in f16).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace DIR if it is an earlier export holding nothing but the files it wrote.",
)
def export(model: str, out: Path, fmt: str, quantize: str | None, force: bool) -> None:
    """Export MODEL (a local fine-tuned model ft:..., or a base model) into a folder.

    The GGUF keeps the chat template and end-of-turn token the model was trained with, and the
    Ollama Modelfile gets a prompt template proven to render the same prompts.
    """

    def announce() -> None:  # once the target is checked: no "Exporting..." before a refusal
        message = f"Exporting {escape(model)} to {escape(str(out))} ({fmt})..."
        render.err.print(message, soft_wrap=True)

    result = export_model(model, out, format=fmt, quantize=quantize, force=force, on_start=announce)
    kind = f"{fmt}, {result.quantization}" if result.quantization else fmt
    render.out.print(f"Exported {escape(result.model)} to {escape(str(result.out))} ({kind}):")
    for path in result.files:
        render.out.print(f"  {escape(str(path))}  {_size(path)}")
    for note in result.notes:
        render.err.print(f"note: {escape(note)}", soft_wrap=True)
    readme = result.out / "README.txt"
    render.out.print(f"How to run it: {escape(str(readme))}")


def _size(path: Path) -> str:
    if path.is_dir():
        total = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        total = path.stat().st_size
    for unit in ("B", "KB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""
