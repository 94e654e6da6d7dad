"""`service.chat` of the local backend: replies from models loaded once and kept loaded.

The most recently used models stay loaded (`CHAT_MODELS_KEPT`), each loaded once however many
threads ask for it at once; replies asked of one model at the same time are generated together.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..service.contract import Chat, ChatReply, ChatRequest

if TYPE_CHECKING:  # loading a chat model needs torch
    from .chat import LocalChat
    from .engines import EngineChoice
    from .local_service import LocalService

CHAT_MODELS_KEPT = 4  # models kept loaded for chat; the least recently used is dropped first


class LocalChatCompletions(Chat):
    service: LocalService

    def __init__(self, service: LocalService) -> None:
        super().__init__(service)
        self._models: dict[str, LocalChat] = {}
        self._loading: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def create(self, request: ChatRequest) -> ChatReply:
        return self.model(request.model).reply(request)

    def model(self, model: str) -> LocalChat:
        """The loaded model, from the cache of the most recently used ones."""
        from .chat import LocalChat

        key = self._key(model)
        with self._guard:  # one load per model, however many threads ask for it at once
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._guard:
                chat = self._models.pop(key, None)
            if chat is None:  # by its source: a base model's id means nothing to the loader
                chat = LocalChat.load(self.service, key)
            with self._guard:
                self._models[key] = chat  # most recently used last
                while len(self._models) > CHAT_MODELS_KEPT:  # replies under way go on
                    self._models.pop(next(iter(self._models)))
        return chat

    def engine_of(self, model: str) -> EngineChoice:
        """The engine that answers `model` with this service's `engine` (without loading it)."""
        from pathlib import Path

        from .base_models import base_folder
        from .engines import EngineChoice, choose

        if self.service.engine in ("auto", "transformers"):  # no folder needed
            return EngineChoice("transformers")
        record = self.service.store.get_model(model)
        if record is not None:
            return choose(self.service.engine, Path(record["path"]))
        return choose(self.service.engine, base_folder(self.service.models.base_model(model)))

    def _key(self, model: str) -> str:
        """One cache entry per model, however its path is spelled (`/a/b`, `/a//b`, `/a/./b`)."""
        if self.service.store.get_model(model) is not None:
            return model
        return self.service.models.base_model(model).source

    def forget(self, model_id: str) -> None:
        """Drop a deleted model (replies under way go on)."""
        with self._guard:
            self._models.pop(model_id, None)

    def close(self) -> None:
        with self._guard:
            chats = list(self._models.values())
        for chat in chats:  # replies still under way end here, not in the middle of torch
            chat.close()
