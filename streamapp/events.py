"""The typed events every provider yields and every stream log stores.

A provider turns a chat request into an iterator of these; the stream producer
numbers them and appends them to a store; encoders (``streamapp.wire``) write
them out. ``to_dict``/``from_dict`` give the compact form the Redis store keeps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Opened:
    """The upstream accepted the request (HTTP 200); tokens may follow."""

    stream_id: str = ""
    kind: str = "open"


@dataclass(slots=True)
class Delta:
    """A piece of generated text; ``index`` counts deltas from 0."""

    text: str
    index: int = 0
    kind: str = "delta"


@dataclass(slots=True)
class Done:
    """Generation finished; ``finish_reason`` is the upstream's or ours."""

    finish_reason: str = "stop"
    usage: dict[str, int] = field(default_factory=dict)
    kind: str = "done"


@dataclass(slots=True)
class Failed:
    """Generation failed; ``code`` is one of ``UpstreamError`` codes."""

    code: str
    message: str
    status: int = 502
    kind: str = "error"


Event = Opened | Delta | Done | Failed
_KINDS = {"open": Opened, "delta": Delta, "done": Done, "error": Failed}


def is_terminal(event: Event) -> bool:
    """True for the events that end a stream."""
    return event.kind in ("done", "error")


def to_dict(event: Event) -> dict[str, Any]:
    """Serialise an event (``kind`` included) for a store."""
    return {name: getattr(event, name) for name in event.__slots__}


def from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`to_dict`."""
    data = dict(data)
    return _KINDS[data.pop("kind")](**data)
