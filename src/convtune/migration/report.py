"""The migration's report: one self-contained HTML page per migrated model.

What was moved (the job, its base model and hyperparameters, the days left), what each step made,
how the new model answers against the old one's recorded answers and against the references,
and the commands that run the new model where models run: exported as GGUF for Ollama or
llama.cpp, or served behind the same chat-completions API by `convtune serve`.
"""

from __future__ import annotations

from html import escape
from typing import Any

from ..dataset.jsonl import AtomicWriter
from .state import Migration

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
pre{background:#f4f4f4;padding:.8rem;overflow-x:auto}.better{color:#137333}.worse{color:#b3261e}
"""


def commands(m: Migration, model: str) -> dict[str, str]:
    """How to run the new model: export it, serve it, talk to it as to the old one."""
    name = m.folder.name
    return {
        "export": f"convtune export {model} --format ollama -o {name}-ollama\n"
        f"ollama create {name} -f {name}-ollama/Modelfile\n"
        f"convtune export {model} --format gguf -o {name}.gguf",
        "serve": "convtune serve --port 8000   # prints the key to use",
        "client": "from openai import OpenAI\n\n"
        'client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="<the key serve printed>")\n'
        "reply = client.chat.completions.create(\n"
        f'    model="{model}",\n'
        '    messages=[{"role": "user", "content": "Hello"}],\n'
        ")\nprint(reply.choices[0].message.content)",
    }


def _interval(d: dict[str, Any]) -> str:
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def _word(d: dict[str, Any]) -> str:
    if d["low"] > 0:
        return '<span class="better">better</span>'
    if d["high"] < 0:
        return '<span class="worse">worse</span>'
    return "no clear difference"


def render(m: Migration) -> str:
    found = m.done.get("inventory", {})
    made = m.done.get("retrain", {})
    evals = m.done.get("eval", {})
    model = made.get("model", "")
    rows = [
        ("OpenAI model", m.model),
        ("its job", found.get("job")),
        ("its base model", found.get("base_model")),
        ("hyperparameters", ", ".join(f"{k} {v}" for k, v in (found.get("hyperparameters") or {}).items())),
        ("shuts down", f"{found.get('shuts_down')} ({found.get('days_left')} days left)"
         if found.get("shuts_down") else "no date known"),
        ("answers recorded", f"{m.done.get('record', {}).get('examples')} in {m.done.get('record', {}).get('file')}"),
        ("open model", f"{model} (from {made.get('base')}, local job {made.get('job')})"),
    ]  # fmt: skip
    parts = [
        f"<!doctype html><meta charset=utf-8><title>Migration of {escape(m.model)}</title>",
        f"<style>{STYLE}</style><h1>Migration of {escape(m.model)}</h1>",
        "<table>",
        *(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows),
        "</table>",
    ]
    if agreement := evals.get("agreement"):
        parts.append("<h2>How close the open model answers to the old one</h2>")
        parts.append(
            "<p>The recorded answers of the old model are the references "
            f'(<a href="{escape(_name(agreement["html"]))}">the whole evaluation</a>).</p>'
        )
        parts.append("<table><tr><th>grader</th><th>mean, 95% interval</th></tr>")
        for name, interval in agreement["models"][0]["metrics"].items():
            shown = (
                "–"
                if interval is None
                else f"{interval['mean']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
            )
            parts.append(f"<tr><td>{escape(name)}</td><td>{shown}</td></tr>")  # fmt: skip
        parts.append("</table>")
    if references := evals.get("references"):
        parts.append("<h2>Against the references of the data</h2>")
        parts.append(
            "<p>The open model minus the old one, paired by example "
            f'(<a href="{escape(_name(references["html"]))}">the whole evaluation</a>).</p>'
        )
        parts.append("<table><tr><th>grader</th><th>difference, 95% interval</th><th></th></tr>")
        for d in references["differences"]:
            parts.append(f"<tr><td>{escape(d['metric'])}</td><td>{_interval(d)}</td><td>{_word(d)}</td></tr>")  # fmt: skip
        parts.append("</table>")
    if model:
        shown = commands(m, model)
        parts.append("<h2>Run it where you run models</h2>")
        parts.append(
            f"<p>As a GGUF file, for Ollama or llama.cpp:</p><pre>{escape(shown['export'])}</pre>"
        )
        parts.append(
            f"<p>Behind the same chat-completions API as OpenAI's:</p><pre>{escape(shown['serve'])}</pre>"
        )
        parts.append(f"<pre>{escape(shown['client'])}</pre>")  # fmt: skip
    parts.append("<p>Nothing on OpenAI was deleted or changed by this migration.</p>")
    return "\n".join(parts) + "\n"


def _name(path: str) -> str:
    """A link beside the report: the file's name (they are in the same folder)."""
    return path.rsplit("/", 1)[-1]


def write_report(m: Migration) -> None:
    path = m.folder / "report.html"
    with AtomicWriter(path, force=True) as out:
        out.write_line(render(m).rstrip("\n"))
    m.mark("report", file=path)
