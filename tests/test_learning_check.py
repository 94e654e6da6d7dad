"""Did the job learn? The held-out prompts a job answers, the checkpoint it keeps and its verdict,
on real validation files (the bundled example's) and real graders."""

from __future__ import annotations

import json

import pytest

from convtune import PrepareOptions, prepare
from convtune.local.learning_check import (
    MIN_VERDICT,
    PROBE_SIZE,
    VERDICT_LIMIT,
    ProbeResult,
    best,
    held_out,
    probed,
    verdict,
)

from .conftest import EXAMPLE


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    return prepare(EXAMPLE, out, PrepareOptions(force=True)).outputs[1]


def write(tmp_path, n: int):
    path = tmp_path / "valid.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_the_probe_and_the_verdict_are_seeded_samples(valid):
    held = held_out(valid, seed=0)
    assert held.total == 25 and len(held.probe) == PROBE_SIZE
    # the last model kept: nothing was chosen, every prompt judges it
    assert held.verdict_prompts(chosen=False) == (held.whole, False) and len(held.whole) == 25
    # an earlier checkpoint kept: the prompts that chose it are left out
    rest, shared = held.verdict_prompts(chosen=True)
    assert len(rest) == 25 - PROBE_SIZE and not shared
    assert not {p.index for p in held.probe} & {p.index for p in rest}
    assert [p.index for p in held.probe] == sorted(p.index for p in held.probe)
    assert [p.index for p in held.answered] == list(range(25))
    assert held_out(valid, seed=0).probe == held.probe  # the same job, the same prompts
    assert held_out(valid, seed=1).probe != held.probe


def test_a_large_file_gives_a_verdict_of_modest_size_and_a_small_one_says_it_shares(tmp_path):
    large = held_out(write(tmp_path, 300), seed=0)
    assert len(large.whole) == len(large.rest) == VERDICT_LIMIT
    assert {p.index for p in large.probe} <= {p.index for p in large.whole}
    small = held_out(write(tmp_path, PROBE_SIZE + MIN_VERDICT - 1), seed=0)
    prompts, shared = small.verdict_prompts(chosen=True)
    assert shared and len(prompts) == PROBE_SIZE + MIN_VERDICT - 1


def test_the_best_answers_win_and_a_tie_goes_to_the_later_step():
    results = [
        ProbeResult(3, 30, [], {"fuzzy_match": 0.5, "rouge_l": 0.2}),
        ProbeResult(4, 40, [], {"fuzzy_match": 0.6, "rouge_l": 0.1}),
        ProbeResult(5, 50, [], {"fuzzy_match": 0.6, "rouge_l": 0.1}),
        ProbeResult(6, 55, [], {"fuzzy_match": 0.55, "rouge_l": 0.9}),
    ]
    assert best(results).step == 50  # 0.05 better than the last: kept; a tie: the later
    near = [*results[:3], ProbeResult(6, 55, [], {"fuzzy_match": 0.59, "rouge_l": 0.0})]
    assert best(near).step == 55  # within the margin of the best: the last, trained the most
    tied = [
        ProbeResult(1, 10, [], {"fuzzy_match": 0.6, "rouge_l": 0.3}),
        ProbeResult(2, 20, [], {"fuzzy_match": 0.6, "rouge_l": 0.1}),
        ProbeResult(3, 30, [], {"fuzzy_match": 0.4, "rouge_l": 0.1}),
    ]
    assert best(tied).step == 10  # fuzzy_match first, rouge_l breaks ties
    assert [probed(s, 100) for s in (10, 50, 51, 100)] == [False, False, True, True]


def test_the_verdict_says_better_worse_or_no_clear_difference(valid):
    held = held_out(valid, seed=0)
    prompts = held.rest
    references = [p.reference for p in prompts]
    nonsense = ["I cannot help with that today." for _ in prompts]
    better = verdict("base", prompts, nonsense, references, shared=False)
    assert better.word == "better"
    [fuzzy, rouge] = better.graders
    assert fuzzy.grader == "fuzzy_match" and fuzzy.tuned == 1.0 and fuzzy.difference.low > 0
    assert rouge.grader == "rouge_l" and rouge.word == "better"
    assert better.message().startswith(
        f"Did it learn? The fine-tune against base on {len(prompts)}"
    )
    assert "fuzzy_match +" in better.message() and ": better" in better.message()
    assert verdict("base", prompts, references, nonsense, shared=False).word == "worse"
    same = verdict("base", prompts, nonsense, nonsense, shared=True)
    assert same.word == "no clear difference" and "including those that chose" in same.message()
    data = better.to_dict()
    assert data["graders"][0]["verdict"] == "better" and len(data["examples"]) == 3
    assert data["examples"][0]["reference"] == references[0][:300]


def test_the_kept_checkpoint_is_loaded_into_the_model(tmp_path):
    """When an earlier epoch's answers scored best, its checkpoint's weights become the model's."""
    from types import SimpleNamespace

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from convtune.local.answer_check import AnswerCheck
    from convtune.local.loss_masks import tokenize_records
    from convtune.local.training import TrainConfig, train

    from .tiny_models import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    records = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": f"a{i}"},
            ]
        }
        for i in range(8)
    ]
    examples, _ = tokenize_records(list(enumerate(records, 1)), tokenizer, max_length=64)
    steps = {}

    def on_epoch_end(epoch, step, save):
        save(tmp_path / "checkpoints" / f"step-{step}")
        steps[epoch] = step

    config = TrainConfig(n_epochs=3, batch_size=4, learning_rate=1e-2, threads=1)
    result = train(model, tokenizer, examples, None, config, on_epoch_end=on_epoch_end)
    events = []
    run = SimpleNamespace(folder=tmp_path, event=lambda message, **kw: events.append(message))
    check = AnswerCheck(run, None, tokenizer, "chat", None)
    check.results = [
        ProbeResult(1, steps[1], [], {"fuzzy_match": 0.9, "rouge_l": 0.5}),
        ProbeResult(3, steps[3], [], {"fuzzy_match": 0.2, "rouge_l": 0.5}),
    ]

    def lora_b() -> dict[str, torch.Tensor]:
        return {
            n.replace(".default", ""): p.detach().clone()
            for n, p in result.model.named_parameters()
            if "lora_B" in n
        }

    last = lora_b()
    check._keep_best(result.model, steps[3])
    kept = lora_b()
    adapter = (
        tmp_path / "checkpoints" / f"step-{steps[1]}" / "adapter" / "adapter_model.safetensors"
    )
    saved = {n: w for n, w in load_file(str(adapter)).items() if "lora_B" in n}
    assert saved and set(saved) == set(kept)
    for name, weight in saved.items():
        torch.testing.assert_close(kept[name], weight)
    assert any(not torch.equal(kept[n], last[n]) for n in kept)  # epoch 1's, not the last
    assert events[-1].startswith(f"Keeping the model of epoch 1 (step {steps[1]})")
    assert "--keep-last keeps the last" in events[-1]
