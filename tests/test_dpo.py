"""Preference fine-tuning (DPO): the loss, learning on a tiny model, and the job through the CLI
and through `convtune serve` with the real openai SDK.

The learning test measures what DPO is for with a forward pass of its own (plain transformers,
not the trainer's code): on held-out prompts, the fine-tune gives the preferred reply more
log-probability, relative to the rejected one, than the base model did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from convtune.dataset.preference import PreferencePair, pair_record
from convtune.local.training import TrainConfig, train
from convtune.local.training.dpo import dpo_losses, tokenize_pairs
from convtune.service.training_options import TrainOptions

from .conftest import ROOT
from .servers import Conformance, serve, wait_for
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")
WORDS = ["Certainly", "gladly", "help", "Go", "away"]
PREFERRED, REJECTED = "Certainly, gladly help", "Go away"
TRAIN_QUESTIONS = [
    "Hello",
    "Good morning",
    "Can you read me the news?",
    "Open the pod bay doors please",
    "Is there something you can do?",
    "Oh okey",
]
HELD_OUT = ["Hey", "Yeah", "You should know"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-dpo"), vocab_words=WORDS)


def load(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def pairs(questions: list[str], *, rejected: str | None = REJECTED) -> list[PreferencePair]:
    return [
        PreferencePair([{"role": "user", "content": q}], PREFERRED, rejected, line)
        for line, q in enumerate(questions, start=1)
    ]


def write_chat(path: Path) -> Path:
    """A one-example chat file: data of the other method, for refusals."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    path.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    return path


def write_pairs(path: Path, questions: list[str]) -> Path:
    lines = [
        json.dumps(pair_record([{"role": "user", "content": q}], PREFERRED, REJECTED))
        for q in questions
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def margin(model, tokenized) -> float:
    """Mean over pairs of log p(preferred) - log p(rejected), the replies' tokens only."""
    gaps = []
    for pair in tokenized:
        totals = []
        for sequence in (pair.preferred, pair.rejected):
            ids = torch.tensor([sequence.input_ids])
            labels = torch.tensor(sequence.labels[1:])
            with torch.no_grad():
                log_probs = model(ids).logits[0, :-1].log_softmax(-1)
            trained = labels != -100
            totals.append(log_probs[trained].gather(1, labels[trained][:, None]).sum().item())
        gaps.append(totals[0] - totals[1])
    return sum(gaps) / len(gaps)


def test_the_loss_is_the_dpo_papers():
    policy = torch.tensor([-3.0, -5.0, -2.0])  # preferred, rejected, a supervised row
    reference = torch.tensor([-4.0, -4.5, -9.0])
    counts = torch.tensor([3, 2, 4])
    losses, margins, wins = dpo_losses(policy, reference, counts, [(0, 1), (2, None)], beta=0.5)
    ratio = (-3.0 - -4.0) - (-5.0 - -4.5)  # 1.5: the preferred gained, the rejected lost
    assert losses[0].item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * ratio))))
    assert margins[0].item() == pytest.approx(0.75) and wins[0].item() == 1.0
    assert losses[1].item() == pytest.approx(2.0 / 4)  # the supervised row: mean token loss
    assert math.isnan(margins[1].item()) and wins[1].item() == 0.0


def test_dpo_learns_to_prefer_the_preferred_reply_on_held_out_prompts(tiny):
    model, tokenizer = load(tiny)
    train_pairs, stats = tokenize_pairs(pairs(TRAIN_QUESTIONS), tokenizer, max_length=128)
    held_out, _ = tokenize_pairs(pairs(HELD_OUT), tokenizer, max_length=128)
    assert stats.examples == 6 and stats.trained_tokens > 0 and not stats.truncated
    before = margin(model, held_out)
    config = TrainConfig(
        n_epochs=5,
        batch_size=2,
        learning_rate=1e-2,
        precision="fp32",
        threads=1,
        method="dpo",
        beta=0.1,
    )
    metrics = []
    result = train(model, tokenizer, train_pairs, held_out, config, on_metrics=metrics.append)
    after = margin(result.model, held_out)
    assert after > before + 1.0, (before, after)
    # the first step's policy is the reference: every margin is 0 and the loss is log 2
    assert metrics[0].train_loss == pytest.approx(math.log(2), abs=1e-4)
    assert metrics[0].train_reward_margin == pytest.approx(0.0, abs=1e-5)
    last = metrics[-1]
    assert last.train_reward_accuracy == 1.0 and last.train_reward_margin > 0.1
    assert last.valid_reward_accuracy == 1.0 and last.valid_reward_margin > 0.1
    assert last.valid_loss < math.log(2) and 0 <= last.train_mean_token_accuracy <= 1
    assert result.steps == 15 and result.trained_tokens > 0


def test_rows_without_a_rejected_reply_are_learned_as_supervised(tiny):
    model, tokenizer = load(tiny)
    supervised, _ = tokenize_pairs(pairs(TRAIN_QUESTIONS, rejected=None), tokenizer, max_length=128)
    assert all(p.rejected is None for p in supervised)
    config = TrainConfig(
        n_epochs=4, batch_size=3, learning_rate=1e-2, precision="fp32", threads=1, method="dpo"
    )
    metrics = []
    train(model, tokenizer, supervised, None, config, on_metrics=metrics.append)
    assert metrics[-1].train_loss < metrics[0].train_loss - 0.1
    assert all(m.train_reward_margin is None for m in metrics)  # no pair to measure


def test_beta_is_for_dpo_only():
    from convtune.errors import OptionError

    with pytest.raises(OptionError, match="beta applies to method dpo only"):
        TrainOptions(beta=0.2)
    assert TrainOptions(method="dpo").requested_hyperparameters() == {
        "n_epochs": "auto",
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "beta": "auto",
    }
    assert "beta" not in TrainOptions().requested_hyperparameters()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("serve-dpo-home")) as server:
        yield server


def test_serve_trains_dpo_as_openai_takes_it(served, tiny, tmp_path):
    """`method: {"type": "dpo", "dpo": {"hyperparameters": {"beta": ...}}}`, exactly as
    OpenAI's API takes it; the job reports it, its results have the reward columns, and its
    model chats. A chat file for a DPO job fails validation, saying why."""
    conformance = Conformance()
    client = conformance.openai(served)
    train_file = write_pairs(tmp_path / "prefs.train.jsonl", TRAIN_QUESTIONS)
    valid_file = write_pairs(tmp_path / "prefs.valid.jsonl", HELD_OUT)
    with train_file.open("rb") as f:
        train_id = client.files.create(file=f, purpose="fine-tune").id
    with valid_file.open("rb") as f:
        valid_id = client.files.create(file=f, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model=str(tiny),
        training_file=train_id,
        validation_file=valid_id,
        method={
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 3, "batch_size": 2}},
        },
    )
    assert job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    done = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).status
                    in ("succeeded", "failed", "cancelled") and j)  # fmt: skip
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.supervised is None
    assert done.method.dpo.hyperparameters.beta == 0.2
    events = client.fine_tuning.jobs.list_events(job.id, limit=1000).data
    rewards = [e.data for e in events if e.type == "metrics" and "train_reward_margin" in e.data]
    assert len(rewards) == 9 and rewards[0]["step"] == 9  # newest first
    assert any("DPO with beta 0.2" in e.message for e in events)
    results = client.files.content(done.result_files[0]).text.splitlines()
    assert results[0].endswith("train_reward_accuracy,train_reward_margin,valid_reward_accuracy,"
                               "valid_reward_margin")  # fmt: skip
    reply = client.chat.completions.create(
        model=done.fine_tuned_model,
        messages=[{"role": "user", "content": "Hey"}],
        max_tokens=8,
        temperature=0,
    )
    assert isinstance(reply.choices[0].message.content, str)

    chat_file = write_chat(tmp_path / "chat.jsonl")
    with chat_file.open("rb") as f:
        chat_id = client.files.create(file=f, purpose="fine-tune").id
    wrong = client.fine_tuning.jobs.create(
        model=str(tiny), training_file=chat_id, method={"type": "dpo"}
    )
    failed = wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(wrong.id)).status
                      in ("succeeded", "failed", "cancelled") and j)  # fmt: skip
    assert failed.status == "failed"
    assert "DPO trains on preference pairs, not chat examples" in failed.error.message

    import openai

    with pytest.raises(openai.BadRequestError, match=r"method\.supervised is given"):
        client.fine_tuning.jobs.create(
            model=str(tiny),
            training_file=train_id,
            method={"type": "dpo", "supervised": {"hyperparameters": {"n_epochs": 1}}},
        )
    with pytest.raises(openai.BadRequestError, match="not available"):
        client.fine_tuning.jobs.create(
            model=str(tiny), training_file=train_id, method={"type": "reinforcement"}
        )


def test_train_refuses_data_of_the_other_method_before_uploading(tmp_path, isolated_home):
    import subprocess

    chat = write_chat(tmp_path / "chat.jsonl")
    prefs = write_pairs(tmp_path / "prefs.jsonl", TRAIN_QUESTIONS)
    for path, flags, said in (
        (chat, ["--method", "dpo"], "DPO trains on preference pairs, not chat examples"),
        (prefs, [], "supervised fine-tuning trains on chat examples, not preference data"),
        (chat, ["--beta", "0.2"], "beta applies to method dpo only"),
    ):
        result = subprocess.run(
            [CONVTUNE, "train", str(path), *flags], capture_output=True, text=True, timeout=60
        )
        assert result.returncode != 0 and said in result.stderr, result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (isolated_home / "files").exists() or not any((isolated_home / "files").iterdir())
