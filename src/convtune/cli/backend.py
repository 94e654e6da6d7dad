"""Which `FineTuningService` a command talks to: `--backend`, `--base-url`, `--api-key`."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import click

from .. import backends
from ..service.contract import FineTuningService


@dataclass(frozen=True)
class Backend:
    """The backend options of one command; `str()` is the backend's name."""

    name: str = "local"
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    engine: str = "auto"  # what generates a local model's answers (`--engine`)

    def __str__(self) -> str:
        return self.name


def resolve(
    backend: str | None, base_url: str | None, api_key: str | None, *, mixed: bool = False
) -> Backend:
    """--base-url alone means openai; --backend local with openai's options is a usage error,
    unless the command takes models of several backends (`mixed`: MODEL@openai beside local
    models, for which --api-key is the key)."""
    name = backend or ("openai" if base_url else "local")
    if name == "local" and (base_url or (api_key and not mixed)):
        raise click.UsageError("--base-url and --api-key are options of --backend openai")
    return Backend(name, base_url or None, api_key or None)


def backend_option(f=None, *, mixed: bool = False, engine: bool = False):
    """Add --backend, --base-url and --api-key; the command receives one `backend` (a Backend).

    `mixed`: the command names models of several backends (MODEL@BACKEND); --backend and
    --base-url are then the default for models without one. `engine`: the command generates
    answers, and takes --engine for local models."""
    if f is None:
        return functools.partial(backend_option, mixed=mixed, engine=engine)

    @functools.wraps(f)
    def command(*args, backend, base_url, api_key, **kwargs):
        chosen = resolve(backend, base_url, api_key, mixed=mixed)
        if engine:
            chosen = dataclasses.replace(chosen, engine=kwargs.pop("engine"))
            if chosen.engine != "auto" and chosen.name != "local" and not mixed:
                raise click.UsageError(
                    "--engine chooses how local models answer, not --backend openai"
                )
        return f(*args, backend=chosen, **kwargs)

    if engine:
        command = engine_option(command)

    command = click.option(
        "--api-key",
        default=None,
        show_default=False,
        metavar="KEY",
        help="API key for --backend openai (default: $OPENAI_API_KEY, the safer way: a key on"
        " the command line shows in the process list). Never printed.",
    )(command)
    command = click.option(
        "--base-url",
        default=None,
        metavar="URL",
        help="An OpenAI-compatible service, e.g. http://127.0.0.1:8000/v1 for convtune serve"
        " (default: $OPENAI_BASE_URL, else OpenAI). Implies --backend openai.",
    )(command)
    return click.option(
        "--backend",
        type=click.Choice(backends.NAMES),
        default=None,
        help="local (the default): open models on this machine; openai: OpenAI or a compatible"
        " service.",
    )(command)


def engine_option(f):
    """--engine, from its one definition (`convtune.local.engines`)."""
    from ..local.engines import ENGINE_HELP, ENGINES

    return click.option(
        "--engine", type=click.Choice(ENGINES), default="auto", show_default=True, help=ENGINE_HELP
    )(f)


def service_class(backend: Backend | str = "local") -> type[FineTuningService]:
    """The class of the backend the options name (`convtune.backends`): its capabilities are
    known before a key is read or a connection made."""
    return backends.service_class(backend if isinstance(backend, str) else backend.name)


def service_for(backend: Backend | str = "local") -> FineTuningService:
    """The service the options name (a remote one reads its key and address here)."""
    if isinstance(backend, str):
        backend = Backend(backend)
    if not service_class(backend).capabilities.remote:  # --api-key of eval's MODEL@openai
        return backends.connect(backend.name, engine=backend.engine)
    return backends.connect(backend.name, api_key=backend.api_key, base_url=backend.base_url)


def again(service: FineTuningService) -> str:
    """The options that name `service` again in a printed command ('' for the local one)."""
    if not service.capabilities.remote:
        return ""
    from ..openai_backend import OPENAI_URL

    url = service.base_url or OPENAI_URL
    return " --backend openai" + ("" if url == OPENAI_URL else f" --base-url {url}")
