"""Encoders: one per wire format, turning numbered stream events into bytes.

Every transport writes through one of these; none formats ``data:`` lines
itself. Formats are registered by name (:func:`encoder`), and a stream's
metadata keeps the name it was made for, so a resume speaks the same format.
Adding a format is one new class with ``@register``.

- ``chat`` (SSE, ``POST /api/chat``): ``data:`` is JSON, ``{"delta", "index"}``
  per token and a final ``{"is_end": true, "finish_reason", "usage"}``.
- ``plain`` (SSE, ``/stream``, ``/ai-stream``, ``/local-ai``): ``data:`` is the
  raw token text; the stream ends with ``event: end``.
- ``text`` (chunked ``text/plain``): the tokens alone, one chunk each.

Both SSE formats open with ``event: stream`` (``{"stream_id"}``) carrying the
first ``retry:``, give every event the id ``<stream_id>-<seq>``, and end a
failure with ``event: error`` and ``{"code", "message"}``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from . import sse
from .events import Delta, Done, Event, Failed, Opened


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


_STREAM_ID = re.compile(r"[A-Za-z0-9]{1,64}")


def is_stream_id(value: str) -> bool:
    """Whether ``value`` has the shape of a stream id (letters and digits)."""
    return _STREAM_ID.fullmatch(value) is not None


def event_id(sid: str, seq: int) -> str:
    """The SSE id of event ``seq`` of stream ``sid``."""
    return f"{sid}-{seq}"


def parse_event_id(value: str) -> tuple[str, int] | None:
    """``(stream_id, seq)`` from an SSE id, or ``None`` if it is not one of ours."""
    sid, sep, seq = sse.clean_field(value).strip().rpartition("-")
    if not sep or not is_stream_id(sid) or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        return None
    return sid, int(seq)


class Encoder(Protocol):
    """What every wire format provides."""

    name: str
    content_type: str
    resumable: bool  # the client gets event ids and may come back with one
    coalesce: bool  # events read together may share one chunk

    def open(self, sid: str) -> bytes: ...
    def heartbeat(self) -> bytes: ...
    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes: ...


_FORMATS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make a wire format available by its ``name``."""
    _FORMATS[cls.name] = cls
    return cls


def encoder(name: str, retry_ms: int = 2000) -> Encoder:
    """A new encoder of the wire format called ``name``."""
    return _FORMATS[name](retry_ms)


def is_resumable(name: str) -> bool:
    """Whether streams made in format ``name`` can be resumed by event id."""
    cls = _FORMATS.get(name)
    return bool(cls and cls.resumable)


class _SSE:
    """What both SSE formats share: the opening, heartbeats, ends and errors."""

    name = ""
    content_type = "text/event-stream; charset=utf-8"
    resumable = True
    coalesce = True

    def __init__(self, retry_ms: int = 2000) -> None:
        self.retry_ms = retry_ms

    def open(self, sid: str) -> bytes:
        """Written right after the headers so proxies see the stream open."""
        return sse.comment(f"stream {sid}")

    def heartbeat(self) -> bytes:
        """Written when nothing else was sent for a while."""
        return sse.comment("keep-alive")

    def delta(self, event: Delta) -> str:
        raise NotImplementedError

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        raise NotImplementedError

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        """One event; the first one written on a connection carries ``retry:``."""
        eid = event_id(sid, seq)
        retry = self.retry_ms if first else None
        if isinstance(event, Delta):
            return sse.encode(self.delta(event), id=eid, retry=retry)
        if isinstance(event, Opened):
            return sse.encode(_json({"stream_id": sid}), event="stream", id=eid, retry=retry)
        if isinstance(event, Done):
            end = {"is_end": True, "finish_reason": event.finish_reason, "usage": event.usage}
            return self.end(_json(end), eid, retry)
        if isinstance(event, Failed):
            return sse.encode(_json({"code": event.code, "message": event.message}),
                              event="error", id=eid, retry=retry)
        raise TypeError(f"no SSE form for {event!r}")


@register
class ChatSSE(_SSE):
    """``POST /api/chat``: JSON deltas, and the end as a plain ``data:``."""

    name = "chat"

    def delta(self, event: Delta) -> str:
        return _json({"delta": event.text, "index": event.index})

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        return sse.encode(data, id=eid, retry=retry)


@register
class PlainSSE(_SSE):
    """The GET streams: raw token text, and the end as ``event: end``."""

    name = "plain"

    def delta(self, event: Delta) -> str:
        return event.text

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        return sse.encode(data, event="end", id=eid, retry=retry)


@register
class TextChunks:
    """Plain chunked text: one chunk per delta, nothing else."""

    name = "text"
    content_type = "text/plain; charset=utf-8"
    resumable = False
    coalesce = False  # one chunk per delta

    def __init__(self, retry_ms: int = 0) -> None:
        pass

    def open(self, sid: str) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return b""

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        if isinstance(event, Delta):
            return event.text.encode("utf-8")
        if isinstance(event, Failed):
            # The status line is long gone: say it in the text, on its own line.
            return f"\n[error {event.code}: {event.message}]\n".encode()
        if isinstance(event, Done) and event.finish_reason not in ("stop", "length"):
            return f"\n[{event.finish_reason}]\n".encode()  # cut short: say so
        return b""
