"""`export_model`: a model of this machine as files other tools run.

Three formats:

- ``gguf``: ``model.gguf`` (f16, bf16 or q8_0) with the chat template and end-of-turn token, an
  Ollama ``Modelfile`` with an equivalent prompt template and stop strings, a ``README.txt``;
- ``hf``: the merged Hugging Face folder (safetensors, config, tokenizer, chat template);
- ``adapter``: the PEFT LoRA adapter of a model trained with LoRA.

The folder is written under a temporary name beside its target and renamed into place when
complete: a failed or interrupted export leaves no half folder under the target's name. An
existing target is replaced only with `force`, and only when it is empty or an earlier export
holding nothing but what that export wrote: its README.txt starts with `MARKER` and lists the
export's files, and any other entry (a user's notes, a nested export) makes `--force` refuse,
naming it. `--force` never deletes a file convtune did not write.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Set
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvtuneError, OptionError, OutputExistsError
from ..local.local_service import LocalService
from .gguf_writer import QUANTIZATIONS, Quantization
from .model_source import ExportSource, resolve_source
from .modelfile import (
    chatml_template,
    legacy_template,
    modelfile_text,
    ollama_name,
    ollama_template,
)

FORMATS = ("gguf", "hf", "adapter")
DEFAULT_QUANTIZATION: Quantization = "q8_0"
MARKER = "Exported by convtune"  # the first words of every export's README.txt
SOURCE_STAMP = "convtune-source.json"  # base_models' cache stamp: not part of a model
# The README.txt line above the list of the export's files, one a line, indented by two spaces.
FILES_HEADING = (
    "The files of this export (convtune export --force replaces the folder only while it holds"
    " nothing else):"
)
# What an export written before README.txt listed its files holds (gguf was the only such format
# to replace): the files of any other format in such a folder make --force refuse.
UNLISTED_EXPORT = frozenset({"README.txt", "Modelfile", "model.gguf"})


@dataclass
class ExportResult:
    model: str
    out: Path
    format: str
    quantization: str | None = None
    files: list[Path] = field(default_factory=list)
    ollama_template: bool = False  # the Modelfile has a TEMPLATE proven equal to the chat template
    notes: list[str] = field(default_factory=list)  # what a user should know about the export
    vllm_command: str | None = None  # an adapter's `vllm serve` line (None: vLLM refuses it)


def export_model(
    model: str,
    out: str | Path,
    *,
    format: str = "gguf",
    quantize: str | None = None,
    force: bool = False,
    service: LocalService | None = None,
    on_start: Callable[[], None] | None = None,
) -> ExportResult:
    """Export `model` (an ``ft:`` id of the local store or a base model name) into `out`.

    `on_start` is called once the options and the target are checked, before the model is read
    and written (the CLI says "Exporting..." then, not before a refusal).
    """
    if format not in FORMATS:
        raise OptionError(f"unknown export format {format!r}; choose gguf, hf or adapter")
    if quantize is not None and format != "gguf":
        raise OptionError("--quantize applies to --format gguf only")
    quantization = quantize or DEFAULT_QUANTIZATION
    if quantization not in QUANTIZATIONS:
        raise OptionError(f"unknown quantization {quantization!r}; choose f16, bf16 or q8_0")
    out = Path(out).expanduser()
    _check_target(out, force)
    if on_start is not None:
        on_start()
    own = service is None
    service = service or LocalService()
    try:
        if format == "adapter" and service.store.get_model(model) is None:
            raise OptionError(
                f"{model} is not a fine-tuned model: it has no adapter",
                hint="use --format gguf or hf",
            )
        source = resolve_source(model, service)
    finally:
        if own:
            service.close()
    if format == "adapter" and source.adapter is None:
        raise OptionError(
            f"{source.name} was fully fine-tuned: it has no LoRA adapter",
            hint="use --format gguf or hf",
        )
    try:
        with _staged(out) as staging:
            result = _write(source, staging, out, format, quantization)  # type: ignore[arg-type]
    except OSError as exc:  # a full disk, a folder without write permission
        raise ConvtuneError(f"cannot write the export: {exc.strerror or exc}", path=out) from exc
    return result


def _write(
    source: ExportSource, staging: Path, out: Path, format: str, quantize: Quantization
) -> ExportResult:
    """Write the export's files into `staging` (renamed to `out` afterwards)."""
    if format == "gguf":
        result = _export_gguf(source, staging, out, quantize)
    elif format == "hf":
        _copy_folder(source.folder, staging)
        result = ExportResult(source.name, out, "hf")
    else:
        assert source.adapter is not None
        _copy_folder(source.adapter, staging)
        result = ExportResult(source.name, out, "adapter")
        result.vllm_command, problems = _ready_for_vllm(staging, source, out)
        result.notes += [f"vLLM would refuse this adapter: {p}" for p in problems]
    files = sorted({*_files_in(staging), "README.txt"})
    (staging / "README.txt").write_text(_readme(result, source, files), encoding="utf-8")
    result.files = sorted(out / p.name for p in staging.iterdir())
    return result


def _ready_for_vllm(folder: Path, source: ExportSource, out: Path) -> tuple[str | None, list[str]]:
    """Give an adapter folder's config the layer names vLLM compares (`short_target_modules`);
    its `vllm serve` line, or why vLLM would refuse it. A model trained on prompt/completion
    data answers in its own protocol: the line gives vLLM the adapter's chat template."""
    import json

    from safetensors import safe_open

    from .vllm_lora import adapter_problems, serve_command, short_target_modules

    config_path = folder / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as weights:
            names = weights.keys()
            shapes = {key: weights.get_slice(key).get_shape() for key in names}
    except Exception as exc:  # a broken adapter: exported as it is, with the reason
        return None, [f"its files cannot be read ({type(exc).__name__}: {exc})"]
    targets = config.get("target_modules")
    if isinstance(targets, list) and (short := short_target_modules(targets)) is not None:
        config["target_modules"] = short
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", "utf-8")
    problems = adapter_problems(config, shapes)
    if problems:
        return None, problems
    base = str(config.get("base_model_name_or_path") or "BASE")
    template = None
    if source.format == "prompt-completion" and (folder / "chat_template.jinja").is_file():
        template = str(out / "chat_template.jinja")
    command = serve_command(base, [(source.name, str(out))], int(config["r"]), template)
    return command, []


def _files_in(folder: Path) -> list[str]:
    """The files under `folder`, as sorted POSIX paths relative to it."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _export_gguf(
    source: ExportSource, staging: Path, out: Path, quantize: Quantization
) -> ExportResult:
    from .gguf_export import write_model_gguf

    written = write_model_gguf(source, staging / "model.gguf", quantize)
    result = ExportResult(source.name, out, "gguf", quantize)
    template = None
    if written.render is not None:
        if source.format == "prompt-completion":
            candidate = legacy_template(source.actors)
        else:
            candidate = chatml_template(written.render)
        template = ollama_template(written.render, candidate)
    result.ollama_template = template is not None
    if template is None:
        result.notes.append(
            "the Modelfile has no TEMPLATE: convtune writes Ollama templates for ChatML and"
            " Human:/AI: models; Ollama will use the template it recognises in model.gguf"
        )
    if source.base_gguf is None and source.fine_tuned:
        result.notes.append(
            "the base model's GGUF was not found: metadata and tokenizer were written from the"
            " Hugging Face folder"
        )
    text = modelfile_text(source.name, template, written.stops)
    (staging / "Modelfile").write_text(text, encoding="utf-8")
    return result


def _check_target(out: Path, force: bool) -> None:
    """Refuse an existing target without `force`, and any target holding what convtune did not
    write: a folder that is not an export, or an export with other files added to it."""
    if not out.exists() and not out.is_symlink():
        return
    if not force:
        raise OutputExistsError(f"{out} exists", hint="add --force to replace it")
    if not out.is_dir() or out.is_symlink():
        raise OutputExistsError(f"{out} exists and is not a folder", hint="remove it first")
    if not any(out.iterdir()):
        return
    listed = _export_files(out)
    if listed is None:
        raise OutputExistsError(
            f"{out} exists and is not a convtune export: --force will not delete it",
            hint="choose another folder or remove it yourself",
        )
    try:
        extra = _first_unlisted(out, listed)
    except OSError as exc:
        raise OutputExistsError(
            f"{out} exists and cannot be read through: {exc.strerror or exc}",
            hint="choose another folder or remove it yourself",
        ) from exc
    if extra is not None and listed is UNLISTED_EXPORT:
        raise OutputExistsError(
            f"{out} is an export by an earlier convtune, which did not list its files, and holds"
            f" {extra}: --force replaces only a folder it can tell holds nothing else",
            hint="remove the folder yourself, or choose another folder",
        )
    if extra is not None:
        raise OutputExistsError(
            f"{out} holds {extra}, which the earlier export did not write:"
            " --force will not delete it",
            hint="move it out of the folder, or choose another folder",
        )


def _export_files(folder: Path) -> Set[str] | None:
    """The files an earlier export in `folder` wrote, from its README.txt; None if the folder is
    not an export."""
    try:
        with open(folder / "README.txt", encoding="utf-8") as f:
            if not f.readline().startswith(MARKER):  # not the whole of a user's large file
                return None
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if FILES_HEADING not in lines:
        return UNLISTED_EXPORT  # the frozenset itself: _check_target tells the two apart
    files = set()
    for line in lines[lines.index(FILES_HEADING) + 1 :]:
        if not line.startswith("  "):
            break
        files.add(line[2:])
    return files


def _first_unlisted(folder: Path, listed: Set[str]) -> str | None:
    """The first entry under `folder` (sorted, top down) that is neither a listed file nor a
    folder holding one; a folder is shown with a trailing "/"."""
    parents = {parent for name in listed for parent in _parents(name)}
    pending = [folder]
    while pending:
        current = pending.pop(0)
        for entry in sorted(current.iterdir()):
            name = entry.relative_to(folder).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                if name not in parents:
                    return name + "/"
                pending.append(entry)
            elif name not in listed or entry.is_symlink():
                return name
    return None


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@contextlib.contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out`, renamed to `out` when the body succeeds."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide the export from other users
        old = None
        if out.exists():  # an earlier export, replaced with force: checked again, just before
            _check_target(out, force=True)  # (a file may have been added while this one ran)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            os.replace(out, old / "export")
        os.rename(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_folder(folder: Path, target: Path) -> None:
    """The model's files (not convtune's cache stamp), copied into `target`."""
    for item in sorted(folder.iterdir()):
        if item.name == SOURCE_STAMP or item.name.startswith("."):
            continue
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        else:
            shutil.copy2(item, target / item.name)


def _readme(result: ExportResult, source: ExportSource, files: list[str]) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("convtune")
    except PackageNotFoundError:
        ours = "(development)"
    where = str(result.out)
    kind = f"gguf, {result.quantization}" if result.format == "gguf" else result.format
    lines = [f"{MARKER} {ours} from {result.model} ({kind}).", ""]
    if result.format == "gguf":
        name = ollama_name(result.model)
        lines += [
            "Ollama:",
            f"  ollama create {name} -f {where}/Modelfile",
            f"  ollama run {name}",
            "",
            "llama.cpp (the chat template and end-of-turn token are in model.gguf):",
            f"  llama-cli -m {where}/model.gguf",
            f"  llama-server -m {where}/model.gguf",
        ]
    elif result.format == "hf":
        lines += [
            "A Hugging Face model folder (safetensors, config, tokenizer and chat template):",
            f"  convtune chat {where} --message Hello",
            f'  AutoModelForCausalLM.from_pretrained("{where}")',
        ]
    else:
        lines += [
            "A PEFT LoRA adapter; load it on its base model:",
            f'  PeftModel.from_pretrained(base_model, "{where}")',
        ]
        if result.vllm_command:
            lines += [
                "",
                "vLLM's OpenAI server, with this adapter as the model of that name (add more"
                " NAME=FOLDER pairs, and --max-loras N, for several fine-tunes of one base; the"
                " base is the folder the adapter was trained on: copy it with"
                " convtune export BASE --format hf):",
                f"  {result.vllm_command}",
            ]
    if source.format == "prompt-completion":
        first, second = source.actors or ("Human", "AI")
        lines += [
            "",
            f"This model was trained on prompt/completion data: it is prompted with '{first}: ...'"
            f" and '{second}: ...' lines ending in '{second}:' (the chat template does this), and"
            f" its reply ends with '\\n{first}:' (pass it as a stop string to llama-server).",
        ]
    lines += ["", FILES_HEADING, *(f"  {name}" for name in files)]
    return "\n".join(lines) + "\n"
