"""`service.models` and `service.chat` of the openai backend: the service's models, and chat
completions streamed with their usage."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import Conflict
from ..service.contract import Chat, ChatReply, ChatRequest, Models
from ..service.objects import ModelObject
from .conversions import RemoteReply

if TYPE_CHECKING:
    from .openai_service import OpenAIService


class OpenAIModels(Models):
    service: OpenAIService

    def list(self) -> list[ModelObject]:
        """Every model the service lists (base models too); fine-tuned ones start with ft:."""
        with self.service.call("list models"):
            found = [
                ModelObject(m.id, m.created or 0, m.owned_by or "")
                for m in self.service.client.models.list()
            ]
        return sorted(found, key=lambda m: m.created, reverse=True)

    def get(self, model_id: str) -> ModelObject:
        with self.service.call(f"model {model_id}"):
            m = self.service.client.models.retrieve(model_id)
        return ModelObject(m.id, m.created or 0, m.owned_by or "")

    def delete(self, model_id: str) -> None:
        """Delete a fine-tuned model; base models are refused before anything is sent."""
        if not model_id.startswith("ft:"):
            raise Conflict(
                f"{model_id} is a base model: convtune deletes only fine-tuned (ft:) models"
            )
        with self.service.call(f"delete model {model_id}"):
            self.service.client.models.delete(model_id)


class OpenAIChat(Chat):
    service: OpenAIService

    def create(self, request: ChatRequest) -> ChatReply:
        """Stream the reply (chat.completions with stream=True, asking for the usage chunk)."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.top_p != 1.0:
            params["top_p"] = request.top_p
        if request.seed is not None:
            params["seed"] = request.seed
        if request.stop:
            params["stop"] = request.stop
        what = f"chat with {request.model}"
        with self.service.call(what):
            stream = self.service.client.chat.completions.create(**params)
        return RemoteReply(stream, lambda: self.service.call(what))
