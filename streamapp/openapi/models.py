"""What the service writes, as pydantic models: JSON bodies, and the ``data`` of stream events.

The request models are in ``schemas.py`` (the views validate with them); these describe the
answers of ``errors.py``, the views and the encoders of ``wire.py``. They validate nothing at
run time: ``tests/test_openapi.py`` checks the live answers and the encoders' events against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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


class UpstreamCircuit(_Strict):
    """One upstream's circuit breaker in ``GET /readyz``."""

    state: Literal["closed", "half_open", "open", "unknown"]
    retry_after: int | None = Field(None, ge=0, description="seconds left of an open circuit's cool-down")


class Ready(_Strict):
    """``GET /readyz``."""

    status: Literal["ready", "not_ready"]
    failing: list[str]
    checks: ReadyChecks
    upstreams: dict[str, UpstreamCircuit] = Field(
        default_factory=dict, description="each upstream's circuit breaker (streamapp/circuits.py), now")


class UsageRecord(BaseModel):
    """A stream's usage record: its counts and where they came from (``streamapp.usage.record``)."""

    model_config = ConfigDict(extra="allow")
    prompt_tokens: int | None
    completion_tokens: int | None
    total_tokens: int | None
    source: Literal["reported", "partial", "estimated", "unknown"] = Field(description=(
        "reported: the upstream's own; partial: ended early (output counted, input estimated); "
        "estimated: the upstream sent none; unknown: the upstream never accepted the request"))
    method: str | None = Field(None, description="how the counts that are not the upstream's were made")


class UpstreamAttempt(_Strict):
    """One target a stream's start tried (or skipped), in order (``streamapp.failover``)."""

    upstream: str = Field(description="the upstream's name (a provider, or one of the upstreams file)")
    model: str = Field(description="the model asked of it")
    outcome: str = Field(description="success, circuit_open, first_token_timeout, stopped, internal_error, "
                                     "or the upstream's error code (upstream_unreachable, "
                                     "upstream_http_error, upstream_timeout, ...)")
    status: int | None = Field(description="the upstream's HTTP status, when it answered one")
    start_ms: float = Field(description="when the attempt began, in ms after the stream's start")
    ms: float = Field(description="how long the attempt took to its first token or its failure, in ms")


class UsageCounts(_Strict):
    """Tokens and streams added up."""

    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    total_tokens: int = Field(ge=0)
    streams: int = Field(ge=0, description="streams that ended")
    cost: float | None = Field(None, ge=0, description="with a price table: what the tokens cost")


class UsageDay(UsageCounts):
    """One day's (UTC) usage of one model (and key, with `all`)."""

    day: str = Field(description="YYYY-MM-DD, UTC")
    key: str | None = Field(None, description="with `all=1`: the key's name (null: open service)")
    model: str


class UsageAnswer(_Strict):
    """``GET /api/usage``."""

    key: str | None = Field(description="the key's name; null with `all=1`, or for an open service")
    days: list[UsageDay]
    total: UsageCounts
    currency: str | None = Field(None, description="with a price table: the currency of the costs")


class StreamInfo(_Strict):
    """``GET /api/streams/{sid}/info``."""

    stream_id: str
    state: Literal["running", "finished"] | None
    route: str | None = Field(description="the route that made the stream (chat, stream, openai, ...)")
    pid: int = Field(description="the worker process answering")
    readers: int = Field(ge=0, description="readers attached now")
    events: int = Field(ge=0, description="events in the stream's log")
    usage: UsageRecord | None = Field(description="the stream's usage record once it ended")
    upstream: str | None = Field(description="the upstream whose answer the stream carries; null before its "
                                             "first token, or when every attempt failed")
    attempts: list[UpstreamAttempt] = Field(description="the upstreams its start tried, in order; empty "
                                                        "until its first token or its end")


class StreamRow(_Strict):
    """One stream as the inspector shows it (``GET /api/streams``, ``GET /api/streams/live``).

    Times are unix seconds (the server's clocks: compare them with the answer's ``now``)."""

    stream_id: str
    state: Literal["running", "finished", "lost"] = Field(
        description="lost: running, but the process producing it is gone")
    process: str | None = Field(description="host:pid of the process producing it")
    client: str | None = Field(description="the API key's name that started it (null: no keys)")
    route: str | None = Field(description="the front door (chat, stream, openai, v1, responses, ws...)")
    format: str | None = Field(description="its wire format")
    provider: str | None
    model: str | None
    upstream: Any = Field(None, description="the upstream serving it, where routing recorded one")
    attempts: Any = Field(None, description="the upstream attempts before its first token, where recorded")
    on_disconnect: str | None = Field(description="cancel or finish")
    started: float | None
    ended: float | None
    ttft_s: float | None = Field(description="seconds from its start to its first token")
    tokens: int | None = Field(description="events with content (text, reasoning, tool-call fragments): an "
                                           "upstream chunk each, usually one token")
    tokens_per_s: float | None = Field(description="tokens per second since the first token")
    last_event_at: float | None = Field(description="its last event (running: seen within a second)")
    events: int | None = Field(description="events in its log")
    readers: int = Field(ge=0, description="client readers attached now (the inspector is none)")
    resumes: int = Field(ge=0)
    outcome: str | None = Field(
        description="completed, cancelled, client_gone, shutdown, upstream_error or error")
    finish_reason: str | None
    error: str | None = Field(description="the error code of a failed stream")
    usage: Any = Field(None, description="the usage recorded for it (its shape is the recorder's)")


class StreamList(_Strict):
    """``GET /api/streams``: recent streams, newest first."""

    now: float = Field(description="the server's time (unix seconds)")
    streams: list[StreamRow]


class StreamsDiff(_Strict):
    """``data`` of the live table's ``event: diff``: the rows that changed or came, the ids gone."""

    now: float = Field(description="the server's time (unix seconds)")
    upsert: list[StreamRow]
    remove: list[str]


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
    usage: UsageRecord | None


class StreamFailure(_Strict):
    """``data`` of ``event: error``: the stream failed after its first byte (the status was sent)."""

    code: Annotated[str, Field(examples=["upstream_cut", "stream_gap", "producer_lost"])]
    message: str
    usage: UsageRecord | None = Field(None, description="the stream's usage record (a reader's own "
                                                        "failures, such as stream_gap, have none)")


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

