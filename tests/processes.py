"""Real processes on the tests' terms: a Ctrl-C that reaches them, a worker held still.

- `popen_ctrl_c(args)`: a command whose Ctrl-C (SIGINT) works as in a terminal. A test run in
  the background (a non-interactive shell's `cmd &`, some CI runners) inherits SIGINT ignored,
  and a Python child started from it then never raises KeyboardInterrupt: such a test would
  time out for a reason that has nothing to do with convtune.
- `stop_unlocked(pid, database)`, `go_on(pid)`: a job's worker stopped (SIGSTOP) for a while,
  never while it holds the store's write lock, then let go (SIGCONT). A test that needs a job
  still running after something slow (a server restart) holds it instead of training for longer
  than the slowest machine might take: it costs no more on an idle machine than on a loaded one.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL);"
    " os.execv(sys.argv[1], sys.argv[1:])"
)


def popen_ctrl_c(args: list[str], **kw) -> subprocess.Popen:
    """`subprocess.Popen(args, **kw)` with SIGINT's default action restored before the exec,
    and the child's Python unbuffered, so that a test can read its output line by line."""
    env = dict(kw.pop("env", None) or os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", _DEFAULT_SIGINT, *map(str, args)], env=env, **kw)


def stop_unlocked(pid: int, database: Path, timeout: float = 60.0) -> None:
    """SIGSTOP process group `pid` at a moment it holds no write lock on `database`.

    A worker stopped inside a write transaction would block every other writer (a server's
    start, another worker's claim of a slot) until it is let go: after stopping it, take the
    write lock for an instant; if it is held, let the worker go on a little and try again.
    """
    deadline = time.monotonic() + timeout
    while True:
        os.killpg(pid, signal.SIGSTOP)
        db = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # locked: by the stopped worker, or by someone else
            os.killpg(pid, signal.SIGCONT)
            assert time.monotonic() < deadline, f"{database} stayed locked"
            time.sleep(0.02)
        finally:
            db.close()


def go_on(pid: int) -> None:
    """Let a process group stopped by `stop_unlocked` go on."""
    os.killpg(pid, signal.SIGCONT)
