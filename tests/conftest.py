"""Shared fixtures: paths, a user data folder isolated per test, a spreadsheet writer."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
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


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not here (shared/ sits beside the project in CI)")
    return path
