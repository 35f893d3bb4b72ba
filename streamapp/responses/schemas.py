"""The body of ``POST /v1/responses`` (OpenAI's Responses request), as pydantic models.

Unknown fields are refused (400 naming them): a field we cannot honour is never dropped
silently. Input items and tools are checked one by one in ``mapper``, whose messages name
the item (``input.2.type``)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..schemas import MAX_DELAY_MS, ModelName

Text = Annotated[str, StringConstraints(strict=True, max_length=100_000)]
Short = Annotated[str, StringConstraints(strict=True, max_length=256)]


class Reasoning(BaseModel):
    """``reasoning``: ``effort`` goes to the upstream; no summaries are made (the reasoning
    text itself streams as ``reasoning_text``), so ``summary`` is accepted and has no effect."""

    model_config = ConfigDict(extra="forbid")
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormat(BaseModel):
    """``text.format``: ``text`` (the default), ``json_object`` or ``json_schema``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]  # noqa: A003 - OpenAI's field name
    name: Annotated[str, StringConstraints(max_length=64)] | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    description: Short | None = None
    strict: bool | None = None


class TextOptions(BaseModel):
    """``text``: its ``format``; ``verbosity`` is accepted and has no effect."""

    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None  # noqa: A003 - OpenAI's field name
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(BaseModel):
    """Body of ``POST /v1/responses``.

    ``model`` picks the provider as on ``/v1/chat/completions`` (``demo``, ``openai/<model>``,
    ``ollama/<model>``, or a bare name for the default provider). ``input`` is a string or a
    list of items: messages (``role``, and a string or ``input_text`` / ``output_text``
    parts), ``function_call`` and ``function_call_output`` items, ``item_reference`` items
    (an output item of a kept response), ``reasoning`` items (not passed on). ``include``,
    ``truncation``, ``service_tier``, ``stream_options``, ``prompt_cache_key``,
    ``prompt_cache_retention`` and ``safety_identifier`` are accepted and change nothing.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    model: ModelName
    input: Annotated[str, StringConstraints(strict=True)] | \
        Annotated[list[dict[str, Any]], Field(max_length=500)] = Field(  # noqa: A003
            description="a string (one user message) or a list of input items; each message within "
                        "MAX_MESSAGE_CHARS, all within MAX_INPUT_CHARS")
    instructions: Text | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=MAX_DELAY_MS)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    reasoning: Reasoning | None = None
    text: TextOptions | None = None
    metadata: Annotated[dict[str, Annotated[str, StringConstraints(strict=True, max_length=512)]],
                        Field(max_length=16)] | None = None
    user: Short | None = None
    stream: bool = False
    store: bool = True
    background: bool = False
    previous_response_id: Annotated[str, StringConstraints(strict=True, max_length=200)] | None = None
    include: Annotated[list[Short], Field(max_length=16)] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    service_tier: Literal["auto", "default", "flex", "priority", "scale"] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_key: Short | None = None
    prompt_cache_retention: Short | None = None
    safety_identifier: Short | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=0)] | None = None


# -- What the routes answer (for the OpenAPI document) -------------------------------------------

class ResponseObject(BaseModel):
    """OpenAI's ``response`` object (the fields every answer has; the rest as OpenAI documents them)."""

    model_config = ConfigDict(extra="allow")
    id: str  # noqa: A003 - OpenAI's field name
    object: Literal["response"]  # noqa: A003
    created_at: int
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    model: str
    output: list[dict[str, Any]]
    usage: dict[str, Any] | None
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None


class ResponseDeleted(BaseModel):
    """What ``DELETE /v1/responses/<id>`` answers."""

    id: str  # noqa: A003 - OpenAI's field name
    object: Literal["response.deleted"]  # noqa: A003
    deleted: Literal[True]

