"""Declarative request models (pydantic) and the one function that applies them.

The same models produce the JSON Schema of the OpenAPI document. A validation
failure becomes ``ApiError`` naming the first bad field.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from .errors import ApiError

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
    uid: Annotated[int, Field(strict=True, gt=0, description="the caller's user id")]
    message: Annotated[NonEmpty, Field(description="the user's new message")]
    provider: Literal["demo", "openai", "ollama"] | None = None
    model: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)] | None = None
    history: Annotated[list[Message], Field(max_length=500)] = []
    on_disconnect: OnDisconnect = "cancel"


class StreamQuery(BaseModel):
    """Query of ``GET /stream``."""

    text: Annotated[str, StringConstraints(min_length=1)] | None = None
    delay_ms: Annotated[int, Field(ge=0)] | None = None
    on_disconnect: OnDisconnect = "cancel"


class PromptQuery(BaseModel):
    """Query of ``GET /ai-stream`` and ``GET /local-ai``."""

    prompt: NonEmpty
    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    on_disconnect: OnDisconnect = "cancel"


M = TypeVar("M", bound=BaseModel)

_MESSAGES = {
    "missing": "{field} is required",
    "int_type": "{field} must be an integer",
    "string_type": "{field} must be a string",
    "greater_than": "{field} must be a positive integer",
    "string_too_short": "{field} must not be empty",
    "literal_error": "{field} must be one of: {expected}",
    "list_type": "{field} must be a list",
    "model_type": "{field} must be an object",
    "dict_type": "{field} must be an object",
    "extra_forbidden": "{field} is not allowed",
}


def parse(model: type[M], data: Any) -> M:
    """Validate ``data`` against ``model`` or raise ``ApiError`` (400)."""
    if model is ChatBody and not isinstance(data, dict):
        raise ApiError("the body must be a JSON object", code="invalid_body")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"]]
        field = ".".join(loc) if loc else None
        name = field or "body"
        expected = (err.get("ctx") or {}).get("expected", "")
        template = _MESSAGES.get(err["type"])
        message = template.format(field=name, expected=expected) if template \
            else f"{name}: {err['msg']}"
        code = "missing_field" if err["type"] == "missing" else "invalid_field"
        raise ApiError(message, code=code, field=field) from None
