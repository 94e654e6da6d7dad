"""Training past one process, on existing engines (torchrun, gloo on the CPU): two "machines"
on localhost that meet by torchrun's static rendezvous, each with its own data folder as two
real machines would have; and FSDP2 (`fully_shard`) over two processes, LoRA included.

A tiny random model stands in for SmolLM2 (tests/tiny_models.py); every job runs in real worker
processes started by the real CLI.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from convtune.errors import OptionError
from convtune.local.local_service import LocalService
from convtune.local.process import Launch, worker_command
from convtune.service.training_options import TrainOptions

from .conftest import ROOT
from .servers import wait_for
from .test_local_trainer import PAIRS
from .tiny_models import make_tiny_model

CONVTUNE = str(ROOT / ".venv" / "bin" / "convtune")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    """24 chat examples (the trainer tests' memorizable pairs, 4 times): 3 steps of 8 an epoch."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    lines = [
        json.dumps(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        )
        for q, a in PAIRS * 4
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def convtune(home: Path, *args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "CONVTUNE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [CONVTUNE, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env
    )


def job_id_from(output: str) -> str:
    return next(word for word in output.split() if word.startswith("ftjob-"))


def losses(service: LocalService, job_id: str) -> list[float]:
    events = service.jobs.list_events(job_id, limit=200)
    steps = {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics"}
    return [steps[s] for s in sorted(steps)]


def wait_done(service: LocalService, job_id: str, timeout: float = 240):
    return wait_for(lambda: (job := service.jobs.get(job_id)).done and job, timeout)


def wait_status(service: LocalService, job_id: str, statuses: tuple[str, ...], timeout=240):
    return wait_for(lambda: (job := service.jobs.get(job_id)).status in statuses and job, timeout)


def test_two_nodes_train_the_model_one_process_would(tiny, chats, tmp_path):
    """Node 0 and node 1, each a job in its own data folder, train one model together: node 0's
    job has it (and it chats), node 1's ends without one; the run used node 0's seed, and its
    losses are those of one process training alone with that seed."""
    port = free_port()
    common = ["--model", tiny, "--n-epochs", 2, "--batch-size", 8, "--learning-rate-multiplier", 50]
    node = [tmp_path / "node0", tmp_path / "node1"]
    rendezvous = ["--nnodes", 2, "--master-addr", "127.0.0.1", "--master-port", port]
    started = [
        convtune(
            node[0], "train", chats, *common, *rendezvous, "--node-rank", 0, "--seed", 7, "--detach"
        ),
        convtune(
            node[1],
            "train",
            chats,
            *common,
            *rendezvous,
            "--node-rank",
            1,
            "--seed",
            99,
            "--detach",
        ),
    ]
    for result in started:
        assert result.returncode == 0, result.stderr
    jobs = [job_id_from(r.stdout) for r in started]
    services = [LocalService(home) for home in node]
    done = [wait_done(s, j) for s, j in zip(services, jobs, strict=True)]
    assert [job.status for job in done] == ["succeeded", "succeeded"], [j.error for j in done]
    leader, follower = done
    assert leader.fine_tuned_model and follower.fine_tuned_model is None
    assert follower.seed == 7  # node 0's seed, recorded where it was not the job's own
    said = [e.message for e in services[1].jobs.list_events(jobs[1], limit=100)]
    assert any("Node 1 of 2 done; node 0 (127.0.0.1) saved the model" in m for m in said)
    assert losses(services[1], jobs[1]) == []  # node 0 reports the metrics

    # the workers ran under torchrun with the rendezvous the job keeps for a resume
    spec = services[1].store.job_spec(jobs[1])
    command = worker_command(jobs[1], Launch.of(spec.options), resume=True)
    assert command[0].endswith("torchrun") and command[-1] == "--resume"
    for flag in ("--nnodes=2", "--node-rank=1", "--master-addr=127.0.0.1", f"--master-port={port}"):
        assert flag in command

    alone = convtune(tmp_path / "alone", "train", chats, *common, "--seed", 7)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    single = LocalService(tmp_path / "alone")
    two_nodes = losses(services[0], jobs[0])
    assert len(two_nodes) == 6
    assert two_nodes == pytest.approx(losses(single, job_id_from(alone.stdout)), rel=1e-3)
    assert two_nodes[-1] < two_nodes[0] - 0.1  # it learned

    chat = convtune(node[0], "chat", leader.fine_tuned_model, "-m", "Hello", "--max-tokens", 4)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr


def test_nodes_with_different_files_fail_with_a_reason(tiny, chats, tmp_path):
    other = tmp_path / "other.jsonl"
    lines = chats.read_text(encoding="utf-8").splitlines()
    other.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    port = free_port()
    rendezvous = ["--nnodes", 2, "--master-addr", "127.0.0.1", "--master-port", port, "--detach"]
    started = [
        convtune(tmp_path / "a", "train", chats, "--model", tiny, *rendezvous, "--node-rank", 0),
        convtune(tmp_path / "b", "train", other, "--model", tiny, *rendezvous, "--node-rank", 1),
    ]
    jobs = [job_id_from(r.stdout) for r in started]
    for home, job_id in zip((tmp_path / "a", tmp_path / "b"), jobs, strict=True):
        job = wait_done(LocalService(home), job_id)
        assert job.status == "failed"
        assert "the training file of rank 1 is not the one of rank 0" in job.error.message


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"nnodes": 2}, "nnodes above 1 needs master_addr"),
        ({"nnodes": 2, "node_rank": 2, "master_addr": "h"}, "node_rank must be below nnodes (2)"),
        ({"fsdp": True}, "fsdp shards across processes"),
        ({"fsdp": True, "nproc_per_node": 2, "quantize_base": "4bit"}, "fsdp: not with quantize"),
        ({"master_addr": " "}, "master_addr must be a host name"),
    ],
)
def test_launch_options_are_checked_together(options, problem):
    with pytest.raises(OptionError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        TrainOptions(**options)


def test_the_cli_refuses_a_node_without_its_master_before_uploading(tiny, chats, tmp_path):
    result = convtune(tmp_path, "train", chats, "--model", tiny, "--nnodes", "2")
    assert result.returncode != 0
    assert "nnodes above 1 needs master_addr" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "files").exists() or not any((tmp_path / "files").iterdir())


def test_launch_commands():
    assert Launch().torchrun_args() is None
    assert worker_command("ftjob-x")[1:] == ["-m", "convtune.local.worker", "ftjob-x"]
    assert Launch(nproc=2).torchrun_args() == ["--standalone", "--nproc-per-node=2"]
    assert Launch(2, 3, 1, "10.0.0.1", 29600).torchrun_args() == [
        "--nnodes=3",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29600",
        "--nproc-per-node=2",
    ]


def test_two_nodes_pause_together_and_resume_where_node_0_stopped(tiny, chats, tmp_path):
    """Pausing one node's job (here node 1's, which holds no checkpoint) stops both nodes after
    the same step; both jobs are paused (not cancelled), node 0 keeps the checkpoint, and
    resuming each job brings the run back from it."""
    port = free_port()
    node = [tmp_path / "node0", tmp_path / "node1"]
    args = ["--model", tiny, "--n-epochs", 8, "--batch-size", 2, "--seed", 5, "--detach"]
    args += ["--nnodes", 2, "--master-addr", "127.0.0.1", "--master-port", port]
    started = [
        convtune(home, "train", chats, *args, "--node-rank", r) for r, home in enumerate(node)
    ]
    jobs = [job_id_from(r.stdout) for r in started]
    services = [LocalService(home) for home in node]
    wait_for(lambda: len(losses(services[0], jobs[0])) >= 3, 180)
    paused = convtune(node[1], "jobs", "pause", jobs[1])
    assert paused.returncode == 0, paused.stderr
    for service, job_id in zip(services, jobs, strict=True):
        assert wait_status(
            service, job_id, ("paused", "cancelled", "failed", "succeeded")
        ).status == ("paused")
    checkpoints = services[0].jobs.list_checkpoints(jobs[0])  # epochs' and the pause's
    stopped_at = max(c.step_number for c in checkpoints)
    assert 3 <= stopped_at < 96 and services[1].jobs.list_checkpoints(jobs[1]) == []

    for home, job_id in zip(node, jobs, strict=True):
        resumed = convtune(home, "jobs", "resume", job_id, "--detach")
        assert resumed.returncode == 0, resumed.stderr
    done = [wait_done(s, j) for s, j in zip(services, jobs, strict=True)]
    assert [job.status for job in done] == ["succeeded", "succeeded"], [j.error for j in done]
    said = [e.message for e in services[0].jobs.list_events(jobs[0], limit=300)]
    assert any(f"resuming from step {stopped_at}" in m for m in said)
    assert len(losses(services[0], jobs[0])) == 96  # every step once: none twice, none lost


FSDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from convtune.local.loss_masks import tokenize_records
    from convtune.local.training import TrainConfig, train

    folder, out, fsdp = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "1"
    pairs, batch_size = json.loads(sys.argv[4]), int(sys.argv[5])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    records = [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in pairs
    ]
    examples, _ = tokenize_records(records, tokenizer, max_length=128)
    config = TrainConfig(
        n_epochs=2, batch_size=batch_size, learning_rate=3e-3, precision="fp32", seed=3,
        fsdp=fsdp,
    )

    def run(resume=None):
        model = AutoModelForCausalLM.from_pretrained(folder)
        metrics = []

        def on_epoch_end(epoch, step, save):
            if epoch == 1:
                save(out.with_suffix(".ckpt"))

        result = train(
            model, tokenizer, examples, examples[:5], config, resume=resume,
            on_metrics=lambda m: metrics.append(m.train_loss), on_epoch_end=on_epoch_end,
        )
        if fsdp:
            return metrics, result.weights
        named = result.model.named_parameters()
        return metrics, {n: p.detach() for n, p in named if p.requires_grad}

    metrics, weights = run()
    resumed_metrics, resumed = run(out.with_suffix(".ckpt"))  # from the end of epoch 1
    rank = int(os.environ.get("RANK", "0"))
    torch.save(
        {"metrics": metrics, "weights": weights, "resumed": resumed,
         "resumed_metrics": resumed_metrics},
        f"{out}.rank{rank}.pt",
    )
    """
)


def run_fsdp_script(tiny: Path, tmp_path: Path, batch_size: int) -> tuple[dict, dict, dict]:
    """(one process, FSDP rank 0, FSDP rank 1): what the script saved."""
    script = tmp_path / "fsdp_train.py"
    script.write_text(FSDP_SCRIPT, encoding="utf-8")
    pairs = [("Hello", "Hey"), ("Good morning", "Good morning to you"), ("Oh okey", "Yeah")]
    data = json.dumps(pairs * 5)  # 15 examples
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    for name, command in (
        ("single", [sys.executable]),
        ("fsdp", [torchrun, "--standalone", "--nproc-per-node=2"]),
    ):
        flag = "1" if name == "fsdp" else "0"
        ran = subprocess.run(
            [*command, str(script), str(tiny), str(tmp_path / name), flag, data, str(batch_size)],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert ran.returncode == 0, ran.stderr[-3000:]
    return tuple(
        torch.load(tmp_path / f"{name}.pt") for name in ("single.rank0", "fsdp.rank0", "fsdp.rank1")
    )


def test_fsdp_over_two_processes_trains_as_one_process_does(tiny, tmp_path):
    """FSDP2 with LoRA over two gloo processes: the same losses and adapters as one unsharded
    process; rank 0 gets the trained adapters whole; a checkpoint it wrote resumes exactly."""
    one, sharded, other = run_fsdp_script(tiny, tmp_path, batch_size=5)  # 3 steps an epoch
    assert (
        sharded["metrics"] == pytest.approx(one["metrics"], rel=1e-5) and len(one["metrics"]) == 6
    )
    assert other["metrics"] == [] and other["weights"] is None  # rank 0 reports and holds them
    assert set(sharded["weights"]) == set(one["weights"])  # the adapters, not the tied head
    assert all("lora_" in name for name in sharded["weights"])
    for name, weight in one["weights"].items():
        assert torch.allclose(sharded["weights"][name], weight, atol=1e-5), name
        assert torch.equal(sharded["resumed"][name], sharded["weights"][name]), name
    assert sharded["resumed_metrics"] == sharded["metrics"][3:]


def test_fsdp_ranks_with_nothing_to_train_keep_in_step(tiny, tmp_path):
    """One example a step over two processes: rank 1 has none, and still takes part in every
    gather and reduction (a pass that counts for nothing), so the run ends, as one process's."""
    one, sharded, _ = run_fsdp_script(tiny, tmp_path, batch_size=1)
    assert len(one["metrics"]) == 30
    assert sharded["metrics"] == pytest.approx(one["metrics"], rel=1e-5)
    for name, weight in one["weights"].items():
        assert torch.allclose(sharded["weights"][name], weight, atol=1e-5), name


def test_an_fsdp_job_saves_a_model_that_chats(tiny, chats, tmp_path):
    home = tmp_path / "home"
    valid = tmp_path / "valid.jsonl"
    valid.write_text("".join(chats.read_text(encoding="utf-8").splitlines(True)[:6]))
    trained = convtune(
        home, "train", chats, "--validation-file", valid, "--model", tiny, "--n-epochs", 2,
        "--batch-size", 8, "--nproc-per-node", 2, "--fsdp",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-2000:] + trained.stderr[-2000:]
    job_id = job_id_from(trained.stdout)
    service = LocalService(home)
    job = service.jobs.get(job_id)
    assert job.status == "succeeded" and job.fine_tuned_model
    said = [e.message for e in service.jobs.list_events(job_id, limit=200)]
    assert any("sharded (FSDP) across 2 processes, keeping the last epoch" in m for m in said)
    assert any(m.startswith("Did it learn?") for m in said)  # the verdict, on rank 0's copy
    assert len(service.jobs.list_checkpoints(job_id)) == 2  # gathered at each epoch end
    merged = Path(service.store.get_model(job.fine_tuned_model)["path"])
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(merged).config.vocab_size > 0
    chat = convtune(home, "chat", job.fine_tuned_model, "-m", "Hello", "--max-tokens", 4)
    assert chat.returncode == 0 and chat.stdout.strip(), chat.stderr
