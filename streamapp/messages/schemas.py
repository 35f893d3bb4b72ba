"""The body of ``POST /v1/messages`` and ``/v1/messages/count_tokens`` (Anthropic's Messages request).

Shapes: anthropic-sdk-python ``types/message_create_params.py`` and the content block params.
Content blocks are checked by the mapper (``mapper.py``), which names the block it cannot
honour; fields we do not know are ignored, as Anthropic's API does for beta fields it lacks.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..schemas import MAX_DELAY_MS, ModelName, OnDisconnect

Text = Annotated[str, StringConstraints(strict=True, max_length=100_000)]


class MessageParam(BaseModel):
    """One turn: ``content`` a string or a list of content blocks (``text``, ``tool_use``,
    ``tool_result``; ``thinking`` in an assistant turn)."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant"]
    content: Text | Annotated[list[dict[str, Any]], Field(max_length=500)]


class ToolParam(BaseModel):
    """A client tool: its ``input_schema`` is the JSON Schema of its ``input``. Anthropic's server
    tools (a ``type`` such as ``web_search_20250305``) have no upstream here: a 400 names them."""

    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, StringConstraints(strict=True, min_length=1, max_length=200)]
    type: str | None = None  # noqa: A003 - Anthropic's field name
    description: Text | None = None
    input_schema: dict[str, Any] | None = None


class ToolChoice(BaseModel):
    """``auto``, ``any`` (some tool), ``tool`` (the one ``name``d) or ``none``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["auto", "any", "tool", "none"]  # noqa: A003 - Anthropic's field name
    name: Annotated[str, StringConstraints(max_length=200)] | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(BaseModel):
    """Extended thinking: ``enabled`` with a token budget, ``adaptive``, or ``disabled``."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["enabled", "disabled", "adaptive"]  # noqa: A003 - Anthropic's field name
    budget_tokens: Annotated[int, Field(ge=1, le=MAX_DELAY_MS)] | None = None


class Metadata(BaseModel):
    """``user_id``: an opaque id of the end user (passed on as OpenAI's ``user``)."""

    model_config = ConfigDict(extra="ignore")
    user_id: Annotated[str, StringConstraints(max_length=256)] | None = None


class CountTokensRequest(BaseModel):
    """Body of ``POST /v1/messages/count_tokens``: the messages, system prompt and tools to count."""

    model_config = ConfigDict(extra="ignore")
    model: ModelName
    messages: Annotated[list[MessageParam], Field(min_length=1, max_length=500)]
    system: Text | Annotated[list[dict[str, Any]], Field(max_length=100)] | None = None
    tools: Annotated[list[ToolParam], Field(max_length=128)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None


class MessagesRequest(CountTokensRequest):
    """Body of ``POST /v1/messages`` (Anthropic's Messages request). ``model`` picks the provider:
    ``demo``, ``openai/<model>``, ``ollama/<model>``, or a bare name for the default provider;
    ``on_disconnect`` is streamapp's own."""

    max_tokens: Annotated[int, Field(strict=True, ge=1, le=MAX_DELAY_MS)]
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(ge=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0, le=MAX_DELAY_MS)] | None = None
    stop_sequences: Annotated[list[Annotated[str, StringConstraints(max_length=200)]],
                              Field(max_length=4)] | None = None
    metadata: Metadata | None = None
    on_disconnect: OnDisconnect = "cancel"
