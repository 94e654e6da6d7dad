"""`convtune ui`: `convtune serve` on loopback with a fresh key, and the web page opened on it.

The key is made here, printed, and given to the page in the URL's fragment (`/#key=...`), which
a browser never sends: it reaches no log. The server reads it from a key file (mode 600) in a
temporary folder, removed as soon as the server listens (its keys are in memory by then).
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import tempfile
import threading
import time
import webbrowser
from pathlib import Path

import click

from ..errors import ConvtuneError
from .serve_cmd import serve


@click.command(
    short_help="Start the web page: data, training and chat in a browser.",
    epilog="""
\b
Examples:
  convtune ui
  convtune ui --port 8000 --no-open
""",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port on 127.0.0.1; 0 picks a free one.",
)
@click.option("--no-open", is_flag=True, help="Print the address; do not open a browser.")
@click.pass_context
def ui(ctx: click.Context, port: int, no_open: bool) -> None:
    """Start convtune serve on this machine and open its web page.

    Drop a spreadsheet, check the examples, train, follow the loss and chat with the result,
    all in the browser. The server listens on 127.0.0.1 only, with a new key each time (printed
    below; the page receives it in its address). Ctrl-C stops it; jobs go on training.
    """
    key = "sk-ui-" + secrets.token_urlsafe(24)
    # The port is checked before the key goes anywhere: the page is opened once something
    # listens there, which must be this server, not another program that holds the port.
    port = _port(port)
    folder = Path(tempfile.mkdtemp(prefix="convtune-ui-"))
    key_file = folder / "keys.txt"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    url = f"http://127.0.0.1:{port}/"
    click.echo(f"convtune ui: the page is {url} (API key {key})")
    click.echo(f"convtune ui: open {url}#key={key}")
    ready = threading.Thread(
        target=_when_listening,
        args=(port, folder, None if no_open else f"{url}#key={key}"),
        daemon=True,
    )
    ready.start()
    try:
        ctx.invoke(serve, host="127.0.0.1", port=port, api_key_file=key_file)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _port(port: int) -> int:
    """`port` (a free one for 0), once it is known that nothing listens there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConvtuneError(
                f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}",
                hint="choose another --port, or leave it out for a free one",
            ) from None
        return sock.getsockname()[1]


def _when_listening(port: int, folder: Path, url: str | None, timeout: float = 120.0) -> None:
    """Once the server accepts connections: remove the key file, then open the page."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        return
    shutil.rmtree(folder, ignore_errors=True)
    if url is not None:
        webbrowser.open(url)
