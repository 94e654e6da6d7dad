"""The backends convtune trains on, by name: one registry for the CLI, eval's targets and the
server.

    service = convtune.backends.connect("openai", base_url="http://127.0.0.1:8000/v1")
    convtune.backends.service_class("local").capabilities.trainer_options  # True, nothing loaded

A backend is a `FineTuningService` class, named as `--backend` takes it and as a model's
`MODEL@BACKEND` suffix says it. The registry keeps where each class lives, not the class, so that
naming a backend imports nothing (the openai SDK costs a second, the local backend's store a
little); `service_class` imports it on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import OptionError

if TYPE_CHECKING:
    from .service.contract import FineTuningService

REGISTRY: dict[str, str] = {
    "local": "convtune.local.local_service:LocalService",
    "openai": "convtune.openai_backend.openai_service:OpenAIService",
}
NAMES: tuple[str, ...] = tuple(REGISTRY)  # click's choices, eval's MODEL@BACKEND suffixes
DEFAULT = "local"


def service_class(name: str = DEFAULT) -> type[FineTuningService]:
    """The service class of a backend: its `capabilities` are known before a key is read or a
    connection made."""
    try:
        where = REGISTRY[name]
    except KeyError:
        raise OptionError(
            f"unknown backend {name!r}", hint=f"the backends are {', '.join(NAMES)}"
        ) from None
    module, cls = where.split(":")
    found = getattr(importlib.import_module(module), cls)
    if found.name != name:  # the class's own name is what `again` and the tables print
        raise OptionError(f"the backend {name!r} is registered as {found.name!r}")
    return found


def connect(
    name: str = DEFAULT,
    *,
    api_key: str | None = None,
    base_url: str | None = None,
    **options: Any,
) -> FineTuningService:
    """A service of the named backend. A remote backend reads its key and address here
    (`api_key`, `base_url`, else its environment); a local one takes neither, and `options` go
    to its constructor (`max_running`, `max_batch` for a server's)."""
    cls = service_class(name)
    if cls.capabilities.remote:
        return cls(api_key=api_key, base_url=base_url, **options)  # type: ignore[call-arg]
    if api_key or base_url:
        raise OptionError(f"--base-url and --api-key are options of a remote backend, not {name}")
    return cls(**options)
