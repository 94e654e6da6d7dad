"""Take the README's pictures of the web page: `.venv/bin/python docs/screenshots.py`.

Why: the browser tests (tests/test_ui_browser.py) can write these pictures too, but they train
a tiny random model, so their chat shows nonsense. A reader must see what they will get: this
script walks the page's whole flow on the real default model, SmolLM2-135M-Instruct, and the
bundled example examples/conversations.csv, and asks both the base model and its fine-tune a
question whose answer is in the data.

What: a real `convtune serve` (on a free loopback port, with a new key, in its own temporary
CONVTUNE_HOME or the one given with `--home`), driven with Playwright in Debian's headless
Chromium (/usr/bin/chromium, never `playwright install`): the key, the spreadsheet and its
report (ui-data.png), the training form with the default options (ui-train.png), the job
followed until it has succeeded, its whole loss chart, checkpoints and events (ui-job.png), the
models page with a chat at temperature 0 between SmolLM2 and its fine-tune, side by side, and a
comparison on the validation file (ui-models.png), and the job's page on a phone
(ui-phone.png). The pictures are written into docs/ only once all of them are taken, each to a
temporary name first and then renamed over the old one.

How long: about 20 minutes on 2 CPU cores, nearly all of it the job: the default recipe
(auto: 6 epochs of batch 4 over the example's 103 training examples, 144 steps, at the time of
writing), the base model's answers that the job compares its fine-tune with, and SmolLM2's
conversion at its first use in a data folder. Measured: 21 minutes, the job 20, on 2 cores shared
with other work. With `--home DIR` the data folder is kept, and a second run follows the job
that succeeded (or is still running) there instead of training again: about a minute.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CONVTUNE = ROOT / ".venv" / "bin" / "convtune"
EXAMPLE = ROOT / "examples" / "conversations.csv"
CHROMIUM = "/usr/bin/chromium"
BASE = "SmolLM2-135M-Instruct"
SUFFIX = "support"
# in the training split of the example (seed 0); its answer, 9:00 to 18:00, is in several
# conversations
QUESTION = "What time do you open on Saturday?"
ARGS = [  # as tests/test_ui_browser.py launches chromium
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LISTENING = re.compile(r"^convtune serve: listening on (http://\S+:(\d+)/v1)$")
TERMINAL = ("succeeded", "failed", "cancelled")


def say(message: str) -> None:
    print(f"screenshots: {message}", flush=True)


class Server:
    """`convtune serve --port 0` with CONVTUNE_HOME=home and one new key; stopped by `stop`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.key = f"sk-shots-{secrets.token_urlsafe(12)}"
        key_file = home / "screenshots-keys.txt"
        key_file.write_text(f"# docs/screenshots.py\n{self.key}\n", encoding="utf-8")
        key_file.chmod(0o600)
        env = dict(os.environ, CONVTUNE_HOME=str(home))
        env.pop("CONVTUNE_API_KEYS", None)
        self.out, self.err = home / "serve.out", home / "serve.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [str(CONVTUNE), "serve", "--port", "0", "--api-key-file", str(key_file)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
            )
        self.url = self._wait_for_listening(timeout=120)  # http://127.0.0.1:PORT/v1
        self.root = self.url.removesuffix("v1")

    def _wait_for_listening(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            first = self.out.read_text(errors="replace").split("\n", 1)
            if len(first) == 2:
                match = LISTENING.match(first[0])
                if not match:
                    raise SystemExit(f"unexpected first line from convtune serve: {first[0]!r}")
                return match.group(1)
            if self.process.poll() is not None:
                raise SystemExit(
                    f"convtune serve exited with {self.process.returncode}:\n{self.log()}"
                )
            time.sleep(0.1)
        raise SystemExit(f"convtune serve did not start in {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        return self.err.read_text(errors="replace")[-3000:]

    def api(self, method: str, path: str) -> dict:
        request = urllib.request.Request(
            self.url + path, method=method, headers={"Authorization": f"Bearer {self.key}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class Tab:
    """A browser tab on the server; a JavaScript error in it fails the run."""

    def __init__(self, browser, viewport: dict) -> None:
        self.context = browser.new_context(viewport=viewport, is_mobile=viewport is PHONE)
        self.page = self.context.new_page()
        self.page.set_default_timeout(60_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def shot(self, shots: dict[str, bytes], name: str) -> None:
        """A full-page picture, kept in memory, after checking the page shows no error."""
        if self.errors:
            raise SystemExit(f"JavaScript errors before the {name} picture: {self.errors}")
        shown = self.page.locator(".error:visible, .error-text").all_inner_texts()
        if any(text.strip() for text in shown):
            raise SystemExit(f"the page shows an error before the {name} picture: {shown}")
        shots[name] = self.page.screenshot(full_page=True)
        say(f"took {name}")


def earlier_job(server: Server) -> dict | None:
    """The newest job on SmolLM2 in this data folder that succeeded (its model still there) or
    is still on its way (an earlier run that stopped at its deadline): followed, not redone."""
    models = {m["id"] for m in server.api("GET", "/models")["data"]}
    for job in server.api("GET", "/fine_tuning/jobs?limit=50")["data"]:
        if job["model"] != BASE:
            continue
        if job["status"] == "succeeded" and job["fine_tuned_model"] in models:
            return job
        if job["status"] in ("validating_files", "queued", "running"):
            return job
    return None


def wait_for_job(page, deadline_s: float) -> str:
    """Follow the job's page until the job ends (or the deadline passes), saying how it goes:
    at each change of status, and once a minute while it runs."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    deadline = time.monotonic() + deadline_s
    said, said_at = "", 0.0
    while time.monotonic() < deadline:
        status = page.locator("#job-status").inner_text().strip()
        progress = page.locator("#job-progress-text").inner_text().strip()
        if status in TERMINAL:
            say(f"job: {status} {progress}")
            return status
        if status != said or time.monotonic() - said_at > 60:
            say(f"job: {status} {progress}")
            said, said_at = status, time.monotonic()
        # the page polls the job every second; look again when its status changes
        with contextlib.suppress(PlaywrightTimeout):
            page.wait_for_function(
                "(old) => document.querySelector('#job-status').textContent.trim() !== old",
                arg=status,
                timeout=10_000,
            )
    raise SystemExit(
        f"the job did not end within {deadline_s / 60:.0f} minutes (--deadline); with --home,"
        " it goes on: run again with the same --home to follow it"
    )


def walk(browser, server: Server, args, shots: dict[str, bytes]) -> dict[str, str]:
    """The whole flow, as a person takes it; the pictures in `shots`, the chat's replies returned."""
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    tab = Tab(browser, LAPTOP)
    page = tab.page
    reuse = earlier_job(server) if args.home else None

    # the key, typed into its field
    page.goto(server.root)
    key = page.get_by_label("API key", exact=True)
    expect(key).to_be_focused()
    key.fill(server.key)
    key.press("Enter")
    expect(page.locator("#page-data")).to_be_visible()

    # 1. data: the example spreadsheet, prepared with the default options
    page.get_by_label("Spreadsheet (CSV or .xlsx)").set_input_files(EXAMPLE)
    expect(page.locator("#prepare-result")).to_be_visible()
    expect(page.locator("#preview > li")).to_have_count(5)
    expect(page.locator("#prepare-checks")).to_contain_text("no error")
    tab.shot(shots, "data")

    # 2. train: the form with its default options (the trainer's unfolded)
    if reuse:
        say(f"reusing {reuse['id']} ({reuse['status']}) from {args.home}")
        page.goto(f"{server.root}#train")
        expect(page.locator("#page-train")).to_be_visible()
        training = page.locator("#job-training-file")
        expect(training.locator(f'option[value="{reuse["training_file"]}"]')).to_have_count(1)
        training.select_option(reuse["training_file"])
        if reuse.get("validation_file"):
            page.locator("#job-validation-file").select_option(reuse["validation_file"])
    else:
        page.get_by_role("button", name="Save as training files").click()
        expect(page.locator("#saved")).to_contain_text("conversations.valid.jsonl")
        page.get_by_role("link", name="Train on them →").click()
        expect(page.locator("#page-train")).to_be_visible()
        expect(page.locator("#job-training-file")).not_to_have_value("")
        expect(page.locator("#job-validation-file")).not_to_have_value("")
    page.get_by_label("Base model").fill(BASE)
    page.get_by_label("Suffix").fill(SUFFIX)
    page.get_by_text("Trainer options").click()
    expect(page.locator("#trainer-options")).to_have_attribute("open", "")
    tab.shot(shots, "train")

    # the job, followed live until it has succeeded, so that its chart is whole
    if reuse:
        page.goto(f"{server.root}#job/{reuse['id']}")
    else:
        started = time.monotonic()
        page.get_by_role("button", name="Start training").click()
    expect(page.locator("#page-job")).to_be_visible()
    expect(page.locator("#job-status")).not_to_have_text("")
    status = wait_for_job(page, args.deadline * 60)
    if status != "succeeded":
        raise SystemExit(f"the job {status}: {page.locator('#job-error').inner_text()}")
    if not reuse:
        say(f"the job took {(time.monotonic() - started) / 60:.1f} minutes")
    expect(page.locator("#job-progress-text")).to_have_text("Done.")
    expect(page.locator("#events")).to_contain_text("New fine-tuned model created")
    expect(page.locator("#checkpoints tbody tr")).not_to_have_count(0)
    steps = page.locator("#loss-chart").get_attribute("data-points")
    say(f"loss chart: {steps} steps; {page.locator('#loss-caption').inner_text()}")
    tab.shot(shots, "job")
    job_url = page.url

    # 3. models: the fine-tune and its base answer the same question, side by side, greedily
    page.get_by_role("link", name="Chat with the model").click()
    expect(page.locator("#page-models")).to_be_visible()
    model_field = page.get_by_label("Model", exact=True)
    expect(model_field).to_have_value(re.compile(f"^ft:{re.escape(BASE)}:"))
    model = model_field.input_value()
    expect(page.get_by_label("Side by side with")).to_have_value(BASE)
    page.get_by_label("Temperature").fill("0")
    page.get_by_label("Message", exact=True).fill(args.question)
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".chat-column .bubble.assistant")).to_have_count(2)
    expect(page.locator(".bubble.streaming")).to_have_count(0, timeout=300_000)
    expect(page.locator("#chat-send")).to_be_enabled()
    replies = {}
    for column in page.locator(".chat-column").all():
        name = column.locator("h3").inner_text().strip()
        replies[name] = column.locator(".bubble.assistant").inner_text().strip()
        if not replies[name]:
            raise SystemExit(f"{name} gave an empty reply")

    # and convtune eval's comparison of the two on the first examples of the validation file
    if args.compare:
        page.get_by_label("First model").select_option(BASE)
        page.get_by_label("Second model").select_option(model)
        page.get_by_label("Examples", exact=True).fill(str(args.compare))
        page.get_by_role("button", name="Compare", exact=True).click()
        compared = page.locator("#compare-status", has_text="Compared on")
        refused = page.locator("#compare-error:visible")
        expect(compared.or_(refused)).to_be_visible(timeout=900_000)
        if refused.count():
            raise SystemExit(f"the comparison failed: {refused.inner_text()}")
        report = page.frame_locator("#compare-report")
        expect(report.locator("h1")).to_contain_text("convtune eval:")
        # the report's own script has run (its sortable tables); the frame is on screen, as
        # Chromium paints no offscreen cross-origin frame (a sandboxed one is)
        page.locator("#compare-report").scroll_into_view_if_needed()
        expect(report.locator("th[data-sortable]").first).to_have_attribute("tabindex", "0")
    tab.shot(shots, "models")

    # a phone: the job's page
    phone = Tab(browser, PHONE)
    phone.page.goto(f"{server.root}#key={server.key}")
    expect(phone.page.locator("#page-data")).to_be_visible()
    phone.page.goto(job_url)
    expect(phone.page.locator("#job-status")).to_have_text("succeeded")
    expect(phone.page.locator("#loss-chart")).to_have_attribute("data-points", steps or "")
    width = phone.page.evaluate("document.documentElement.scrollWidth")
    if width > PHONE["width"]:
        say(
            f"warning: the phone's page is {width} px wide, wider than its {PHONE['width']} px screen"
        )
    phone.shot(shots, "phone")
    for one in (tab, phone):
        if one.errors:
            raise SystemExit(f"JavaScript errors: {one.errors}")
        one.context.close()
    return replies


def write(shots: dict[str, bytes], where: Path) -> list[Path]:
    """Each picture to a temporary name beside its place, then renamed over it."""
    written = []
    for name, data in shots.items():
        path = where / f"ui-{name}.png"
        handle, temporary = tempfile.mkstemp(prefix=f".ui-{name}-", suffix=".tmp", dir=where)
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--home",
        type=Path,
        help="convtune's data folder, kept after the run; a job that succeeded there is reused"
        " (default: a temporary folder, removed after)",
    )
    parser.add_argument(
        "--question", default=QUESTION, help=f"asked in the chat (default: {QUESTION!r})"
    )
    parser.add_argument(
        "--compare",
        type=int,
        default=5,
        help="validation examples to compare the models on (0: none)",
    )
    parser.add_argument(
        "--deadline", type=float, default=120, help="minutes to wait for the job (default: 120)"
    )
    parser.add_argument(
        "--out", type=Path, default=DOCS, help="where the pictures go (default: docs/)"
    )
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        parser.error(
            "playwright is not installed: make test (or pip install -e '.[dev]') installs it"
        )
    if not Path(CHROMIUM).exists():
        parser.error(
            f"{CHROMIUM} is missing: apt-get install chromium (never `playwright install`)"
        )

    began = time.monotonic()
    home = args.home.resolve() if args.home else Path(tempfile.mkdtemp(prefix="convtune-shots-"))
    home.mkdir(parents=True, exist_ok=True)
    say(f"convtune's data folder: {home}")
    server = Server(home)
    say(f"convtune serve: {server.root}")
    shots: dict[str, bytes] = {}
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                replies = walk(browser, server, args, shots)
            finally:
                browser.close()
    finally:
        if not args.home:  # its data folder is about to go
            _cancel_running(server)
        server.stop()
        if not args.home:
            shutil.rmtree(home, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for path in write(shots, args.out):
        say(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    say(f"asked: {args.question}")
    for name, reply in replies.items():
        say(f"{name} answered: {reply!r}")
    say(f"done in {(time.monotonic() - began) / 60:.1f} minutes")
    return 0


def _cancel_running(server: Server) -> None:
    """A job's worker outlives the server: cancel it if the run stops before the job ends."""
    try:
        for job in server.api("GET", "/fine_tuning/jobs?limit=50")["data"]:
            if job["status"] not in TERMINAL and job["status"] != "paused":
                server.api("POST", f"/fine_tuning/jobs/{job['id']}/cancel")
                say(f"cancelled {job['id']}")
    except OSError as error:
        say(f"could not check for running jobs: {error}")


if __name__ == "__main__":
    sys.exit(main())
