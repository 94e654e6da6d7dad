"""convtune: from conversation spreadsheets to fine-tuning datasets and fine-tuned chat models.

The library is the product; the `convtune` command line only parses, calls these, and renders.

    import convtune
    report = convtune.prepare("conversations.csv", "out/")
    check = convtune.check_file("out/conversations.train.jsonl", model="gpt-4o-mini-2024-07-18")
    service = convtune.LocalService()  # or convtune.OpenAIService(base_url=...)
    job = service.create_job(convtune.JobRequest("SmolLM2-135M-Instruct", ...))

The two services load on first use (`LocalService` needs no torch until it trains; importing
the openai SDK costs a second or more), so `import convtune` stays quick.
"""

from .charts import loss_figure, save_png, tokens_figure
from .contract import (
    Capabilities,
    ChatRequest,
    FineTuningService,
    JobRequest,
    Ownership,
    Unsupported,
)
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
from .metrics import JobMetrics, NoMetrics, job_metrics
from .results_csv import read_results
from .training_options import TrainOptions

_LAZY = {
    "LocalService": ".local.local_service",
    "OpenAIService": ".openai_backend.openai_service",
}


def __getattr__(name: str):
    """`convtune.LocalService` and `convtune.OpenAIService`, imported when first asked for."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'convtune' has no attribute {name!r}")


__all__ = [
    "Capabilities",
    "ChatRequest",
    "Conversation",
    "ConvtuneError",
    "DatasetReport",
    "Example",
    "ExampleBuilder",
    "ExampleOptions",
    "Finding",
    "Findings",
    "FineTuningService",
    "InputError",
    "JobMetrics",
    "JobRequest",
    "LocalService",
    "Message",
    "ModelInfo",
    "NoMetrics",
    "OpenAIService",
    "OptionError",
    "OutputExistsError",
    "Ownership",
    "PrepareOptions",
    "PrepareReport",
    "SheetOptions",
    "TrainOptions",
    "Unsupported",
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
