"""LLM providers behind one interface (see ``base``)."""

from __future__ import annotations

from typing import Any

from ..upstreams import Fleet, Upstream
from .base import ChatRequest, Provider
from .demo import DemoProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider

__all__ = ["ChatRequest", "Provider", "build_providers", "model_name"]


def build_providers(config: dict[str, Any], fleet: Fleet | None = None) -> dict[str, Provider]:
    """The providers by name: with an upstreams file, ``demo`` and one per upstream (by its name);
    else one of each (``demo``, ``openai``, ``ollama``), configured from the app config."""
    timeouts = (config["CONNECT_TIMEOUT_S"], config["READ_TIMEOUT_S"])
    if fleet is not None:
        return {"demo": DemoProvider(config["DEMO_DELAY_MS"]),
                **{name: _upstream(up, config) for name, up in fleet.upstreams.items()}}
    return {
        "demo": DemoProvider(config["DEMO_DELAY_MS"]),
        "openai": OpenAIProvider(config["OPENAI_BASE_URL"], config["OPENAI_API_KEY"],
                                 config["OPENAI_MODEL"], timeouts),
        "ollama": OllamaProvider(config["OLLAMA_HOST"], config["OLLAMA_MODEL"], timeouts),
    }


def _upstream(upstream: Upstream, config: dict[str, Any]) -> Provider:
    """The provider of one upstream of the file, its own timeouts before the settings'."""
    timeouts = (upstream.connect_timeout_s or config["CONNECT_TIMEOUT_S"],
                upstream.read_timeout_s or config["READ_TIMEOUT_S"])
    if upstream.kind == "openai":
        return OpenAIProvider(upstream.base_url, upstream.api_key,
                              upstream.default_model or config["OPENAI_MODEL"], timeouts)
    return OllamaProvider(upstream.base_url, upstream.default_model or config["OLLAMA_MODEL"], timeouts)


def model_name(provider: Provider, requested: str | None) -> str:
    """The model a request to ``provider`` uses: the one it names, else the provider's default."""
    return requested or getattr(provider, "default_model", None) or "demo"
