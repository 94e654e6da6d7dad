"""A model folder (and, when it has one, its base GGUF) written as one GGUF file.

Two ways, by where the base model came from:

- From a GGUF (SmolLM2 ships as one): the base file's metadata and tokenizer are kept as they
  are (llama.cpp wrote them, pre-tokenizer name included), and its weights are replaced by the
  fine-tuned ones, tensor for tensor: every base tensor must get a fine-tuned tensor of the
  same shape, or the export stops.
- From a Hugging Face folder (llama, mistral, qwen2): the metadata comes from the config
  (`hf_metadata`) and the tokenizer (`tokenizer_gguf`).

Either way the chat template written is the one the model was trained with (for legacy models,
the `Human:`/`AI:` template of `chat_templates`), and q/k weights are permuted for llama.cpp's
"llama" architecture (`tensor_names`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConvtuneError
from .chat_templates import Render, legacy_chat_template, legacy_stop, template_renderer
from .gguf_reader import read_header
from .gguf_writer import (
    Field,
    Metadata,
    Quantization,
    TensorPlan,
    file_type,
    string,
    uint32,
    write_gguf,
)
from .hf_metadata import gguf_architecture, model_metadata
from .model_source import ExportSource
from .tensor_names import PERMUTED_ARCHS, SKIPPED_SUFFIXES, heads_of, name_mapper, permute_qk
from .tokenizer_gguf import tokenizer_metadata

BASE_ARCHS = ("llama", "qwen2")  # base GGUF architectures whose weights convtune replaces
DROPPED_KEYS = (  # written anew: the writer's architecture, the new type, default alignment
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.alignment",
)
END_OF_TURN = "<|im_end|>"  # ChatML's, when it is not the tokenizer's eos


@dataclass
class GgufFile:
    """What was written, and what the Modelfile needs to know about it."""

    path: Path
    arch: str
    chat_template: str | None
    stops: list[str]  # texts that end a reply
    render: Render | None  # the chat template as transformers renders it
    tensor_types: dict[str, int] = field(default_factory=dict)


class Weights:
    """The tensors of a model folder's safetensors files, read one at a time as float32."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("model*.safetensors"))
        if not files:
            raise ConvtuneError(
                "no model*.safetensors weights in the model folder",
                path=folder,
                hint="convtune exports safetensors checkpoints",
            )
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 - safe_open has keys(), no iteration
                    self._where[name] = file
                    self._shapes[name] = tuple(f.get_slice(name).get_shape())

    def names(self) -> list[str]:
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def loader(self, name: str, heads: int | None) -> Callable[[], np.ndarray]:
        """A function reading the tensor, permuted for llama.cpp when `heads` is given."""

        def load() -> np.ndarray:
            from safetensors import safe_open

            with safe_open(str(self._where[name]), framework="pt") as f:
                values = f.get_tensor(name).float().numpy()
            return permute_qk(values, heads) if heads else values

        return load


def write_model_gguf(source: ExportSource, path: Path, quantize: Quantization) -> GgufFile:
    """Write `source` as a GGUF file at `path`."""
    import gguf
    from transformers import AutoConfig, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source.folder)
        tokenizer = AutoTokenizer.from_pretrained(source.folder)
    except (OSError, ValueError, KeyError) as exc:
        brief = " ".join(str(exc).split())[:200]  # transformers' messages run to many lines
        raise ConvtuneError(f"cannot read the model folder: {brief}", path=source.folder) from exc
    weights = Weights(source.folder)
    if source.base_gguf is not None:
        arch, metadata, plans = _from_base_gguf(source.base_gguf, config, weights)
    else:
        arch = gguf_architecture(config)
        metadata = {
            **model_metadata(config, arch),
            **tokenizer_metadata(tokenizer, int(config.vocab_size)),
        }
        plans = _hf_plans(arch, config, weights)
    template, stops = _chat_template(source, tokenizer, metadata)
    metadata["general.name"] = string(source.name)
    metadata["general.file_type"] = uint32(file_type(quantize))
    metadata["general.quantization_version"] = uint32(gguf.GGML_QUANT_VERSION)
    if template is not None:
        metadata["tokenizer.chat_template"] = string(template)
    counts = write_gguf(path, arch, metadata, plans, quantize)
    render = template_renderer(tokenizer, template) if template is not None else None
    return GgufFile(path, arch, template, stops, render, counts)


def _chat_template(
    source: ExportSource, tokenizer: Any, metadata: Metadata
) -> tuple[str | None, list[str]]:
    """The template the model was trained with, and the texts that end its replies."""
    if source.format == "prompt-completion":
        return legacy_chat_template(source.actors), [legacy_stop(source.actors)]
    template = tokenizer.chat_template
    if isinstance(template, dict):  # named templates: the default one
        template = template.get("default")
    stops = [tokenizer.eos_token] if tokenizer.eos_token else []
    if template and END_OF_TURN in template and END_OF_TURN not in stops:
        eot = tokenizer.convert_tokens_to_ids(END_OF_TURN)
        if isinstance(eot, int) and eot != tokenizer.unk_token_id:
            metadata["tokenizer.ggml.eot_token_id"] = uint32(eot)
            stops.insert(0, END_OF_TURN)
    return template or None, stops


def _tied(config: Any, weights: Weights) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False)) or (
        "lm_head.weight" not in weights.names()
    )


def _hf_plans(arch: str, config: Any, weights: Weights) -> list[TensorPlan]:
    n_head = int(config.num_attention_heads)
    n_head_kv = int(getattr(config, "num_key_value_heads", None) or n_head)
    mapped = _mapped(arch, int(config.num_hidden_layers), config, weights)
    plans = []
    for gguf_name, hf_name in mapped.items():
        heads = heads_of(gguf_name, n_head, n_head_kv) if arch in PERMUTED_ARCHS else None
        plans.append(TensorPlan(gguf_name, weights.shape(hf_name), weights.loader(hf_name, heads)))
    return plans


def _mapped(arch: str, n_blocks: int, config: Any, weights: Weights) -> dict[str, str]:
    """GGUF name -> Hugging Face name of every tensor to write."""
    to_gguf = name_mapper(arch, n_blocks)
    tied = _tied(config, weights)
    mapped: dict[str, str] = {}
    for name in weights.names():
        if name.endswith(SKIPPED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        gguf_name = to_gguf(name)
        if gguf_name is None:
            raise ConvtuneError(
                f"no llama.cpp tensor for {name!r}: the {arch} architecture has no such weight",
                hint="use --format hf",
            )
        mapped[gguf_name] = name
    return mapped


def _from_base_gguf(
    base: Path, config: Any, weights: Weights
) -> tuple[str, Metadata, list[TensorPlan]]:
    """The base file's metadata, and its tensors filled with the fine-tuned weights."""
    metadata, tensors = read_header(base)
    arch = str(metadata.get("general.architecture", Field("?", None)).value)
    for key in DROPPED_KEYS:
        metadata.pop(key, None)
    if arch not in BASE_ARCHS:
        raise ConvtuneError(
            f"cannot export a model whose base GGUF is {arch!r}: convtune writes llama and qwen2",
            path=base,
            hint="use --format hf",
        )
    n_head = int(metadata[f"{arch}.attention.head_count"].value)
    kv = metadata.get(f"{arch}.attention.head_count_kv")
    n_head_kv = int(kv.value) if kv is not None else n_head
    mapped = _mapped(arch, int(metadata[f"{arch}.block_count"].value), config, weights)
    plans = []
    for tensor in tensors:
        shape = tensor.shape
        hf_name = mapped.pop(tensor.name, None)
        if hf_name is None or weights.shape(hf_name) != shape:
            found = "no tensor" if hf_name is None else f"{hf_name} {weights.shape(hf_name)}"
            raise ConvtuneError(
                f"the fine-tuned weights do not fit the base GGUF: {tensor.name} {shape} has"
                f" {found}",
                path=base,
            )
        heads = heads_of(tensor.name, n_head, n_head_kv) if arch in PERMUTED_ARCHS else None
        plans.append(TensorPlan(tensor.name, shape, weights.loader(hf_name, heads)))
    if set(mapped) - {"output.weight"}:  # an untied output layer is optional in llama.cpp
        raise ConvtuneError(
            f"the fine-tuned model has tensors its base GGUF lacks: {sorted(mapped)[:3]}",
            path=base,
        )
    for gguf_name, hf_name in mapped.items():
        plans.append(TensorPlan(gguf_name, weights.shape(hf_name), weights.loader(hf_name, None)))
    return arch, metadata, plans
