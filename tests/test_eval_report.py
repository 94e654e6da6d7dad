"""The summary (`summarize`, the JSON shape) and the HTML report read back with html.parser."""

from __future__ import annotations

import json
from datetime import datetime
from html.parser import HTMLParser

import pytest

from convtune.evaluation.report_html import render_html
from convtune.evaluation.results import (
    EvaluatedModel,
    ExampleResult,
    ModelAnswer,
    summarize,
)

GRADERS = ["bleu", "rouge_l"]
ATTACK = "<script>alert('pwned')</script>"


def answer(bleu: float, rouge: float, text: str = "an answer", latency: float = 1.0):
    return ModelAnswer(text, {"bleu": bleu, "rouge_l": rouge}, latency, 20)


def example(i: int, **answers: ModelAnswer) -> ExampleResult:
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}?"}]
    return ExampleResult(i, i + 1, prompt, f"reference {i}", dict(answers))


@pytest.fixture
def result():
    examples = [
        example(0, base=answer(0.2, 0.4), ft=answer(0.6, 0.8, latency=2.0)),
        example(1, base=answer(0.9, 0.9), ft=answer(0.1, 0.3, text=ATTACK)),  # a regression
        example(2, base=answer(0.5, 0.5), ft=ModelAnswer(error="timed out")),
        example(3, base=answer(0.4, 0.6), ft=answer(0.5, 0.7)),
    ]
    models = [
        EvaluatedModel("base", "openai", cost_usd=0.002),
        EvaluatedModel("ft", "local", cost_usd=0.0, valid_loss=1.25),
    ]
    return summarize(examples, models, GRADERS, seed=0, data="valid.jsonl",
                     settings={"temperature": 0.0, "max_tokens": 256})  # fmt: skip


def test_summary_means_errors_latency_and_json_shape(result):
    data = json.loads(json.dumps(result.to_json()))  # plain JSON all the way down
    assert set(data) == {"data", "examples", "graders", "models", "differences", "intervals",
                         "settings"}  # fmt: skip
    assert (data["data"], data["examples"], data["graders"]) == ("valid.jsonl", 4, GRADERS)
    base, ft = data["models"]
    assert base["metrics"]["bleu"]["mean"] == pytest.approx((0.2 + 0.9 + 0.5 + 0.4) / 4)
    assert ft["metrics"]["bleu"]["mean"] == pytest.approx((0.6 + 0.1 + 0.5) / 3)  # error left out
    assert (base["errors"], ft["errors"]) == (0, 1)
    assert ft["error_messages"] == [{"message": "timed out", "examples": 1}]
    assert base["error_messages"] == [] and "load_seconds" not in base
    assert ft["latency"] == {"p50": 1.0, "p90": pytest.approx(1.8)}
    assert ft["tokens_per_second"] == pytest.approx(60 / 4.0)
    assert (ft["valid_loss"], "valid_loss" in base) == (1.25, False)
    assert base["cost_usd"] == 0.002 and data["settings"]["max_tokens"] == 256
    for metric in base["metrics"].values():
        assert metric["low"] <= metric["mean"] <= metric["high"]


def test_a_score_a_grader_could_not_give_is_an_error_with_its_reason():
    judged = [
        ModelAnswer(
            "a", {"bleu": 0.5}, 1.0, grader_errors={"score_model": "the judge j failed: gone"}
        ),
        ModelAnswer(
            "b", {"bleu": 0.7}, 1.0, grader_errors={"score_model": "the judge j failed: gone"}
        ),
        ModelAnswer("c", {"bleu": 0.9, "score_model": 0.8}, 1.0),
        ModelAnswer(error="timed out"),
    ]
    examples = [example(i, m=answer) for i, answer in enumerate(judged)]
    summary = summarize(examples, [EvaluatedModel("m", "local", load_seconds=2.5)],
                        ["bleu", "score_model"]).to_json()["models"][0]  # fmt: skip
    assert summary["errors"] == 3 and summary["metrics"]["score_model"]["mean"] == 0.8
    assert summary["error_messages"] == [
        {"message": "score_model: the judge j failed: gone", "examples": 2},
        {"message": "timed out", "examples": 1},
    ]
    assert summary["load_seconds"] == 2.5


def test_differences_pair_the_examples_both_models_answered(result):
    differences = {d["metric"]: d for d in result.to_json()["differences"]}
    assert set(differences) == set(GRADERS)
    bleu = differences["bleu"]
    assert (bleu["a"], bleu["b"]) == ("base", "ft")
    assert bleu["mean"] == pytest.approx(((0.6 - 0.2) + (0.1 - 0.9) + (0.5 - 0.4)) / 3)


def test_examples_in_json_on_request(result):
    rows = result.to_json(examples=True)["results"]
    assert [r["line"] for r in rows] == [1, 2, 3, 4]
    assert rows[2]["answers"]["ft"]["error"] == "timed out"


class Page(HTMLParser):
    """What a test needs from the report: rows per table id, scripts, resource addresses."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.table: str | None = None
        self.in_body = False
        self.cell: list[str] | None = None
        self.scripts: list[str] = []
        self.in_script = False
        self.resources: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.resources += [v or "" for k, v in attrs if k in ("src", "href", "xlink:href")]
        if tag == "table":
            self.table = attributes.get("id")
            self.rows[self.table] = []
        elif tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows[self.table].append([])
        elif tag == "td" and self.in_body:
            self.cell = []
        elif tag == "script":
            self.in_script = True
            self.scripts.append("")

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.in_body = False
        elif tag == "td" and self.cell is not None:
            self.rows[self.table][-1].append("".join(self.cell).strip())
            self.cell = None
        elif tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        if self.in_script:
            self.scripts[-1] += data


def test_html_has_a_summary_row_per_model_and_an_example_row_per_example(result):
    html = render_html(result, date=datetime(2026, 11, 30, 9, 15))
    page = Page(html)
    summary = page.rows["summary"]
    assert [row[0] for row in summary] == ["base", "ft"]
    assert len(page.rows["examples"]) == 4
    assert "valid.jsonl" in html and "2026-11-30 09:15" in html


def test_html_examples_start_with_the_worst_regression(result):
    rows = Page(render_html(result)).rows["examples"]
    lines = [row[0] for row in rows]
    assert lines[0] == "2"  # ft lost 0.8 on bleu and 0.6 on rouge_l there
    assert lines[-1] == "3"  # ft failed: no difference to sort by, last
    assert rows[0][1] == "-0.700"


def test_html_escapes_answers_and_fetches_nothing(result):
    html = render_html(result)
    page = Page(html)
    assert ATTACK not in html
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    assert len(page.scripts) == 1 and "alert" not in page.scripts[0]  # only the table sort
    assert not [r for r in page.resources if r.startswith(("http:", "https:", "//"))]
    assert "url(" not in html and "@import" not in html and "<link" not in html


def test_html_for_one_model_sorts_by_its_score():
    examples = [
        example(0, only=answer(0.9, 0.9)),
        example(1, only=answer(0.1, 0.2)),
        example(2, only=answer(0.5, 0.5)),
    ]
    result = summarize(examples, [EvaluatedModel("only", "local")], GRADERS, data="v.jsonl")
    page = Page(render_html(result))
    assert len(page.rows["summary"]) == 1
    assert [row[0] for row in page.rows["examples"]] == ["2", "3", "1"]
    assert result.differences == []
