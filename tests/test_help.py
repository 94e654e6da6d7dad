"""Every command and subcommand says what it does in one line and shows an example."""

from __future__ import annotations

import click
import pytest

from convtune.cli.main import cli, main


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        context = click.Context(command)
        for name in command.list_commands(context):  # the lazy group's too
            yield from _commands(command.get_command(context, name), (*path, name))


COMMANDS = list(_commands(cli))


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {
        "prepare",
        "check",
        "train",
        "follow",
        "jobs pause",
        "files delete",
        "serve",
        "plot",
    } <= names
    assert len(COMMANDS) > 20


@pytest.mark.parametrize(
    "path,command", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_one_line_summary_and_an_example(path, command, capsys):
    summary = command.get_short_help_str(limit=80)
    assert summary and not summary.endswith("..."), summary  # whole, in the command list too
    assert "\nconvtune " in "\n" + "\n".join(
        line.strip() for line in (command.epilog or "").splitlines()
    ), f"no example in the help of convtune {' '.join(path)}"
    assert main([*path, "--help"]) == 0
    shown = capsys.readouterr().out
    assert summary.split()[0] in shown and "convtune " in shown.split("Example")[-1]


def test_prepare_and_check_load_no_heavy_library(tmp_path):
    """Commands are imported when they run: `prepare` and `check` never load eval's graders,
    torch, FastAPI, the openai SDK or gguf, which keeps them quick and their peak
    memory under BENCHMARKS.md's 100 MB."""
    import subprocess
    import sys

    from .conftest import EXAMPLE

    heavy = ("torch", "transformers", "fastapi", "openai", "gguf", "rapidfuzz", "sacrebleu")
    code = (
        "import sys\n"
        "from convtune.cli.main import main\n"
        f"assert main(['prepare', {str(EXAMPLE)!r}, '-o', {str(tmp_path)!r}]) == 0\n"
        f"assert main(['check', {str(tmp_path / 'conversations.train.jsonl')!r}]) == 0\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
