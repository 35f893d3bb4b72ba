"""How ``/v1/messages`` is described in the OpenAPI document: its answers, events and errors.

The models describe what ``objects.py`` and ``encoder.py`` write; they validate nothing at run
time (``tests/test_messages.py`` checks the encoder's events against the document).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..openapi.parts import ERRORS, EVENT_ID_PATTERN, LAST_EVENT_ID, NO_CONTENT, STREAM_HEADERS, json_body

SSE = "text/event-stream"
EVENTS = ("message_start", "content_block_start", "content_block_delta", "content_block_stop",
          "message_delta", "message_stop", "ping", "error")


class AnthropicErrorObject(BaseModel):
    """What went wrong: Anthropic's error ``type`` (by status) and a message for people."""

    model_config = ConfigDict(extra="forbid")
    type: str  # noqa: A003 - Anthropic's field name
    message: str


class AnthropicError(BaseModel):
    """Every error of ``/v1/messages``: ``{"type": "error", "error": {"type", "message"}}``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["error"]  # noqa: A003 - Anthropic's field name
    error: AnthropicErrorObject


class MessageUsage(BaseModel):
    """Token counts as the upstream reported them; ``null`` when it reported none."""

    model_config = ConfigDict(extra="allow")
    input_tokens: int | None
    output_tokens: int | None


class MessageObject(BaseModel):
    """A whole answer (``"stream": false``): Anthropic's ``message``."""

    model_config = ConfigDict(extra="forbid")
    id: str  # noqa: A003 - Anthropic's field name
    type: Literal["message"]  # noqa: A003 - Anthropic's field name
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "tool_use", "stop_sequence", "refusal"] | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(BaseModel):
    """``POST /v1/messages/count_tokens``: the input's tokens (the upstream's count, or an estimate)."""

    model_config = ConfigDict(extra="forbid")
    input_tokens: int


MESSAGES_EVENT = {
    "description": "One event of a Messages stream: its `event` name and its JSON `data` (which has the "
                   "same `type`); every event but `ping` ends a group with an `id` (`<stream_id>-<seq>`).",
    "type": "object", "required": ["event", "data"],
    "properties": {"event": {"enum": list(EVENTS)},
                   "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
                   "data": {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"type": "object", "required": ["type"],
                                              "properties": {"type": {"enum": [*EVENTS]}}}}},
}


def errors(*statuses: str) -> dict[str, Any]:
    """The error responses of ``statuses`` in Anthropic's shape (the descriptions of every route's)."""
    return {status: json_body(AnthropicError, *ERRORS[status]) for status in statuses}


MESSAGES_RESPONSES = {
    "200": {"description": "`\"stream\": false`: the `message`. `\"stream\": true`: Anthropic's events: "
                           "`message_start`, per content block `content_block_start` / `content_block_delta` "
                           "/ `content_block_stop`, `message_delta`, `message_stop`; `ping` as keep-alive; "
                           "`error` for a failure after the start.",
            "headers": STREAM_HEADERS,
            "content": {SSE: {"schema": MESSAGES_EVENT}, "application/json": {"schema": MessageObject}}},
    "204": NO_CONTENT,
    **errors("400", "401", "403", "404", "408", "413", "415", "429", "502", "503", "504"),
}
COUNT_RESPONSES = {"200": json_body(TokenCount, "The input tokens."),
                   **errors("400", "401", "403", "404", "408", "413", "415")}
HEADERS = (LAST_EVENT_ID,
           *({"name": name, "in": "header", "required": False, "description": text,
              "schema": {"type": "string"}}
             for name, text in (("anthropic-version", "accepted and ignored (Anthropic's SDKs send it)"),
                                ("anthropic-beta", "accepted and ignored"))))
