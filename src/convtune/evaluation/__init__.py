"""`convtune eval` and `convtune record` as a library: does the fine-tune answer better?

    from convtune.evaluation import AnswerCache, evaluate, parse_graders, parse_target
    from convtune.evaluation import read_prompts, render_html

    data = read_prompts("out/conversations.valid.jsonl")
    targets = [parse_target("SmolLM2-135M-Instruct"), parse_target("ft:SmolLM2-135M-Instruct::ftjob-abc")]
    result = evaluate(data, targets, parse_graders(["bleu", "rouge_l"]), lambda t: service,
                      AnswerCache(Path("answers.jsonl")))
    result.to_json()            # the documented shape (see `results`)
    render_html(result)         # one self-contained page

Modules: `prompts` (what is asked and what should be answered), `targets` (MODEL@BACKEND),
`answers` (asking, with the cache), `graders`, `stats` (bootstrap intervals), `results`
(summaries and the JSON shape), `report_html`, `golden` (record), `run` (all of it).
"""

from .answers import AnswerCache, Settings, ask
from .golden import write_golden
from .graders import DEFAULT_GRADERS, Grader, parse_grader, parse_graders
from .prompts import EvalData, Prompt, read_prompts
from .report_html import render_html
from .results import EvalResult
from .run import evaluate, with_references
from .targets import Target, parse_target

__all__ = [
    "DEFAULT_GRADERS",
    "AnswerCache",
    "EvalData",
    "EvalResult",
    "Grader",
    "Prompt",
    "Settings",
    "Target",
    "ask",
    "evaluate",
    "parse_grader",
    "parse_graders",
    "parse_target",
    "read_prompts",
    "render_html",
    "with_references",
    "write_golden",
]
