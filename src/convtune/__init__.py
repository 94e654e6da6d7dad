"""convtune: from conversation spreadsheets to fine-tuning datasets and fine-tuned chat models.

The library is the product; the `convtune` command line only parses, calls these, and renders.

    import convtune
    report = convtune.prepare("conversations.csv", "out/")
    check = convtune.check_file("out/conversations.train.jsonl", model="gpt-4o-mini-2024-07-18")
"""

from .dataset.check import check_file, detect_format, validate
from .dataset.conversation import Conversation, Message
from .dataset.examples import Example, ExampleBuilder, ExampleOptions
from .dataset.findings import Finding, Findings
from .dataset.modelinfo import ModelInfo, default_epochs, resolve_model
from .dataset.pipeline import PrepareOptions, PrepareReport, prepare
from .dataset.report import DatasetReport
from .dataset.split import split_stream
from .dataset.spreadsheet import SheetOptions, open_sheet
from .errors import ConvtuneError, InputError, OptionError, OutputExistsError
from .plot import (
    JobMetrics,
    NoMetrics,
    job_metrics,
    loss_figure,
    read_results,
    save_png,
    tokens_figure,
)

__all__ = [
    "Conversation",
    "ConvtuneError",
    "DatasetReport",
    "Example",
    "ExampleBuilder",
    "ExampleOptions",
    "Finding",
    "Findings",
    "InputError",
    "JobMetrics",
    "Message",
    "ModelInfo",
    "NoMetrics",
    "OptionError",
    "OutputExistsError",
    "PrepareOptions",
    "PrepareReport",
    "SheetOptions",
    "check_file",
    "default_epochs",
    "detect_format",
    "job_metrics",
    "loss_figure",
    "open_sheet",
    "prepare",
    "read_conversations",
    "read_results",
    "resolve_model",
    "save_png",
    "split_stream",
    "tokens_figure",
    "validate",
]


def read_conversations(path, options: SheetOptions | None = None):
    """The actors and the conversations of a spreadsheet, with the reading findings.

    Returns `(actors, conversations, findings)`; `conversations` is a list, for exploring a file
    in a notebook. `prepare` streams instead.
    """
    findings = Findings()
    sheet = open_sheet(path, options or SheetOptions(), findings)
    return sheet.actors, list(sheet.conversations), findings
