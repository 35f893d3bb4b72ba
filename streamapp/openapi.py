"""The OpenAPI 3.1 document of every route, generated from the pydantic models.

One source of truth: request bodies and query parameters are the JSON Schema of
the models in ``schemas.py`` that validate requests (``models_json_schema``,
refs moved to ``components/schemas``). Responses are described by the models
below, which state what ``errors.py``, ``wire.py`` and the routes write;
``tests/test_openapi.py`` runs schemathesis against a live server to check
every answer against them.

Streams: OpenAPI 3.1 has no way to describe the items of a stream (3.2 adds
``itemSchema``), so a ``text/event-stream`` media type's ``schema`` describes
**one event**: its ``event`` name, ``id``, ``retry`` and ``data``, where JSON
data carries ``contentMediaType: application/json`` and the data's own schema in
``contentSchema`` (3.2's reading of an event, which schemathesis checks each
event against). Chunked ``text/plain`` answers are a string.

Adding a route's entry: append an :class:`Op` to ``OPERATIONS`` (its path in
OpenAPI form, ``{name}`` for ``<name>``), with its query and body models and its
responses built from the helpers (``json_body``, ``sse``, ``text_chunks``,
``ERR``/``OPENAI_ERR``). A model anywhere in an entry becomes a ``$ref``.
An entry appears in the document only when the app serves its method and path,
so entries may land before their routes; a route without an entry fails
``tests/test_openapi.py`` (and is logged at start-up).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from flask import Flask
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from .schemas import ChatBody, PromptQuery, StreamQuery, V1ChatRequest

OPENAPI_VERSION = "3.1.0"
SSE = "text/event-stream"
STREAM_ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9]{1,64}-[0-9]+$"

# -- Response models: what the service writes (documentation; the tests check the service) ---------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(_Strict):
    """What went wrong: a stable ``code``, a message for people, the request ``field`` at fault."""

    code: Annotated[str, Field(examples=["invalid_field"])]
    message: str
    field: str | None = Field(description="the request field at fault (dotted path), or null")


class ErrorBody(_Strict):
    """Every error answered before a stream's first byte: ``{"error": {"code", "message", "field"}}``."""

    error: ErrorDetail


class Health(_Strict):
    """``GET /healthz``."""

    status: Literal["ok"]


class ReadyCheck(_Strict):
    """One checked part of ``GET /readyz``."""

    ok: bool
    kind: Literal["memory", "redis"] | None = None
    error: str | None = None


class ReadyChecks(_Strict):
    """What ``GET /readyz`` checked."""

    store: ReadyCheck
    providers: dict[str, ReadyCheck]


class Ready(_Strict):
    """``GET /readyz``."""

    status: Literal["ready", "not_ready"]
    failing: list[str]
    checks: ReadyChecks


class StreamInfo(_Strict):
    """``GET /api/streams/{sid}/info``."""

    stream_id: str
    state: Literal["running", "finished"] | None
    route: str | None = Field(description="the route that made the stream (chat, stream, openai, ...)")
    pid: int = Field(description="the worker process answering")
    readers: int = Field(ge=0, description="readers attached now")
    events: int = Field(ge=0, description="events in the stream's log")


class CancelResult(_Strict):
    """``POST /api/streams/{sid}/cancel``: 202 ``cancelling``, 200 ``finished``."""

    stream_id: str
    status: Literal["cancelling", "finished"]


class SessionInfo(_Strict):
    """``POST /api/session``: the session cookie's client and lifetime (both null when no key is
    configured: no cookie is set)."""

    client: str | None = Field(description="the key's name (never the key)")
    expires_in: int | None = Field(description="seconds the session cookie lasts (SESSION_TTL_S)")


class Usage(BaseModel):
    """Token counts when the upstream gave them (never zeros standing for "unknown")."""

    model_config = ConfigDict(extra="allow")
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class StreamOpened(_Strict):
    """``data`` of ``event: stream``, the first event of every SSE stream of ours."""

    stream_id: str


class ChatDelta(_Strict):
    """``data`` of a chat answer's token."""

    delta: str
    index: int = Field(ge=0, description="counts deltas from 0")


class ChatReasoning(_Strict):
    """``data`` of a piece of the model's reasoning (kept apart from the answer)."""

    reasoning: str


class ToolCallFunction(_Strict):
    """The function of a tool-call fragment: ``arguments`` are pieces of a JSON string to concatenate."""

    name: str | None = None
    arguments: str


class ToolCallFragment(_Strict):
    """One fragment of tool call ``index`` (OpenAI's ``delta.tool_calls[]`` shape): ``id``, ``type`` and
    ``function.name`` come with a call's first fragment."""

    index: int = Field(ge=0)
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunction


class ChatToolCall(_Strict):
    """``data`` of a tool-call fragment in a chat stream."""

    tool_call: ToolCallFragment


class StreamEnd(_Strict):
    """``data`` of the last event of a stream that ended normally."""

    is_end: Literal[True]
    finish_reason: str = Field(description="stop, length (a stream limit), cancelled, client_gone, "
                                           "shutdown, tool_calls, or the upstream's own reason")
    usage: Usage | None


class StreamFailure(_Strict):
    """``data`` of ``event: error``: the stream failed after its first byte (the status was sent)."""

    code: Annotated[str, Field(examples=["upstream_disconnected", "stream_gap", "producer_lost"])]
    message: str


# OpenAI's shapes (POST /v1/chat/completions, GET /v1/models)

OpenAIFinish = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChunkDelta(_Strict):
    """What one chunk adds: the first carries ``role``; later ones text, reasoning or tool-call pieces."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallFragment] | None = None


class ChunkChoice(_Strict):
    """The one choice of a ``chat.completion.chunk``."""

    index: int
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: OpenAIFinish | None


class ChatCompletionChunk(_Strict):
    """``data`` of each streamed event (``chat.completion.chunk``); with ``stream_options.include_usage``
    every chunk has ``usage: null`` and one more chunk with no choices carries the usage."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ToolCallWhole(_Strict):
    """A whole tool call of a ``chat.completion``."""

    id: str | None
    type: Literal["function"]
    function: ToolCallFunction


class CompletionMessage(_Strict):
    """The answer of a ``chat.completion``."""

    role: Literal["assistant"]
    content: str | None
    refusal: None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallWhole] | None = None


class CompletionChoice(_Strict):
    """The one choice of a ``chat.completion``."""

    index: int
    message: CompletionMessage
    logprobs: None = None
    finish_reason: OpenAIFinish


class ChatCompletion(_Strict):
    """A whole answer (``"stream": false``)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class ModelCard(BaseModel):
    """One model a client may name in ``model``."""

    model_config = ConfigDict(extra="allow")
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Strict):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[ModelCard]


class OpenAIErrorDetail(_Strict):
    """OpenAI's error object."""

    message: str
    type: Annotated[str, Field(examples=["invalid_request_error", "api_error"])]
    code: str | None
    param: str | None


class OpenAIError(_Strict):
    """Every ``/v1`` error, in OpenAI's shape ``{"error": {"message", "type", "code", "param"}}``
    (its SDKs read it); mid-stream, the same object is a ``data:`` line."""

    error: OpenAIErrorDetail


# Query strings and headers that no request model validates (read by the stream helpers).

class ResumeQuery(BaseModel):
    """Resume by query when the ``Last-Event-ID`` header cannot be set."""

    last_event_id: Annotated[str, Field(
        description="resume after this event id (`<stream_id>-<seq>`); the Last-Event-ID header wins")] \
        | None = None


class ChatFormatQuery(BaseModel):
    """``?format=text``: chunked ``text/plain`` instead of SSE (as ``Accept: text/plain`` does)."""

    format: Literal["text"] | None = None


# -- Building blocks of the table ------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One operation: a method and an OpenAPI path, and what it takes and answers."""

    method: str
    path: str
    summary: str
    tag: str
    responses: dict[str, dict[str, Any]]
    description: str = ""
    query: tuple[type[BaseModel], ...] = ()
    body: type[BaseModel] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    body_example: dict[str, Any] | None = None  # what Swagger UI's "Try it out" starts from


def json_body(schema: Any, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON response."""
    return _response(description, {"application/json": {"schema": schema}}, headers)


def _response(description: str, content: dict[str, Any] | None = None,
              headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if headers:
        out["headers"] = headers
    if content:
        out["content"] = content
    return out


def _header(description: str, required: bool = False, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


# Where a new stream's id leads (OpenAPI links; schemathesis follows them in its stateful phase).
STREAM_LINKS = {name: {"operationId": op_id, "parameters": {"sid": "$response.header.X-Stream-Id"}}
                for name, op_id in (("info", "get_api_streams_sid_info"), ("resume", "get_api_streams_sid"),
                                    ("cancel", "post_api_streams_sid_cancel"))}

STREAM_HEADERS = {
    "X-Stream-Id": _header("the stream's id (for resume, info and cancel)", True,
                           {"type": "string", "pattern": STREAM_ID_PATTERN}),
    "Cache-Control": _header("`no-cache`"),
    "X-Accel-Buffering": _header("`no`: tells nginx not to buffer the stream"),
}

EVENT_DESCRIPTION = (
    " The `schema` describes **one event** (OpenAPI 3.1 cannot describe a stream's items): its `event` "
    "name (`message` when absent), its `id` (`<stream_id>-<seq>`, for `Last-Event-ID`), `retry`, and its "
    "`data`; JSON `data` has `contentMediaType: application/json` and its schema in `contentSchema`. "
    "Comments (`: keep-alive`) are sent when nothing else was.")


def sse(schema: Any, description: str) -> dict[str, Any]:
    """A ``text/event-stream`` response whose ``schema`` describes one event."""
    return {"description": description + EVENT_DESCRIPTION, "content": {SSE: {"schema": schema}}}


def text_chunks(description: str) -> dict[str, Any]:
    """The chunked ``text/plain`` form of a stream."""
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _event(name: str, data: Any, description: str) -> dict[str, Any]:
    """The schema of one SSE event named ``name`` whose ``data`` is JSON of ``data`` (a model or
    schema), or text when ``data`` is None."""
    data_schema: dict[str, Any] = {"type": "string"}
    if data is not None:
        data_schema = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {"type": "object", "description": description, "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": data_schema,
                           "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
                           "retry": {"type": "integer", "minimum": 0}}}


_OPENED = _event("stream", StreamOpened, "the first event: the stream's id (carries the first `retry`)")
_FAILED = _event("error", StreamFailure, "the stream failed after its first byte; the last event")

# Hand-written schemas (named in components) for the three SSE wire formats of wire.py.
EVENT_SCHEMAS: dict[str, Any] = {
    "ChatStreamEvent": {
        "description": "One event of a chat stream (`POST /api/chat`).",
        "oneOf": [_OPENED, _FAILED, _event("message", {"anyOf": [ChatDelta, ChatReasoning, ChatToolCall,
                                                                 StreamEnd]},
                                           "a token, reasoning, a tool-call fragment, or the end")]},
    "PlainStreamEvent": {
        "description": "One event of a GET stream (`/stream`, `/ai-stream`, `/local-ai`): tokens as raw "
                       "text.",
        "oneOf": [_OPENED, _FAILED,
                  _event("message", None, "a token: the raw text"),
                  _event("reasoning", None, "a piece of reasoning: the raw text"),
                  _event("tool_call", ToolCallFragment, "a tool-call fragment"),
                  _event("end", StreamEnd, "the end")]},
    "OpenAIStreamEvent": {
        "description": "One event of an OpenAI-compatible stream: a `chat.completion.chunk`, an error "
                       "object mid-stream, or the last `data: [DONE]`. No `event:` names, no `retry:`.",
        "type": "object", "required": ["data"],
        "properties": {"event": {"const": "message"}, "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
                       "data": {"type": "string"}},
        "if": {"properties": {"data": {"const": "[DONE]"}}},
        "else": {"properties": {"data": {"contentMediaType": "application/json",
                                         "contentSchema": {"anyOf": [ChatCompletionChunk, OpenAIError]}}}}},
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_RETRY_AFTER = {"Retry-After": _header("seconds to wait before trying again", True,
                                       {"type": "string", "pattern": "^[0-9]+$"})}
_RATE_LIMITED = {**_RETRY_AFTER, **{
    name: _header(text, schema={"type": "string", "pattern": "^[0-9]+$"}) for name, text in (
        ("X-RateLimit-Limit", "stream starts allowed per period (when a rate limit applies)"),
        ("X-RateLimit-Remaining", "stream starts left in the current period"),
        ("X-RateLimit-Reset", "when the period resets (unix time)"))}}
_STREAM_ID_MAYBE = {"X-Stream-Id": _header("the stream that failed, when one was started",
                                           schema={"type": "string", "pattern": STREAM_ID_PATTERN})}

# Error responses, once each in components/responses; operations refer to them by status.
_ERRORS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "400": ("A missing or wrong field (`field` names it), a field over an input limit (the message names "
            "the setting: MAX_MESSAGE_CHARS, MAX_MESSAGES, MAX_INPUT_CHARS, MAX_TOKENS_CEILING, "
            "ALLOWED_MODELS), malformed JSON (`malformed_json`), JSON nested "
            "too deeply, or a body shorter than its Content-Length (`incomplete_body`).", None),
    "404": ("Unknown route, an unknown stream (`not_found`, `field: stream_id`), or (`/v1`) an unknown "
            "model (`model_not_found`, `param: model`).", None),
    "401": ("API keys are configured and the request has none, a wrong one, or no valid session cookie "
            "(`unauthorized`).", {"WWW-Authenticate": _header("`Bearer realm=\"streamapp\"`", True)}),
    "403": ("A session cookie from a page of another origin (`origin_not_allowed`), or a stream another "
            "client started (`not_stream_owner`).", None),
    "405": ("The route does not take this method (`method_not_allowed`); `Allow` lists those it does.",
            {"Allow": _header("the methods the route takes", True)}),
    "408": ("The declared body did not arrive within BODY_TIMEOUT_S (`request_timeout`); the connection "
            "is closed.", None),
    "413": ("A body over MAX_BODY_BYTES, with Content-Length or chunked (`request_entity_too_large`); the "
            "connection is closed.", None),
    "415": ("The body is not `Content-Type: application/json` (`unsupported_media_type`).", None),
    "429": ("Over a limit of this client (its API key, or its address when the service runs open): "
            "stream starts per period (`rate_limited`, RATE_LIMIT or the key's own) or concurrent streams "
            "(`too_many_streams`, MAX_STREAMS_PER_KEY or the key's own, MAX_STREAMS_PER_PROCESS); the "
            "message names the limit.", _RATE_LIMITED),
    "502": ("The upstream failed before the first token (`upstream_unreachable`, `upstream_http_error`, "
            "`upstream_auth`, `upstream_bad_response`, `upstream_error`, `upstream_disconnected`).",
            _STREAM_ID_MAYBE),
    "503": ("The stream store (Redis) is unavailable (`store_unavailable`).", _RETRY_AFTER),
    "504": ("The upstream timed out before the first token (`upstream_timeout`).", _STREAM_ID_MAYBE),
}
ERR = {status: {"$ref": f"#/components/responses/Error{status}"} for status in _ERRORS}
OPENAI_ERR = {status: {"$ref": f"#/components/responses/OpenAIError{status}"} for status in _ERRORS}

NO_CONTENT = {"$ref": "#/components/responses/NothingToResume"}
URI_TOO_LONG = _response("A request line over 8190 bytes: gunicorn's own answer (HTML).",
                         {"text/html": {"schema": {"type": "string"}}})

_RESPONSES: dict[str, Any] = {
    **{f"Error{s}": json_body(ErrorBody, d, h) for s, (d, h) in _ERRORS.items()},
    **{f"OpenAIError{s}": json_body(OpenAIError, d, h) for s, (d, h) in _ERRORS.items()},
    "NothingToResume": _response(
        "Nothing to resume: the `Last-Event-ID` (or `last_event_id`) is not an event of a stream this "
        "route made in this format with events after it (not ours, another route's, expired, at or past "
        "the end). No body; typed `text/event-stream` so an `EventSource` stops reconnecting. Never starts "
        "a generation.", {SSE: {}}),
}

LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "resume after this event (`<stream_id>-<seq>`): the missed events, then the "
                                "live tail, each exactly once; 204 when there is nothing to resume",
                 "schema": {"type": "string"}}
SID = {"sid": {"description": "a stream id (the `X-Stream-Id` header, the `stream` event, the prefix of "
                              "every event id)", "schema": {"type": "string", "pattern": STREAM_ID_PATTERN}}}

HTML = {"text/html": {"schema": {"type": "string"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
ANY_FILE = {"*/*": {}}


def errors(*statuses: str, table: dict[str, Any] = ERR) -> dict[str, Any]:
    """The error responses of ``statuses`` (``table=OPENAI_ERR`` for OpenAI's shape)."""
    return {status: table[status] for status in statuses}


def _get_stream(summary: str, query: type[BaseModel]) -> Op:
    return Op("GET", "", summary, "streams",
              {"200": {**sse(_ref("PlainStreamEvent"),
                             "The stream: `event: stream`, one event per token (`data:` is the raw text), "
                             "then `event: end` with the finish reason and usage."),
                       "headers": STREAM_HEADERS, "links": STREAM_LINKS},
               "204": NO_CONTENT, "414": URI_TOO_LONG, **errors("400", "429", "502", "503", "504")},
              query=(query, ResumeQuery), headers=(LAST_EVENT_ID,))


OPERATIONS: list[Op] = [
    Op("GET", "/", "The demo chat page", "pages",
       {"200": _response("The page (no CDN; works offline).", HTML)}),
    Op("GET", "/static/{filename}", "The demo page's assets", "pages",
       {"200": _response("The file.", ANY_FILE), **errors("404")},
       path_params={"filename": {"description": "a file under static/", "schema": {"type": "string"},
                                 "example": "app.css"}}),
    Op("GET", "/healthz", "Liveness", "pages", {"200": json_body(Health, "Always `{\"status\": \"ok\"}`.")}),
    Op("GET", "/readyz", "Readiness", "pages",
       {"200": json_body(Ready, "The store and the configured providers answer."),
        "503": json_body(Ready, "A part fails: `failing` names it (`store`, `provider:openai`...).")}),
    Op("GET", "/metrics", "Prometheus metrics", "pages",
       {"200": _response("Every worker's metrics (`streamapp_*`) in Prometheus' text format.", TEXT),
        **errors("403")},
       description="No API key needed; only the addresses of STREAMAPP_METRICS_ALLOW (default: loopback) "
                   "get an answer, others a 403."),
    Op("GET", "/api.json", "This document", "docs",
       {"200": json_body({"type": "object"}, "The OpenAPI 3.1 document of every route.")}),
    Op("GET", "/swagger/", "Swagger UI", "docs",
       {"200": _response("Swagger UI over /api.json, from local files (no CDN).", HTML)}),
    Op("GET", "/swagger/{filename}", "Swagger UI's files", "docs",
       {"200": _response("A file of the pinned Swagger UI distribution.", ANY_FILE), **errors("404")},
       path_params={"filename": {"description": "a file of Swagger UI's dist",
                                 "schema": {"type": "string"}, "example": "swagger-ui.css"}}),
    Op("POST", "/api/chat", "Stream a chat answer", "streams",
       {"200": {**sse(_ref("ChatStreamEvent"),
                      "The answer as SSE (default): `event: stream`, a JSON `data:` per token (`{delta, "
                      "index}`), reasoning (`{reasoning}`) or tool-call fragment (`{tool_call}`), then "
                      "`{is_end, finish_reason, usage}`. With `Accept: text/plain` or `?format=text`: "
                      "chunked text, one chunk per token (`[error CODE: message]` on a last line if it "
                      "fails)."),
                "headers": STREAM_HEADERS, "links": STREAM_LINKS,
                "content": {SSE: {"schema": _ref("ChatStreamEvent")}, **TEXT}},
        "204": NO_CONTENT, **errors("400", "408", "413", "415", "429", "502", "503", "504")},
       description="With `Last-Event-ID` (header) or `last_event_id` (query) it resumes a chat stream "
                   "instead, and takes no body.",
       query=(ChatFormatQuery, ResumeQuery), body=ChatBody, headers=(LAST_EVENT_ID,),
       body_example={"uid": 1, "message": "Hi there"}),
    replace(_get_stream("SSE demo: text one token per event", StreamQuery), path="/stream",
            description="`delay_ms` above STREAM_MAX_DELAY_MS is capped; `text` is at most STREAM_MAX_TEXT "
                        "characters. With `Last-Event-ID` it resumes a `/stream` stream."),
    replace(_get_stream("The OpenAI-compatible provider as SSE", PromptQuery), path="/ai-stream"),
    replace(_get_stream("The Ollama provider as SSE", PromptQuery), path="/local-ai"),
    Op("GET", "/api/streams/{sid}", "Resume a stream in the format it was made in", "stream API",
       {"200": {"description": "The events after `Last-Event-ID` (or all), then the live tail, in the "
                               "stream's own format; a chunked-text stream is replayed whole."
                               + EVENT_DESCRIPTION,
                "headers": STREAM_HEADERS,
                "content": {SSE: {"schema": {"anyOf": [_ref("ChatStreamEvent"), _ref("PlainStreamEvent"),
                                                       _ref("OpenAIStreamEvent")]}}, **TEXT}},
        "204": NO_CONTENT, **errors("404", "503")},
       query=(ResumeQuery,), headers=(LAST_EVENT_ID,), path_params=SID),
    Op("GET", "/api/streams/{sid}/info", "A stream's state", "stream API",
       {"200": json_body(StreamInfo, "The stream's state, route, readers and number of events."),
        **errors("404", "503")}, path_params=SID),
    Op("POST", "/api/streams/{sid}/cancel", "Stop a generation, wherever it runs", "stream API",
       {"200": json_body(CancelResult, "The stream had already ended (`finished`)."),
        "202": json_body(CancelResult, "The producer was asked to stop (`cancelling`)."),
        **errors("404", "503")}, path_params=SID),
    Op("POST", "/api/session", "Trade an API key for a browser session cookie", "auth",
       {"200": json_body(SessionInfo, "With keys configured: sets the `streamapp_session` cookie (signed, "
                                      "expiring, HttpOnly, SameSite=Strict) that authenticates this "
                                      "browser's requests from this site's pages, EventSource included. "
                                      "Without: sets nothing.")},
       description="The key goes in `Authorization: Bearer <key>` or `X-API-Key` (never the URL)."),
    Op("GET", "/ws", "Chat over a WebSocket", "streams",
       {"101": _response("Switching Protocols: the socket speaks the JSON messages of the README's "
                         "\"WebSocket\" section."),
        **errors("400")},
       description="A WebSocket handshake (`Upgrade: websocket`); any other request gets 400. Client "
                   "messages: `chat` (the fields of `POST /api/chat`), `stop`, `resume` (`stream_id`, "
                   "`last_seq`), `ping`. Server messages: `start`, `delta`, `reasoning`, `tool_call`, "
                   "`end`, `error`, `pong`. Authentication and the `Origin` rule are checked before the "
                   "upgrade (401 / 403). Swagger UI cannot open a WebSocket."),
    Op("POST", "/v1/chat/completions", "OpenAI-compatible chat completion", "openai",
       {"200": {"description": "`\"stream\": false`: a `chat.completion`. `\"stream\": true`: "
                               "`chat.completion.chunk` objects as `data:` lines, then `data: [DONE]`."
                               + EVENT_DESCRIPTION,
                "headers": STREAM_HEADERS, "links": STREAM_LINKS,
                "content": {"application/json": {"schema": ChatCompletion},
                            SSE: {"schema": _ref("OpenAIStreamEvent")}}},
        "204": NO_CONTENT,
        **errors("400", "404", "408", "413", "415", "429", "502", "503", "504", table=OPENAI_ERR)},
       description="`model` picks the provider: `demo`, `openai/<model>`, `ollama/<model>`, or a bare name "
                   "for the default provider. With `Last-Event-ID` it resumes a `/v1` stream. Errors are in "
                   "OpenAI's shape.",
       body=V1ChatRequest, headers=(LAST_EVENT_ID,),
       body_example={"model": "demo", "messages": [{"role": "user", "content": "Hi there"}], "stream": True}),
    Op("GET", "/v1/models", "The models a client may name", "openai",
       {"200": json_body(ModelList, "OpenAI's model list: `demo` and each provider's default model.")}),
    Op("GET", "/v1/models/{model}", "One model", "openai",
       {"200": json_body(ModelCard, "The model."), **errors("404", table=OPENAI_ERR)},
       path_params={"model": {"description": "a model id of `GET /v1/models` (it may hold a `/`)",
                              "schema": {"type": "string"}, "example": "demo"}}),
]

# -- The generator ---------------------------------------------------------------------------

def _walk(node: Any, models: list[type[BaseModel]]) -> Any:
    """``node`` with every model class replaced by its ``$ref`` (and recorded in ``models``)."""
    if isinstance(node, type) and issubclass(node, BaseModel):
        if node not in models:
            models.append(node)
        return _ref(node.__name__)
    if isinstance(node, dict):
        return {k: _walk(v, models) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_walk(v, models) for v in node]
    return node


def _clean(schema: Any) -> Any:
    """pydantic's JSON Schema made plain: ``title`` goes (the names say it)."""
    if isinstance(schema, dict):
        return {key: _clean(value) for key, value in schema.items()
                if not (key == "title" and isinstance(value, str))}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query value is never JSON null (an absent parameter is): drop the null branch."""
    branches = schema.get("anyOf")
    if branches:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            if schema.get("default") is not None:
                merged["default"] = schema["default"]
            return {**rest[0], **merged}
    return schema


def _query_params(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = defs[model.__name__]
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(_not_null(prop))  # a copy: the model's own schema stays whole in components
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        param["schema"] = prop
        params.append(param)
    return params


def served(app: Flask) -> set[tuple[str, str]]:
    """``(METHOD, /openapi/{path})`` of every route the app serves (HEAD and OPTIONS left out:
    werkzeug adds them to every GET and every route)."""
    out = set()
    for rule in app.url_map.iter_rules():
        path = openapi_path(rule.rule)
        for method in (rule.methods or ()):
            if method not in ("HEAD", "OPTIONS"):
                out.add((method, path))
    return out


def openapi_path(rule: str) -> str:
    """A werkzeug rule in OpenAPI form: ``<path:name>`` -> ``{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def build(operations: Iterable[Op] = OPERATIONS, only: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The OpenAPI document of ``operations`` (those in ``only`` when given)."""
    ops = [op for op in operations if only is None or (op.method, op.path) in only]
    models: list[type[BaseModel]] = []
    walked = [(op, _walk({**_auth_errors(op), **op.responses}, models)) for op in ops]
    for op in ops:
        for model in (*op.query, *((op.body,) if op.body else ())):
            _walk(model, models)
    events = _walk(EVENT_SCHEMAS, models)
    responses = _walk(_RESPONSES, models)
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template="#/components/schemas/{model}")
    defs = _clean(top.get("$defs", {}))
    paths: dict[str, dict[str, Any]] = {}
    for op, op_responses in walked:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, **spec} for name, spec in op.path_params.items()]
        for model in op.query:
            params.extend(_query_params(model, defs))
        params.extend(op.headers)
        entry: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                                 "operationId": _operation_id(op), "responses": op_responses}
        if op.description:
            entry["description"] = op.description
        if params:
            entry["parameters"] = params
        if op.body is not None:
            media: dict[str, Any] = {"schema": _ref(op.body.__name__)}
            if op.body_example is not None:
                media["example"] = op.body_example
            entry["requestBody"] = {"required": True, "content": {"application/json": media}}
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "streamapp", "version": "0.1.0", "description": _INFO},
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in ops)],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {**defs, **events}, "responses": responses,
                       "securitySchemes": SECURITY_SCHEMES},
        # Keys are optional (none configured: the API is open), hence the empty alternative.
        "security": [{"bearer": []}, {"apiKey": []}, {"session": []}, {}],
    }


PUBLIC_PATHS = frozenset({"/", "/healthz", "/readyz", "/api.json", "/swagger/", "/swagger/{filename}",
                          "/static/{filename}", "/metrics"})
SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API key (STREAMAPP_API_KEYS / STREAMAPP_API_KEYS_FILE)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
    "session": {"type": "apiKey", "in": "cookie", "name": "streamapp_session",
                "description": "Set by `POST /api/session`; accepted only from this site's pages "
                               "(`Origin` or `Sec-Fetch-Site: same-origin`)."},
}


def _auth_errors(op: Op) -> dict[str, Any]:
    """401 and 403 on every route but the public ones (when keys are configured)."""
    if op.path in PUBLIC_PATHS:
        return {}
    return errors("401", "403", table=OPENAI_ERR if op.path.startswith("/v1/") else ERR)


def _operation_id(op: Op) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", op.path).strip("_") or "root"
    return f"{op.method.lower()}_{words}"


def document(app: Flask) -> dict[str, Any]:
    """The document of the routes ``app`` serves (built once per app)."""
    doc = app.extensions.get("openapi")
    if doc is None:
        doc = app.extensions["openapi"] = build(only=served(app))
    return doc


def undocumented(app: Flask) -> set[tuple[str, str]]:
    """Routes the app serves that have no entry in ``OPERATIONS``."""
    return served(app) - {(op.method, op.path) for op in OPERATIONS}


_INFO = """Streams AI chat answers token by token over Server-Sent Events or chunked HTTP.

**Errors** before a stream's first byte are JSON `{"error": {"code", "message", "field"}}` with the status
(`/v1`: OpenAI's `{"error": {"message", "type", "code", "param"}}`); after it, a last `event: error`
(`{"code", "message"}`; chunked text: a last `[error CODE: message]` line). A method a route does not take
is a 405 with `Allow` (see `components/responses/Error405`); a request line over 8190 bytes is gunicorn's
414 (HTML).

**Streams** (`text/event-stream; charset=utf-8`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`,
`X-Stream-Id`) open with a comment, then `event: stream` (`{"stream_id"}`) carrying `retry:`; every event
has the id `<stream_id>-<seq>`, so `Last-Event-ID` resumes it. The `schema` of an event-stream media
type describes one event, not the stream.
"""
