"""Encoders: one per wire format, turning numbered stream events into bytes.

Every transport writes through one of these; none formats ``data:`` lines
itself. Formats are registered by name (:func:`encoder`), and a stream's
metadata keeps the name it was made for, so a resume speaks the same format.
Adding a format is one new class with ``@register``.

- ``chat`` (SSE, ``POST /api/chat``): ``data:`` is JSON, ``{"delta", "index"}``
  per token and a final ``{"is_end": true, "finish_reason", "usage"}`` (the stream's usage
  record with its ``source``: ``streamapp.usage.record``).
- ``plain`` (SSE, ``/stream``, ``/ai-stream``, ``/local-ai``): ``data:`` is the
  raw token text; the stream ends with ``event: end``.
- ``text`` (chunked ``text/plain``): the answer's tokens alone, one chunk each
  (reasoning and tool calls are not part of the text).
- ``openai`` (SSE, ``POST /v1/chat/completions``): ``chat.completion.chunk``
  objects as OpenAI streams them, ``data:`` lines and comments only, ending with
  ``data: [DONE]``; the usage chunk (only with ``include_usage``) in OpenAI's shape.

WebSocket messages are not an HTTP body: :func:`ws_message` gives each event's
message object (``delta``, ``reasoning``, ``tool_call``, ``end``, ``error``).

Both of our own SSE formats open with ``event: stream`` (``{"stream_id"}``)
carrying the first ``retry:``, give every event the id ``<stream_id>-<seq>``,
relay reasoning and tool calls apart from the answer, and end a failure with
``event: error`` and ``{"code", "message", "usage"}``.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol

from . import sse
from .events import Delta, Done, Event, Failed, Opened, Reasoning, ToolCall
from .usage.record import openai_usage


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
    # Optional ``replays = True``: the encoder keeps state across events (open blocks, counters),
    # so a resume feeds it the log from the start and the edge drops what it writes up to the
    # resume point (``routes.edge.http_body``'s ``quiet_until``).

    def open(self, sid: str) -> bytes: ...
    def heartbeat(self) -> bytes: ...
    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes: ...


_FORMATS: dict[str, type] = {}
SSE_TYPE = "text/event-stream; charset=utf-8"


def register(cls: type) -> type:
    """Class decorator: make a wire format available by its ``name``."""
    _FORMATS[cls.name] = cls
    return cls


def encoder(name: str, retry_ms: int = 2000, meta: dict[str, Any] | None = None) -> Encoder:
    """A new encoder of the wire format called ``name`` for a stream with metadata ``meta``."""
    return _FORMATS[name](retry_ms, meta or {})


def is_resumable(name: str) -> bool:
    """Whether streams made in format ``name`` can be resumed by event id."""
    cls = _FORMATS.get(name)
    return bool(cls and cls.resumable)


def tool_call_dict(event: ToolCall) -> dict[str, Any]:
    """A tool-call fragment in OpenAI's ``delta.tool_calls[]`` shape (absent parts left out)."""
    function: dict[str, Any] = {"arguments": event.arguments}
    if event.name is not None:
        function = {"name": event.name, **function}
    call: dict[str, Any] = {"index": event.index}
    if event.id is not None:
        call.update(id=event.id, type="function")
    call["function"] = function
    return call


class _SSE:
    """What both of our SSE formats share: the opening, heartbeats, ends and errors."""

    name = ""
    content_type = SSE_TYPE
    resumable = True
    coalesce = True

    def __init__(self, retry_ms: int = 2000, meta: dict[str, Any] | None = None) -> None:
        self.retry_ms = retry_ms

    def open(self, sid: str) -> bytes:
        """Written right after the headers so proxies see the stream open."""
        return sse.comment(f"stream {sid}")

    def heartbeat(self) -> bytes:
        """Written when nothing else was sent for a while."""
        return sse.comment("keep-alive")

    def delta(self, event: Delta) -> str:
        raise NotImplementedError

    def extra(self, event: Reasoning | ToolCall, eid: str, retry: int | None) -> bytes:
        raise NotImplementedError

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        raise NotImplementedError

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        """One event; the first one written on a connection carries ``retry:``."""
        eid = event_id(sid, seq)
        retry = self.retry_ms if first else None
        if isinstance(event, Delta):
            return sse.encode(self.delta(event), id=eid, retry=retry)
        if isinstance(event, (Reasoning, ToolCall)):
            return self.extra(event, eid, retry)
        if isinstance(event, Opened):
            return sse.encode(_json({"stream_id": sid}), event="stream", id=eid, retry=retry)
        if isinstance(event, Done):
            end = {"is_end": True, "finish_reason": event.finish_reason, "usage": event.usage}
            return self.end(_json(end), eid, retry)
        if isinstance(event, Failed):
            failure = {"code": event.code, "message": event.message}
            if event.usage is not None:
                failure["usage"] = event.usage
            return sse.encode(_json(failure), event="error", id=eid, retry=retry)
        raise TypeError(f"no SSE form for {event!r}")


@register
class ChatSSE(_SSE):
    """``POST /api/chat``: JSON ``data:`` (``delta``, ``reasoning`` or ``tool_call``), and the
    end as a plain ``data:``."""

    name = "chat"

    def delta(self, event: Delta) -> str:
        return _json({"delta": event.text, "index": event.index})

    def extra(self, event: Reasoning | ToolCall, eid: str, retry: int | None) -> bytes:
        data = {"reasoning": event.text} if isinstance(event, Reasoning) \
            else {"tool_call": tool_call_dict(event)}
        return sse.encode(_json(data), id=eid, retry=retry)

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        return sse.encode(data, id=eid, retry=retry)


@register
class PlainSSE(_SSE):
    """The GET streams: raw token text; ``event: reasoning`` (text) and ``event: tool_call``
    (JSON) apart; the end as ``event: end``."""

    name = "plain"

    def delta(self, event: Delta) -> str:
        return event.text

    def extra(self, event: Reasoning | ToolCall, eid: str, retry: int | None) -> bytes:
        if isinstance(event, Reasoning):
            return sse.encode(event.text, event="reasoning", id=eid, retry=retry)
        return sse.encode(_json(tool_call_dict(event)), event="tool_call", id=eid, retry=retry)

    def end(self, data: str, eid: str, retry: int | None) -> bytes:
        return sse.encode(data, event="end", id=eid, retry=retry)


@register
class TextChunks:
    """Plain chunked text: one chunk per delta of the answer, nothing else."""

    name = "text"
    content_type = "text/plain; charset=utf-8"
    resumable = False
    coalesce = False  # one chunk per delta

    def __init__(self, retry_ms: int = 0, meta: dict[str, Any] | None = None) -> None:
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
            return f"\n[{event.finish_reason}]\n".encode()  # cut short (or tool calls): say so
        return b""


# -- WebSocket messages ------------------------------------------------------------------

def ws_message(sid: str, seq: int, event: Event) -> dict[str, Any] | None:
    """Event ``seq`` of stream ``sid`` as a WebSocket message, or ``None`` for the opening
    (the socket said ``start`` already)."""
    if isinstance(event, Delta):
        return {"type": "delta", "content": event.text, "seq": seq}
    if isinstance(event, Reasoning):
        return {"type": "reasoning", "content": event.text, "seq": seq}
    if isinstance(event, ToolCall):
        return {"type": "tool_call", "tool_call": tool_call_dict(event), "seq": seq}
    if isinstance(event, Done):
        return {"type": "end", "finish_reason": event.finish_reason, "usage": event.usage, "seq": seq,
                "stream_id": sid}
    if isinstance(event, Failed):
        message = {"type": "error", "code": event.code, "message": event.message, "seq": seq,
                   "stream_id": sid}
        if event.usage is not None:
            message["usage"] = event.usage
        return message
    if isinstance(event, Opened):
        return None
    raise TypeError(f"no WebSocket message for {event!r}")


def ws_text(message: dict[str, Any]) -> str:
    """A WebSocket message as the text of its frame."""
    return _json(message)


# -- OpenAI's chat-completion objects ----------------------------------------------------

OPENAI_FINISH = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "invalid_request_error", 405: "invalid_request_error", 408: "invalid_request_error",
                409: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
                422: "invalid_request_error", 429: "rate_limit_error", 504: "timeout"}


def openai_finish(reason: str) -> str:
    """Our finish reasons in OpenAI's vocabulary: ours that it lacks (``cancelled``,
    ``client_gone``, ``shutdown``) are a ``stop``; its clients check the value."""
    return reason if reason in OPENAI_FINISH else "stop"


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object ``{"error": {message, type, code, param}}``."""
    kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def completion_id(sid: str) -> str:
    """The ``id`` of the completion that stream ``sid`` carries."""
    return f"chatcmpl-{sid}"


@register
class OpenAIChunks:
    """``chat.completion.chunk`` objects, streamed as OpenAI does.

    Only ``data:`` lines and comments: no ``event:`` and no ``retry:`` (the official
    SDK raises on ``event: error`` and fails on a block holding only ``retry:``).
    Every chunk carries the SSE id of its event, so ``Last-Event-ID`` resumes it.
    ``meta`` gives the stream's ``model``, ``created`` and ``include_usage``.
    """

    name = "openai"
    content_type = SSE_TYPE
    resumable = True
    coalesce = True

    def __init__(self, retry_ms: int = 0, meta: dict[str, Any] | None = None) -> None:
        meta = meta or {}
        self.created = int(meta.get("created") or 0)
        self.model = str(meta.get("model") or "")
        self.include_usage = bool(meta.get("include_usage"))
        self._sid = ""
        self._head = ""
        # OpenAI sends "usage": null on every chunk when the last one will carry it.
        self._end = ',"usage":null}' if self.include_usage else "}"
        self._tail = ',"logprobs":null,"finish_reason":null}]' + self._end

    def open(self, sid: str) -> bytes:
        return sse.comment(f"stream {sid}")

    def heartbeat(self) -> bytes:
        return sse.comment("keep-alive")

    def _prefix(self, sid: str) -> str:
        if sid != self._sid:
            self._sid = sid
            self._head = ('{"id":' + _json(completion_id(sid)) + ',"object":"chat.completion.chunk"'
                          + ',"created":' + str(self.created) + ',"model":' + _json(self.model)
                          + ',"choices":')
        return self._head

    def _delta(self, sid: str, eid: str, delta: dict[str, Any]) -> bytes:
        return sse.encode(self._prefix(sid) + '[{"index":0,"delta":' + _json(delta) + self._tail, id=eid)

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        eid = event_id(sid, seq)
        if isinstance(event, Delta):
            return self._delta(sid, eid, {"content": event.text})
        if isinstance(event, Reasoning):
            return self._delta(sid, eid, {"reasoning_content": event.text})
        if isinstance(event, ToolCall):
            return self._delta(sid, eid, {"tool_calls": [tool_call_dict(event)]})
        if isinstance(event, Opened):
            return self._delta(sid, eid, {"role": "assistant", "content": ""})
        if isinstance(event, Done):
            last = self._prefix(sid) + '[{"index":0,"delta":{},"logprobs":null,"finish_reason":' \
                + _json(openai_finish(event.finish_reason)) + "}]" + self._end
            out = sse.encode(last, id=eid)
            if self.include_usage:
                out += sse.encode(self._prefix(sid) + '[],"usage":' + _json(openai_usage(event.usage)) + "}",
                                  id=eid)
            return out + sse.encode("[DONE]", id=eid)
        if isinstance(event, Failed):
            return sse.encode(_json(openai_error(event.status, event.code, event.message)), id=eid)
        raise TypeError(f"no OpenAI chunk for {event!r}")


def completion(sid: str, meta: dict[str, Any], events: list[Event]) -> dict[str, Any]:
    """The ``chat.completion`` object of a whole stream (its events, ending with ``Done``)."""
    text: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    done = Done()
    for event in events:
        if isinstance(event, Delta):
            text.append(event.text)
        elif isinstance(event, Reasoning):
            reasoning.append(event.text)
        elif isinstance(event, ToolCall):
            call = calls.setdefault(event.index, {"id": None, "type": "function",
                                                  "function": {"name": None, "arguments": ""}})
            call["id"] = event.id or call["id"]
            call["function"]["name"] = event.name or call["function"]["name"]
            call["function"]["arguments"] += event.arguments
        elif isinstance(event, Done):
            done = event
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None,
                               "refusal": None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return {"id": completion_id(sid), "object": "chat.completion", "created": int(meta.get("created") or 0),
            "model": str(meta.get("model") or ""),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": openai_finish(done.finish_reason)}],
            "usage": openai_usage(done.usage)}
