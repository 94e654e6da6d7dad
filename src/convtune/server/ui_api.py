"""`/v1/convtune/...`: what the web page needs beside OpenAI's API.

- `GET /v1/convtune/options`: the training options' one definition (`TrainOptions`' specs) and
  the choices of `prepare`, so that the page builds its forms from them and hard-codes no range;
- `POST /v1/convtune/prepare`: a spreadsheet in (multipart, like `/v1/files`, under the same
  upload limit), `prepare` and `check` run on it in a temporary folder of the data folder, the
  report and the first examples back; with `save`, the files uploaded through the service;
- `POST /v1/convtune/compare`, `GET /v1/convtune/comparisons/{id}`: `convtune eval` of a few
  models on an uploaded validation file (the local backend, a few examples), the summary as
  JSON and `render_html`'s page, cached in the data folder.

Same bearer keys and error envelope as the rest of `/v1`: these routes sit behind the same
middleware and raise the same `APIError`s. Nothing a client sends becomes a path: spreadsheets
are written under a fixed name in a fresh temporary folder, models are asked of this service
only (never a URL), comparisons are named by a digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import Field, StrictInt

from ..dataset.check import check_file
from ..dataset.examples import FORMATS, ExampleBuilder
from ..dataset.findings import Findings
from ..dataset.jsonl import AtomicWriter, dumps, read_lines
from ..dataset.modelinfo import default_model
from ..dataset.pipeline import PrepareOptions, prepare
from ..dataset.prepare_options import OPTIONS, assemble
from ..dataset.split import split_stream
from ..dataset.spreadsheet import open_sheet
from ..errors import ConvtuneError, OptionError
from ..service.training_options import default, specs
from . import files_api, ids
from .context import Context
from .errors import APIError, from_library
from .models_api import model_not_found
from .prepare_body import Body, option_error, read_body, words_of
from .upload import receive_upload

PREVIEW = 5  # examples shown as written
PREPARING = threading.BoundedSemaphore(2)  # prepare is CPU-bound: two at once at most
COMPARING = threading.Lock()  # one comparison at a time: it loads models and fills one cache
COMPARISON_ID = re.compile(r"^cmp-[0-9a-f]{24}$")


class CompareBody(Body):
    models: list[Annotated[str, Field(min_length=1, max_length=4096)]] = Field(
        min_length=2, max_length=4
    )
    file: str = Field(min_length=1, max_length=100)
    limit: StrictInt = Field(10, ge=1, le=100)
    max_tokens: StrictInt = Field(128, ge=1, le=1024)


def router(ctx: Context, home: Path) -> APIRouter:
    # convtune's own routes, not OpenAI's: left out of the app's description of OpenAI's API
    api = APIRouter(include_in_schema=False)

    @api.get("/convtune/options", operation_id="convtuneOptions")
    async def options() -> dict[str, Any]:
        return {
            "object": "convtune.options",
            "training": training_options(),
            "prepare": prepare_options(),
            "max_upload_bytes": ctx.max_upload_bytes,
        }

    @api.post("/convtune/prepare", operation_id="convtunePrepare")
    async def prepare_sheet(request: Request) -> dict[str, Any]:
        async with ctx.upload_folder() as folder:
            upload = await receive_upload(request, folder, ctx.max_upload_bytes)
            body = read_body(upload.fields)
            if upload.path is None:
                raise APIError(400, "Missing required parameter: 'file'.", param="file")
            name = upload.filename if upload.filename != "upload.jsonl" else "spreadsheet.csv"
            sheet = folder / "input" / name
            sheet.parent.mkdir()
            upload.path.rename(sheet)
            result = await anyio.to_thread.run_sync(_prepare, sheet, folder / "out", body)
            if body.save:
                result["files"] = {
                    side: await _save(ctx, folder / "out" / written, written)
                    for side, written in result.pop("written").items()
                }
            else:
                result.pop("written")
            return result

    @api.post("/convtune/compare", operation_id="convtuneCompare")
    async def compare(body: CompareBody) -> dict[str, Any]:
        ids.check(ids.FILE_ID, body.file, param="file", status=400)
        if len(set(body.models)) != len(body.models):
            raise APIError(400, "Give each model once.", param="models")
        try:
            found = await ctx.gate(ctx.service.files.get, body.file)
        except ConvtuneError as exc:
            raise from_library(exc, param="file") from None
        for model in body.models:
            if not await ctx.gate(ctx.service.models.knows, model):
                missing = model_not_found(model)
                missing.param = "models"  # the request's field
                raise missing
        return await anyio.to_thread.run_sync(_compare, ctx, home, body, found.filename)

    @api.get("/convtune/comparisons/{comparison_id}", operation_id="convtuneComparison")
    async def comparison(comparison_id: str) -> HTMLResponse:
        if not COMPARISON_ID.match(comparison_id):
            raise APIError(404, f"No such comparison: {comparison_id[:40]!r}.", code="not_found")
        page = _comparisons(home) / f"{comparison_id}.html"
        if not page.is_file():
            raise APIError(404, f"No such comparison: {comparison_id!r}.", code="not_found")
        html = await anyio.to_thread.run_sync(page.read_text, "utf-8")
        # a page of model answers: shown sandboxed, never with this origin's rights
        return HTMLResponse(html, headers={"Content-Security-Policy": "sandbox allow-scripts"})

    return api


# -- what the forms are made from ----------------------------------------------------------------


def training_options() -> list[dict[str, Any]]:
    """Every training option's spec, in declaration order, as the page builds its form."""
    out = []
    for name, spec in specs().items():
        numeric = spec.kind in (int, float) and not spec.choices
        out.append(
            {
                "name": name,
                "help": spec.help,
                "kind": spec.kind.__name__,
                "default": default(name),
                "low": spec.low,
                "high": spec.high,
                "choices": list(spec.choices),
                "auto": spec.auto,
                "nullable": spec.nullable,
                "hyperparameter": spec.hyperparameter or spec.method,  # shown first
                "only_for": spec.only_for,  # the method it belongs to (beta: dpo)
                "api": spec.api,  # whether a job request may set it (the page shows only these)
                "expected": spec.expected() if numeric else None,
                # where a job request takes it: OpenAI's method type, its hyperparameters, or
                # convtune's object
                "field": "method"
                if spec.method
                else "hyperparameters"
                if spec.hyperparameter
                else "convtune",
            }
        )
    return out


def prepare_options() -> dict[str, Any]:
    """Every option the page's prepare request takes, by name, in declaration order, from
    their one definition; the model's default depends on the format."""
    out = {o.name: o.describe() for o in OPTIONS if o.api}
    out["model"]["format_defaults"] = {fmt: default_model(fmt) for fmt in FORMATS}
    return out


# -- prepare --------------------------------------------------------------------------------------


def _prepare(sheet: Path, out: Path, body: Any) -> dict[str, Any]:
    """`prepare` and `check` of one spreadsheet, in `out`; the files' names in "written"."""
    try:
        options = assemble(body.model_dump(exclude={"save"}))
        with PREPARING:
            report = prepare(sheet, out, options)
            outputs = [Path(p) for p in report.outputs]
            checks = [
                check_file(
                    path,
                    model=body.model,
                    max_tokens=body.max_tokens,
                    price_per_1m=body.price_per_1m,
                    training=i == 0,
                )
                for i, path in enumerate(outputs)
            ]
            preview = _preview(sheet, outputs[0], options)
    except OptionError as exc:
        raise option_error(exc) from None
    except ConvtuneError as exc:
        raise APIError(400, _located(exc, sheet.name), param="file", code="invalid_file") from None
    data = report.to_dict()
    data["input"] = sheet.name
    data["outputs"] = [p.name for p in outputs]
    for side in ("train", "valid"):
        if data[side] is not None:
            data[side]["path"] = Path(data[side]["path"]).name
    sides = ("train", "valid")
    checked = {side: c.to_dict() for side, c in zip(sides, checks, strict=False)}
    for side in checked.values():
        side["path"] = Path(side["path"]).name
    return {
        "object": "convtune.prepare",
        "report": data,
        "check": checked,
        "preview": preview,
        "sheets": _sheet_names(sheet),
        "files": None,
        "written": {side: p.name for side, p in zip(sides, outputs, strict=False)},
    }


def _preview(sheet: Path, train: Path, options: PrepareOptions) -> list[dict[str, Any]]:
    """The first training examples exactly as written, each with the spreadsheet line of the
    reply it teaches: the first conversations are read again and their examples matched by
    their text (an example shortened to fit has no match, and no line)."""
    written = []
    numbered = read_lines(train)
    for _, text in numbered:
        written.append(text.rstrip("\r\n"))
        if len(written) == PREVIEW:
            break
    numbered.close()  # type: ignore[attr-defined]
    lines: dict[str, int] = {}
    findings = Findings()
    opened = open_sheet(sheet, options.sheet, findings, rejected=options.reads_rejected)
    builder = ExampleBuilder(opened.actors, options.examples)
    stream = split_stream(opened.conversations, options.valid_ratio, options.seed)
    try:
        for conversation, to_valid in stream:
            if not to_valid:
                for example in builder.examples(conversation):
                    lines.setdefault(dumps(example.record), example.line)
            if len(lines) >= 4 * PREVIEW:
                break
    finally:
        stream.close()
        opened.conversations.close()  # type: ignore[attr-defined]
    return [{"text": text, "record": json.loads(text), "line": lines.get(text)} for text in written]


def _sheet_names(path: Path) -> list[str]:
    """The worksheets of an .xlsx workbook (empty for a CSV), to choose one from."""
    if not zipfile.is_zipfile(path):
        return []
    try:
        from openpyxl import load_workbook

        book = load_workbook(path, read_only=True)
        try:
            return [ws.title for ws in book.worksheets]
        finally:
            book.close()
    except Exception:  # the reader has said what is wrong with it already
        return []


def _located(exc: ConvtuneError, name: str) -> str:
    """The library's message with the uploaded file's name, never the temporary path."""
    where = f"{name}, line {exc.line}: " if exc.line is not None else f"{name}: "
    hint = f" ({exc.hint})" if exc.hint else ""
    return f"{where}{words_of(exc.message)}{words_of(hint)}"


async def _save(ctx: Context, path: Path, name: str) -> dict[str, Any]:
    """Upload a prepared file through the service, checked as `/v1/files` checks uploads."""
    await anyio.to_thread.run_sync(files_api.check_upload, path)
    uploaded = await ctx.gate(ctx.service.files.upload, path, "fine-tune", filename=name)
    return uploaded.to_dict()


# -- compare --------------------------------------------------------------------------------------


def _comparisons(home: Path) -> Path:
    return home / "eval" / "comparisons"


def _compare(ctx: Context, home: Path, body: CompareBody, filename: str) -> dict[str, Any]:
    """`evaluate` of the models on the file's first `limit` examples, the page and summary
    kept under a digest of what was asked (answers are cached too, as `convtune eval` caches
    them: a comparison asked again costs nothing)."""
    from ..evaluation import (
        AnswerCache,
        Settings,
        Target,
        evaluate,
        parse_graders,
        read_prompts,
        render_html,
    )
    from ..evaluation.answers import default_cache_path
    from ..evaluation.graders import DEFAULT_GRADERS

    asked = {"models": body.models, "file": body.file, "limit": body.limit, "max": body.max_tokens}
    digest = hashlib.sha256(json.dumps(asked, sort_keys=True).encode()).hexdigest()[:24]
    comparison_id = f"cmp-{digest}"
    folder = _comparisons(home)
    summary_path = folder / f"{comparison_id}.json"
    with COMPARING:
        if summary_path.is_file() and (folder / f"{comparison_id}.html").is_file():
            return json.loads(summary_path.read_text(encoding="utf-8"))
        ctx.uploads.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="upload-", dir=ctx.uploads) as tmp:
            if ctx.service.capabilities.file_paths:
                data_path = ctx.service.files.path(body.file)
            else:
                data_path = Path(tmp) / "data.jsonl"
                data_path.write_bytes(ctx.service.files.content(body.file))
            try:
                data = read_prompts(data_path, limit=body.limit)
            except ConvtuneError as exc:
                raise APIError(400, _located(exc, filename), param="file") from None
            # models of this service only: a Target made here, never parsed (no MODEL@URL)
            targets = [Target(model, model, "local") for model in body.models]
            result = evaluate(
                data,
                targets,
                parse_graders(DEFAULT_GRADERS),
                lambda target: ctx.service,
                AnswerCache(default_cache_path(home)),
                settings=Settings(max_tokens=body.max_tokens),
                concurrency=1,
            )
        result = replace(result, data=f"{filename} ({body.file})")
        summary = {
            "object": "convtune.comparison",
            "id": comparison_id,
            "models": body.models,
            "file": body.file,
            "limit": body.limit,
            "summary": result.to_json(),
            "report": f"/v1/convtune/comparisons/{comparison_id}",
        }
        # each file whole or not at all (a server killed mid-write leaves no half summary to
        # read back), the summary last: it marks a comparison as done
        with AtomicWriter(folder / f"{comparison_id}.html", force=True) as page:
            page.write(render_html(result))
        with AtomicWriter(summary_path, force=True) as out:
            out.write(json.dumps(summary))
    return summary
