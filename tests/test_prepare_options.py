"""Prepare's options are defined once (`dataset/prepare_options.py`): the CLI's flags, the web
page's request body and its form are made from that definition, and accept the same options with
the same limits."""

from __future__ import annotations

import dataclasses
import math

import pytest
from pydantic import ValidationError

from convtune.cli.prepare_cmd import prepare as prepare_command
from convtune.dataset.examples import ExampleOptions
from convtune.dataset.pipeline import PrepareOptions
from convtune.dataset.prepare_options import ALL, BY_NAME, OPTIONS, assemble
from convtune.dataset.spreadsheet import SheetOptions
from convtune.errors import OptionError
from convtune.server.prepare_body import PrepareBody
from convtune.server.ui_api import prepare_options

from .test_prepare_cli import prepare_in_process

API = {o.name for o in OPTIONS if o.api}


def test_every_field_of_the_library_is_one_option():
    nested = {"sheet", "examples"}  # PrepareOptions' parts, not options
    library = [
        f.name
        for part in (SheetOptions, ExampleOptions, PrepareOptions)
        for f in dataclasses.fields(part)
        if not (part is PrepareOptions and f.name in nested)
    ]
    assert sorted(library) == sorted(BY_NAME) and len(OPTIONS) == len(BY_NAME)
    assert assemble({}) == PrepareOptions()  # the defaults are the library's own


def test_the_cli_the_request_and_the_form_take_the_same_options():
    flags = {p.name for p in prepare_command.params} - {"input_path", "out_dir", "as_json"}
    body = set(PrepareBody.model_fields) - {"save"}
    form = {n for n, o in prepare_options().items() if o["form"] in ("main", "more", "file")}
    assert flags == set(BY_NAME)
    assert body == form == API
    assert set(BY_NAME) - API == {"force", "count_tokens"}  # the command line's own


def _outside(option) -> list:
    """Values just outside the option's range, length or choices."""
    if option.kind is bool:
        return ["yes"]
    if option.choices:
        return ["nonsense"]
    if option.kind is str:
        return ["x" * (option.max_length + 1)] if option.max_length else []
    values = []
    if option.low is not None:
        values.append(option.low - 1)
    if option.high is not None:
        values.append(option.high + 1 if option.kind is int else option.high * 2)
    if option.below is not None:
        values.append(option.below)
    return [int(v) if option.kind is int else v for v in values]


@pytest.mark.parametrize("option", [o for o in OPTIONS if _outside(o)], ids=lambda o: o.name)
def test_a_value_outside_an_option_is_refused_by_the_library_and_the_request(option):
    for value in _outside(option):
        with pytest.raises(OptionError, match=option.flag):
            assemble({option.name: value})
        if option.api and not option.closed_on_api:
            with pytest.raises(ValidationError):
                PrepareBody.model_validate({option.name: value})


def test_a_value_inside_is_taken_by_both():
    given = {"context": ALL, "valid_ratio": 0.0, "seed": 2**31 - 1, "max_tokens": 1,
             "delimiter": "\t", "separator": "---", "price_per_1m": 0.5}  # fmt: skip
    body = PrepareBody.model_validate(given)
    options = assemble(body.model_dump(exclude={"save"}))
    assert options.examples.context is None and options.sheet.delimiter == "\t"
    assert options.seed == 2**31 - 1 and math.isclose(options.price_per_1m, 0.5)


def test_the_cli_refuses_a_value_outside_in_one_line(tmp_path):
    sheet = tmp_path / "s.csv"
    sheet.write_text("Human;AI\nHi;Hello\n", encoding="utf-8")
    code, said = prepare_in_process(sheet, "-o", tmp_path / "o", "--seed", "-1")
    assert code != 0 and said.strip().endswith("--seed must be at least 0")
    assert len(said.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
