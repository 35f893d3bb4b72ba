"""The ``messages`` wire format: a stream's events as the Anthropic Messages API streams them.

``message_start`` (the message, no content, usage unknown until the end), then one content
block after another, each ``content_block_start`` / ``content_block_delta`` (``text_delta``,
``thinking_delta``, ``input_json_delta``) / ``content_block_stop``: a run of text is a
``text`` block, a run of reasoning a ``thinking`` block (never inside a text block), each
tool call its own ``tool_use`` block (its arguments as ``input_json_delta`` pieces, as they
came); then ``message_delta`` (``stop_reason``, usage) and ``message_stop``. A failure after
the start is an ``error`` event with Anthropic's error object. Heartbeats are ``ping`` events.

One of our events may become several SSE events (a block closed, the next opened, its first
delta); only the last carries the event's SSE id (``<stream_id>-<seq>``), so ``Last-Event-ID``
resumes after the whole group. The block numbering is state kept across events, so this
encoder ``replays``: a resume feeds it the log from the start and writes only what follows the
resume point (``routes.edge.http_body``). Spec: docs.anthropic.com "Streaming Messages";
shapes: anthropic-sdk-python ``types/raw_message_stream_event.py``.
"""

from __future__ import annotations

import json
from typing import Any

from .. import sse
from ..events import Delta, Done, Event, Failed, Opened, Reasoning, ToolCall
from ..wire import SSE_TYPE, event_id, register
from .objects import anthropic_error, message_head, stop_reason, tool_use_id, usage

_PING = sse.encode('{"type":"ping"}', event="ping")


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _sse(name: str, data: str, eid: str | None = None) -> bytes:
    return sse.encode(data, event=name, id=eid)


@register
class MessagesSSE:
    """Anthropic's typed stream events; ``meta`` gives the stream's ``model``."""

    name = "messages"
    content_type = SSE_TYPE
    resumable = True
    coalesce = True
    replays = True  # the open block and the block count are state across events

    def __init__(self, retry_ms: int = 0, meta: dict[str, Any] | None = None) -> None:
        self.model = str((meta or {}).get("model") or "")
        self.started = False
        self.open_kind: str | None = None  # "text", "thinking" or "tool_use"
        self.blocks = 0  # blocks started so far: the next one's index
        self.calls: dict[int, int] = {}  # tool call index -> its block's index

    def open(self, sid: str) -> bytes:
        """Written right after the headers so proxies see the stream open (the SDK skips comments)."""
        return sse.comment(f"stream {sid}")

    def heartbeat(self) -> bytes:
        """Anthropic's keepalive."""
        return _PING

    # -- blocks ----------------------------------------------------------------------------
    def _stop(self, parts: list[bytes]) -> None:
        if self.open_kind is not None:
            parts.append(_sse("content_block_stop",
                              f'{{"type":"content_block_stop","index":{self.blocks - 1}}}'))
            self.open_kind = None

    def _start(self, parts: list[bytes], kind: str, block: dict[str, Any], eid: str | None = None) -> int:
        self._stop(parts)
        index = self.blocks
        self.blocks += 1
        self.open_kind = kind
        parts.append(_sse("content_block_start", _json({"type": "content_block_start", "index": index,
                                                        "content_block": block}), eid))
        return index

    def _text(self, parts: list[bytes], index: int, kind: str, text: str, eid: str) -> bytes:
        """A ``text_delta`` or ``thinking_delta`` (the hot path: one JSON string encoded);
        ``eid`` is letters, digits and a dash, so it is written as is."""
        field = "text" if kind == "text_delta" else "thinking"
        parts.append((f'id: {eid}\nevent: content_block_delta\ndata: {{"type":"content_block_delta",'
                      f'"index":{index},"delta":{{"type":"{kind}","{field}":{_json(text)}}}}}\n\n').encode())
        return b"".join(parts)

    def _delta(self, parts: list[bytes], index: int, delta: dict[str, Any], eid: str) -> bytes:
        parts.append(_sse("content_block_delta", _json({"type": "content_block_delta", "index": index,
                                                        "delta": delta}), eid))
        return b"".join(parts)

    def _begin(self, sid: str, parts: list[bytes], eid: str | None = None) -> None:
        if not self.started:
            self.started = True
            parts.append(_sse("message_start", _json({"type": "message_start",
                                                      "message": message_head(sid, self.model)}), eid))

    # -- events ----------------------------------------------------------------------------
    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        """The SSE events of one of ours; the last one carries its id."""
        eid = event_id(sid, seq)
        parts: list[bytes] = []
        if isinstance(event, Delta):
            if self.open_kind != "text":
                self._begin(sid, parts)
                self._start(parts, "text", {"type": "text", "text": ""})
            return self._text(parts, self.blocks - 1, "text_delta", event.text, eid)
        if isinstance(event, Reasoning):
            if self.open_kind != "thinking":
                self._begin(sid, parts)
                self._start(parts, "thinking", {"type": "thinking", "thinking": "", "signature": ""})
            return self._text(parts, self.blocks - 1, "thinking_delta", event.text, eid)
        if isinstance(event, ToolCall):
            return self._tool_call(sid, event, parts, eid)
        if isinstance(event, Opened):
            self._begin(sid, parts, eid)
            return b"".join(parts) or sse.encode(None, id=eid)
        if isinstance(event, Done):
            self._begin(sid, parts)
            self._stop(parts)
            parts.append(_sse("message_delta", _json({
                "type": "message_delta", "usage": usage(event.usage),
                "delta": {"stop_reason": stop_reason(event.finish_reason), "stop_sequence": None}})))
            parts.append(_sse("message_stop", '{"type":"message_stop"}', eid))
            return b"".join(parts)
        if isinstance(event, Failed):
            # our code leads the message (Anthropic's error types are a closed list)
            return _sse("error", _json(anthropic_error(event.status, f"{event.code}: {event.message}")), eid)
        raise TypeError(f"no Messages event for {event!r}")

    def _tool_call(self, sid: str, event: ToolCall, parts: list[bytes], eid: str) -> bytes:
        index = self.calls.get(event.index)
        if index is None:  # a new call: its own block
            self._begin(sid, parts)
            block = {"type": "tool_use", "id": event.id or tool_use_id(sid, event.index),
                     "name": event.name or "", "input": {}}
            last = None if event.arguments else eid  # no arguments yet: the start is the last event
            index = self.calls[event.index] = self._start(parts, "tool_use", block, last)
            if last is not None:
                return b"".join(parts)
        # A fragment of a call whose block another one followed still goes to that call's block.
        return self._delta(parts, index, {"type": "input_json_delta", "partial_json": event.arguments}, eid)
