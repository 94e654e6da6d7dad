"""The web page's prepare request: its body, made from prepare's one definition.

`PrepareBody` is built from `dataset/prepare_options.py` (the options a client may set: not
`force` or `count_tokens`, which are the command line's), with each option's type, range and
length as pydantic constraints, so the page's request, `convtune prepare`'s flags and the page's
form accept the same options with the same limits. It arrives as a multipart form beside the
spreadsheet: the JSON `options` field, and the system message as a part of its own. A value the
library refuses later (an unknown encoding) is named by the request's field (`option_error`).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError
from pydantic import create_model as _create_model

from ..dataset.prepare_options import ALL, OPTIONS, PrepareOption
from ..errors import OptionError
from .errors import APIError, validation_error


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _annotation(option: PrepareOption) -> Any:
    """The option's type with its constraints, as pydantic checks it."""
    constraints: dict[str, Any] = {}
    if option.kind is bool:
        base: Any = StrictBool
    elif option.choices:
        base = Literal[option.choices]  # type: ignore[valid-type]
    elif option.closed_on_api:  # counted as one of OpenAI's models: no path on this machine
        base = Literal[option.suggestions]  # type: ignore[valid-type]
    elif option.kind in (int, float):
        base = StrictInt if option.kind is int else float
        constraints = {"ge": option.low, "le": option.high, "lt": option.below}
    else:
        base = str
        constraints = {"min_length": None if option.nullable else 1}
        constraints["max_length"] = option.max_length
    constraints = {k: v for k, v in constraints.items() if v is not None}
    if constraints:
        base = Annotated[base, Field(**constraints)]
    if option.all:
        base = base | Literal[ALL]  # type: ignore[operator]
    if option.nullable:
        base = base | None
    return base


def _default(option: PrepareOption) -> Any:
    return ALL if option.all and option.default is None else option.default


PrepareBody = _create_model(
    "PrepareBody",
    __base__=Body,
    __doc__="The `options` field of a prepare request: `convtune prepare`'s options, its"
    " defaults; `save` uploads the files prepared.",
    **{o.name: (_annotation(o), _default(o)) for o in OPTIONS if o.api},
    save=(StrictBool, False),
)


def read_body(fields: dict[str, str]) -> Any:
    """The request's `PrepareBody`, from its multipart fields."""
    for name in fields:
        if name not in ("options", "system"):
            raise APIError(400, f"Unrecognized request argument supplied: {name}", param=name)
    try:
        given = json.loads(fields.get("options") or "{}")
    except json.JSONDecodeError:
        raise APIError(400, "The options field must be a JSON object.", param="options") from None
    if not isinstance(given, dict):
        raise APIError(400, "The options field must be a JSON object.", param="options")
    if "system" in fields:  # a part of its own: the options field is short
        given["system"] = fields["system"]
    try:
        return PrepareBody.model_validate(given)
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None


def option_error(exc: OptionError) -> APIError:
    """An option the library refused, named as the request names it (for the page's field):
    the flag the message names (`use --layout turn`), else the first option it mentions."""
    text = exc.message + " " + (exc.hint or "")
    names = list(PrepareBody.model_fields)
    flags = [n for n in names if f"--{n.replace('_', '-')}" in text]
    words = [n for n in names if re.search(rf"\b{n.replace('_', '[-_ ]')}\b", text)]
    param = (flags or words or [None])[0]
    return APIError(400, words_of(str(exc)), param=param, code="invalid_value")


def words_of(text: str) -> str:
    """`--valid-ratio` as the page calls it: the CLI's flags are not on the page."""
    return re.sub(r"--([a-z][a-z0-9-]*)", lambda m: m.group(1).replace("-", "_"), text)
