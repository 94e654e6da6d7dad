"""What OpenAI retires and when (`openai_backend/catalog.py`), and `convtune models list` showing it.

The dates are computed from a fixed day (2026-11-30, when issue 11 was written): 45 days before
the fine-tuned models shut down (2027-01-14), 37 before new jobs stop (2027-01-06). The CLI runs
in this process against the fake OpenAI the other openai tests use.
"""

from __future__ import annotations

import io
import json
import subprocess
from datetime import date

import pytest
from rich.console import Console

from convtune.cli import render
from convtune.cli.main import main
from convtune.errors import ConvtuneError
from convtune.local.local_models import LocalModels
from convtune.openai_backend import WIND_DOWN, catalog
from convtune.openai_backend.catalog import (
    ShutdownTable,
    base_of,
    cost,
    inference_price,
    load_table,
    retirement,
)
from convtune.service.objects import ModelObject

from .fake_openai import FakeOpenAI
from .test_openai_cli import PROXY_VARS, _no_key, one_line_error

TODAY = date(2026, 11, 30)
SHUTDOWN = date(2027, 1, 14)
MINI = "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123"
GPT41 = "ft:gpt-4.1-2025-04-14:acme::DeF456"
NANO = "ft:gpt-4.1-nano-2025-04-14:acme:tiny:GhI789"


# -- base models ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_id", "base"),
    [
        (MINI, "gpt-4o-mini-2024-07-18"),
        ("ft:gpt-4o-2024-08-06:personal::9zXyW8vU", "gpt-4o-2024-08-06"),  # no suffix
        (MINI + ":ckpt-step-10", "gpt-4o-mini-2024-07-18"),  # a checkpoint
        ("ft:gpt-4.1-mini-2025-04-14:acme:support:AbC123:ckpt-step-990", "gpt-4.1-mini-2025-04-14"),
        ("ft:gpt-3.5-turbo-0125:acme::7ABcd", "gpt-3.5-turbo-0125"),
        ("ft:SmolLM2-135M-Instruct:support:ftjob-abc123", "SmolLM2-135M-Instruct"),  # serve's
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini-2024-07-18"),  # a base model is its own base
        ("gpt-4.1", "gpt-4.1"),
        ("ft:", None),
    ],
)
def test_base_of_real_id_shapes(model_id, base):
    assert base_of(model_id) == base


# -- the shutdown table --------------------------------------------------------------------------


def test_a_snapshot_belongs_to_its_own_family_never_a_shorter_one():
    table = ShutdownTable({"gpt-4o": date(2027, 1, 1), "gpt-4o-mini": date(2027, 2, 2)})
    assert table.shuts_down("gpt-4o-mini-2024-07-18") == date(2027, 2, 2)
    assert table.shuts_down("gpt-4o-2024-08-06") == date(2027, 1, 1)
    assert table.shuts_down("gpt-4o") == date(2027, 1, 1)
    assert table.shuts_down("gpt-4o-mini") == date(2027, 2, 2)
    # longer relatives that are other models are not the family's
    assert table.shuts_down("gpt-4o-audio-preview-2024-12-17") is None
    assert table.shuts_down("gpt-4o-mini-search-preview") is None
    assert ShutdownTable({"gpt-4o": date(2027, 1, 1)}).shuts_down("gpt-4o-mini-2024-07-18") is None


def test_the_built_in_table():
    table = ShutdownTable()
    for base in (
        "gpt-4o-2024-08-06",
        "gpt-4o-2024-11-20",
        "gpt-4o-mini-2024-07-18",
        "gpt-4.1-2025-04-14",
        "gpt-4.1-mini-2025-04-14",
        "gpt-4.1-mini",
    ):
        assert table.shuts_down(base) == SHUTDOWN, base
    assert table.shuts_down("gpt-4o-2024-05-13") == date(2026, 10, 23)  # an exact key wins
    for unknown in ("gpt-4.1-nano-2025-04-14", "gpt-3.5-turbo-0125", "SmolLM2-135M-Instruct", None):
        assert table.shuts_down(unknown) is None
    assert table.new_jobs_until == WIND_DOWN == date(2027, 1, 6)


def test_days_left_on_a_fixed_date():
    table = ShutdownTable()
    r = retirement(MINI, today=TODAY, table=table)
    assert (r.model, r.base, r.shuts_down, r.days_left) == (
        MINI,
        "gpt-4o-mini-2024-07-18",
        SHUTDOWN,
        45,
    )
    assert r.to_dict() == {
        "base": "gpt-4o-mini-2024-07-18",
        "shuts_down": "2027-01-14",
        "days_left": 45,
    }
    assert retirement(GPT41 + ":ckpt-step-3", today=SHUTDOWN, table=table).days_left == 0
    assert retirement(GPT41, today=date(2027, 1, 20), table=table).days_left == -6
    nano = retirement(NANO, today=TODAY, table=table)
    assert (nano.base, nano.shuts_down, nano.days_left) == ("gpt-4.1-nano-2025-04-14", None, None)
    assert nano.to_dict()["shuts_down"] is None


def test_today_is_the_real_day_unless_given(monkeypatch):
    assert retirement(MINI, table=ShutdownTable()).days_left == (SHUTDOWN - date.today()).days
    monkeypatch.setattr(catalog, "current_date", lambda: TODAY)
    assert retirement(MINI, table=ShutdownTable()).days_left == 45


# -- the override file ---------------------------------------------------------------------------


def test_an_override_file_adds_and_overrides_families(tmp_path):
    path = tmp_path / "dates.json"
    path.write_text(
        json.dumps(
            {
                "shutdowns": {"gpt-4.1-nano": "2026-10-23", "gpt-4o-mini": "2027-03-01"},
                "new_jobs_until": "2027-01-31",
            }
        )
    )
    table = load_table(path)
    assert table.source == path and table.new_jobs_until == date(2027, 1, 31)
    assert retirement(NANO, TODAY, table).days_left == -38  # added: already shut down
    assert retirement(MINI, TODAY, table).shuts_down == date(2027, 3, 1)  # overridden
    assert retirement(GPT41, TODAY, table).shuts_down == SHUTDOWN  # kept
    # only what the file says changes
    partial = tmp_path / "partial.json"
    partial.write_text('{"shutdowns": {}}')
    assert load_table(partial).new_jobs_until == WIND_DOWN


def test_the_data_directory_file_is_the_default(isolated_home):
    assert load_table() == ShutdownTable()  # no file: the built-in table
    (isolated_home / "openai-shutdowns.json").write_text('{"new_jobs_until": "2027-02-01"}')
    assert load_table().new_jobs_until == date(2027, 2, 1)
    assert load_table().source == isolated_home / "openai-shutdowns.json"
    (isolated_home / "openai-shutdowns.json").write_text('{"shutdowns": {"gpt-4.1": "2027-05-01"}}')
    assert retirement(GPT41, TODAY).shuts_down == date(2027, 5, 1)  # retirement's default table


@pytest.mark.parametrize(
    ("text", "where", "problem"),
    [
        ('{"shutdowns": {\n  "gpt-4o": "2027-01-14",\n}}', ":3:", "not valid JSON"),
        ('{\n"shutdowns": {\n"gpt-4o": "2027-13-45"}}', ":3:", '"2027-13-45" is not a date'),
        ('{"shutdowns": {"gpt-4o": 20270114}}', ":1:", "20270114 is not a date"),
        ('{\n\n"new_jobs_until": "soon"}', ":3:", "new_jobs_until"),
        ('{"shutdown": {}}', ":1:", "unknown key 'shutdown'"),
        ('{"shutdowns": ["gpt-4o"]}', ":1:", '"shutdowns" is not an object'),
        ('["gpt-4o"]', "", "not a JSON object"),
        ("", ":1:", "not valid JSON"),
        ('{"shutdowns": {"gpt-4o": "2027-01-14}}', ":1:", "string starting at column 26"),
        (
            '{"shutdowns": {\n"gpt-4o-mini": "2027-01-14",\n"gpt-4o-mini": "2028-01-01"}}',
            ":3:",
            '"gpt-4o-mini" is given twice (keep one of them)',
        ),
        ('{"shutdowns": {"gpt-4o": " 2027-01-14"},\n"shutdowns": {}}', ":2:", '"shutdowns" is'),
        ('{"shutdowns": {"gpt-4o": "2027-01-14",\n " gpt-4o": "2027-02-01"}}', ":2:", "twice"),
    ],
)
def test_a_malformed_file_is_one_line_naming_it(tmp_path, text, where, problem):
    path = tmp_path / "shutdowns.json"
    path.write_text(text)
    with pytest.raises(ConvtuneError) as caught:
        load_table(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}{where}"), message
    assert problem in message


def test_a_byte_order_mark_is_read_past(tmp_path):
    """Windows editors start UTF-8 files with a BOM: the table reads as without it."""
    path = tmp_path / "shutdowns.json"
    path.write_bytes('\ufeff{"shutdowns": {"gpt-4.1-nano": "2026-10-23"}}'.encode())
    assert load_table(path).shuts_down("gpt-4.1-nano") == date(2026, 10, 23)
    path.write_bytes('\ufeff{"shutdowns":\n {"gpt-4o": "soon"}}'.encode())
    with pytest.raises(ConvtuneError, match=r"shutdowns\.json:2: gpt-4o: \"soon\" is not a date"):
        load_table(path)


def test_a_missing_or_unreadable_file_given_by_name(tmp_path):
    with pytest.raises(ConvtuneError, match="no such file"):
        load_table(tmp_path / "nowhere.json")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConvtuneError, match=r"binary\.json: cannot read"):
        load_table(binary)


# -- prices --------------------------------------------------------------------------------------


def test_list_prices_of_inference():
    assert inference_price(MINI) == (0.30, 1.20)
    assert inference_price(MINI + ":ckpt-step-10") == (0.30, 1.20)
    assert inference_price("ft:gpt-4o-2024-08-06:acme::X") == (3.75, 15.00)
    assert inference_price(GPT41) == (3.00, 12.00)
    assert inference_price("ft:gpt-4.1-mini-2025-04-14:acme::X") == (0.80, 3.20)
    assert inference_price(NANO) == (0.20, 0.80)
    assert inference_price("gpt-4o-mini-2024-07-18") == (0.15, 0.60)
    assert inference_price("gpt-4.1-mini") == (0.40, 1.60)
    assert inference_price("gpt-4o-2024-08-06") == (2.50, 10.00)
    # unknown: no guess from a neighbour
    for unknown in (
        "gpt-4o-2024-05-13",
        "ft:gpt-3.5-turbo-0125:acme::X",
        "ft:SmolLM2-135M-Instruct:support:ftjob-abc123",
        "gpt-4o-mini-search-preview",
        "ft:",
    ):
        assert inference_price(unknown) is None, unknown


def test_cost():
    assert cost(MINI, 1_000_000, 1_000_000) == pytest.approx(1.50)
    assert cost(GPT41, 2_000, 500) == pytest.approx((2_000 * 3.00 + 500 * 12.00) / 1e6)
    assert cost(MINI, 0, 0) == 0
    assert cost("ft:gpt-3.5-turbo-0125:acme::X", 10, 10) is None


# -- convtune models list ------------------------------------------------------------------------


@pytest.fixture
def fake():
    with FakeOpenAI() as server:
        for model_id in (MINI, GPT41, NANO):
            server.models[model_id] = {
                "id": model_id,
                "object": "model",
                "created": 1_760_000_000,
                "owned_by": "org-fake",
            }
        yield server


@pytest.fixture
def cli(fake, capsys, monkeypatch):
    """cli(*args) runs `main(args)` here, on 2026-11-30, with the fake's key."""
    for name in (*PROXY_VARS, "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", fake.key)
    monkeypatch.setattr(catalog, "current_date", lambda: TODAY)

    def run(*args):
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        result = subprocess.CompletedProcess(args, code, captured.out, captured.err)
        return _no_key(result, args, fake)

    return run


def rows(stdout: str) -> dict[str, str]:
    """The table's lines of fine-tuned models, by model id."""
    lines = [line.strip() for line in stdout.splitlines()]
    return {line.split()[0]: line for line in lines if line.startswith("ft:")}


def test_models_list_shows_when_openai_shuts_each_model_down(fake, cli):
    listed = cli("models", "list", "--base-url", fake.url)
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    for column in ("model", "owned by", "by convtune", "base", "shuts down", "days left"):
        assert column in out
    by_id = rows(out)
    assert by_id[MINI].split()[-3:] == ["gpt-4o-mini-2024-07-18", "2027-01-14", "45"]
    assert by_id[GPT41].split()[-3:] == ["gpt-4.1-2025-04-14", "2027-01-14", "45"]
    assert by_id[NANO].split()[-3:] == ["gpt-4.1-nano-2025-04-14", "unknown", "unknown"]
    assert set(by_id) == {MINI, GPT41, NANO}
    assert not any(line.strip().startswith("gpt-") for line in out.splitlines())  # no base models
    assert "OpenAI stops accepting new fine-tuning jobs on 2027-01-06 (37 days from now)." in out


def test_models_list_json_has_the_dates(fake, cli):
    listed = cli("models", "list", "--include-base", "--json", "--base-url", fake.url)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert data["new_jobs_until"] == "2027-01-06"
    by_id = {m["id"]: m for m in data["data"]}
    assert by_id[MINI] | {"created": 0} == {
        "id": MINI,
        "object": "model",
        "created": 0,
        "owned_by": "org-fake",
        "base": "gpt-4o-mini-2024-07-18",
        "shuts_down": "2027-01-14",
        "days_left": 45,
    }
    assert (by_id[NANO]["shuts_down"], by_id[NANO]["days_left"]) == (None, None)
    base = by_id["gpt-4.1-mini-2025-04-14"]  # a base model retires on the same day
    assert (base["base"], base["shuts_down"]) == ("gpt-4.1-mini-2025-04-14", "2027-01-14")


def test_models_list_reads_another_table(fake, cli, tmp_path, isolated_home):
    (isolated_home / "openai-shutdowns.json").write_text('{"shutdowns": {"gpt-4.1": "2027-06-01"}}')
    dates = tmp_path / "dates.json"
    dates.write_text(
        '{"shutdowns": {"gpt-4.1-nano": "2026-10-23"}, "new_jobs_until": "2026-12-10"}'
    )
    listed = cli("models", "list", "--json", "--shutdowns", dates, "--base-url", fake.url)
    data = json.loads(listed.stdout)
    by_id = {m["id"]: m for m in data["data"]}
    assert (by_id[NANO]["shuts_down"], by_id[NANO]["days_left"]) == ("2026-10-23", -38)
    assert by_id[GPT41]["shuts_down"] == "2027-01-14"  # the given file replaces the default one
    assert data["new_jobs_until"] == "2026-12-10"
    default = json.loads(cli("models", "list", "--json", "--base-url", fake.url).stdout)
    assert {m["id"]: m for m in default["data"]}[GPT41]["shuts_down"] == "2027-06-01"

    table = cli("models", "list", "--shutdowns", dates, "--base-url", fake.url).stdout
    assert rows(table)[NANO].split()[-3:] == ["2026-10-23", "shut", "down"]
    assert "on 2026-12-10 (10 days from now)" in table


def test_models_list_with_a_malformed_table_fails_in_one_line(fake, cli, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"shutdowns": {\n"gpt-4o": "next year"}}')
    failed = cli("models", "list", "--shutdowns", bad, "--base-url", fake.url)
    line = one_line_error(failed)
    assert f"{bad}:2:" in line and '"next year" is not a date' in line
    missing = cli("models", "list", "--shutdowns", tmp_path / "none.json", "--base-url", fake.url)
    assert "none.json: no such file" in one_line_error(missing)
    twice = tmp_path / "twice.json"
    twice.write_text('{"shutdowns": {"gpt-4o-mini": "2027-01-14", "gpt-4o-mini": "2028-01-01"}}')
    failed = cli("models", "list", "--shutdowns", twice, "--base-url", fake.url)
    assert f'{twice}:1: "gpt-4o-mini" is given twice' in one_line_error(failed)
    bom = tmp_path / "bom.json"
    bom.write_bytes(b'\xef\xbb\xbf{"shutdowns": {"gpt-4.1-nano": "2026-10-23"}}')
    listed = cli("models", "list", "--json", "--shutdowns", bom, "--base-url", fake.url)
    assert listed.returncode == 0, listed.stderr
    by_id = {m["id"]: m for m in json.loads(listed.stdout)["data"]}
    assert by_id[NANO]["shuts_down"] == "2026-10-23"


def test_models_list_paints_the_near_dates_red(fake, cli, monkeypatch):
    screen = io.StringIO()
    console = Console(
        file=screen, force_terminal=True, color_system="standard", width=250, highlight=False
    )
    monkeypatch.setattr(render, "out", console)
    monkeypatch.setattr(catalog, "current_date", lambda: date(2026, 12, 20))  # 25 days left
    assert cli("models", "list", "--base-url", fake.url).returncode == 0
    red = "\x1b[31m"
    lines = {line.split()[0]: line for line in screen.getvalue().splitlines() if "ft:" in line}
    assert f"{red}2027-01-14" in lines[MINI] and f"{red}25" in lines[MINI]
    assert red not in lines[NANO]  # unknown is not urgent, just unknown
    assert f"{red}17 days from now" in screen.getvalue()  # new jobs stop on 2027-01-06

    screen.seek(0)
    screen.truncate()
    monkeypatch.setattr(catalog, "current_date", lambda: TODAY)
    assert cli("models", "list", "--base-url", fake.url).returncode == 0
    assert red not in screen.getvalue()  # 45 and 37 days: not yet


def test_the_local_list_is_unchanged(capsys, monkeypatch):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "No fine-tuned models yet." in out and "fine-tuning jobs" not in out
    local = ModelObject("ft:SmolLM2-135M-Instruct:support:ftjob-abc123", 1_760_000_000, "user")
    monkeypatch.setattr(LocalModels, "list", lambda self: [local])
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert local.id in out and "days left" not in out and "shuts down" not in out
    assert "fine-tuning jobs" not in out
    assert main(["models", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"object": "list", "data": [local.to_dict()]}
    assert main(["models", "list", "--shutdowns", "x.json"]) == 2
    assert "--shutdowns is an option of --backend openai" in capsys.readouterr().err
