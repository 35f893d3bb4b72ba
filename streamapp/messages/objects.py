"""Anthropic's Messages API objects built from our events: the ``message``, usage, errors.

Shapes: anthropic-sdk-python ``types/message.py``, ``usage.py``, ``message_delta_usage.py``,
``shared/error_response.py``. Usage is never invented: a count the upstream did not report
is ``null`` (the SDK's accumulator keeps a ``message_start`` value when ``message_delta``
leaves one out, and takes ``message_delta``'s when it has one); the end's usage carries the
stream's ``source`` (``streamapp.usage.record``) beside the counts.
"""

from __future__ import annotations

import json
from typing import Any

from ..events import Delta, Done, Event, Failed, Reasoning, ToolCall

# Our finish reasons in Anthropic's vocabulary. Upstreams say "stop" both for a natural end and
# for a stop sequence, so a stop is an ``end_turn`` (see ``stop_sequence`` below).
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 504: "timeout_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (its SDK picks its error class by status)."""
    kind = ERROR_TYPES.get(status)
    if kind is None:
        kind = "api_error" if status >= 500 else "invalid_request_error"
    return kind


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    """Anthropic's error body ``{"type": "error", "error": {"type", "message"}}``."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def stop_reason(finish_reason: str) -> str:
    """Anthropic's ``stop_reason`` for ours (our own ends, a cancel or a shutdown, are ``end_turn``)."""
    return STOP_REASONS.get(finish_reason, "end_turn")


def usage(counts: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic's usage from OpenAI-style counts; ``null`` counts when the upstream sent none.

    Anthropic's ``input_tokens`` leaves out the tokens read from a cache
    (``cache_read_input_tokens``); OpenAI's ``prompt_tokens`` includes them.
    """
    if not counts:
        return {"input_tokens": None, "output_tokens": None}
    source = {k: counts[k] for k in ("source", "method") if counts.get(k) is not None}
    prompt, output = counts.get("prompt_tokens"), counts.get("completion_tokens")
    cached = (counts.get("prompt_tokens_details") or {}).get("cached_tokens")
    out: dict[str, Any] = {"input_tokens": prompt - cached if prompt is not None and cached else prompt,
                           "output_tokens": output}
    if cached is not None:
        out["cache_read_input_tokens"] = cached
    thinking = (counts.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if thinking is not None:
        out["output_tokens_details"] = {"thinking_tokens": thinking}
    return {**out, **source}


def message_id(sid: str) -> str:
    """The ``id`` of the message that stream ``sid`` carries."""
    return f"msg_{sid}"


def tool_use_id(sid: str, index: int) -> str:
    """An id for tool call ``index`` of stream ``sid`` when the upstream gave it none."""
    return f"toolu_{sid}_{index}"


def tool_input(arguments: str) -> Any:
    """A tool call's ``input``: its arguments' JSON object; ``{}`` for none; the text itself
    when it is not JSON (never lost)."""
    if not arguments.strip():
        return {}
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def message_head(sid: str, model: str) -> dict[str, Any]:
    """The ``message`` as ``message_start`` carries it: no content yet, usage unknown yet."""
    return {"id": message_id(sid), "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": None, "output_tokens": None}}


def message(sid: str, model: str, events: list[Event]) -> dict[str, Any]:
    """The whole ``message`` of a stream's events (ending with ``Done``): one content block per
    run of text or thinking, one ``tool_use`` block per tool call, in the order they came."""
    blocks: list[dict[str, Any]] = []
    calls: dict[int, dict[str, Any]] = {}
    arguments: dict[int, list[str]] = {}
    done = Done()
    for event in events:
        last = blocks[-1] if blocks else None
        if isinstance(event, Delta):
            if last is None or last["type"] != "text":
                blocks.append(last := {"type": "text", "text": ""})
            last["text"] += event.text
        elif isinstance(event, Reasoning):
            if last is None or last["type"] != "thinking":
                blocks.append(last := {"type": "thinking", "thinking": "", "signature": ""})
            last["thinking"] += event.text
        elif isinstance(event, ToolCall):
            call = calls.get(event.index)
            if call is None:
                call = calls[event.index] = {"type": "tool_use", "name": event.name or "", "input": {},
                                             "id": event.id or tool_use_id(sid, event.index)}
                blocks.append(call)
                arguments[event.index] = []
            elif event.name and not call["name"]:
                call["name"] = event.name
            arguments[event.index].append(event.arguments)
        elif isinstance(event, Done):
            done = event
        elif isinstance(event, Failed):
            break
    for index, call in calls.items():
        call["input"] = tool_input("".join(arguments[index]))
    return {**message_head(sid, model), "content": blocks, "stop_reason": stop_reason(done.finish_reason),
            "usage": usage(done.usage)}
