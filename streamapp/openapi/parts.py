"""The pieces a view's description is made of: responses, headers, parameters, stream events.

A description is static text; ``{SETTING}`` in it (an upper-case name of ``config.py``) is
replaced by the running app's value when the document is built (``generator.fill``).
Models (pydantic classes) may stand anywhere a schema may: they become ``$ref``\\ s.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .models import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    ChatReasoning,
    ChatToolCall,
    ErrorBody,
    OpenAIError,
    StreamEnd,
    StreamFailure,
    StreamOpened,
    ToolCallFragment,
)

SSE = "text/event-stream"
STREAM_ID_PATTERN = r"^[A-Za-z0-9]{1,64}$"
EVENT_ID_PATTERN = r"^[A-Za-z0-9]{1,64}-[0-9]+$"
HTML = {"text/html": {"schema": {"type": "string"}}}
TEXT = {"text/plain": {"schema": {"type": "string"}}}
ANY_FILE = {"*/*": {}}


def ref(name: str) -> dict[str, str]:
    """A reference to a schema of ``components/schemas``."""
    return {"$ref": f"#/components/schemas/{name}"}


def response(description: str, content: dict[str, Any] | None = None,
             headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response object."""
    out: dict[str, Any] = {"description": description}
    if headers:
        out["headers"] = headers
    if content:
        out["content"] = content
    return out


def json_body(schema: Any, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON response whose body is ``schema`` (a model or a schema)."""
    return response(description, {"application/json": {"schema": schema}}, headers)


def header(description: str, required: bool = False, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """A response header."""
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


# -- Streams ----------------------------------------------------------------------------------

# Where a new stream's id leads (OpenAPI links; schemathesis follows them in its stateful phase).
STREAM_LINKS = {name: {"operationId": op_id, "parameters": {"sid": "$response.header.X-Stream-Id"}}
                for name, op_id in (("info", "get_api_streams_sid_info"), ("resume", "get_api_streams_sid"),
                                    ("cancel", "post_api_streams_sid_cancel"))}

STREAM_HEADERS = {
    "X-Stream-Id": header("the stream's id (for resume, info and cancel)", True,
                          {"type": "string", "pattern": STREAM_ID_PATTERN}),
    "Cache-Control": header("`no-cache`"),
    "X-Accel-Buffering": header("`no`: tells nginx not to buffer the stream"),
}

EVENT_DESCRIPTION = (
    " The `schema` describes **one event** (OpenAPI 3.1 cannot describe a stream's items): its `event` "
    "name (`message` when absent), its `id` (`<stream_id>-<seq>`, for `Last-Event-ID`), `retry`, and its "
    "`data`; JSON `data` has `contentMediaType: application/json` and its schema in `contentSchema`. "
    "Comments (`: keep-alive`) are sent when nothing else was. A stream ends with `finish_reason: length` "
    "after {STREAM_MAX_EVENTS} events carrying content (text, reasoning, tool-call fragments; "
    "STREAM_MAX_EVENTS), {STREAM_MAX_BYTES} bytes of that content (STREAM_MAX_BYTES), or after "
    "{STREAM_MAX_DURATION_S} s (STREAM_MAX_DURATION_S).")

# The component holding the event schema of each wire format of ``wire.py`` (by its name).
EVENT_COMPONENTS = {"chat": "ChatStreamEvent", "plain": "PlainStreamEvent", "openai": "OpenAIStreamEvent"}


def stream(fmt: str | tuple[str, ...], description: str, **content: Any) -> dict[str, Any]:
    """A 200 of a ``text/event-stream`` in wire format ``fmt`` (several: a resume, any of them),
    whose ``schema`` describes one event; ``content`` adds other media types."""
    formats = (fmt,) if isinstance(fmt, str) else fmt
    schema = ref(EVENT_COMPONENTS[formats[0]]) if len(formats) == 1 else \
        {"anyOf": [ref(EVENT_COMPONENTS[f]) for f in formats]}
    return {"description": description + EVENT_DESCRIPTION, "headers": STREAM_HEADERS,
            "content": {SSE: {"schema": schema}, **content}}


def _answer(resp: dict[str, Any]) -> dict[str, Any]:
    return {**resp, "links": STREAM_LINKS}


# The 200s of the routes that start a stream, and of a resume.
CHAT_ANSWER = _answer(stream(
    "chat", "The answer as SSE (default): `event: stream`, a JSON `data:` per token (`{delta, index}`), "
    "reasoning (`{reasoning}`) or tool-call fragment (`{tool_call}`), then `{is_end, finish_reason, usage}`. "
    "With `Accept: text/plain` or `?format=text`: chunked text, one chunk per token (`[error CODE: "
    "message]` on a last line if it fails).", **TEXT))
PLAIN_ANSWER = _answer(stream(
    "plain", "The stream: `event: stream`, one event per token (`data:` is the raw text), then "
    "`event: end` with the finish reason and usage."))
OPENAI_ANSWER = _answer(stream(
    "openai", "`\"stream\": false`: a `chat.completion`. `\"stream\": true`: `chat.completion.chunk` "
    "objects as `data:` lines, then `data: [DONE]`.", **{"application/json": {"schema": ChatCompletion}}))
RESUMED = stream(("chat", "plain", "openai"),
                 "The events after `Last-Event-ID` (or all), then the live tail, in the stream's own format; "
                 "a chunked-text stream is replayed whole. A stream of `/v1/responses` or `/v1/messages` "
                 "comes back in its own events, described on its route.", **TEXT)


def sse_event(name: str, data: Any, description: str) -> dict[str, Any]:
    """One SSE event named ``name`` whose ``data`` is JSON of ``data`` (a model or a schema),
    or text when ``data`` is None."""
    data_schema: dict[str, Any] = {"type": "string"}
    if data is not None:
        data_schema = {"type": "string", "contentMediaType": "application/json", "contentSchema": data}
    return {"type": "object", "description": description, "required": ["event", "data"],
            "properties": {"event": {"const": name}, "data": data_schema,
                           "id": {"type": "string", "pattern": EVENT_ID_PATTERN},
                           "retry": {"const": "{RETRY_MS}"}}}


def event_schemas() -> dict[str, Any]:
    """The schema of one event of each SSE wire format of ``wire.py`` (``ChatSSE``, ``PlainSSE``,
    ``OpenAIChunks``), by component name; ``retry`` is the configured RETRY_MS."""
    opened = sse_event("stream", StreamOpened, "the first event: the stream's id (carries the first `retry`)")
    failed = sse_event("error", StreamFailure, "the stream failed after its first byte; the last event")
    return {
        "ChatStreamEvent": {
            "description": "One event of a chat stream (`POST /api/chat`).",
            "oneOf": [opened, failed, sse_event("message", {"anyOf": [ChatDelta, ChatReasoning, ChatToolCall,
                                                                   StreamEnd]},
                                             "a token, reasoning, a tool-call fragment, or the end")]},
        "PlainStreamEvent": {
            "description": "One event of a GET stream (`/stream`, `/ai-stream`, `/local-ai`): tokens as "
                           "raw text.",
            "oneOf": [opened, failed,
                      sse_event("message", None, "a token: the raw text"),
                      sse_event("reasoning", None, "a piece of reasoning: the raw text"),
                      sse_event("tool_call", ToolCallFragment, "a tool-call fragment"),
                      sse_event("end", StreamEnd, "the end")]},
        "OpenAIStreamEvent": {
            "description": "One event of an OpenAI-compatible stream: a `chat.completion.chunk`, an error "
                           "object mid-stream, or the last `data: [DONE]`. No `event:` names, no `retry:`.",
            "type": "object", "required": ["data"],
            "properties": {"event": {"const": "message"},
                           "id": {"type": "string", "pattern": EVENT_ID_PATTERN}, "data": {"type": "string"}},
            "if": {"properties": {"data": {"const": "[DONE]"}}},
            "else": {"properties": {"data": {
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [ChatCompletionChunk, OpenAIError]}}}}},
    }


# -- Errors -----------------------------------------------------------------------------------

RETRY_AFTER = {"Retry-After": header("seconds to wait before trying again", True,
                                     {"type": "string", "pattern": "^[0-9]+$"})}
_RATE_LIMITED = {**RETRY_AFTER, **{
    name: header(text, schema={"type": "string", "pattern": "^[0-9]+$"}) for name, text in (
        ("X-RateLimit-Limit", "stream starts allowed per period (when a rate limit applies)"),
        ("X-RateLimit-Remaining", "stream starts left in the current period"),
        ("X-RateLimit-Reset", "when the period resets (unix time)"))}}
_STREAM_ID_MAYBE = {"X-Stream-Id": header("the stream that failed, when one was started",
                                          schema={"type": "string", "pattern": STREAM_ID_PATTERN})}

# Every error status: its description ({SETTING}s filled in) and headers. Each is in
# components/responses twice (our shape, OpenAI's), and operations refer to them by status.
ERRORS: dict[str, tuple[str, dict[str, Any] | None]] = {
    "400": ("A missing or wrong field (`field` names it), a field over an input limit (the message names "
            "the setting; the request schemas carry each limit), malformed JSON (`malformed_json`), JSON "
            "nested too deeply, or a body shorter than its Content-Length (`incomplete_body`).", None),
    "404": ("Unknown route, an unknown stream (`not_found`, `field: stream_id`), or a model nobody serves "
            "(`model_not_found`, `field`/`param`: `model`).", None),
    "401": ("API keys are configured and the request has none, a wrong one, or no valid session cookie "
            "(`unauthorized`).", {"WWW-Authenticate": header("`Bearer realm=\"streamapp\"`", True)}),
    "403": ("A session cookie from a page of another origin (`origin_not_allowed`), a stream another "
            "client started (`not_stream_owner`), a model the API key may not use "
            "(`model_not_allowed`), or another key's usage asked by a key that is not admin (`admin_only`).",
            None),
    "405": ("The route does not take this method (`method_not_allowed`); `Allow` lists those it does.",
            {"Allow": header("the methods the route takes", True)}),
    "408": ("The declared body did not arrive within {BODY_TIMEOUT_S} s (BODY_TIMEOUT_S; "
            "`request_timeout`); the connection is closed.", None),
    "413": ("A body over {MAX_BODY_BYTES} bytes (MAX_BODY_BYTES), with Content-Length or chunked "
            "(`request_entity_too_large`); the connection is closed.", None),
    "415": ("The body is not `Content-Type: application/json` (`unsupported_media_type`).", None),
    "429": ("Over a limit of this client (its API key, or its address when the service runs open): "
            "stream starts per period (`rate_limited`; RATE_LIMIT: {RATE_LIMIT}, or the key's own) or "
            "concurrent streams (`too_many_streams`; MAX_STREAMS_PER_KEY: {MAX_STREAMS_PER_KEY}, or the "
            "key's own; MAX_STREAMS_PER_PROCESS: {MAX_STREAMS_PER_PROCESS}) or running detached streams, "
            "`on_disconnect: finish` (`too_many_detached_streams`; MAX_DETACHED_PER_CLIENT: "
            "{MAX_DETACHED_PER_CLIENT}), or the key's token budget (`budget_exceeded`, `Retry-After` "
            "until its window resets; TOKEN_BUDGET, or the key's `tokens=`); the message names the limit.",
            _RATE_LIMITED),
    "502": ("The upstream failed before the first token (`upstream_unreachable`, `upstream_http_error`, "
            "`upstream_auth`, `upstream_bad_response`, `upstream_error`, `upstream_cut`).",
            _STREAM_ID_MAYBE),
    "503": ("The stream store (Redis) is unavailable (`store_unavailable`), or, starting a stream, its "
            "upstream's circuit breaker is open after failed starts (`upstream_unavailable`; "
            "CIRCUIT_FAILURES, CIRCUIT_COOLDOWN_S): nothing was sent to it.", RETRY_AFTER),
    "504": ("The upstream sent nothing within {READ_TIMEOUT_S} s (READ_TIMEOUT_S) before the first token "
            "(`upstream_timeout`).", _STREAM_ID_MAYBE),
}


def errors(*statuses: str, openai: bool = False) -> dict[str, Any]:
    """The error responses of ``statuses``, in our shape or (``openai``) OpenAI's."""
    prefix = "OpenAIError" if openai else "Error"
    return {status: {"$ref": f"#/components/responses/{prefix}{status}"} for status in statuses}


NO_CONTENT = {"$ref": "#/components/responses/NothingToResume"}
URI_TOO_LONG = response("A request line over 8190 bytes: gunicorn's own answer (HTML).", HTML)
GET_STREAM = {"200": PLAIN_ANSWER, "204": NO_CONTENT, "414": URI_TOO_LONG,
              **errors("400", "404", "429", "502", "503", "504")}


def shared_responses() -> dict[str, Any]:
    """``components/responses``: every error in both shapes, and the 204 of a resume."""
    return {
        **{f"Error{s}": json_body(ErrorBody, d, h) for s, (d, h) in ERRORS.items()},
        **{f"OpenAIError{s}": json_body(OpenAIError, d, h) for s, (d, h) in ERRORS.items()},
        "NothingToResume": response(
            "Nothing to resume: the `Last-Event-ID` (or `last_event_id`) is not an event of a stream this "
            "route made in this format with events after it (not ours, another route's, expired after "
            "{RESUME_TTL_S} s, at or past the end). No body; typed `text/event-stream` so an `EventSource` "
            "stops reconnecting. Never starts a generation.", {SSE: {}}),
    }


# -- Parameters -------------------------------------------------------------------------------

LAST_EVENT_ID = {"name": "Last-Event-ID", "in": "header", "required": False,
                 "description": "resume after this event (`<stream_id>-<seq>`): the missed events, then the "
                                "live tail, each exactly once; 204 when there is nothing to resume",
                 "schema": {"type": "string"}}
SID = {"sid": {"description": "a stream id (the `X-Stream-Id` header, the `stream` event, the prefix of "
                              "every event id)", "schema": {"type": "string", "pattern": STREAM_ID_PATTERN}}}


def path_param(description: str, example: str) -> dict[str, Any]:
    """A string path parameter."""
    return {"description": description, "schema": {"type": "string"}, "example": example}


def is_model(node: Any) -> bool:
    """Whether ``node`` is a pydantic model class."""
    return isinstance(node, type) and issubclass(node, BaseModel)
