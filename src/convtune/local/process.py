"""The worker processes of local jobs: starting one, knowing whether it lives, stopping it.

A job's worker runs in its own session (`start_new_session`), so that it outlives the terminal
or the server that started it; it is signalled as a process group, which under torchrun covers
every rank. Whether a pid still runs *this job's* worker is read from /proc (a pid can be
recycled; a zombie is not alive), so any process can tell, not only the one that started it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..service.training_options import TrainOptions

WORKER_MODULE = "convtune.local.worker"
# what a worker must not inherit from the process that starts it: the server's keys
PRIVATE_ENVIRONMENT = ("CONVTUNE_API_KEYS",)
_GONE = (OSError, subprocess.TimeoutExpired, ChildProcessError)  # a process already gone


@dataclass(frozen=True)
class Launch:
    """How a job's processes start and meet: one process, `nproc` on this machine, or a share
    of a run over `nnodes` machines that meet at node 0 (torchrun's static rendezvous). A job
    keeps it in its options, so a resumed job starts the way it first did."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int = 29500

    @classmethod
    def of(cls, options: TrainOptions) -> Launch:
        return cls(
            int(options.nproc_per_node or 1),
            int(options.nnodes or 1),
            int(options.node_rank or 0),
            options.master_addr,
            int(options.master_port or 29500),
        )

    def torchrun_args(self) -> list[str] | None:
        """torchrun's arguments, or None for a single process. On one machine `--standalone`
        picks a free port, so that two jobs never meet each other."""
        if self.nnodes == 1 and self.nproc == 1:
            return None
        if self.nnodes == 1:
            rendezvous = ["--standalone"]
        else:
            rendezvous = [
                f"--nnodes={self.nnodes}",
                f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
            ]
        return [*rendezvous, f"--nproc-per-node={self.nproc}"]


def worker_command(job_id: str, launch: Launch = Launch(), *, resume: bool = False) -> list[str]:
    """`python -m convtune.local.worker JOB`, or under torchrun for several processes."""
    args = launch.torchrun_args()
    if args is not None:
        torchrun = str(Path(sys.executable).with_name("torchrun"))
        command = [torchrun, *args, "-m", WORKER_MODULE, job_id]
    else:
        command = [sys.executable, "-m", WORKER_MODULE, job_id]
    return [*command, "--resume"] if resume else command


def start_worker(
    job_id: str, home: Path, log: Path, launch: Launch = Launch(), *, resume: bool = False
) -> subprocess.Popen:
    """Start the job's worker in a new session, its output appended to `log`."""
    env = dict(os.environ, CONVTUNE_HOME=str(home), PYTHONUNBUFFERED="1")
    for name in PRIVATE_ENVIRONMENT:
        env.pop(name, None)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            worker_command(job_id, launch, resume=resume),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )


def process_alive(pid: int, job_id: str) -> bool:
    """True if `pid` runs this job's worker (not a zombie, not a recycled pid)."""
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z":
                with contextlib.suppress(*_GONE):
                    os.waitpid(pid, os.WNOHANG)
                return False
            return job_id.encode() in (proc / "cmdline").read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def stop_group(pid: int, alive: Callable[[], bool], grace: float) -> bool:
    """SIGTERM the process group (a worker stops after its current step), then SIGKILL if it
    still runs after `grace` seconds; True if it had to be killed."""
    with contextlib.suppress(*_GONE):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive():
        time.sleep(0.1)
    if not alive():
        return False
    with contextlib.suppress(*_GONE):
        os.killpg(pid, signal.SIGKILL)
    return True


def reap(child: subprocess.Popen | None, timeout: float = 10) -> None:
    """Wait for a child this process started (so it leaves no zombie), if it is gone soon."""
    if child is not None:
        with contextlib.suppress(*_GONE):
            child.wait(timeout=timeout)


def last_line(path: Path, limit: int = 300) -> str:
    """The last non-blank line of a worker's log: usually why it died."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:limit] if lines else ""
