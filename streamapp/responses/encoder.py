"""The ``responses`` wire format: a stream's log as OpenAI Responses SSE events.

Each event is ``event: <type>`` and ``data: {"type", "sequence_number", ...}``, no SSE
``id`` (the Open Responses spec says servers SHOULD NOT send one): a client resumes with
``GET /v1/responses/<id>?stream=true&starting_after=<sequence_number>``. Sequence numbers
are the builder's (``objects.ResponseBuilder``), not the log's, so the encoder replays:
fed the log from its first event, it writes only the events after ``starting_after``.
"""

from __future__ import annotations

import json
from typing import Any

from .. import sse
from ..events import Event, is_terminal
from ..wire import SSE_TYPE, register
from .objects import ResponseBuilder


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@register
class ResponsesSSE:
    """OpenAI Responses streaming events, written after sequence number ``starting_after``."""

    name = "responses"
    content_type = SSE_TYPE
    resumable = True  # the client resumes by the response id and a sequence number
    coalesce = True
    replays = True  # the builder keeps state: a resume feeds it the log from the start

    def __init__(self, retry_ms: int = 0, meta: dict[str, Any] | None = None,
                 starting_after: int = -1) -> None:
        self.meta = meta or {}
        self.starting_after = starting_after
        self.builder: ResponseBuilder | None = None

    def open(self, sid: str) -> bytes:
        return sse.comment(f"stream {sid}")

    def heartbeat(self) -> bytes:
        return sse.comment("keep-alive")

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        builder = self.builder
        if builder is None:
            builder = self.builder = ResponseBuilder(sid, self.meta)
        skip = self.starting_after
        items = builder.feed(event)
        if is_terminal(event) and items and items[-1]["sequence_number"] <= skip:
            # The stream's end always reaches the client: a failure the reader made up when the
            # rest of the log cannot come may fall before the point it resumes from.
            items[-1] = {**items[-1], "sequence_number": skip + 1}
        # Framed here: the JSON has no raw line breaks (json.dumps escapes them), and the
        # event names are the builder's constants.
        return "".join(f"event: {item['type']}\ndata: {_json(item)}\n\n"
                       for item in items if item["sequence_number"] > skip).encode()
