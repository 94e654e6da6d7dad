"""Which engine generates a local model's answers, and its converted copy of the model.

- ``transformers``: the model as it trained, in float32; the GPU's engine, and the default.
- ``ctranslate2``: CTranslate2 with int8 weights (`ct2_engine`): on this repository's 2-core CPU
  about 3x transformers' single-stream speed, and as fast for 32 replies at once; its answers
  are a quantized model's, and `bench/engines.py` measures how often its greedy answers and next
  tokens are transformers' (BENCHMARKS.md, "Answering faster").
- ``ctranslate2-float32``: CTranslate2 in float32: transformers' greedy answers token for token
  (tests/test_engines.py).
- ``auto`` (the default) is transformers for now: no engine measured here meets the speed the
  switch asks for (4x transformers' single stream, with batching, seeds and stop strings; the
  comparison is in BENCHMARKS.md), and an int8 engine would change the answers that `eval`
  compares. An explicit engine is refused in one line for a model family it is not proven on
  (`PROVEN`) or when CTranslate2 is not installed.

A model is converted once (seconds for SmolLM2) into the data folder, under a key made of the
weights' path, size and modification time, the quantization and CTranslate2's version: a
retrained or replaced model is converted again, and an unchanged one never is. The conversion
is written under a temporary name and renamed into place, so an interrupted one leaves nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConvtuneError, OptionError

ENGINES = ("auto", "transformers", "ctranslate2", "ctranslate2-float32")
ENGINE_HELP = (
    "What generates local answers: transformers (float32; auto is transformers for now),"
    " ctranslate2 (CTranslate2 with int8 weights: about 3x faster on a CPU, a quantized model's"
    " answers), ctranslate2-float32 (transformers' greedy answers exactly)."
)
# the families whose CTranslate2 conversion the tests prove equal to transformers (float32)
PROVEN = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"})
QUANTIZATION = {"ctranslate2": "int8", "ctranslate2-float32": "float32"}


@dataclass(frozen=True)
class EngineChoice:
    """The engine that answers a model."""

    name: str  # transformers, ctranslate2 or ctranslate2-float32

    @property
    def label(self) -> str:
        """How reports name it: 'ctranslate2 int8', 'transformers float32'."""
        if self.name == "transformers":
            return "transformers float32"
        return f"ctranslate2 {QUANTIZATION[self.name]}"


def choose(engine: str, folder: Path | None) -> EngineChoice:
    """The engine for the model in `folder` (None: a model without a folder of weights)."""
    if engine not in ENGINES:
        raise OptionError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    if engine in ("auto", "transformers"):
        return EngineChoice("transformers")
    problem = _problem(folder)
    if problem is not None:
        raise OptionError(f"engine {engine}: {problem}", hint="--engine transformers")
    return EngineChoice(engine)


def _problem(folder: Path | None) -> str | None:
    """Why CTranslate2 cannot answer for this model here (None: it can)."""
    if importlib.util.find_spec("ctranslate2") is None:
        return "CTranslate2 is not installed (pip install ctranslate2)"
    if folder is None or not (folder / "config.json").is_file():
        return "the model has no folder of weights to convert"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "its config.json cannot be read"
    families = set(config.get("architectures") or [])
    if not families & PROVEN:
        family = ", ".join(sorted(families)) or "an unknown family"
        return f"CTranslate2 is not proven here for {family}"
    from .ct2_engine import generation_config

    choosing = generation_config(folder)
    if choosing.get("repetition_penalty") not in (None, 1, 1.0) or choosing.get(
        "no_repeat_ngram_size"
    ):
        return (
            "the model's generation config penalises repetitions, which CTranslate2 counts in"
            " the reply only and transformers in the prompt too"
        )
    return None


def converted(folder: Path, home: Path, engine: str) -> Path:
    """The CTranslate2 model of the Hugging Face model in `folder`, converted once into `home`."""
    import ctranslate2

    quantization = QUANTIZATION[engine]
    target = home / "engines" / f"ctranslate2-{quantization}" / _key(folder, quantization)
    if (target / "model.bin").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        converter = ctranslate2.converters.TransformersConverter(str(folder), load_as_float16=False)
        converter.convert(str(staging / "model"), quantization=quantization, force=True)
        (staging / "model" / "source.json").write_text(
            json.dumps({"source": str(folder), "quantization": quantization}), encoding="utf-8"
        )
        try:
            os.rename(staging / "model", target)
        except OSError:
            if not (target / "model.bin").is_file():  # else another process converted it first
                raise
    except Exception as exc:  # a model CTranslate2's converter does not take
        raise ConvtuneError(
            f"cannot convert {folder} for CTranslate2: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint="--engine transformers",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _key(folder: Path, quantization: str) -> str:
    """The weights' path, size and modification time, the quantization, CTranslate2's version."""
    import ctranslate2

    parts = [str(folder.resolve()), quantization, ctranslate2.__version__]
    for path in sorted(folder.iterdir()):
        if path.suffix in (".safetensors", ".bin", ".json") and path.is_file():
            stat = path.stat()
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def threads() -> int:
    """CTranslate2's threads per model: OMP_NUM_THREADS when set, else half the cores. Its
    threads stall each other on a small machine: on 2 shared cores, int8 SmolLM2 answered
    56-62 tokens/s with one thread and 18-29 with two (BENCHMARKS.md, "Answering faster")."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    return max(1, cores // 2)
