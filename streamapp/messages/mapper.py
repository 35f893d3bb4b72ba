"""A Messages request onto the one provider request, in OpenAI chat names (``ChatRequest``).

- ``system`` (a string or text blocks) -> a ``system`` message first;
- a turn's ``text`` blocks -> its content; an assistant's ``tool_use`` blocks -> its
  ``tool_calls`` (``input`` as the arguments' JSON); a user's ``tool_result`` blocks -> one
  ``tool`` message each (``tool_call_id``; an error result's text starts with ``Error:``),
  before the rest of that turn, as OpenAI wants results right after the calls; ``thinking``
  and ``redacted_thinking`` blocks of earlier turns are left out (Anthropic's API drops them
  from the context too). Any other block (images, documents, server tool results) is a 400
  naming it, never dropped in silence;
- ``tools`` -> function tools (``input_schema`` as ``parameters``); ``tool_choice`` ``auto`` /
  ``any`` / ``tool`` / ``none`` -> ``auto`` / ``required`` / that function / ``none``, and
  ``disable_parallel_tool_use`` -> ``parallel_tool_calls: false``;
- ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` as they are; ``stop_sequences`` ->
  ``stop``; ``metadata.user_id`` -> ``user``; ``thinking`` -> ``reasoning_effort`` by its budget
  (:func:`effort`), which each provider translates (Ollama: ``think``).

:func:`estimate_tokens` is ``count_tokens``' answer when the upstream has no count of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ..errors import ApiError
from ..providers.base import ChatRequest
from .schemas import CountTokensRequest, MessagesRequest, Thinking, ToolChoice, ToolParam

# Thinking budgets (tokens) up to which each reasoning effort applies; above the last: "high".
EFFORTS = ((4096, "low"), (16384, "medium"))


def effort(thinking: Thinking | None) -> str | None:
    """The ``reasoning_effort`` a ``thinking`` setting stands for (``None``: leave it to the model)."""
    if thinking is None or thinking.type == "disabled":
        return None
    if thinking.type == "adaptive" or thinking.budget_tokens is None:
        return "medium"
    return next((name for most, name in EFFORTS if thinking.budget_tokens <= most), "high")


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def _texts(blocks: list[dict[str, Any]], where: str) -> str:
    """The text of a list of ``text`` blocks (a system prompt, a tool result's content)."""
    out = []
    for i, block in enumerate(blocks):
        text = block.get("text") if isinstance(block, dict) and block.get("type") == "text" else None
        if not isinstance(text, str):
            raise ApiError(f"{where}.{i} must be a text block", field=f"{where}.{i}", code="invalid_field")
        out.append(text)
    return "\n".join(out)


def system_text(system: str | list[dict[str, Any]] | None) -> str:
    """The system prompt as one text."""
    if system is None or isinstance(system, str):
        return system or ""
    return _texts(system, "system")


def _tool_result(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str) or not call_id:
        raise ApiError(f"{where}.tool_use_id is required", field=f"{where}.tool_use_id", code="missing_field")
    content = block.get("content")
    text = content if isinstance(content, str) else _texts(content or [], f"{where}.content")
    if block.get("is_error"):
        text = f"Error: {text}"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _tool_use(block: dict[str, Any], where: str) -> dict[str, Any]:
    call_id, name = block.get("id"), block.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str) or not name:
        raise ApiError(f"{where} needs an id and a name", field=where, code="invalid_field")
    arguments = block.get("input", {})
    if not isinstance(arguments, str):
        arguments = _json(arguments)
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _turn(role: str, content: str | list[dict[str, Any]], where: str) -> Iterator[dict[str, Any]]:
    """The OpenAI messages of one Anthropic turn."""
    if isinstance(content, str):
        yield {"role": role, "content": content}
        return
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(content):
        at = f"{where}.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_result" and role == "user":
            yield _tool_result(block, at)
        elif kind == "tool_use" and role == "assistant":
            calls.append(_tool_use(block, at))
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue
        else:
            raise ApiError(f"{at}: a {kind!r} block is not supported here ({role} turns take text"
                           f"{', tool_use' if role == 'assistant' else ', tool_result'} blocks)",
                           field=at, code="unsupported_block")
    if calls:
        yield {"role": role, "content": "\n".join(texts) or None, "tool_calls": calls}
    elif texts:
        yield {"role": role, "content": "\n".join(texts)}


def chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """The request's system prompt and turns as OpenAI chat messages."""
    out: list[dict[str, Any]] = []
    system = system_text(body.system)
    if system:
        out.append({"role": "system", "content": system})
    for i, turn in enumerate(body.messages):
        out.extend(_turn(turn.role, turn.content, f"messages.{i}.content"))
    return out


def _tools(tools: list[ToolParam]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if tool.type not in (None, "custom"):
            raise ApiError(f"tools.{i}: the server tool {tool.type!r} is not available here (only client "
                           "tools, with an input_schema)", field=f"tools.{i}.type", code="unsupported_tool")
        function: dict[str, Any] = {"name": tool.name,
                                    "parameters": tool.input_schema or {"type": "object", "properties": {}}}
        if tool.description:
            function["description"] = tool.description
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.type == "tool":
        if not choice.name:
            raise ApiError("tool_choice.name is required with type tool", field="tool_choice.name",
                           code="missing_field")
        return {"type": "function", "function": {"name": choice.name}}
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type]


def chat_request(body: MessagesRequest, model: str | None) -> ChatRequest:
    """The provider request for ``body`` (``model``: the resolved upstream model)."""
    params: dict[str, Any] = {"max_tokens": body.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        if getattr(body, name) is not None:
            params[name] = getattr(body, name)
    if body.stop_sequences:
        params["stop"] = body.stop_sequences
    if body.tools:
        params["tools"] = _tools(body.tools)
    if body.tool_choice is not None:
        params["tool_choice"] = _tool_choice(body.tool_choice)
        if body.tool_choice.disable_parallel_tool_use:
            params["parallel_tool_calls"] = False
    reasoning = effort(body.thinking)
    if reasoning is not None:
        params["reasoning_effort"] = reasoning
    if body.metadata is not None and body.metadata.user_id:
        params["user"] = body.metadata.user_id
    return ChatRequest(chat_messages(body), model=model, params=params)


def _flat(message: dict[str, Any]) -> str:
    text = message.get("content") or ""
    for call in message.get("tool_calls") or ():
        text += call["function"]["arguments"]
    return text


def input_texts(body: CountTokensRequest) -> Iterator[tuple[str, str]]:
    """``(field, text)`` of the system prompt and of each turn, for the input limits: its text,
    its tool calls' arguments and its tool results (what an upstream reads)."""
    system = system_text(body.system)
    if system:
        yield "system", system
    for i, turn in enumerate(body.messages):
        where = f"messages.{i}.content"
        yield where, "".join(_flat(message) for message in _turn(turn.role, turn.content, where))


CHARS_PER_TOKEN = 4  # UTF-8 bytes per token, about, for English text and code
MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message, about


def estimate_tokens(body: CountTokensRequest) -> int:
    """An estimate of the input tokens of ``body``: its UTF-8 bytes (text, tool calls and
    results, the tools' JSON) over :data:`CHARS_PER_TOKEN`, plus :data:`MESSAGE_OVERHEAD` per turn."""
    texts = list(input_texts(body))
    size = sum(len(text.encode("utf-8")) for _, text in texts)
    if body.tools:
        size += len(_json(_tools(body.tools)).encode("utf-8"))
    return -(-size // CHARS_PER_TOKEN) + MESSAGE_OVERHEAD * len(texts)
