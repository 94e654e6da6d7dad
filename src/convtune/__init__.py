"""convtune: from conversation spreadsheets to fine-tuning datasets and fine-tuned chat models.

The library is the product; the `convtune` command line only parses, calls these, and renders.

    import convtune
    report = convtune.prepare("conversations.csv", "out/")
    check = convtune.check_file("out/conversations.train.jsonl", model="gpt-4o-mini-2024-07-18")
    service = convtune.connect("local")  # or convtune.connect("openai", base_url=...)
    job = service.jobs.create(convtune.JobRequest("SmolLM2-135M-Instruct", ...))

Every name loads on first use (`LocalService` needs no torch until it trains; importing the
openai SDK costs a second or more), so `import convtune` stays quick and small.
"""

# Every public name, and the module it comes from: each is imported when first asked for, so that
# `import convtune.dataset.pipeline` (what `convtune prepare` and its token-counting process
# run) loads no more than it needs. Importing the openai SDK costs a second or more, torch more;
# even the standard library's hashlib, subprocess or xml cost a few MB of memory each.
_LAZY = {
    "Capabilities": ".service.contract",
    "Chat": ".service.contract",
    "Files": ".service.contract",
    "Jobs": ".service.contract",
    "Models": ".service.contract",
    "connect": ".backends",
    "ChatRequest": ".service.contract",
    "Conversation": ".dataset.conversation",
    "ConvtuneError": ".errors",
    "DatasetReport": ".dataset.report",
    "Example": ".dataset.examples",
    "ExampleBuilder": ".dataset.examples",
    "ExampleOptions": ".dataset.examples",
    "Finding": ".dataset.findings",
    "Findings": ".dataset.findings",
    "FineTuningService": ".service.contract",
    "InputError": ".errors",
    "JobMetrics": ".metrics.job_metrics",
    "JobRequest": ".service.contract",
    "LocalService": ".local.local_service",
    "Message": ".dataset.conversation",
    "ModelInfo": ".dataset.modelinfo",
    "NoMetrics": ".metrics.job_metrics",
    "OpenAIService": ".openai_backend.openai_service",
    "OptionError": ".errors",
    "OutputExistsError": ".errors",
    "Ownership": ".service.contract",
    "PrepareOptions": ".dataset.pipeline",
    "PrepareReport": ".dataset.pipeline",
    "SheetOptions": ".dataset.spreadsheet",
    "TrainOptions": ".service.training_options",
    "Unsupported": ".service.contract",
    "check_file": ".dataset.check",
    "default_epochs": ".dataset.modelinfo",
    "detect_format": ".dataset.check",
    "job_metrics": ".metrics.job_metrics",
    "loss_figure": ".metrics.charts",
    "open_sheet": ".dataset.spreadsheet",
    "prepare": ".dataset.pipeline",
    "read_results": ".metrics.results_csv",
    "resolve_model": ".dataset.modelinfo",
    "save_png": ".metrics.charts",
    "split_stream": ".dataset.split",
    "tokens_figure": ".metrics.tokens_chart",
    "validate": ".dataset.check",
}


def __getattr__(name: str):
    """`convtune.NAME`, imported from its module when first asked for."""
    import importlib

    if name == "backends":  # the registry, a module of its own
        return importlib.import_module(".backends", __name__)
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # asked once
        return value
    raise AttributeError(f"module 'convtune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "backends"})


__all__ = [
    "Capabilities",
    "Chat",
    "ChatRequest",
    "Conversation",
    "ConvtuneError",
    "DatasetReport",
    "Example",
    "ExampleBuilder",
    "ExampleOptions",
    "Files",
    "Finding",
    "Findings",
    "FineTuningService",
    "InputError",
    "JobMetrics",
    "JobRequest",
    "Jobs",
    "LocalService",
    "Message",
    "ModelInfo",
    "Models",
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
    "backends",
    "check_file",
    "connect",
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


def read_conversations(path, options=None):
    """The actors and the conversations of a spreadsheet, with the reading findings.

    Returns `(actors, conversations, findings)`; `conversations` is a list, for exploring a file
    in a notebook. `prepare` streams instead. `options`: a `SheetOptions`.
    """
    from .dataset.findings import Findings
    from .dataset.spreadsheet import SheetOptions, open_sheet

    findings = Findings()
    sheet = open_sheet(path, options or SheetOptions(), findings)
    return sheet.actors, list(sheet.conversations), findings
