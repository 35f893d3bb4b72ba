"""How a Responses stream is described in the OpenAPI document: one branch per event.

The models describe what ``objects.ResponseBuilder`` writes (each event's ``data``); they
validate nothing at run time (``tests/test_responses.py`` checks the encoder's events against
the document). An event's SSE ``event`` is the ``type`` of its ``data``; no SSE ``id``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .schemas import ResponseObject

Index = Annotated[int, Field(ge=0)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str  # noqa: A003 - OpenAI's field name
    sequence_number: Index


class ResponsesStateEvent(_Event):
    """``response.created``, ``.in_progress`` and the end: the ``response`` object as it stands."""

    response: ResponseObject


class ResponsesOutputItem(BaseModel):
    """An output item: a ``message``, a ``reasoning`` item or a ``function_call``."""

    model_config = ConfigDict(extra="allow")
    id: str  # noqa: A003 - OpenAI's field name
    type: Literal["message", "reasoning", "function_call"]  # noqa: A003
    status: Literal["in_progress", "completed", "incomplete"]


class ResponsesItemEvent(_Event):
    """``response.output_item.added`` / ``.done``: the item (empty when added, whole when done)."""

    output_index: Index
    item: ResponsesOutputItem


class ResponsesContentPart(BaseModel):
    """A message's ``output_text`` or a reasoning item's ``reasoning_text`` part."""

    model_config = ConfigDict(extra="allow")
    type: Literal["output_text", "reasoning_text"]  # noqa: A003 - OpenAI's field name
    text: str


class _InItem(_Event):
    item_id: str
    output_index: Index


class ResponsesPartEvent(_InItem):
    """``response.content_part.added`` / ``.done``: the item's one content part."""

    content_index: Index
    part: ResponsesContentPart


class ResponsesTextDelta(_InItem):
    """``response.output_text.delta`` / ``response.reasoning_text.delta``: the next piece of text."""

    content_index: Index
    delta: str
    logprobs: list[Any] | None = Field(None, description="`output_text` only: always empty")


class ResponsesTextDone(_InItem):
    """``response.output_text.done`` / ``response.reasoning_text.done``: the part's whole text."""

    content_index: Index
    text: str
    logprobs: list[Any] | None = Field(None, description="`output_text` only: always empty")


class ResponsesArgumentsDelta(_InItem):
    """``response.function_call_arguments.delta``: the next fragment of a call's arguments."""

    delta: str


class ResponsesArgumentsDone(_InItem):
    """``response.function_call_arguments.done``: the call's name and whole arguments."""

    name: str
    arguments: str


EVENTS: tuple[tuple[str, type[_Event], str], ...] = (
    ("response.created", ResponsesStateEvent, "the first event: the response, `in_progress`"),
    ("response.in_progress", ResponsesStateEvent, "the second event"),
    ("response.output_item.added", ResponsesItemEvent, "an output item starts"),
    ("response.content_part.added", ResponsesPartEvent, "a message's or reasoning item's part starts"),
    ("response.output_text.delta", ResponsesTextDelta, "a piece of the answer's text"),
    ("response.reasoning_text.delta", ResponsesTextDelta, "a piece of reasoning"),
    ("response.function_call_arguments.delta", ResponsesArgumentsDelta, "a fragment of a call's arguments"),
    ("response.output_text.done", ResponsesTextDone, "the answer's text, whole"),
    ("response.reasoning_text.done", ResponsesTextDone, "the reasoning, whole"),
    ("response.content_part.done", ResponsesPartEvent, "the part, whole"),
    ("response.function_call_arguments.done", ResponsesArgumentsDone, "the call, whole"),
    ("response.output_item.done", ResponsesItemEvent, "an output item ends (`completed` or `incomplete`)"),
    ("response.completed", ResponsesStateEvent, "the end: completed, with usage when the upstream gave it"),
    ("response.incomplete", ResponsesStateEvent, "the end: a length limit (`incomplete_details`), a cancel "
                                                 "(`cancelled`) or a stop"),
    ("response.failed", ResponsesStateEvent, "the end: `response.error` (`server_error` or "
                                             "`rate_limit_exceeded`; our code leads its message)"),
)


def _branch(name: str, model: type[_Event], what: str) -> dict[str, Any]:
    data = {"allOf": [model, {"properties": {"type": {"const": name}}}]}
    return {"type": "object", "required": ["event", "data"], "description": f"`{name}`: {what}.",
            "properties": {"event": {"const": name},
                           "data": {"type": "string", "contentMediaType": "application/json",
                                    "contentSchema": data}}}


STREAM_EVENT: dict[str, Any] = {
    "description": "One Responses event: `event` is the `type` of its JSON `data`, `sequence_number` "
                   "0, 1, 2 ...; no SSE id.",
    "oneOf": [_branch(*event) for event in EVENTS],
}
