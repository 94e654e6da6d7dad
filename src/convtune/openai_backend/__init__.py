"""The openai backend: OpenAI's fine-tuning API, or any service that speaks it."""

from .openai_service import OPENAI_URL, WIND_DOWN, OpenAIService, Ownership, wind_down_warning

__all__ = ["OPENAI_URL", "WIND_DOWN", "OpenAIService", "Ownership", "wind_down_warning"]
