"""LLM providers behind one interface (see ``base``)."""

from __future__ import annotations

from typing import Any

from .base import ChatRequest, Provider
from .demo import DemoProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider

__all__ = ["ChatRequest", "Provider", "build_providers", "model_name"]


def build_providers(config: dict[str, Any]) -> dict[str, Provider]:
    """One instance of each provider, configured from the app config."""
    timeouts = (config["CONNECT_TIMEOUT_S"], config["READ_TIMEOUT_S"])
    return {
        "demo": DemoProvider(config["DEMO_DELAY_MS"]),
        "openai": OpenAIProvider(config["OPENAI_BASE_URL"], config["OPENAI_API_KEY"],
                                 config["OPENAI_MODEL"], timeouts),
        "ollama": OllamaProvider(config["OLLAMA_HOST"], config["OLLAMA_MODEL"], timeouts),
    }


def model_name(provider: Provider, requested: str | None) -> str:
    """The model a request to ``provider`` uses: the one it names, else the provider's default."""
    return requested or getattr(provider, "default_model", None) or "demo"
