"""The repository stands on its own: a clone has nothing beside it.

Everything the tests, examples and benchmarks read is inside the repository (tests/data holds
the real public files, with their sources and licences); nothing refers to a folder beside it,
such as the team's `../shared`.
"""

from __future__ import annotations

import re
import subprocess

from .conftest import DATA, ROOT

# a path that leaves the repository for a sibling folder named "shared", however it is spelt
BESIDE = re.compile(r"\.\./+shared|parents?\[\d\]\s*/\s*[\"']shared|parent\s*/\s*[\"']shared"
                    r"|[\"']\.\.[\"']\s*/\s*[\"']shared")  # fmt: skip


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--", *paths], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return out.stdout.split()


def test_nothing_refers_to_a_folder_beside_the_repository():
    names = tracked("tests", "bench", "examples", "docs", "Makefile", ".ci")
    assert "Makefile" in names and ".ci/run" in names and len(names) > 30
    found = []
    for name in names:
        path = ROOT / name
        if path.suffix in (".png", ".csv", ".xlsx", ".yaml") or name == "tests/test_repository.py":
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{name}: {m.group(0)}" for m in BESIDE.finditer(text)]
    assert found == []


def test_the_pattern_catches_each_spelling():
    for spelt in ('"../shared/data"', 'ROOT.parent / "shared"', "ROOT / '..' / 'shared'",
                  'Path(__file__).parents[2] / "shared"'):  # fmt: skip
        assert BESIDE.search(spelt), spelt


def test_every_data_file_is_tracked_and_named_in_the_readme():
    readme = (DATA / "README.md").read_text(encoding="utf-8")
    files = [p.name for p in DATA.iterdir() if p.name != "README.md"]
    assert {"sgd_taskoriented_small.csv", "openai-openapi-subset.yaml"} <= set(files)
    for name in files:
        assert f"`{name}`" in readme, f"{name} has no source and licence in tests/data/README.md"
    assert sorted(tracked("tests/data")) == sorted(f"tests/data/{n}" for n in [*files, "README.md"])
