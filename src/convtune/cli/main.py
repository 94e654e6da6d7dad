"""`convtune`: the command group and the one place errors become messages and exit codes."""

from __future__ import annotations

import os
import sys

import click

from ..errors import ConvtuneError
from .chat_cmd import chat
from .check_cmd import check
from .eval_cmd import eval_command, record
from .export_cmd import export
from .files_cmd import files
from .jobs_cmd import jobs
from .models_cmd import models
from .plot_cmd import plot
from .prepare_cmd import prepare
from .serve_cmd import serve
from .train_cmd import follow, train
from .ui_cmd import ui

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


@click.group(epilog=EXAMPLES, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="convtune")
def cli() -> None:
    """Turn conversation spreadsheets into checked datasets and fine-tuned models.

    Every command says more with --help: convtune COMMAND --help.
    """


for command in (
    prepare, check, train, follow, jobs, models, files, chat, eval_command, record, export, plot,
    serve, ui,
):
    cli.add_command(command)


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
