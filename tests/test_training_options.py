"""The training options are defined once: the CLI, the server and the trainer take the same set,
with the same ranges and the same words when a value is refused."""

from __future__ import annotations

import dataclasses

import click
import pytest

from convtune.cli.main import cli, main
from convtune.errors import OptionError
from convtune.local.training import WORKER_OPTIONS, TrainConfig
from convtune.server.jobs_api import CreateJob, DpoHyperparameters, Hyperparameters, LocalOptions
from convtune.service.training_options import TrainOptions, refuse_trainer_options, specs


def _cli_options() -> set[str]:
    command = cli.get_command(click.Context(cli), "train")
    return {p.name for p in command.params if isinstance(p, click.Option)}


def test_cli_server_and_trainer_accept_the_same_set():
    options = set(specs())
    # the CLI: one flag per option (and its own flags for files, names and following)
    assert options <= _cli_options()
    assert _cli_options() - options == {
        "validation_file", "model", "suffix", "seed", "metadata_items", "detach", "no_reuse",
        "backend", "base_url", "api_key",
    }  # fmt: skip
    # the server: OpenAI's method and hyperparameters (beta in method.dpo's), and convtune's own
    # body without what a client of a shared server may not choose (how many processes and
    # machines train, and how they meet)
    served = (
        {"method"}
        | set(DpoHyperparameters.model_fields)
        | set(Hyperparameters.model_fields)
        | set(LocalOptions.model_fields)
    )
    assert served == {n for n, s in specs().items() if s.api}
    launch = {"nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "fsdp"}
    assert options - served == launch
    # the trainer: every option reaches TrainConfig, or is the worker's (tokenizing, processes)
    derived = {
        f.metadata["option"] for f in dataclasses.fields(TrainConfig) if "option" in f.metadata
    }
    consumed = derived | {"full", "learning_rate_multiplier", *WORKER_OPTIONS}
    assert consumed == options


def test_every_option_changes_what_the_trainer_is_given():
    changed = TrainOptions(
        n_epochs=7,
        batch_size=3,
        learning_rate_multiplier=0.5,
        lora_r=4,
        lora_alpha=8,
        full=True,
        max_steps=9,
        precision="fp32",
    )
    config = TrainConfig.from_options(changed, 40, seed=5)
    assert (config.n_epochs, config.batch_size, config.lora_r, config.lora_alpha) == (7, 3, 4, 8)
    assert config.lora is False and config.max_steps == 9 and config.precision == "fp32"
    assert config.learning_rate == pytest.approx(2e-5 * 0.5)  # full fine-tuning's base rate
    assert config.resolved_hyperparameters() == {
        "n_epochs": 7, "batch_size": 3, "learning_rate_multiplier": 0.5,
    }  # fmt: skip
    auto = TrainConfig.from_options(TrainOptions(), 40)
    assert auto.resolved_hyperparameters() == {
        "n_epochs": 8, "batch_size": 2, "learning_rate_multiplier": 10.0,
    } and auto.lora  # fmt: skip
    assert TrainConfig.from_options(TrainOptions(), 100).resolved_hyperparameters() == {
        "n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 10.0,
    }  # fmt: skip
    assert TrainConfig.from_options(TrainOptions(), 100).learning_rate == pytest.approx(2e-3)
    big = TrainConfig.from_options(TrainOptions(full=True), 5000)
    assert (big.n_epochs, big.batch_size, big.learning_rate) == (3, 8, pytest.approx(2e-5))


@pytest.mark.parametrize(
    ("name", "bad"),
    [("n_epochs", 51), ("batch_size", 0), ("lora_r", 0), ("max_length", 8), ("precision", "fp8")],
)
def test_one_range_refuses_a_value_everywhere(name, bad, capsys):
    spec = specs()[name]
    # the library (and through it the worker) and the trainer
    with pytest.raises(OptionError, match=name):
        TrainOptions(**{name: bad})
    if name != "max_length":
        with pytest.raises(OptionError, match=name):
            TrainConfig(**{name: bad})
    # the server's request model
    body = {"model": "m", "training_file": "file-abc"}
    if spec.hyperparameter:
        body["hyperparameters"] = {name: bad}
    else:
        body["convtune"] = {name: bad}
    with pytest.raises(ValueError):
        CreateJob.model_validate(body)
    # the CLI, before any file is read
    code = main(["train", "missing.jsonl", "--" + name.replace("_", "-"), str(bad)])
    assert code == 2
    assert "--" + name.replace("_", "-") in capsys.readouterr().err


def test_unknown_stored_options_are_errors_not_ignored():
    with pytest.raises(OptionError, match="unknown training option: lora_rank"):
        TrainOptions.from_dict({"lora_rank": 8})
    assert TrainOptions.from_dict({"lora_r": 8}).lora_r == 8


def test_trainer_options_are_refused_by_name_on_a_backend_without_our_trainer():
    with pytest.raises(OptionError, match=r"^lora_r, max_steps: options of the local backend"):
        refuse_trainer_options(["max_steps", "lora_r"])
    with pytest.raises(OptionError, match=r"^--lora-r: "):
        refuse_trainer_options(["lora_r"], flags=True)
    assert TrainOptions(lora_r=8, n_epochs=2).changed_trainer_options() == ["lora_r"]


def test_qlora_is_refused_when_the_job_is_created_not_when_it_trains(tmp_path):
    """On a machine without a CUDA GPU (and bitsandbytes), --quantize-base 4bit is one line at
    once: no job is recorded, no worker started."""
    from convtune import JobRequest, LocalService

    data = tmp_path / "t.jsonl"
    data.write_text(
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}\n'
    )
    service = LocalService()
    file = service.files.upload(data)
    with pytest.raises(OptionError, match="quantize_base 4bit: QLoRA needs a CUDA GPU"):
        service.jobs.create(
            JobRequest("SmolLM2-135M-Instruct", file.id, options=TrainOptions(quantize_base="4bit"))
        )
    assert service.jobs.list() == []
