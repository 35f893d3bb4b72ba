"""A stream's final usage record: its token counts and where they came from.

Every stream ends with one record, ``{"prompt_tokens", "completion_tokens", "total_tokens",
"source"}`` (and ``method`` when a count is not the upstream's), put on its final event
(``Done`` or ``Failed``) by the producer, which knows how the stream ended and what it relayed:

- ``reported``: the upstream ended the answer and sent its own usage: its counts as given
  (an explicit 0 stays 0; details such as ``cached_tokens`` kept);
- ``estimated``: the upstream ended the answer without usage: the input estimated from its
  text (:func:`estimate_input`), the output counted as one token per streamed chunk;
- ``partial``: the stream ended early after the upstream accepted it (cancelled, client gone,
  cut, stalled, a failure, our own length limit): the output counted from the chunks the
  upstream produced, the input estimated (the upstreams send their counts only at the end);
  a count the upstream did send before the end (OpenAI's usage chunk, then a cut before
  ``[DONE]``) is its own, kept as it sent it;
- ``unknown``: the stream ended before the upstream accepted it (refused, unreachable, a
  timeout before its answer): every count ``null``, never a 0 standing for "unknown".

``method`` names how each count that is not the upstream's was made. Front doors render the
record in their own shapes; ``/v1/chat/completions`` keeps OpenAI's (:func:`openai_usage`).
"""

from __future__ import annotations

import json
from typing import Any

from ..events import Done, Event, Failed

SOURCES = ("reported", "partial", "estimated", "unknown")
BYTES_PER_TOKEN = 4  # UTF-8 bytes per token, about, for English text and code
MESSAGE_OVERHEAD = 4  # tokens a chat template adds around each message, about
PROMPT_METHOD = f"prompt: UTF-8 bytes/{BYTES_PER_TOKEN} + {MESSAGE_OVERHEAD} per message"  # tools as JSON
COMPLETION_METHOD = "completion: 1 per streamed chunk"
_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def estimate_input(messages: list[dict[str, Any]], tools: Any = None) -> int:
    """An estimate of the input tokens of chat ``messages``: the UTF-8 bytes of their text
    (and of any tool calls) and of the request's ``tools`` (their schemas as JSON: upstreams
    put them in the prompt) over :data:`BYTES_PER_TOKEN`, plus :data:`MESSAGE_OVERHEAD` each."""
    size = len(json.dumps(tools, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace")) \
        if tools else 0
    for message in messages:
        size += len(_text(message.get("content")).encode("utf-8", "replace"))
        calls = message.get("tool_calls")
        if calls:
            size += len(str(calls).encode("utf-8", "replace"))
    return -(-size // BYTES_PER_TOKEN) + MESSAGE_OVERHEAD * len(messages)


def output_limit(params: dict[str, Any]) -> int | None:
    """The most output tokens a request asked for (``max_completion_tokens``, else
    ``max_tokens``), or ``None``."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = params.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def usage_meta(messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, int]:
    """What a stream's metadata keeps of its request for its usage and its budget reservation:
    ``prompt_estimate`` (:func:`estimate_input`, its tools counted) and ``max_tokens``
    (:func:`output_limit`) when asked."""
    out = {"prompt_estimate": estimate_input(messages, params.get("tools"))}
    limit = output_limit(params)
    if limit is not None:
        out["max_tokens"] = limit
    return out


def _counted(prompt: int | None, completion: int, source: str,
             sent: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record of our counts, but for those the upstream ``sent`` (its own, kept)."""
    methods = []
    theirs = (sent or {}).get("prompt_tokens")
    if type(theirs) is int:
        prompt = theirs
    elif prompt is not None:
        methods.append(PROMPT_METHOD)
    theirs = (sent or {}).get("completion_tokens")
    if type(theirs) is int:
        completion = theirs
    else:
        methods.append(COMPLETION_METHOD)
    record = {"prompt_tokens": prompt, "completion_tokens": completion,
              "total_tokens": None if prompt is None else prompt + completion, "source": source}
    if methods:
        record["method"] = "; ".join(methods)
    return record


def final_usage(end: Event, *, from_upstream: bool, opened: bool, chunks: int,
                prompt_estimate: int | None) -> dict[str, Any]:
    """The usage record of a stream that ended with ``end``.

    ``from_upstream``: the upstream ended it (its ``Done``); ``opened``: the upstream accepted
    the request; ``chunks``: the content chunks (text, reasoning, tool-call fragments) it
    produced; ``prompt_estimate``: :func:`estimate_input` of the request, when known. A
    ``Failed`` end's ``usage`` is what the upstream counted before it failed, if anything."""
    if from_upstream and isinstance(end, Done):
        reported = end.usage
        if reported:
            record = {k: v for k, v in reported.items() if k not in ("source", "method")}
            prompt, completion = record.get("prompt_tokens"), record.get("completion_tokens")
            if record.get("total_tokens") is None and prompt is not None and completion is not None:
                record["total_tokens"] = prompt + completion
            for key in _COUNTS:
                record.setdefault(key, None)
            return {**record, "source": "reported"}
        return _counted(prompt_estimate, chunks, "estimated")
    if not opened and not chunks:
        return {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "source": "unknown"}
    return _counted(prompt_estimate, chunks, "partial", end.usage if isinstance(end, Failed) else None)


def openai_usage(record: dict[str, Any] | None) -> dict[str, Any] | None:
    """The record in OpenAI's shape for ``/v1/chat/completions``: the upstream's own counts
    (``reported``), without ``source``; ``None`` for any other source (an estimate in OpenAI's
    shape could not say it is one: the stream info has the whole record)."""
    if not record or record.get("source", "reported") != "reported":
        return None
    return {k: v for k, v in record.items() if k not in ("source", "method")}


def tokens(record: dict[str, Any] | None) -> tuple[int, int, int]:
    """``(prompt, completion, total)`` of a record for adding up: a count it does not know adds 0."""
    if not record:
        return 0, 0, 0
    prompt, completion = record.get("prompt_tokens") or 0, record.get("completion_tokens") or 0
    total = record.get("total_tokens")
    return prompt, completion, total if total is not None else prompt + completion
