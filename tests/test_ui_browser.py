"""The web page in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright,
against a real `convtune serve`, through the whole flow a person takes: the key, a spreadsheet,
its report, the saved files, a job on a tiny model followed live (paused and resumed), a
streamed chat side by side with the base model, a comparison, a deletion; a broken spreadsheet;
a phone-sized screen.

These tests are never skipped: without chromium or playwright they fail and say how to install
them (`.ci/run` installs chromium; Playwright's own browser download needs a network, and is
never used). Their screenshots go to a temporary folder: the README's pictures, on the real
SmolLM2, are docs/screenshots.py's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import EXAMPLE, ROOT
from .servers import serve
from .tiny_models import make_tiny_model

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
STEPS = 200
PREFERENCES = ROOT / "examples" / "preferences.csv"
BAD_QUOTE = b'Human;AI\nHello;Hi there\n"Broken;oops\nGood;Fine\n'


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: pip install -e '.[dev]' (make test does it)")
    expect.set_options(timeout=30_000)  # two shared cores: a busy server answers slowly
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(
            "chromium is not installed: apt-get install chromium (Debian's package; .ci/run"
            " installs it). Never `playwright install`: it downloads a browser of its own."
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with serve(tmp_path_factory.mktemp("ui-browser-home")) as server:
        yield server


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # untied: a random model that says something (nonsense), so that a reply shows
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny-chat", tied=False)


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shots")


class Page:
    """A browser tab on the server, and the JavaScript errors it met (none is allowed)."""

    def __init__(self, browser, served, viewport) -> None:
        self.context = browser.new_context(viewport=viewport, is_mobile=viewport is PHONE)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.root = served.url.removesuffix("v1")
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def close(self) -> None:
        self.context.close()
        assert self.errors == []


@pytest.fixture
def tab(browser, served):
    opened = []

    def open_tab(viewport=LAPTOP):
        opened.append(Page(browser, served, viewport))
        return opened[-1]

    yield open_tab
    for one in opened:
        one.close()


def shot(page, shots: Path, name: str) -> None:
    page.screenshot(path=str(shots / f"ui-{name}.png"), full_page=True)


def test_the_whole_flow_in_a_browser(tab, served, tiny, shots):
    from playwright.sync_api import expect

    page = tab().page
    root = served.url.removesuffix("v1")

    # the key: a wrong one is refused at its field; the right one, entered with the keyboard
    page.goto(root)
    key = page.get_by_label("API key", exact=True)
    expect(key).to_be_focused()
    key.fill("sk-wrong")
    key.press("Enter")
    expect(page.locator("#key-input-error")).to_contain_text("The server refused this key")
    expect(key).to_have_attribute("aria-invalid", "true")
    key.fill(served.key)
    key.press("Enter")
    expect(page.locator("#page-data")).to_be_visible()
    assert served.key not in page.url

    # data: the report and the first examples, then the files saved
    page.get_by_label("Spreadsheet (CSV or .xlsx)").set_input_files(EXAMPLE)
    expect(page.locator("#prepare-result")).to_be_visible()
    expect(page.locator("#prepare-stats")).to_contain_text("Conversations37")
    expect(page.locator("#preview > li")).to_have_count(5)
    expect(page.locator("#preview pre").first).to_contain_text('{"messages": [{"role": "user"')
    expect(page.locator("#prepare-findings")).to_contain_text("line 90")
    expect(page.locator("#prepare-checks")).to_contain_text("no error")
    assert page.locator("#histogram rect").count() > 5
    expect(page.locator("#prepare-cost")).to_contain_text("$")
    page.get_by_label("Context", exact=True).fill("3")  # an option changed: prepared again
    page.get_by_label("Context", exact=True).blur()
    # the third reply of the first conversation: 3 messages of context now, not 5
    expect(page.locator("#preview > li:nth-child(3) .bubble")).to_have_count(4)
    shot(page, shots, "data")
    page.get_by_role("button", name="Save as training files").click()
    expect(page.locator("#saved")).to_contain_text("conversations.valid.jsonl")
    page.get_by_role("link", name="Train on them →").click()

    # train: the form made from the options' description
    expect(page.locator("#page-train")).to_be_visible()
    expect(page.get_by_label("Training file")).not_to_have_value("")
    epochs = page.get_by_label("Epochs", exact=True)
    expect(epochs).to_have_attribute("max", "50")
    assert page.locator("#option-nproc_per_node").count() == 0  # not for clients
    expect(page.get_by_label("Method", exact=True)).to_have_value("supervised")
    expect(page.locator("#option-beta")).to_be_hidden()  # DPO's: shown when dpo is chosen
    page.get_by_label("Base model").fill("no-such-model")  # the server's refusal, at its field
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#job-model-error")).to_contain_text("unknown base model 'no-such-model'")
    page.get_by_label("Base model").fill(str(tiny))
    epochs.fill("0")  # the option's range, from its description
    page.get_by_role("button", name="Start training").click()
    expect(page.locator("#option-n_epochs-error")).to_contain_text("an integer from 1 to 50")
    epochs.fill("")
    page.get_by_label("Batch size").fill("1")
    page.get_by_text("Trainer options").click()
    page.get_by_label("Max steps").fill(str(STEPS))
    shot(page, shots, "train")
    page.get_by_role("button", name="Start training").click()

    # the job, live: points arrive, a pause keeps its place, a resume finishes it
    expect(page.locator("#page-job")).to_be_visible()
    chart = page.locator("#loss-chart")
    expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]"), timeout=60_000)
    page.get_by_role("button", name="Pause").click()
    expect(page.locator("#job-status")).to_have_text("paused", timeout=60_000)
    at_pause = int(chart.get_attribute("data-points"))
    assert 0 < at_pause < STEPS
    expect(page.locator("#checkpoints tbody")).to_contain_text(f"ckpt-step-{at_pause}")
    page.get_by_role("button", name="Resume").click()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=90_000)
    expect(chart).to_have_attribute("data-points", str(STEPS))
    expect(page.locator("#job-progress-text")).to_have_text("Done.")
    expect(page.locator("#events")).to_contain_text("New fine-tuned model created")
    # the job answered held-out validation prompts: its verdict, and answers side by side
    expect(page.locator("#job-verdict")).to_be_visible()
    verdict = re.compile(r"^(Better than|Worse than|No clear difference from) ")
    expect(page.locator("#job-verdict-text")).to_have_text(verdict)
    expect(page.locator("#job-verdict-text")).to_contain_text("fuzzy_match")
    expect(page.locator("#job-verdict-examples tbody tr")).to_have_count(3)
    expect(page.get_by_role("button", name="Cancel")).to_be_disabled()
    assert page.locator("#loss-chart .series.train circle").count() == STEPS
    shot(page, shots, "job")
    job_url = page.url

    # chat: the fine-tuned model and its base, side by side, their replies streamed
    page.get_by_role("link", name="Chat with the model").click()
    expect(page.locator("#page-models")).to_be_visible()
    expect(page.get_by_label("Model", exact=True)).to_have_value(re.compile(f"^ft:{tiny.name}:"))
    model = page.get_by_label("Model", exact=True).input_value()
    expect(page.get_by_label("Side by side with")).to_have_value(tiny.name)
    page.get_by_label("Longest reply (tokens)").fill("16")
    page.get_by_label("Temperature").fill("0")
    with page.expect_response("**/v1/chat/completions") as streamed:
        page.get_by_label("Message", exact=True).fill("Hello")
        page.get_by_label("Message", exact=True).press("Enter")
    assert streamed.value.headers["content-type"].startswith("text/event-stream")
    expect(page.locator("#chat-send")).to_be_enabled(timeout=60_000)
    replies = page.locator(".chat-column .bubble.assistant")
    expect(replies).to_have_count(2)
    for reply in replies.all():
        assert reply.inner_text().strip()  # the untied tiny model says something
    expect(page.locator(".bubble.streaming")).to_have_count(0)

    # compare: convtune eval's page in a sandboxed frame, its own script running
    page.get_by_label("First model").select_option(tiny.name)
    page.get_by_label("Second model").select_option(model)
    page.get_by_label("Examples", exact=True).fill("2")
    page.get_by_role("button", name="Compare", exact=True).click()
    report = page.frame_locator("#compare-report")
    expect(report.locator("h1")).to_contain_text("convtune eval: conversations.valid.jsonl")
    expect(report.locator("th[data-sortable]").first).to_have_attribute("tabindex", "0")
    shot(page, shots, "models")

    # delete, after a confirmation (kept on "Keep it")
    row = page.locator("#models tbody tr", has_text=model)
    row.get_by_role("button", name="Delete").click()
    page.get_by_role("button", name="Keep it").click()
    expect(row).to_have_count(1)
    row.get_by_role("button", name="Delete").click()
    page.locator("#confirm-ok").click()
    expect(page.locator("#models tbody tr", has_text=model)).to_have_count(0)

    # a phone: the job's page fits the screen's width
    phone = tab(PHONE).page
    phone.goto(f"{root}#key={served.key}")
    phone.goto(job_url)
    expect(phone.locator("#job-status")).to_have_text("succeeded")
    expect(phone.locator("#loss-chart")).to_have_attribute("data-points", str(STEPS))
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    shot(phone, shots, "phone")


def test_preference_data_and_a_dpo_job_in_a_browser(tab, served, tiny):
    """A spreadsheet with a column of rejected replies becomes preference pairs on the Data
    page; the Train page sends OpenAI's method object for DPO, with beta; the job's page says
    its method and its reward margin."""
    from playwright.sync_api import expect

    one = tab()
    page = one.page
    page.goto(f"{one.root}#key={served.key}")
    page.get_by_label("Format", exact=True).select_option("preference")
    page.get_by_label("Spreadsheet (CSV or .xlsx)").set_input_files(PREFERENCES)
    expect(page.locator("#prepare-result")).to_be_visible()
    expect(page.locator("#preview pre").first).to_contain_text('"preferred_output"')
    page.get_by_role("button", name="Save as training files").click()
    expect(page.locator("#saved")).to_contain_text("preferences.valid.jsonl")
    page.get_by_role("link", name="Train on them →").click()

    expect(page.locator("#page-train")).to_be_visible()
    page.get_by_label("Base model").fill(str(tiny))
    method = page.get_by_label("Method", exact=True)
    method.select_option("dpo")
    expect(page.locator("#option-beta")).to_be_visible()
    page.get_by_label("Beta", exact=True).fill("0.25")
    page.get_by_label("Epochs", exact=True).fill("1")
    page.get_by_label("Batch size").fill("4")
    with page.expect_response("**/v1/fine_tuning/jobs") as created:
        page.get_by_role("button", name="Start training").click()
    sent = created.value.request.post_data_json
    assert sent["method"] == {
        "type": "dpo",
        "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 1, "batch_size": 4}},
    }
    expect(page.locator("#page-job")).to_be_visible()
    expect(page.locator("#job-status")).to_have_text("succeeded", timeout=120_000)
    details = page.locator("#job-details")
    expect(details).to_contain_text("DPO (preference)")
    expect(details).to_contain_text("beta 0.25")
    expect(details).to_contain_text(
        re.compile(r"Reward margin, accuracy-?\d+\.\d{3}, \d+% at step")
    )


def test_a_broken_spreadsheet_is_named_with_its_line_at_the_file_field(tab, served):
    from playwright.sync_api import expect

    one = tab()
    page = one.page
    page.goto(f"{one.root}#key={served.key}")
    # the router marks the page current once the options are loaded and its controls listen
    expect(page.locator('nav a[data-page="data"][aria-current="page"]')).to_be_visible()
    field = page.get_by_label("Spreadsheet (CSV or .xlsx)")
    field.set_input_files({"name": "support.csv", "mimeType": "text/csv", "buffer": BAD_QUOTE})
    error = page.locator("#sheet-file-error")
    expect(error).to_contain_text("support.csv, line 3: a quote opens a cell here and never closes")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("button", name="Save as training files")).to_be_disabled()
    expect(page.locator("#prepare-result")).to_be_hidden()


def test_a_one_conversation_sheet_is_counted_in_the_singular(tab, served):
    from playwright.sync_api import expect

    one = tab()
    page = one.page
    page.goto(f"{one.root}#key={served.key}")
    expect(page.locator('nav a[data-page="data"][aria-current="page"]')).to_be_visible()
    sheet = {"name": "one.csv", "mimeType": "text/csv", "buffer": b"Human;AI\nHello;Hi there\n"}
    page.get_by_label("Spreadsheet (CSV or .xlsx)").set_input_files(sheet)
    stats = page.locator("#prepare-stats")
    expect(stats).to_contain_text("Training1 example, 1 conversation")
    expect(stats).not_to_contain_text("1 examples")
    expect(stats).not_to_contain_text("1 conversations")
    expect(page.locator("#prepare-checks")).to_contain_text("no error, 1 warning.")


def test_the_data_form_has_a_field_for_every_prepare_option(tab, served):
    """The form is built from prepare's one definition: one field per option the page's request
    takes, labelled as the definition says."""
    from playwright.sync_api import expect

    from convtune.dataset.prepare_options import OPTIONS

    one = tab()
    page = one.page
    page.goto(f"{one.root}#key={served.key}")
    expect(page.locator('nav a[data-page="data"][aria-current="page"]')).to_be_visible()
    for option in (o for o in OPTIONS if o.api):
        expect(page.locator(f"#opt-{option.name.replace('_', '-')}")).to_have_count(1)
        if option.form in ("main", "more"):
            expect(page.locator(f"label[for=opt-{option.name.replace('_', '-')}]")).to_have_text(
                option.label
            )
