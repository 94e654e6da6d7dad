"""Exporting models: GGUF files for Ollama and llama.cpp, Hugging Face folders, LoRA adapters.

`export_model` is the entry point (`convtune export` calls it). The GGUF path keeps what makes a
chat model answer sensibly outside convtune, and checks it: the chat template it was trained
with, its end-of-turn token, the tokenizer's pre-tokenizer, and an Ollama template proven to
render the same prompts.
"""

from .exporter import FORMATS, ExportResult, export_model
from .gguf_writer import QUANTIZATIONS

__all__ = ["FORMATS", "QUANTIZATIONS", "ExportResult", "export_model"]
