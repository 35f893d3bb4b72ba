"""Declarative request models (pydantic) and the one function that applies them.

The same models produce the JSON Schema of the OpenAPI document. A validation
failure becomes ``ApiError`` naming the first bad field. :func:`load_json`
reads a request body's JSON: lone surrogates become U+FFFD, numbers are bounded
before they are converted, and nesting too deep for the parser is a 400.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from .errors import ApiError
from .providers.base import has_surrogate_escape, well_formed

MAX_UID = 2**63 - 1           # a signed 64-bit integer, as databases store it
MAX_DELAY_MS = 2**31 - 1      # GET /stream caps delay_ms lower (STREAM_MAX_DELAY_MS)
_MAX_DIGITS = 20              # more digits than any bound here has
_HUGE = 10**_MAX_DIGITS       # stands for any longer number: past every bound


def bounded_int(text: str) -> int:
    """``int(text)`` for a JSON number; one of more than 20 digits becomes a stand-in past
    every bound, so validation names its field (Python would refuse 4,300 digits with its
    own message, and convert fewer in quadratic time)."""
    if len(text) > _MAX_DIGITS:
        return -_HUGE if text.startswith("-") else _HUGE
    return int(text)


def _bounded_digits(value: Any) -> Any:
    """The same bound for a number in a query string, before pydantic converts it."""
    if isinstance(value, str) and len(value) > _MAX_DIGITS:
        text = value.strip()
        digits = text.lstrip("+-").lstrip("0")
        if len(digits) > _MAX_DIGITS and digits.isascii() and digits.isdigit():
            return -_HUGE if text.startswith("-") else _HUGE
    return value


def load_json(raw: bytes) -> Any:
    """The JSON of a request body, its strings valid Unicode, or ``ApiError`` (400)."""
    try:
        text = raw.decode(json.detect_encoding(raw), "replace")
        data = json.loads(text, parse_int=bounded_int)
        if has_surrogate_escape(text):
            data = well_formed(data)
    except RecursionError:
        raise ApiError("malformed JSON: nested too deeply", code="malformed_json") from None
    except ValueError as exc:
        raise ApiError(f"malformed JSON: {exc}", code="malformed_json") from None
    return data


NonEmpty = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=100_000)]
OnDisconnect = Annotated[Literal["cancel", "finish"], Field(
    description="what a client leaving means: cancel (stop after the resume grace) or finish "
                "(generate to the end so the answer can be fetched later)")]


class Message(BaseModel):
    """One earlier turn of the conversation."""

    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: Annotated[str, StringConstraints(strict=True, max_length=100_000)]


class ChatBody(BaseModel):
    """Body of ``POST /api/chat``."""

    model_config = ConfigDict(extra="ignore")
    uid: Annotated[int, Field(strict=True, gt=0, le=MAX_UID,
                              description="the caller's user id: any positive integer the client picks, "
                                          "kept with the stream (not checked against keys)")]
    message: Annotated[NonEmpty, Field(description="the user's new message")]
    provider: Annotated[Literal["demo", "openai", "ollama"] | None, Field(
        description="who answers; absent: DEFAULT_PROVIDER (with an upstreams file: a route's targets "
                    "of this kind)")] = None
    model: Annotated[Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)] | None,
                     Field(description="the provider's model; absent: its configured default (with an "
                                       "upstreams file: a route's name; absent: default_route)")] = None
    history: Annotated[list[Message], Field(max_length=500,
                                            description="the earlier turns, oldest first")] = []
    max_tokens: Annotated[Annotated[int, Field(strict=True, ge=1, le=MAX_DELAY_MS)] | None, Field(
        description="the most output tokens of the answer (passed to the provider; a token budget "
                    "reserves this much); absent: the provider's default")] = None
    on_disconnect: OnDisconnect = "cancel"


class WsResume(BaseModel):
    """A WebSocket ``resume`` message: follow ``stream_id`` after event ``last_seq``."""

    model_config = ConfigDict(extra="ignore")
    stream_id: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9]{1,64}$")]
    last_seq: Annotated[int, Field(strict=True, ge=0, le=MAX_UID)] = 0


class StreamQuery(BaseModel):
    """Query of ``GET /stream``."""

    text: Annotated[Annotated[str, StringConstraints(min_length=1)] | None, Field(
        description="the text to stream, one token at a time; absent: a greeting")] = None
    delay_ms: Annotated[Annotated[int, Field(ge=0, le=MAX_DELAY_MS), BeforeValidator(_bounded_digits)] | None,
                        Field(description="milliseconds between tokens")] = None
    on_disconnect: OnDisconnect = "cancel"


class PromptQuery(BaseModel):
    """Query of ``GET /ai-stream`` and ``GET /local-ai``."""

    prompt: Annotated[NonEmpty, Field(description="the user's message")]
    model: Annotated[Annotated[str, StringConstraints(min_length=1, max_length=200)] | None, Field(
        description="the provider's model; absent: its configured default (with an upstreams file: a "
                    "route's name, served by its targets of this endpoint's kind)")] = None
    on_disconnect: OnDisconnect = "cancel"


class StreamsQuery(BaseModel):
    """Query of ``GET /api/streams``."""

    state: Annotated[Literal["running", "finished", "lost"] | None, Field(
        description="only streams in this state")] = None
    key: Annotated[Annotated[str, StringConstraints(min_length=1, max_length=200)] | None, Field(
        description="only this API key's streams (by name); a key that is not admin may name only "
                    "itself")] = None
    model: Annotated[Annotated[str, StringConstraints(min_length=1, max_length=200)] | None, Field(
        description="only streams of this model")] = None
    limit: Annotated[int, Field(ge=1, le=1000, description="at most this many, newest first"),
                     BeforeValidator(_bounded_digits)] = 100

    @model_validator(mode="before")
    @classmethod
    def _empty_is_absent(cls, data: Any) -> Any:
        """``?state=&key=&model=&limit=`` (a form's empty fields): an empty value is one not given."""
        return {k: v for k, v in data.items() if v != ""} if isinstance(data, dict) else data


# -- POST /v1/chat/completions: OpenAI's request, the fields upstreams understand ---------------

ModelName = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]


class V1Message(BaseModel):
    """One message of an OpenAI chat request (tool calls and tool results included)."""

    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str, StringConstraints(strict=True, max_length=100_000)] | \
        Annotated[list[dict[str, Any]], Field(max_length=100)] | None = None
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    tool_calls: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_call_id: Annotated[str, StringConstraints(max_length=200)] | None = None


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    include_usage: bool = False


class V1ChatRequest(BaseModel):
    """Body of ``POST /v1/chat/completions`` (OpenAI's chat-completions request).

    ``model`` picks the provider: ``demo``, ``openai/<model>``, ``ollama/<model>``,
    or a bare name for the default provider (with an upstreams file: a route's name or
    ``demo``). The other fields are passed to the
    upstream (translated for Ollama); ``on_disconnect`` is streamapp's own.
    """

    model_config = ConfigDict(extra="ignore")
    model: ModelName
    messages: Annotated[list[V1Message], Field(min_length=1, max_length=500)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Field(ge=1, le=MAX_DELAY_MS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_DELAY_MS)] | None = None
    stop: Annotated[str, StringConstraints(max_length=200)] | \
        Annotated[list[Annotated[str, StringConstraints(max_length=200)]], Field(max_length=4)] | None = None
    seed: Annotated[int, Field(ge=-MAX_UID - 1, le=MAX_UID)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    user: Annotated[str, StringConstraints(max_length=256)] | None = None
    n: Literal[1] | None = None
    on_disconnect: OnDisconnect = "cancel"

    PASSED: ClassVar[tuple[str, ...]] = (
        "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed", "presence_penalty",
        "frequency_penalty", "tools", "tool_choice", "response_format", "reasoning_effort", "user")

    def upstream_params(self) -> dict[str, Any]:
        """The request fields an upstream understands, as the client sent them."""
        return {name: getattr(self, name) for name in self.PASSED if getattr(self, name) is not None}


M = TypeVar("M", bound=BaseModel)

_MESSAGES = {
    "missing": "{field} is required",
    "int_type": "{field} must be an integer",
    "string_type": "{field} must be a string",
    "greater_than": "{field} must be a positive integer",
    "greater_than_equal": "{field} must be at least {ge}",
    "less_than_equal": "{field} must be at most {le}",
    "int_parsing": "{field} must be an integer",
    "int_from_float": "{field} must be an integer",
    "string_too_short": "{field} must not be empty",
    "literal_error": "{field} must be one of: {expected}",
    "list_type": "{field} must be a list",
    "model_type": "{field} must be an object",
    "dict_type": "{field} must be an object",
    "extra_forbidden": "{field} is not allowed",
}


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model`` or raise ``ApiError`` (400)."""
    if model in (ChatBody, V1ChatRequest) and not isinstance(data, dict):
        raise ApiError("the body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else None
        name = field or "body"
        ctx = {"expected": "", **(err.get("ctx") or {})}
        template = _MESSAGES.get(err["type"])
        message = template.format(field=name, **ctx) if template else f"{name}: {err['msg']}"
        code = "missing_field" if err["type"] == "missing" else "invalid_field"
        raise ApiError(message, code=code, field=field) from None
