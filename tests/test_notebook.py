"""examples/finetune_from_conversations.ipynb: committed without outputs, and it runs.

The notebook is executed top to bottom with nbclient, as Jupyter would run it, on the tiny
model of tests/tiny_models.py and a few steps (its first cell reads CONVTUNE_NOTEBOOK_*).
"""

from __future__ import annotations

import base64
import io

import nbformat
import pytest

from .conftest import ROOT
from .tiny_models import make_tiny_model

NOTEBOOK = ROOT / "examples" / "finetune_from_conversations.ipynb"


def outputs(cell) -> list:
    return cell.get("outputs", [])


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has code cells"
    for cell in code:
        assert outputs(cell) == [], f"cell {cell.id} has outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {cell.id} has an execution count"
    assert nb.metadata.kernelspec.name == "python3"


def test_remote_cells_are_shown_not_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "OpenAIService" not in code and "base_url" not in code
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "OpenAIService(base_url=" in text and "--backend openai" in text
    assert "2027-01-06" in text


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    from nbclient import NotebookClient

    # untied: a model that says something, so that section 9 has answers to record
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny-model"), tied=False)
    out = tmp_path_factory.mktemp("notebook-out")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    with pytest.MonkeyPatch.context() as env:  # the kernel inherits the environment
        env.setenv("CONVTUNE_HOME", str(tmp_path_factory.mktemp("notebook-home")))
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("CONVTUNE_NOTEBOOK_MODEL", str(tiny))
        env.setenv("CONVTUNE_NOTEBOOK_EPOCHS", "1")
        env.setenv("CONVTUNE_NOTEBOOK_MAX_STEPS", "6")
        env.setenv("CONVTUNE_NOTEBOOK_OUT", str(out))
        env.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        client = NotebookClient(
            nb,
            kernel_name="python3",
            timeout=300,
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()  # raises CellExecutionError, with the cell and traceback, on any error
    return nb, out


def cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def png_of(c) -> bytes:
    [png] = [o["data"]["image/png"] for o in outputs(c) if "image/png" in o.get("data", {})]
    return base64.b64decode(png)


def test_notebook_runs_top_to_bottom(executed):
    nb, out = executed
    for c in nb.cells:
        assert not [o for o in outputs(c) if o["output_type"] == "error"], c.id
    assert "37 conversations" in "".join(o.get("text", "") for o in outputs(cell(nb, "read")))
    assert (out / "chat" / "conversations.train.jsonl").exists()
    assert (out / "legacy" / "conversations.train.jsonl").exists()
    assert (out / "loss.png").exists()


def test_notebook_shows_pictures_inline(executed):
    from matplotlib.image import imread

    nb, _ = executed
    for cell_id in ("histogram", "histogram-tight", "plot"):
        image = imread(io.BytesIO(png_of(cell(nb, cell_id))))
        assert image.shape[0] >= 500 and image.shape[1] >= 900, (cell_id, image.shape)


def test_notebook_progress_display_updates_in_place(executed):
    nb, _ = executed
    train = outputs(cell(nb, "train"))
    lines = [o for o in train if o["output_type"] == "display_data"]
    assert len(lines) == 1  # one line, updated in place: not one output per step
    text = lines[0]["data"]["text/plain"]
    assert text.startswith("succeeded: step 6/6") and "training loss" in text
    assert "<progress" in lines[0]["data"]["text/html"]
    log = "".join(o.get("text", "") for o in train if o["output_type"] == "stream")
    assert "Fine-tuning job started" in log and "fine-tuned model: ft:" in log


def test_section_9_records_and_evaluates(executed):
    nb, out = executed
    printed = "".join(o.get("text", "") for o in outputs(cell(nb, "record")))
    assert "recorded answers in" in printed and ": 0 errors" in printed
    assert (out / "golden.jsonl").is_file() and (out / "eval.html").is_file()
    table = "".join(o.get("data", {}).get("text/plain", "") for o in outputs(cell(nb, "eval")))
    assert "fuzzy_match" in table and "valid loss" in table
    scores = "".join(
        o.get("data", {}).get("text/plain", "") for o in outputs(cell(nb, "reference"))
    )
    assert "'string_check_eq': 1.0" in scores  # the recording model matches its own answers
