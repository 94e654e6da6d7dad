"""`convtune`: the command group and the one place errors become messages and exit codes."""

from __future__ import annotations

import os
import sys

import click

from ..errors import ConvtuneError

# name -> module:attribute, in the order --help lists them. A command's module is imported only
# when that command runs (or --help lists them all): `convtune prepare` never loads eval's numpy
# and graders, serve's FastAPI or export's gguf, which keeps it quick and under 100 MB.
COMMANDS = {
    "prepare": "prepare_cmd:prepare",
    "check": "check_cmd:check",
    "train": "train_cmd:train",
    "follow": "train_cmd:follow",
    "jobs": "jobs_cmd:jobs",
    "models": "models_cmd:models",
    "files": "files_cmd:files",
    "chat": "chat_cmd:chat",
    "eval": "eval_cmd:eval_command",
    "record": "eval_cmd:record",
    "migrate": "migrate_cmd:migrate",
    "export": "export_cmd:export",
    "plot": "plot_cmd:plot",
    "serve": "serve_cmd:serve",
    "ui": "ui_cmd:ui",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported when first resolved (click's documented
    pattern for large CLIs)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *sorted(set(super().list_commands(ctx)) - set(COMMANDS))]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return super().get_command(ctx, cmd_name)
        import importlib

        module, attribute = COMMANDS[cmd_name].split(":")
        command = getattr(importlib.import_module(f".{module}", __package__), attribute)
        assert command.name == cmd_name, (command.name, cmd_name)
        return command


EXAMPLES = """
\b
Examples:
  convtune prepare conversations.csv -o out/
  convtune check out/conversations.train.jsonl --model gpt-4o-mini-2024-07-18
  convtune train out/conversations.train.jsonl --validation-file out/conversations.valid.jsonl
  convtune chat ft:SmolLM2-135M-Instruct::ftjob-abc123 --message "Hello"
  convtune plot ftjob-abc123 -o loss.png
  convtune eval SmolLM2-135M-Instruct ft:SmolLM2-135M-Instruct::ftjob-abc123 --data out/x.valid.jsonl
"""


@click.group(
    cls=LazyGroup, epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(package_name="convtune")
def cli() -> None:
    """Turn conversation spreadsheets into checked datasets and fine-tuned models.

    Every command says more with --help: convtune COMMAND --help.
    """


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; library errors become one line on stderr and exit code 1 (2 for usage)."""
    try:
        code = cli.main(args=argv, prog_name="convtune", standalone_mode=False)
    except click.Abort:
        click.echo("convtune: aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except ConvtuneError as exc:
        click.echo(f"convtune: error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("convtune: interrupted", err=True)
        return 130
    except BrokenPipeError:  # `convtune check x | head`
        return 0
    except Exception as exc:  # never a traceback for a user; one line and a way to see more
        if os.environ.get("CONVTUNE_DEBUG"):
            raise
        click.echo(
            f"convtune: internal error: {type(exc).__name__}: {exc}"
            " (set CONVTUNE_DEBUG=1 for the traceback, and please report it)",
            err=True,
        )
        return 70
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
