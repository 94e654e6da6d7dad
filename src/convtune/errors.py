"""One exception hierarchy for the whole library.

Library code raises these and never prints or exits; each front end (the CLI, later the server)
turns them into a one-line message and an exit code in one place.
"""

from __future__ import annotations

from pathlib import Path


class ConvtuneError(Exception):
    """A problem the user can fix, with where it is and how to fix it.

    `str(error)` is the one line a user sees: ``file:line: problem (hint)``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = str(path) if path is not None else None
        self.line = line
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.path is not None:
            where = self.path + (f":{self.line}" if self.line is not None else "") + ": "
        elif self.line is not None:
            where = f"line {self.line}: "
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{self.message}{hint}"


class InputError(ConvtuneError):
    """The input spreadsheet or dataset cannot be read as convtune expects."""


class OutputExistsError(ConvtuneError):
    """An output file already exists and `force` was not given."""


class OptionError(ConvtuneError):
    """An option value that makes no sense (unknown format, negative ratio...)."""


class NotFound(ConvtuneError):
    """No file, job or model with that id."""


class Conflict(ConvtuneError):
    """The object is not in a state that allows this (cancel a finished job...)."""


class TransientError(ConvtuneError):
    """The service could not be reached or was overloaded (a dropped connection, 429, 5xx).

    Trying again later may work: `follow` backs off and retries on these, and nothing else.
    """


class Unreachable(TransientError):
    """Nothing answered at the service's address (connection refused, no such host).

    Still worth a few tries (a server restarting), but not half an hour's: `eval` and `record`
    give up after seconds, while `follow` waits as for any transient error.
    """


class KeyRefused(ConvtuneError):
    """The service refused the API key (401) or the key may not do this (403)."""
