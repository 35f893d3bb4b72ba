"""The typed events of a stream: what providers yield and what a stream's log holds.

A provider turns a chat request into an iterator of ``Opened``, then ``Delta``,
``Reasoning`` and ``ToolCall`` events, then one ``Done``; it raises
``UpstreamError`` rather than yielding ``Failed``. The stream producer
(``streamapp.streams.producer``) numbers the events and appends them to the
stream's log, ending it with the provider's ``Done`` or with one of its own: a
``Done`` for a stop or a limit, a ``Failed`` for a failure. Encoders
(``streamapp.wire``) write them out; ``to_dict``/``from_dict`` turn an event
into a plain dict (its ``kind`` included) and back, for stores that serialise.

The shapes follow OpenAI's chat-completion chunks, the richest of the upstream
formats, so that nothing a real model sends is lost on the way:

- ``Opened``: the upstream accepted the request; no content;
- ``Delta``: answer text; ``Reasoning``: the model's reasoning text
  (``reasoning_content`` / ``reasoning`` / Ollama's ``thinking``), kept apart;
- ``ToolCall``: one fragment of a tool call: ``index`` tells calls apart, ``id``,
  ``name`` come with a call's first fragment, ``arguments`` is a piece of a
  JSON string to concatenate;
- ``Done``: the end, with ``usage`` (from a provider: the upstream's counts, ``None`` when it
  sent none, never zeros standing for "unknown"; in a stream's log: the stream's usage record,
  ``streamapp.usage.record``);
- ``Failed``: the end of a stream that failed, with a code and a message clients see, and in a
  stream's log its usage record too.

:func:`content_bytes` is the size of what an event carries, which the stream limits count.
"""

from __future__ import annotations

from dataclasses import dataclass
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
class Reasoning:
    """A piece of the model's reasoning, shown apart from the answer."""

    text: str
    kind: str = "reasoning"


@dataclass(slots=True)
class ToolCall:
    """A fragment of tool call number ``index`` (OpenAI's ``delta.tool_calls[]`` shape)."""

    index: int
    id: str | None = None  # noqa: A003 - OpenAI's field name
    name: str | None = None
    arguments: str = ""
    kind: str = "tool_call"


@dataclass(slots=True)
class Done:
    """Generation finished; ``finish_reason`` is the upstream's or ours.

    ``usage`` has ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and,
    where the upstream gave them, ``prompt_tokens_details`` (``cached_tokens``)
    and ``completion_tokens_details`` (``reasoning_tokens``); ``None`` if unknown.
    """

    finish_reason: str = "stop"
    usage: dict[str, Any] | None = None
    kind: str = "done"


@dataclass(slots=True)
class Failed:
    """Generation failed; ``code`` is one of ``UpstreamError`` codes."""

    code: str
    message: str
    status: int = 502
    upstream_status: int | None = None  # the upstream's own HTTP status, when it answered one
    usage: dict[str, Any] | None = None  # the stream's usage record (the producer's), even so
    retry_after: float | None = None  # seconds the upstream asked its clients to wait (Retry-After)
    kind: str = "error"


Event = Opened | Delta | Reasoning | ToolCall | Done | Failed
_KINDS = {"open": Opened, "delta": Delta, "reasoning": Reasoning, "tool_call": ToolCall,
          "done": Done, "error": Failed}


def is_terminal(event: Event) -> bool:
    """True for the events that end a stream."""
    return event.kind in ("done", "error")


def content_bytes(event: Event) -> int:
    """The UTF-8 size of the content ``event`` carries: its text (``Delta``, ``Reasoning``),
    or a tool call fragment's ``id``, ``name`` and ``arguments``; 0 for the other kinds."""
    if isinstance(event, (Delta, Reasoning)):
        return len(event.text.encode("utf-8", "replace"))
    if isinstance(event, ToolCall):
        return len("".join((event.id or "", event.name or "", event.arguments)).encode("utf-8", "replace"))
    return 0


def to_dict(event: Event) -> dict[str, Any]:
    """Serialise an event (``kind`` included) for a store."""
    return {name: getattr(event, name) for name in event.__slots__}


def from_dict(data: dict[str, Any]) -> Event:
    """Inverse of :func:`to_dict`."""
    data = dict(data)
    return _KINDS[data.pop("kind")](**data)
