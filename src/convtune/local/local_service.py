"""`LocalService`: OpenAI's fine-tuning API, on this machine, with open models.

Files are copied into the data folder (`local_files`), jobs are rows in the SQLite store, each
trained by its own worker process (`local_jobs`), fine-tuned and base models are listed from the
store and this installation (`local_models`), and chat answers from models kept loaded
(`chat_completions`). This class holds what they share: the data folder, the store and the
limits a server sets.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import OptionError
from ..service.contract import Capabilities, FineTuningService
from ..state.home import data_dir
from .chat_completions import LocalChatCompletions
from .database import database_path
from .local_files import LocalFiles
from .local_jobs import LocalJobs
from .local_models import LocalModels
from .store import Store

DEFAULT_MAX_BATCH = 32  # chat replies generated together (measured: BENCHMARKS.md, serve section)


class LocalService(FineTuningService):
    """The local implementation of `FineTuningService`.

    `max_running` caps how many jobs train at once (`convtune serve --concurrency`): more jobs
    wait in line as `queued`, oldest first. None, as the CLI has it, runs every job at once.

    `max_batch` caps how many chat replies one model generates together (`convtune serve
    --max-batch`): replies asked at the same time share each forward pass; 1 generates them one
    after another.

    `engine` is what generates them (`engines.ENGINES`; `--engine` of chat, eval, record and
    serve): "auto" is transformers for now (`engines` says why).
    """

    name = "local"
    capabilities = Capabilities(
        remote=False,
        numbered_events=True,
        file_paths=True,
        trainer_options=True,
        resume_ended=True,
        lists_base_models=True,
        deletes_model_files=True,
        scores_references=True,
        batches_chat=True,
    )

    def __init__(
        self,
        home: Path | None = None,
        *,
        max_running: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        engine: str = "auto",
    ) -> None:
        from .engines import ENGINES

        if engine not in ENGINES:
            raise OptionError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if max_running is not None and max_running < 1:
            raise OptionError("the number of jobs running at once must be 1 or more")
        if max_batch < 1:
            raise OptionError("the number of replies generated together must be 1 or more")
        self.home: Path = home or data_dir()
        self.max_running = max_running
        self.max_batch = max_batch
        self.engine = engine  # what generates chat replies (`engines.choose`)
        self.store = Store(database_path(self.home))
        self.files = LocalFiles(self)
        self.jobs = LocalJobs(self)
        self.models = LocalModels(self)
        self.chat = LocalChatCompletions(self)

    def close(self) -> None:
        self.chat.close()
        self.store.close()
