"""A Responses request onto the one provider request (``ChatRequest``: OpenAI chat messages
and params), and response output items back into chat messages (a previous response's
context).

- ``instructions`` is a first ``system`` message (never carried over to a next response);
- ``input``: a string is one ``user`` message; message items keep their role, their
  ``input_text`` / ``output_text`` parts joined into the text; consecutive ``function_call``
  items are one assistant message's ``tool_calls`` (joined to the assistant text just
  before them); a ``function_call_output`` is a ``tool`` message; ``reasoning`` items are
  not passed on (chat upstreams take no reasoning input); an ``item_reference`` is the
  output item it names (found by the caller's ``resolve``), mapped as that item;
- ``tools`` (``function`` only) and ``tool_choice`` in chat's shape; ``max_output_tokens``
  is ``max_tokens``; ``reasoning.effort`` is ``reasoning_effort``; ``text.format`` is
  ``response_format``; ``temperature``, ``top_p``, ``parallel_tool_calls``, ``user`` as they are.

Anything we cannot honour (built-in tools such as ``web_search``, images, files) is an
``ApiError`` (400) naming its field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ApiError
from .schemas import ResponsesRequest

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")


def _refuse(field: str, what: str) -> ApiError:
    return ApiError(f"{field}: {what} is not supported here", code="unsupported_field", field=field)


def _text(content: Any, field: str) -> str:
    """The text of a message item's ``content``: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(f"{field} must be a string or a list of content parts", code="invalid_field",
                       field=field)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            texts.append(part["refusal"])
        else:
            raise _refuse(f"{field}.{j}.type", f"a content part of type {kind!r}")
    return "".join(texts)


def _string(item: dict[str, Any], key: str, field: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise ApiError(f"{field}.{key} must be a non-empty string", code="invalid_field",
                       field=f"{field}.{key}")
    return value


# Finds the output item an ``item_reference`` names: (its id, the field naming it) -> the item.
Resolver = Callable[[str, str], dict[str, Any]]


def items_to_messages(items: list[Any], field: str = "input",
                      resolve: Resolver | None = None) -> list[dict[str, Any]]:
    """Responses input (or output) items as OpenAI chat messages; ``resolve`` finds referenced items."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"{field}.{i}"
        if not isinstance(item, dict):
            raise ApiError(f"{where} must be an object", code="invalid_field", field=where)
        kind = item.get("type", "message")
        if kind == "item_reference" and resolve is not None:
            item = resolve(_string(item, "id", where), f"{where}.id")
            kind = item["type"]
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise ApiError(f"{where}.role must be one of: {', '.join(_ROLES)}", code="invalid_field",
                               field=f"{where}.role")
            messages.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            arguments = item.get("arguments", "")
            if not isinstance(arguments, str):
                raise ApiError(f"{where}.arguments must be a string", code="invalid_field",
                               field=f"{where}.arguments")
            call = {"id": _string(item, "call_id", where), "type": "function",
                    "function": {"name": _string(item, "name", where), "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
                if last["content"] == "":
                    last["content"] = None
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else _text(output, f"{where}.output")
            messages.append({"role": "tool", "tool_call_id": _string(item, "call_id", where),
                             "content": text})
        elif kind == "reasoning":
            continue  # chat upstreams take no reasoning input
        else:
            raise _refuse(f"{where}.type", f"an input item of type {kind!r}")
    return messages


def _tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        kind = tool.get("type")
        if kind != "function":
            raise _refuse(f"tools.{i}.type", f"a tool of type {kind!r} (only function tools are)")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise ApiError(f"tools.{i}.name must be a non-empty string", code="invalid_field",
                           field=f"tools.{i}.name")
        function: dict[str, Any] = {"name": name}
        for key in ("description", "parameters", "strict"):
            if tool.get(key) is not None:
                function[key] = tool[key]
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(choice: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _refuse("tool_choice.type", f"a tool_choice of type {choice.get('type')!r}")


def _response_format(body: ResponsesRequest) -> dict[str, Any] | None:
    fmt = body.text.format if body.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if not fmt.name or fmt.schema_ is None:
        raise ApiError("text.format: a json_schema format needs a name and a schema", code="invalid_field",
                       field="text.format")
    schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    if fmt.description:
        schema["description"] = fmt.description
    return {"type": "json_schema", "json_schema": schema}


def chat_params(body: ResponsesRequest) -> dict[str, Any]:
    """The chat request fields (OpenAI's names) a Responses request stands for."""
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if getattr(body, name) is not None:
            params[name] = getattr(body, name)
    if body.max_output_tokens is not None:
        params["max_tokens"] = body.max_output_tokens
    if body.tools:
        params["tools"] = _tools(body.tools)
    if body.tool_choice is not None:
        params["tool_choice"] = _tool_choice(body.tool_choice)
    if body.reasoning and body.reasoning.effort is not None:
        params["reasoning_effort"] = body.reasoning.effort
    response_format = _response_format(body)
    if response_format is not None:
        params["response_format"] = response_format
    return params


def input_messages(body: ResponsesRequest, resolve: Resolver | None = None) -> list[dict[str, Any]]:
    """The request's ``input`` as chat messages (without ``instructions``)."""
    if isinstance(body.input, str):
        return [{"role": "user", "content": body.input}]
    return items_to_messages(body.input, resolve=resolve)


def echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request's fields a ``response`` object repeats, as it shows them."""
    out = body.model_dump(include={"instructions", "tool_choice", "parallel_tool_calls", "temperature",
                                   "top_p", "max_output_tokens", "metadata", "user", "store", "background",
                                   "previous_response_id", "tools"}, exclude_none=True)
    if body.reasoning is not None:
        out["reasoning"] = body.reasoning.model_dump(include={"effort"})
    if body.text is not None and body.text.format is not None:
        out["text"] = {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)}
    return out

