"""Serving at scale: an exported LoRA adapter in the format vLLM loads, and the README's client
code, which talks to `convtune serve` and to vLLM alike.

vLLM cannot be installed here (it needs a GPU, or a source build for the CPU), so the exported
files are checked against its documented format: the adapter config's fields (`PEFTHelper`)
and the weights' names and shapes (`parse_fine_tuned_lora_name`, its LoRA layers), restated in
this file from vLLM's documentation and code rather than read back from convtune's own checker.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from openai import OpenAI
from safetensors import safe_open

from convtune.export.vllm_lora import (
    adapter_problems,
    max_lora_rank,
    parse_weight_name,
    serve_command,
    short_target_modules,
)

from .conftest import ROOT
from .servers import serve, wait_for
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
README_MODEL = "ft:SmolLM2-135M-Instruct:shop:ftjob-abc123"  # the README's example id
# vLLM's LoRA layers of the Llama family (its LlamaForCausalLM: packed q/k/v and gate/up, with
# the names PEFT adapters use) and the rule by which it names an adapter's weights
VLLM_LLAMA_LORA_MODULES = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj"}
VLLM_LLAMA_LORA_MODULES |= {"down_proj", "embed_tokens", "lm_head"}


def vllm_parses(name: str) -> tuple[str, bool]:
    """vLLM's reading of an adapter weight's name: (module, is lora_A), or ValueError."""
    parts = name.split(".")
    if (
        parts[:2] == ["base_model", "model"]
        and parts[-1] == "weight"
        and parts[-2] in ("lora_A", "lora_B")
    ):
        return ".".join(parts[2:-2]), parts[-2] == "lora_A"
    raise ValueError(f"{name} is unsupported LoRA weight")


GOOD = (
    '{"messages": [{"role": "user", "content": "How much is a standard service?"},'
    ' {"role": "assistant", "content": "The standard service is 89 EUR."}]}\n'
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny model fine-tuned with LoRA through `convtune serve` (the OpenAI SDK), exported as
    an adapter; the server stays up for the client code."""
    home = tmp_path_factory.mktemp("serve-home")
    shutil.copytree(make_tiny_model(tmp_path_factory.mktemp("tiny")), home / "base-models" / "tiny")
    with serve(home) as server:
        client = OpenAI(base_url=server.url, api_key=server.key)
        train = client.files.create(file=("t.jsonl", (GOOD * 8).encode()), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny",
            training_file=train.id,
            hyperparameters={"n_epochs": 1},
            extra_body={"convtune": {"max_steps": 2}},
        )
        done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).finished_at and j)
        assert done.status == "succeeded", done.error
        out = tmp_path_factory.mktemp("export") / "adapter"
        ran = subprocess.run(
            [CONVTUNE, "export", done.fine_tuned_model, "--format", "adapter", "-o", str(out)],
            capture_output=True,
            text=True,
            env={**os.environ, "CONVTUNE_HOME": str(home)},
            timeout=300,
        )
        assert ran.returncode == 0, ran.stderr
        assert "vLLM would refuse" not in ran.stderr
        yield server, done.fine_tuned_model, out, home / "base-models" / "tiny"


def test_the_exported_adapter_is_in_vllm_s_format(exported):
    _, model_id, out, base = exported
    config = json.loads((out / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["peft_type"] == "LORA" and config["bias"] == "none"
    assert not config.get("modules_to_save") and not config.get("use_dora")
    assert config["r"] <= 16  # vLLM's --max-lora-rank by default
    assert isinstance(config["lora_alpha"], int)
    # the layer names, which every vLLM release compares with its LoRA layers
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    base_config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    hidden, inner = base_config["hidden_size"], base_config["intermediate_size"]
    kv = hidden // base_config["num_attention_heads"] * base_config["num_key_value_heads"]
    dims = {"q_proj": (hidden, hidden), "k_proj": (hidden, kv), "v_proj": (hidden, kv)}
    dims |= {"o_proj": (hidden, hidden), "gate_proj": (hidden, inner), "up_proj": (hidden, inner)}
    dims |= {"down_proj": (inner, hidden)}
    seen: dict[str, set[bool]] = {}
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
        for name in names:
            module, is_a = vllm_parses(name)
            layer = module.rsplit(".", 1)[-1]
            assert layer in VLLM_LLAMA_LORA_MODULES, name
            seen.setdefault(module, set()).add(is_a)
            shape = tuple(weights.get_slice(name).get_shape())
            into, outof = dims[layer]
            assert shape == ((config["r"], into) if is_a else (outof, config["r"])), name
    assert len(seen) == 7 * base_config["num_hidden_layers"]
    assert all(halves == {True, False} for halves in seen.values())

    readme = (out / "README.txt").read_text(encoding="utf-8")
    assert f"vllm serve {base} --enable-lora --lora-modules {model_id}={out}" in readme


def test_the_short_target_modules_adapt_the_same_layers(exported):
    """PEFT reads the rewritten config as it read its own: the adapter on its base answers with
    the logits of the merged model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    server, model_id, out, base = exported
    merged_folder = server.home / "models" / model_id.replace(":", "_") / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_folder)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out)
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    with torch.no_grad():
        assert torch.allclose(adapted(ids).logits, merged(ids).logits, atol=1e-4)


def test_the_readme_client_code_talks_to_convtune_serve(exported):
    """The README's client code, as printed, against a real `convtune serve`: only its address,
    key and model id come from the environment, as they would for vLLM's server."""
    server, model_id, _, _ = exported
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    (code,) = [b for b in blocks if "client = OpenAI()  # OPENAI_BASE_URL" in b]
    assert README_MODEL in code
    ran = subprocess.run(
        [sys.executable, "-c", code.replace(README_MODEL, model_id)],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": server.key},
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()  # the fine-tune's answer


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"bias": "all"}, "bias is 'all'"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save is set"),
        ({"use_dora": True}, "DoRA"),
        ({"r": 1024}, "above vLLM's largest --max-lora-rank (512)"),
    ],
)
def test_vllm_s_refusals_are_named(change, problem):
    a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    shapes = {a: (8, 4), a.replace("lora_A", "lora_B"): (4, 8)}
    config = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    assert adapter_problems(config, shapes) == []
    assert any(problem in p for p in adapter_problems({**config, **change}, shapes))


def test_weights_vllm_cannot_load_are_named():
    config = {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}
    assert parse_weight_name("base_model.model.model.norm.weight") is None
    problems = adapter_problems(
        config,
        {
            "base_model.model.model.norm.weight": (4,),
            "base_model.model.model.layers.0.mlp.router.lora_A.weight": (2, 4),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (2, 4),
        },
    )
    assert "weight base_model.model.model.norm.weight: not a LoRA weight vLLM loads" in problems
    assert any("vLLM has no LoRA layer router" in p for p in problems)
    assert "model.layers.0.self_attn.q_proj has only lora_A" in problems
    assert adapter_problems({}, {}) == [
        "adapter_config.json has no r",
        "adapter_config.json has no lora_alpha",
        "adapter_config.json has no target_modules",
        "the adapter has no weights",
    ]


def test_short_target_modules_only_when_every_layer_is_adapted():
    full = [f"model.layers.{i}.self_attn.{m}" for i in range(2) for m in ("q_proj", "v_proj")]
    assert short_target_modules(full) == ["q_proj", "v_proj"]
    assert short_target_modules(full[:-1]) is None  # layer 1's v_proj is not adapted
    assert short_target_modules([f"model.layers.1.self_attn.{m}" for m in ("q_proj",)]) is None
    assert short_target_modules(["lm_head"]) is None


def test_serve_commands():
    assert max_lora_rank(16) == 16 and max_lora_rank(17) == 32 and max_lora_rank(300) == 320
    one = serve_command("/m/base", [("ft:b:shop:ftjob-1", "/a/shop")], 16)
    assert one == "vllm serve /m/base --enable-lora --lora-modules ft:b:shop:ftjob-1=/a/shop"
    two = serve_command("/m/base", [("a", "/x/a"), ("b", "/x/my b")], 64, "/x/t.jinja")
    assert two == (
        "vllm serve /m/base --enable-lora --chat-template /x/t.jinja --max-loras 2"
        " --max-lora-rank 64 --lora-modules a=/x/a 'b=/x/my b'"
    )
