"""Which model answers, on which backend: `MODEL[@BACKEND]`.

One eval compares models from several backends, so a model may carry its own:

- `ft:gpt-4o-mini-2024-07-18:acme:support:AbC123@openai`: OpenAI (its key from OPENAI_API_KEY);
- `SmolLM2-135M-Instruct@local`, `./my-model@local`: this machine (the default);
- `ft:SmolLM2-135M-Instruct::ftjob-abc@http://127.0.0.1:8000/v1`: any OpenAI-compatible
  service at that address (`convtune serve`, vLLM...), with OPENAI_API_KEY or --api-key.

A model without `@` takes the command's `--backend`/`--base-url`. The backend is what follows the
last `@`; anything else there (`MODEL@bogus`) is refused, because a misspelt backend would
otherwise be taken for part of the model's name. Model ids do not contain `@` (OpenAI's and
Hugging Face's never do); a local path may, so a spec that is an existing file or folder is that
path, whole (`./runs/v2@best` is a model folder, not the model `./runs/v2` on a backend `best`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..backends import NAMES as BACKENDS
from ..errors import OptionError


@dataclass(frozen=True)
class Target:
    """A model on a backend, and the label the user gave it (what tables and reports show)."""

    label: str
    model: str
    backend: str = "local"  # local | openai
    base_url: str | None = None  # for openai: None is OpenAI's own address

    def key(self) -> str:
        """What identifies the model's answers in a cache: backend, address and model, and for a
        local model given as a path (a .gguf file, a model folder) the size and modification
        time of its weights, so that answers of a file since replaced are not reused."""
        key = f"{self.backend}|{self.base_url or ''}|{self.model}"
        if self.backend == "local" and (stamp := weights_stamp(self.model)) is not None:
            key += f"|{stamp}"
        return key


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def weights_stamp(model: str) -> str | None:
    """`size:mtime_ns` of a model file, or of a model folder's weights files (all shards and
    adapters, summed and latest; its config.json when it has none); None for a name that is no
    path (a hub id, a fine-tuned model's id)."""
    path = Path(model).expanduser()
    try:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = [f for f in path.iterdir() if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
            files = files or [f for f in (path / "config.json",) if f.is_file()]
        else:
            return None
        stats = [f.stat() for f in files]
    except OSError:
        return None
    if not stats:
        return None
    return f"{sum(s.st_size for s in stats)}:{max(s.st_mtime_ns for s in stats)}"


def parse_target(spec: str, *, backend: str = "local", base_url: str | None = None) -> Target:
    """`MODEL[@BACKEND]`, where BACKEND is a registered backend (`convtune.backends`: local,
    openai) or an http(s) URL; an `@` followed
    by anything else is an `OptionError`, unless the whole spec is an existing path."""
    model, at, where = spec.rpartition("@")
    if at and not Path(spec).expanduser().exists():
        if not model:
            raise OptionError(f"no model name before the @ of {spec!r}")
        if where in BACKENDS:
            return Target(spec, model, where)
        if where.startswith(("http://", "https://")):
            return Target(spec, model, "openai", where.rstrip("/"))
        raise OptionError(
            f"unknown backend {where!r} in {spec!r} ({', '.join(BACKENDS)} or an http(s) URL)",
            hint="write MODEL@local, MODEL@openai or MODEL@http://host:port/v1",
        )
    if base_url is not None:
        backend = "openai"
    return Target(spec, spec, backend, base_url if backend == "openai" else None)
