"""A LoRA adapter as vLLM serves it: `vllm serve BASE --enable-lora --lora-modules NAME=PATH`.

vLLM serves several fine-tunes of one base at once, each adapter a model name of its OpenAI
API, so a client that talks to `convtune serve` talks to vLLM by changing its base URL. It reads
an adapter folder's ``adapter_config.json`` and ``adapter_model.safetensors`` (its `PEFTHelper`
and `LoRAModel.from_local_checkpoint`). What it accepts, from its documentation and its code
(vLLM 0.6 to 0.11); vLLM itself cannot be installed here (it needs a GPU, or a source build for
the CPU), so `adapter_problems` checks an adapter against these rules:

- the config has `r`, `lora_alpha` and `target_modules`; `bias` is "none"; no
  `modules_to_save`; no DoRA (`use_dora`); `r` is at most `--max-lora-rank`, which is 16 by
  default and one of 8, 16, 32, 64, 128, 256, 320, 512 (`MAX_RANKS`);
- every weight is named ``base_model.model.<module>.lora_A.weight`` or ``...lora_B.weight``,
  and the module's last name is one of the model's LoRA layers (for the Llama, Mistral and
  Qwen2 families: `DECODER_MODULES`, and the embeddings `EMBEDDING_MODULES`); each module has
  both matrices, A of shape (r, in) and B of shape (out, r).

peft may write `target_modules` as the full path of every adapted layer (``model.layers.0.
self_attn.q_proj``...); `short_target_modules` gives the layer names instead (``q_proj``...),
the form vLLM's older releases compare with their LoRA layers, when they cover the same layers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

MAX_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values
DEFAULT_MAX_RANK = 16  # vLLM's --max-lora-rank when not given
DECODER_MODULES = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)
EMBEDDING_MODULES = frozenset({"embed_tokens", "lm_head"})
_WEIGHT = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<half>lora_[AB])\.weight$")
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def parse_weight_name(name: str) -> tuple[str, str] | None:
    """(module, "lora_A" or "lora_B") of a weight vLLM loads, or None for a name it refuses."""
    found = _WEIGHT.match(name)
    return (found["module"], found["half"]) if found else None


def adapter_problems(config: Mapping[str, Any], shapes: Mapping[str, Sequence[int]]) -> list[str]:
    """Why vLLM would refuse the adapter of `config` (adapter_config.json) with weights of these
    `shapes` (by name); an empty list when it serves it."""
    problems = []
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            problems.append(f"adapter_config.json has no {key}")
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')}, not LORA")
    if config.get("bias", "none") != "none":
        problems.append(f"bias is {config['bias']!r}: vLLM serves adapters without biases")
    if config.get("modules_to_save"):
        problems.append("modules_to_save is set: vLLM takes adapters without it")
    if config.get("use_dora"):
        problems.append("it is a DoRA adapter: vLLM does not serve DoRA")
    rank = config.get("r")
    if isinstance(rank, int) and rank > MAX_RANKS[-1]:
        problems.append(f"r {rank} is above vLLM's largest --max-lora-rank ({MAX_RANKS[-1]})")
    halves: dict[str, dict[str, Sequence[int]]] = {}
    for name, shape in shapes.items():
        parsed = parse_weight_name(name)
        if parsed is None:
            problems.append(f"weight {name}: not a LoRA weight vLLM loads")
            continue
        module, half = parsed
        if module.rsplit(".", 1)[-1] not in DECODER_MODULES | EMBEDDING_MODULES:
            problems.append(f"weight {name}: vLLM has no LoRA layer {module.rsplit('.', 1)[-1]}")
        halves.setdefault(module, {})[half] = shape
    for module, pair in sorted(halves.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            problems.append(f"{module} has only {', '.join(pair)}")
        elif isinstance(rank, int) and (pair["lora_A"][0] != rank or pair["lora_B"][-1] != rank):
            problems.append(f"{module}: its matrices are not of rank {rank}")
    if not shapes:
        problems.append("the adapter has no weights")
    return problems


def short_target_modules(names: Sequence[str]) -> list[str] | None:
    """The layer names (``q_proj``...) of the adapted modules `names` (full paths), when each
    of them is adapted in every layer, as it then targets exactly the same modules; else None."""
    layers: dict[str, set[int]] = {}
    for name in names:
        found = _LAYER.search(f".{name}.")
        if found is None:
            return None
        layers.setdefault(name.rsplit(".", 1)[-1], set()).add(int(found[1]))
    if not layers:
        return None
    every = set().union(*layers.values())
    if any(seen != every for seen in layers.values()) or every != set(range(max(every) + 1)):
        return None
    return sorted(layers)


def max_lora_rank(rank: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that serves an adapter of `rank`."""
    return next((m for m in MAX_RANKS if m >= rank), MAX_RANKS[-1])


def serve_command(
    base: str, adapters: Sequence[tuple[str, str]], rank: int, chat_template: str | None = None
) -> str:
    """`vllm serve` with the LoRA adapters (name, folder) on `base`, for one shell line; with
    `chat_template`, the template every request is rendered with (vLLM has one per server)."""
    modules = " ".join(_quoted(f"{name}={folder}") for name, folder in adapters)
    command = f"vllm serve {_quoted(base)} --enable-lora"
    if chat_template:
        command += f" --chat-template {_quoted(chat_template)}"
    if len(adapters) > 1:
        command += f" --max-loras {len(adapters)}"
    if rank > DEFAULT_MAX_RANK:
        command += f" --max-lora-rank {max_lora_rank(rank)}"
    return f"{command} --lora-modules {modules}"


def _quoted(text: str) -> str:
    return text if re.fullmatch(r"[\w./:=@+-]+", text) else "'" + text.replace("'", "'\\''") + "'"
