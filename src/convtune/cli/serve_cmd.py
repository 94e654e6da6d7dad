"""`convtune serve`: the OpenAI fine-tuning API over the local backend, with uvicorn."""

from __future__ import annotations

import copy
import ipaddress
import socket
import sys
from pathlib import Path

import click

from .. import backends
from ..errors import ConvtuneError
from ..local.local_service import DEFAULT_MAX_BATCH
from .backend import engine_option


@click.command(
    epilog="""
\b
Examples:
  convtune serve --port 8000 --api-key-file keys.txt
  CONVTUNE_API_KEYS=sk-local-1 convtune serve --concurrency 2
  convtune serve --api-key-file keys.txt --rate-limit 60/min
  python -c "from openai import OpenAI; c = OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='sk-local-1'); print(c.models.list())"
"""
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; anything but loopback exposes the API to the network.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="Port to bind; 0 picks a free one (the first line printed says which).",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Accepted bearer keys, one a line ('#' comments); also $CONVTUNE_API_KEYS (a,b,c).",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Fine-tuning jobs running at once; more wait in line, queued.",
)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BATCH,
    show_default=True,
    help="Chat replies one model generates together (continuous batching); 1: one at a time.",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=512.0,
    show_default=True,
    help="Largest file upload accepted (413 past it).",
)
@click.option(
    "--rate-limit",
    metavar="N/UNIT",
    default=None,
    help="Requests per key: N/s, N/min or N/h (429 with Retry-After past it). Default: no limit.",
)
@engine_option
def serve(
    host: str,
    port: int,
    api_key_file: Path | None,
    concurrency: int,
    max_batch: int,
    max_upload_mb: float,
    rate_limit: str | None,
    engine: str,
) -> None:
    """Serve OpenAI's fine-tuning and chat API on this machine.

    Files, fine-tuning jobs, models and chat completions, as the openai SDK expects them, over
    the local backend. Every request needs one of the keys.
    """
    try:
        import uvicorn

        from ..server import create_app
        from ..server.auth import load_keys
        from ..server.rate_limit import parse_rate
    except ImportError as exc:
        raise ConvtuneError(
            f"convtune serve needs the serve extra ({exc.name} is missing)",
            hint="pip install 'convtune[serve]'",
        ) from None
    rate = parse_rate(rate_limit) if rate_limit is not None else None
    keys = load_keys(api_key_file)
    if api_key_file is not None and api_key_file.stat().st_mode & 0o077:
        click.echo(
            f"convtune serve: warning: {api_key_file} can be read by other users"
            f" (chmod 600 {api_key_file})",
            err=True,
        )
    sock = _bind(host, port)
    if not _loopback(host):
        click.echo(
            f"convtune serve: warning: listening on {host}, not loopback: anyone who can reach"
            " this machine can try keys, in clear text; put a TLS proxy in front",
            err=True,
        )
    service = backends.connect(
        backends.DEFAULT, max_running=concurrency, max_batch=max_batch, engine=engine
    )
    for job_id, what in service.jobs.recover():
        click.echo(f"convtune serve: job {job_id} {what} after the restart", err=True)
    app = create_app(
        service,
        keys,
        max_upload_bytes=int(max_upload_mb * (1 << 20)),
        # twice the batch: a reply that ends makes room for one already waiting in the engine
        chat_slots=max(4, 2 * max_batch),
        rate_limit=rate,
    )
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{bound_port}/v1"
    config = uvicorn.Config(
        app,
        log_config=_log_config(uvicorn),
        timeout_graceful_shutdown=10,
        # longer than clients keep idle connections (httpx, and so the openai SDK: 5 s), so that
        # a client never reuses a connection the server is closing at that very moment
        timeout_keep_alive=30,
        server_header=False,
    )

    def close() -> None:
        app.state.context.completions.close()
        service.close()

    server = _make_server(uvicorn, config, url, close)
    try:
        # On SIGTERM or Ctrl-C uvicorn stops gracefully (requests in flight get 10 s), `close`
        # runs, and then uvicorn raises the signal again: the exit status says what stopped it.
        server.run(sockets=[sock])
    finally:
        sock.close()
    if not server.started:
        raise ConvtuneError("the server did not start (its log above says why)")


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that `--port 0` can say which port it got."""
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConvtuneError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock  # not inheritable: a job's worker, which may outlive the server, never holds it


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _log_config(uvicorn) -> dict:
    """uvicorn's logging, all of it on stderr: stdout carries the `listening on` line only."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    for handler in config["handlers"].values():
        handler["stream"] = "ext://sys.stderr"
    config["loggers"]["convtune.serve"] = {"handlers": ["default"], "level": "INFO"}
    return config


def _make_server(uvicorn, config, url: str, close):
    """uvicorn's server, which says where it listens once it accepts connections, and closes
    the service's databases once it has stopped serving."""

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                sys.stdout.write(f"convtune serve: listening on {url}\n")
                sys.stdout.flush()

        async def shutdown(self, sockets=None) -> None:
            await super().shutdown(sockets=sockets)
            close()

    return Server(config)
