"""The provider interface: a chat request in, an iterator of events out.

Every provider yields ``Opened`` once the upstream accepted the request, then
``Delta`` events, then exactly one ``Done``; any upstream failure raises
``UpstreamError``. Providers know nothing of Flask or of stream lifecycles;
closing the returned iterator closes the upstream connection.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import Event


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider needs: messages, a model (or ``None``), options."""

    messages: list[dict[str, str]]
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Provider(Protocol):
    """Anything with a ``stream`` method of this shape."""

    name: str

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, ``Delta``s and a final ``Done``; raise ``UpstreamError``."""
        ...
