"""The evaluation as one HTML page that opens anywhere: `render_html(result) -> str`.

Self-contained: inline CSS, inline SVG, a few lines of inline JavaScript, no font, script, image
or style fetched from the network, so the file can be mailed, attached to a ticket or opened
offline. Every text from the data or a model is HTML-escaped (an answer may hold ``<script>``).

The page: a title with the data file and the date; the summary table (``id="summary"``, one row
per model: each metric's mean and interval, latency, tokens/s, cost, errors, validation loss);
each later model against the first (mean difference, interval, and a verdict in words); a bar
chart of the metrics with interval whiskers (Okabe-Ito colours, which colour-blind readers tell
apart, a legend, and each bar's numbers on hover); and every example side by side (``id=
"examples"``, one ``<tr>`` per example in ``<tbody>``): prompt, reference, each model's answer
and scores, and Δ, the mean over graders of the last model's score minus the first's. Examples
come worst regression first (lowest Δ; with one model, lowest score first); examples without a Δ
come last. Clicking a column header sorts by it (again: the other way).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from html import escape
from typing import Any

from .graders import message_text
from .results import EvalResult, ExampleResult, ModelSummary
from .stats import Interval

# Okabe & Ito's palette, in an order where neighbours differ for every kind of colour blindness.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

_CSS = """
:root{color-scheme:light dark;--fg:#1b1b1b;--bg:#fff;--muted:#5f5f5f;--line:#d9d9d9;
--head:#f3f3f3;--bad:#b00020;--good:#0b6b30}
@media (prefers-color-scheme:dark){:root{--fg:#e6e6e6;--bg:#151515;--muted:#a3a3a3;
--line:#3a3a3a;--head:#222;--bad:#ff8a80;--good:#7ddc9a}}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0 auto;max-width:1280px;padding:1rem}
h1{font-size:1.35rem;margin:.2rem 0;overflow-wrap:anywhere}
h2{font-size:1.1rem;margin:2rem 0 .5rem}
p{margin:.4rem 0}
.meta,.note{color:var(--muted)}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.35rem .5rem;text-align:left;vertical-align:top}
thead th{background:var(--head);white-space:nowrap}
th[data-sortable]{cursor:pointer;user-select:none}
th[data-sortable]:focus{outline:2px solid #0072B2}
th[aria-sort=ascending]::after{content:" \\25B2"}
th[aria-sort=descending]::after{content:" \\25BC"}
#differences{width:auto}
.name{white-space:nowrap}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:var(--muted);font-size:.85em}
.text{white-space:pre-wrap;overflow-wrap:anywhere;min-width:11rem;max-width:34rem}
.role{display:block;font-size:.72em;text-transform:uppercase;letter-spacing:.05em;
color:var(--muted)}
.msg+.msg{margin-top:.4rem}
details{margin-bottom:.4rem}summary{cursor:pointer;color:var(--muted);font-size:.85em}
.scores{color:var(--muted);font-size:.85em;margin-top:.3rem;white-space:normal}
.error,.worse{color:var(--bad)}.better{color:var(--good)}
.legend{display:flex;flex-wrap:wrap;gap:.3rem 1.2rem;list-style:none;padding:0;margin:.5rem 0}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid var(--fg);
vertical-align:-.1em;margin-right:.35em}
svg{display:block;max-width:100%;height:auto}
"""

_JS = """
(function () {
  function key(row, i) {
    var cell = row.cells[i], v = cell ? cell.getAttribute("data-sort") : null;
    if (v === null || v === "") return null;
    var n = Number(v);
    return isNaN(n) ? v.toLowerCase() : n;
  }
  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, i) {
      if (!th.hasAttribute("data-sortable")) return;
      th.tabIndex = 0;
      function sort() {
        var up = th.getAttribute("aria-sort") !== "ascending";
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
        th.setAttribute("aria-sort", up ? "ascending" : "descending");
        var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a, i), y = key(b, i);
          if (x === null || y === null) return (x === null) - (y === null);
          return x < y ? (up ? -1 : 1) : x > y ? (up ? 1 : -1) : 0;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
})();
"""


def render_html(result: EvalResult, *, date: datetime | None = None) -> str:
    """The report page for `result`; `date` (default: now) is the one shown under the title."""
    when = (date or datetime.now().astimezone()).strftime("%Y-%m-%d %H:%M")
    colours = {model.model: PALETTE[i % len(PALETTE)] for i, model in enumerate(result.models)}
    data = escape(result.data or "(no file)")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>convtune eval: {data}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<header><h1>convtune eval: {data}</h1>",
        f'<p class="meta">{escape(when)} · {_meta(result)}</p></header>',
        "<h2>Summary</h2>",
        _summary_table(result, colours),
        _differences(result),
        "<h2>Scores</h2>",
        _legend(result.models, colours),
        _chart(result, colours),
        "<h2>Examples</h2>",
        _examples_table(result),
        f"<script>{_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def _meta(result: EvalResult) -> str:
    items = [
        f"{result.example_count} example{'s' if result.example_count != 1 else ''}",
        "graders: " + ", ".join(result.graders) if result.graders else "no grader",
        *(f"{key} {value}" for key, value in result.settings.items()),
        f"{result.level:.0%} intervals: percentile bootstrap, {result.resamples} resamples, "
        f"seed {result.seed}",
    ]
    return " · ".join(escape(str(item)) for item in items)


# ---- summary -----------------------------------------------------------------------------------


def _summary_table(result: EvalResult, colours: dict[str, str]) -> str:
    models = result.models
    loss = any(m.valid_loss is not None for m in models)
    accuracy = any(m.valid_mean_token_accuracy is not None for m in models)
    heads = [_th("Model"), _th("Backend")]
    heads += [_th(name, numeric=True) for name in result.graders]
    heads += [
        _th("Latency p50 (s)", numeric=True),
        _th("p90 (s)", numeric=True),
        _th("Tokens/s", numeric=True),
        _th("Cost (USD)", numeric=True),
        _th("Errors", numeric=True),
    ]
    if loss:
        heads.append(_th("Valid loss", numeric=True))
    if accuracy:
        heads.append(_th("Valid token accuracy", numeric=True))
    rows = []
    for model in models:
        swatch = f'<span class="swatch" style="background:{colours[model.model]}"></span>'
        name = escape(model.model)
        cells = [
            f'<td class="name" data-sort="{name}">{swatch}{name}</td>',
            f'<td data-sort="{escape(model.backend)}">{escape(model.backend)}'
            + (f" ({escape(model.engine)})" if model.engine else "")
            + "</td>",
        ]
        cells += [_interval_cell(model.metrics.get(name)) for name in result.graders]
        cells += [
            _number_cell(model.latency_p50, "{:.2f}"),
            _number_cell(model.latency_p90, "{:.2f}"),
            _number_cell(model.tokens_per_second, "{:.1f}"),
            _number_cell(model.cost_usd, "${:.4f}" if (model.cost_usd or 0) < 1 else "${:.2f}"),
            _number_cell(model.errors, "{}", bad=model.errors > 0),
        ]
        if loss:
            cells.append(_number_cell(model.valid_loss, "{:.4f}"))
        if accuracy:
            cells.append(_number_cell(model.valid_mean_token_accuracy, "{:.3f}"))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return _table("summary", heads, rows)


def _differences(result: EvalResult) -> str:
    if not result.differences:
        return ""
    rows = []
    for difference in result.differences:
        interval = difference.interval
        if interval.low > 0:
            verdict = '<span class="better">&#9650; better</span>'
        elif interval.high < 0:
            verdict = '<span class="worse">&#9660; worse</span>'
        else:
            verdict = "&#8776; no clear difference"
        rows.append(
            "<tr>"
            f'<td data-sort="{escape(difference.metric)}">{escape(difference.metric)}</td>'
            f'<td data-sort="{escape(difference.b)}">{escape(difference.b)} '
            f'<span class="ci">vs</span> {escape(difference.a)}</td>'
            f"{_interval_cell(interval, signed=True)}"
            f'<td data-sort="{_key(interval.mean)}">{verdict}</td>'
            "</tr>"
        )
    heads = [_th("Metric"), _th("Model vs first"), _th("Difference", numeric=True), _th("Verdict")]
    note = (
        '<p class="note">Mean of the per-example differences (paired by example), with its '
        f"{result.level:.0%} interval; an interval that excludes 0 is a reliable difference.</p>"
    )
    return "<h2>Against the first model</h2>" + note + _table("differences", heads, rows)


# ---- chart -------------------------------------------------------------------------------------

_BAR, _GAP, _PLOT_H, _LEFT, _TOP, _BOTTOM = 24, 32, 220, 40, 12, 34


def _legend(models: list[ModelSummary], colours: dict[str, str]) -> str:
    if not models:
        return ""
    items = "".join(
        f'<li><span class="swatch" style="background:{colours[m.model]}"></span>'
        f"{escape(m.model)}</li>"
        for m in models
    )
    return f'<ul class="legend">{items}</ul>'


def _chart(result: EvalResult, colours: dict[str, str]) -> str:
    models, metrics = result.models, result.graders
    if not models or not metrics:
        return ""
    group = max(len(models) * _BAR + _GAP, 8 * max(len(name) for name in metrics) + 12)
    width = _LEFT + len(metrics) * group + 8
    height = _TOP + _PLOT_H + _BOTTOM

    def y(value: float) -> float:
        return _TOP + (1 - min(1.0, max(0.0, value))) * _PLOT_H

    out = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-label="Mean score per metric and model, with {result.level:.0%} intervals" '
        'font-family="system-ui,sans-serif" font-size="12">'
    ]
    for tick in (0, 0.25, 0.5, 0.75, 1):
        out.append(
            f'<line x1="{_LEFT}" x2="{width - 4}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="currentColor" stroke-opacity=".18"/>'
            f'<text x="{_LEFT - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" '
            f'fill="currentColor">{tick:g}</text>'
        )
    for g, metric in enumerate(metrics):
        x0 = _LEFT + g * group + (group - len(models) * _BAR) / 2
        for i, model in enumerate(models):
            x = x0 + i * _BAR
            middle = x + _BAR / 2
            interval = model.metrics.get(metric)
            if interval is None:
                out.append(
                    f'<text x="{middle:.1f}" y="{y(0) - 4:.1f}" text-anchor="middle" '
                    f'font-size="9" fill="currentColor"><title>{escape(model.model)}: '
                    f"no score</title>n/a</text>"
                )
                continue
            tip = (
                f"{escape(model.model)}, {escape(metric)}: {interval.mean:.3f} "
                f"[{interval.low:.3f}, {interval.high:.3f}]"
            )
            top = y(interval.mean)
            out.append(
                f'<g><title>{tip}</title><rect x="{x + 2:.1f}" y="{top:.1f}" '
                f'width="{_BAR - 4}" height="{y(0) - top:.1f}" fill="{colours[model.model]}" '
                'stroke="currentColor" stroke-width=".6"/>'
                f'<path d="M{middle:.1f} {y(interval.low):.1f}V{y(interval.high):.1f}'
                f"M{middle - 4:.1f} {y(interval.low):.1f}h8"
                f'M{middle - 4:.1f} {y(interval.high):.1f}h8" stroke="currentColor" '
                'stroke-width="1.4" fill="none"/></g>'
            )
        out.append(
            f'<text x="{_LEFT + g * group + group / 2:.1f}" y="{y(0) + 20:.1f}" '
            f'text-anchor="middle" fill="currentColor">{escape(metric)}</text>'
        )
    out.append(
        f'<line x1="{_LEFT}" x2="{width - 4}" y1="{y(0):.1f}" y2="{y(0):.1f}" '
        'stroke="currentColor"/></svg>'
    )
    return '<div class="scroll">' + "".join(out) + "</div>"


# ---- examples ----------------------------------------------------------------------------------


def _examples_table(result: EvalResult) -> str:
    labels = [model.model for model in result.models]
    delta = len(labels) > 1
    heads = [_th("Line", numeric=True)]
    if delta:
        heads.append(_th(f"Δ {labels[-1]} − {labels[0]}", numeric=True, sort="ascending"))
    heads += [_th("Prompt"), _th("Reference")]
    heads += [
        _th(label, sort="ascending" if not delta and i == 0 else None)
        for i, label in enumerate(labels)
    ]
    ordered = sorted(result.examples, key=lambda e: _order(e, labels, result.graders))
    rows = []
    for example in ordered:
        cells = [f'<td class="num" data-sort="{example.line}">{example.line}</td>']
        if delta:
            value = _delta(example, labels[0], labels[-1], result.graders)
            cells.append(_number_cell(value, "{:+.3f}", bad=value is not None and value < 0))
        cells.append(f'<td class="text">{_prompt_html(example.prompt)}</td>')
        cells.append(f'<td class="text">{escape(example.reference)}</td>')
        cells += [_answer_cell(example, label, result.graders) for label in labels]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not delta:
        how = "lowest score first"
    else:
        how = f"worst regression of {escape(labels[-1])} against {escape(labels[0])} first"
    note = (
        f'<p class="note">Sorted by {how}; click a column header to sort by it. Δ is the mean, '
        "over graders, of the last model's score minus the first's.</p>"
        if labels
        else ""
    )
    return note + _table("examples", heads, rows)


def _order(example: ExampleResult, labels: list[str], graders: list[str]) -> tuple:
    if len(labels) > 1:
        value = _delta(example, labels[0], labels[-1], graders)
    elif labels:
        value = _mean_score(example, labels[0], graders)
    else:
        value = None
    return (value is None, value if value is not None else 0.0, example.line)


def _scores(example: ExampleResult, label: str, graders: Iterable[str]) -> dict[str, float]:
    answer = example.answers.get(label)
    if answer is None or answer.failed:
        return {}
    return {name: answer.scores[name] for name in graders if name in answer.scores}


def _mean_score(example: ExampleResult, label: str, graders: list[str]) -> float | None:
    scores = _scores(example, label, graders)
    return sum(scores.values()) / len(scores) if scores else None


def _delta(example: ExampleResult, first: str, last: str, graders: list[str]) -> float | None:
    a, b = _scores(example, first, graders), _scores(example, last, graders)
    common = [name for name in graders if name in a and name in b]
    if not common:
        return None
    return sum(b[name] - a[name] for name in common) / len(common)


def _prompt_html(prompt: list[dict[str, Any]]) -> str:
    def message(m: dict[str, Any]) -> str:
        role = escape(str(m.get("role", "?")))
        return f'<div class="msg"><span class="role">{role}</span>{escape(message_text(m))}</div>'

    if not prompt:
        return ""
    earlier, last = prompt[:-1], prompt[-1]
    html = ""
    if earlier:
        n = len(earlier)
        html = (
            f"<details><summary>{n} earlier message{'s' if n != 1 else ''}</summary>"
            + "".join(message(m) for m in earlier)
            + "</details>"
        )
    return html + message(last)


def _answer_cell(example: ExampleResult, label: str, graders: list[str]) -> str:
    answer = example.answers.get(label)
    if answer is None:
        return '<td class="text" data-sort=""><span class="error">no answer</span></td>'
    if answer.failed:
        error = escape(answer.error or "no answer")
        return f'<td class="text" data-sort=""><span class="error">error: {error}</span></td>'
    scores = _scores(example, label, graders)
    mean = _mean_score(example, label, graders)
    shown = [f"{escape(name)} {value:.3f}" for name, value in scores.items()]
    shown += [
        f'<span class="error">{escape(name)}: {escape(why)}</span>'
        for name, why in answer.grader_errors.items()
    ]
    sort = "" if mean is None else _key(mean)
    return (
        f'<td class="text" data-sort="{sort}">{escape(answer.answer or "")}'
        f'<div class="scores">{" · ".join(shown)}</div></td>'
    )


# ---- cells -------------------------------------------------------------------------------------


def _table(table_id: str, heads: list[str], rows: list[str]) -> str:
    return (
        f'<div class="scroll"><table id="{table_id}" class="sortable">'
        f"<thead><tr>{''.join(heads)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _th(text: str, *, numeric: bool = False, sort: str | None = None) -> str:
    cls = ' class="num"' if numeric else ""
    aria = f' aria-sort="{sort}"' if sort else ""
    return f'<th scope="col" data-sortable{cls}{aria}>{escape(text)}</th>'


def _interval_cell(interval: Interval | None, *, signed: bool = False) -> str:
    if interval is None:
        return '<td class="num" data-sort="">–</td>'
    form = "{:+.3f}" if signed else "{:.3f}"
    return (
        f'<td class="num" data-sort="{_key(interval.mean)}">{form.format(interval.mean)} '
        f'<span class="ci">[{form.format(interval.low)}, {form.format(interval.high)}]</span></td>'
    )


def _number_cell(value: float | int | None, form: str, *, bad: bool = False) -> str:
    if value is None:
        return '<td class="num" data-sort="">–</td>'
    cls = "num error" if bad else "num"
    return f'<td class="{cls}" data-sort="{_key(value)}">{escape(form.format(value))}</td>'


def _key(value: float | int) -> str:
    """A number as `data-sort` holds it: what JavaScript's Number() reads back exactly."""
    return repr(float(value))
