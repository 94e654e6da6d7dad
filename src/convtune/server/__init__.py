"""`convtune serve`: OpenAI's fine-tuning API (files, jobs, models, chat) over the local backend.

Needs the `serve` extra (fastapi, uvicorn, python-multipart). `create_app` builds the ASGI app;
`convtune serve` (cli/serve_cmd.py) runs it with uvicorn.
"""

from .app import create_app

__all__ = ["create_app"]
