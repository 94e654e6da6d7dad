"""Where convtune keeps its state: one data folder, overridable with `CONVTUNE_HOME`.

Everything local (the job database, uploaded files, fine-tuned models, converted base models)
lives under one folder so that it can be inspected, backed up or deleted as a whole, and so that
tests, CI and the server can point convtune at a throwaway folder with one environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def data_dir() -> Path:
    """`$CONVTUNE_HOME` if set, else the platform's user data folder; created on demand.

    Read at every call, not at import: a test or a worker process sets the variable after
    convtune is imported.
    """
    override = os.environ.get("CONVTUNE_HOME")
    path = Path(override).expanduser() if override else Path(platformdirs.user_data_dir("convtune"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    """Fine-tuned models (merged weights and adapters), one folder per model id."""
    return _sub("models")


def base_models_dir() -> Path:
    """Base models converted for training (a GGUF dequantized to safetensors), one folder each.

    A conversion takes seconds and hundreds of MB of memory; it is done once and kept here.
    """
    return _sub("base-models")


def _sub(name: str) -> Path:
    path = data_dir() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def installation_id(home: Path | None = None) -> str:
    """A random id of this data directory, made once: it tells this installation's objects on a
    shared service (an OpenAI organisation) from those of a teammate's convtune."""
    import secrets

    folder = home or data_dir()
    path = folder / "installation-id"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".installation-id.{secrets.token_hex(4)}")
    tmp.write_text(secrets.token_hex(8), encoding="ascii")
    try:
        os.link(tmp, path)  # the first writer wins; the others read what it wrote
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text(encoding="ascii").strip()
