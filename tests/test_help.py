"""Every command and subcommand says what it does in one line and shows an example."""

from __future__ import annotations

import click
import pytest

from convtune.cli.main import cli, main


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(cli))


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"prepare", "check", "train", "follow", "jobs pause", "files delete", "serve", "plot"} <= names
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("path,command", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_one_line_summary_and_an_example(path, command, capsys):
    summary = command.get_short_help_str(limit=80)
    assert summary and not summary.endswith("..."), summary  # whole, in the command list too
    assert "\nconvtune " in "\n" + "\n".join(
        line.strip() for line in (command.epilog or "").splitlines()
    ), f"no example in the help of convtune {' '.join(path)}"
    assert main([*path, "--help"]) == 0
    shown = capsys.readouterr().out
    assert summary.split()[0] in shown and "convtune " in shown.split("Example")[-1]
