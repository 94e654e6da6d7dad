"""What a model name given to `convtune export` points at: weights, adapter, prompt format.

A fine-tuned model of the local store (``ft:...``) has a merged model folder, a LoRA adapter
folder (LoRA jobs only), the format it was trained on and, for legacy data, its two actor
labels. Its base GGUF, when the base came from one (SmolLM2 does), is found through the job
that trained it: the job's `model_source` is the .gguf file, or the folder of the fine-tuned
model it trained further, whose own job is followed in turn.

A base model is whatever `resolve_base_model` accepts: SmolLM2 and .gguf files (read through
their dequantized cache folder), Hugging Face folders, and hub ids already downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvtuneError
from ..local.local_service import LocalService


@dataclass(frozen=True)
class ExportSource:
    name: str  # the fine-tuned model's id, or the base model's name (not its path)
    folder: Path  # a Hugging Face model folder: config, safetensors, tokenizer
    format: str = "chat"  # "chat" or "prompt-completion"
    actors: tuple[str, str] | None = None  # legacy models' labels ("Human", "AI")
    adapter: Path | None = None  # the PEFT LoRA folder, when it was trained with LoRA
    base_gguf: Path | None = None  # the GGUF the base model came from, if any
    fine_tuned: bool = False


def resolve_source(model: str, service: LocalService) -> ExportSource:
    """The export source of a fine-tuned model id or a base model name (one-line errors)."""
    if service.store.get_model(model) is not None:
        record = service.models.record(model)
        folder = Path(record["path"])
        if not (folder / "config.json").is_file():
            raise ConvtuneError(
                f"the weights of {model} are missing from {folder}",
                hint=f"delete it with: convtune models delete {model}",
            )
        adapter = Path(record["adapter_path"]) if record.get("adapter_path") else None
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            adapter = None  # a full fine-tune: the worker writes no adapter
        return ExportSource(
            model,
            folder,
            record.get("format") or "chat",
            record.get("actors"),
            adapter,
            _base_gguf(service, record),
            fine_tuned=True,
        )
    if model.startswith("ft:"):
        service.models.record(model)  # NotFound, with the hint to list the models
    return _base_source(model, service)


def _base_source(model: str, service: LocalService) -> ExportSource:
    """A base model as a job or a chat takes it: a name, a path, or an id `models list` shows."""
    from ..local.base_models import gguf_cache, quiet

    ref = service.models.base_model(model)
    if ref.kind in ("smollm2", "gguf"):
        gguf = Path(ref.source)
        with quiet():
            folder = gguf_cache(gguf, ref.name)
        return ExportSource(ref.name, folder, base_gguf=gguf)
    if ref.kind == "folder":
        return ExportSource(ref.name, Path(ref.source))
    return ExportSource(ref.name, _hub_folder(ref.source))


def _hub_folder(hub_id: str) -> Path:
    """A hub model's files, from the hub or its local cache; one line of error without them."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    patterns = ["*.json", "*.safetensors", "*.jinja", "*.txt", "tokenizer*"]
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise ConvtuneError(
            f"cannot get {hub_id!r} from the Hugging Face hub",
            hint="give a local folder or .gguf file",
        ) from exc


def _base_gguf(service: LocalService, record: dict, depth: int = 0) -> Path | None:
    """The .gguf the model's base was converted from, through the jobs that trained it."""
    job_id = record.get("job_id")
    if not job_id or depth > 20:
        return None
    source = service.store.job_spec(job_id).model_source
    if not source:
        return None
    path = Path(source)
    if path.suffix.lower() == ".gguf":
        return path if path.is_file() else None
    for other in service.store.list_models():  # trained further: follow the parent model
        parent = service.store.get_model(other.id)
        if parent is not None and Path(parent["path"]) == path:
            return _base_gguf(service, parent, depth + 1)
    return None
