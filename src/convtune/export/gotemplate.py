"""A small renderer for the part of Go's text/template that Ollama chat templates use.

convtune writes an Ollama `TEMPLATE` equivalent to the model's chat template, and proves it: it
renders both on probe conversations and keeps the Go template only when they agree byte for byte
(`modelfile.ollama_template`). Ollama itself cannot run here, so this renders the subset the
exported templates use, with Go's semantics:

- text, and actions ``{{ ... }}`` whose ``{{-`` / ``-}}`` trim the whitespace before / after;
- ``range PIPE`` (the dot becomes each item), ``if PIPE``, ``else if PIPE``, ``else``, ``end``;
- operands ``.``, ``.Field.Sub``, ``$.Field``, ``"string"``; functions ``eq``, ``ne``, ``not``,
  ``and``, ``or``; empty strings, lists and maps, false, 0 and nil are false.

Anything else raises `ValueError`: a template outside the subset is never reported equivalent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
_ARG = re.compile(r'"(?:[^"\\]|\\.)*"|\S+')
_SPACE = " \t\r\n"


@dataclass
class _Block:
    kind: str  # "root", "if" or "range"
    branches: list[tuple[list[str] | None, list]] = field(default_factory=list)


def render(template: str, values: dict[str, Any]) -> str:
    """`template` executed on `values` (a dict: `.Messages`, `.System`...), as Go would."""
    root = _parse(template)
    out: list[str] = []
    _run(root.branches[0][1], values, values, out)
    return "".join(out)


def _parse(template: str) -> _Block:
    pieces: list[tuple[str, Any]] = []  # ("text", str) or ("action", str)
    last = 0
    for match in _ACTION.finditer(template):
        text = template[last : match.start()]
        if match.group(1):
            text = text.rstrip(_SPACE)
        pieces.append(("text", text))
        pieces.append(("action", match.group(2)))
        last = match.end()
        if match.group(3):
            rest = template[last:]
            last += len(rest) - len(rest.lstrip(_SPACE))
    pieces.append(("text", template[last:]))
    if "{{" in "".join(t for kind, t in pieces if kind == "text"):
        raise ValueError("unparsed action in the template")
    root = _Block("root", [(None, [])])
    stack = [root]
    for kind, piece in pieces:
        body = stack[-1].branches[-1][1]
        if kind == "text":
            if piece:
                body.append(piece)
            continue
        words = _ARG.findall(piece)
        head = words[0] if words else ""
        if head in ("if", "range"):
            block = _Block(head, [(words[1:], [])])
            body.append(block)
            stack.append(block)
        elif head == "else":
            block = stack[-1]
            if block.kind == "root":
                raise ValueError("else outside if/range")
            cond = words[2:] if words[1:2] == ["if"] else None
            if cond is not None and block.kind != "if":
                raise ValueError("else if inside range")
            block.branches.append((cond, []))
        elif head == "end":
            if len(stack) == 1:
                raise ValueError("end without if/range")
            stack.pop()
        else:
            body.append(words)  # a pipeline to print
    if len(stack) != 1:
        raise ValueError("if/range without end")
    return root


def _run(body: list, dot: Any, root: Any, out: list[str]) -> None:
    for node in body:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, list):
            out.append(_text(_eval(node, dot, root)))
        elif node.kind == "if":
            for cond, branch in node.branches:
                if cond is None or _truth(_eval(cond, dot, root)):
                    _run(branch, dot, root, out)
                    break
        else:  # range
            items = _eval(node.branches[0][0], dot, root)
            if _truth(items):
                for item in items:
                    _run(node.branches[0][1], item, root, out)
            elif len(node.branches) > 1:
                _run(node.branches[1][1], dot, root, out)


def _eval(words: list[str], dot: Any, root: Any) -> Any:
    if not words:
        raise ValueError("empty pipeline")
    name, args = words[0], [_operand(w, dot, root) for w in words[1:]]
    if name == "eq":
        return any(args[0] == other for other in args[1:])
    if name == "ne":
        return args[0] != args[1]
    if name == "not":
        return not _truth(args[0])
    if name == "and":
        return next((a for a in args if not _truth(a)), args[-1])
    if name == "or":
        return next((a for a in args if _truth(a)), args[-1])
    if len(words) != 1:
        raise ValueError(f"unsupported function {name!r}")
    return _operand(name, dot, root)


def _operand(word: str, dot: Any, root: Any) -> Any:
    if word.startswith('"'):
        return json.loads(word)
    if word == ".":
        return dot
    if word.startswith("$."):
        value, path = root, word[2:]
    elif word.startswith("."):
        value, path = dot, word[1:]
    else:
        raise ValueError(f"unsupported operand {word!r}")
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ValueError(f"no field {part!r}")
        value = value[part]
    return value


def _truth(value: Any) -> bool:
    return bool(value)  # Go: false, 0, nil, "" and empty collections are false, as in Python


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)
