"""The engines that generate local answers: CTranslate2 beside transformers.

A tiny random Llama (tests/tiny_models.py, untied so that it says something) stands in for
SmolLM2; the prompts are the bundled example's validation conversations. CTranslate2 in float32
must give transformers' greedy answers token for token; in int8 it must answer, stream, stop
and sample as the transformers path does. `bench/engines.py` measures speed and SmolLM2's
agreement (BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from convtune import PrepareOptions, prepare
from convtune.errors import OptionError
from convtune.local.chat import LocalChat
from convtune.local.engines import choose, converted
from convtune.local.local_service import LocalService
from convtune.service.contract import ChatRequest

from .conftest import EXAMPLE, ROOT
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), tied=False)


@pytest.fixture(scope="module")
def valid_file(tmp_path_factory) -> Path:
    """The bundled example's validation file."""
    report = prepare(EXAMPLE, tmp_path_factory.mktemp("data"), PrepareOptions(force=True))
    return Path(report.outputs[1])


@pytest.fixture(scope="module")
def prompts(valid_file) -> list[list[dict[str, str]]]:
    """The bundled example's validation conversations, up to their last reply."""
    lines = valid_file.read_text(encoding="utf-8").splitlines()
    conversations = [json.loads(line)["messages"] for line in lines]
    return [m[:-1] if m[-1]["role"] == "assistant" else m for m in conversations]


def chat(home: Path, model: Path, engine: str, max_batch: int = 8) -> LocalChat:
    service = LocalService(home, engine=engine, max_batch=max_batch)
    return service.chat.model(str(model))


def answer(chat: LocalChat, messages, **kw) -> tuple[str, str | None]:
    request = ChatRequest("m", messages, kw.pop("max_tokens", 24), kw.pop("temperature", 0.0), **kw)
    reply = chat.reply(request)
    text = "".join(reply)
    return text, reply.finish_reason


def test_float32_gives_transformers_greedy_answers(tiny, prompts, tmp_path):
    exact = chat(tmp_path, tiny, "ctranslate2-float32")
    reference = chat(tmp_path, tiny, "transformers", max_batch=1)
    assert exact.engine.label == "ctranslate2 float32" and exact.model is None
    assert reference.engine.label == "transformers float32"
    differ = [i for i, m in enumerate(prompts) if answer(exact, m)[0] != answer(reference, m)[0]]
    assert differ == [], f"{len(differ)} of {len(prompts)} answers differ"
    assert any(answer(reference, m)[0].strip() for m in prompts)  # it says something


def test_replies_asked_together_are_the_ones_asked_alone(tiny, prompts, tmp_path):
    engine = chat(tmp_path, tiny, "ctranslate2-float32")
    alone = [answer(engine, m)[0] for m in prompts[:12]]
    together: dict[int, str] = {}

    def ask(i: int) -> None:
        together[i] = answer(engine, prompts[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [together[i] for i in range(12)] == alone


def test_int8_streams_stops_and_samples_as_the_transformers_path(tiny, prompts, tmp_path):
    fast = chat(tmp_path, tiny, "ctranslate2")
    assert fast.engine.label == "ctranslate2 int8"
    messages = prompts[0]
    text, finish = answer(fast, messages, max_tokens=5)
    assert finish == "length" and fast.tokenizer(text, add_special_tokens=False)["input_ids"]
    reply = fast.reply(ChatRequest("m", messages, 12, 0.0))
    pieces = list(reply)
    assert len(pieces) > 1 and reply.completion_tokens <= 12  # streamed, piece by piece
    full, _ = answer(fast, messages, max_tokens=24)
    stop = full.strip().split()[1]
    cut, finish = answer(fast, messages, max_tokens=24, stop=[stop])
    assert finish == "stop" and stop not in cut and full.startswith(cut)
    seeded = [answer(fast, messages, temperature=1.0, seed=7)[0] for _ in range(2)]
    assert seeded[0] == seeded[1]  # a seed gives the same reply
    others = {answer(fast, messages, temperature=1.0, seed=s)[0] for s in range(8, 14)}
    assert len(others) > 1  # sampling samples


def test_a_model_is_converted_once_and_again_when_it_changes(tiny, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for path in tiny.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    first = converted(model, tmp_path, "ctranslate2")
    stamp = (first / "model.bin").stat().st_mtime_ns
    assert converted(model, tmp_path, "ctranslate2") == first  # not again
    assert (first / "model.bin").stat().st_mtime_ns == stamp
    weights = model / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    again = converted(model, tmp_path, "ctranslate2")  # retrained: converted again
    assert again != first and (again / "model.bin").is_file()
    assert sorted(p.name for p in again.parent.iterdir()) == sorted([first.name, again.name])


def test_engines_are_refused_in_one_line_where_they_cannot_answer(tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(OptionError, match="not proven here for GPT2LMHeadModel"):
        choose("ctranslate2", folder)
    with pytest.raises(OptionError, match="no folder of weights"):
        choose("ctranslate2-float32", None)
    assert choose("auto", folder).name == "transformers"  # auto stays on transformers
    with pytest.raises(OptionError, match="engine must be one of"):
        LocalService(tmp_path, engine="vllm")


def test_chat_and_eval_take_engine_and_eval_says_which_answered(tiny, valid_file, tmp_path):
    env = {**os.environ, "CONVTUNE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}

    def run(*args) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CONVTUNE, *map(str, args)], capture_output=True, text=True, env=env, timeout=300
        )

    said = run("chat", tiny, "-m", "Hello", "--temperature", "0", "--engine", "ctranslate2")
    assert said.returncode == 0 and said.stdout.strip(), said.stderr
    wrong = run("chat", tiny, "-m", "Hello", "--engine", "vllm")
    assert wrong.returncode == 2 and "'vllm' is not one of" in wrong.stderr
    data = tmp_path / "valid.jsonl"
    data.write_text("".join(valid_file.read_text(encoding="utf-8").splitlines(True)[:4]))
    results = {}
    for engine in ("ctranslate2", "transformers"):
        ran = run("eval", tiny, "--data", data, "--max-tokens", 8, "--json", "--engine", engine)
        assert ran.returncode == 0, ran.stderr
        (model,) = json.loads(ran.stdout)["models"]
        results[engine] = model
    assert results["ctranslate2"]["engine"] == "ctranslate2 int8"
    assert results["transformers"]["engine"] == "transformers float32"


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_the_other_proven_families_answer_as_transformers(tiny, prompts, family, tmp_path):
    """Qwen2 (q/k/v biases) and Mistral: float32 CTranslate2 gives transformers' greedy
    answers, as for Llama. Outputs untied, so that a random model says something (tied ones,
    as SmolLM2's: bench/engines.py, 25 greedy answers of 25 identical)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = AutoConfig.for_model(
        family, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=False,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(3)
        model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path / family
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    exact = chat(tmp_path, folder, "ctranslate2-float32")
    reference = chat(tmp_path, folder, "transformers", max_batch=1)
    asked = prompts[:6]
    expected = [answer(reference, m)[0] for m in asked]
    assert [answer(exact, m)[0] for m in asked] == expected
    assert any(text.strip() for text in expected)  # the model says something


def test_a_repetition_penalty_is_refused_rather_than_answered_otherwise(tiny, tmp_path):
    """A generation config with a repetition penalty (as Qwen2's instruct models have):
    CTranslate2 would count repetitions in the reply only, transformers in the prompt too, so
    the engine is refused in one line rather than answer otherwise."""
    folder = tmp_path / "penalised"
    folder.mkdir()
    for path in tiny.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "generation_config.json").read_text(encoding="utf-8"))
    (folder / "generation_config.json").write_text(
        json.dumps({**config, "repetition_penalty": 1.3})
    )
    with pytest.raises(OptionError, match="penalises repetitions"):
        choose("ctranslate2", folder)
    assert choose("transformers", folder).name == "transformers"
