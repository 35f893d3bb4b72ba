"""A stream's event log as OpenAI Responses events and as the ``response`` object.

One :class:`ResponseBuilder` per reading of a log: fed the log's events in order, it
returns the Responses events each one makes (``response.created`` ... exactly one of
``response.completed`` / ``response.incomplete`` / ``response.failed``), numbered by
``sequence_number`` from 0, and at any point gives the ``response`` object as it stands
(:meth:`ResponseBuilder.response`). Everything it writes is derived from the stream id
and the log alone, so a second reading (a resume, on any host) writes the same ids,
indexes and sequence numbers: ``resp_<sid>``, and per output item ``msg_`` / ``rs_`` /
``fc_<sid>_<output_index>``.

Output items follow the log: a run of ``Reasoning`` is one ``reasoning`` item (its text as
one ``reasoning_text`` part), a run of ``Delta`` one assistant ``message`` (one
``output_text`` part), each tool call (``ToolCall.index``) one ``function_call`` item,
open until the end (``Done`` / ``Failed``): its fragments may interleave with other
calls, text or reasoning, so several items may be in progress at once (each addressed by
its ``output_index``; the ``output`` list is in that order). Usage is the upstream's,
renamed (``input_tokens``, ``output_tokens``, ``total_tokens`` and the details it gave),
with the record's ``source`` (``streamapp.usage.record``); an unknown usage stays ``null``.
"""

from __future__ import annotations

from typing import Any

from ..events import Delta, Done, Event, Failed, Reasoning, ToolCall
from ..wire import is_stream_id

RESPONSE_PREFIX = "resp_"
_ITEM_PREFIXES = ("msg", "rs", "fc")  # output item ids: ``<prefix>_<sid>_<output_index>``
# Our finish reasons that end a response without completing it: its status and incomplete_details.
_UNFINISHED: dict[str, tuple[str, dict[str, str] | None]] = {
    "length": ("incomplete", {"reason": "max_output_tokens"}),
    "content_filter": ("incomplete", {"reason": "content_filter"}),
    "cancelled": ("cancelled", None),
    "client_gone": ("incomplete", None),
    "shutdown": ("incomplete", None),
}


def response_id(sid: str) -> str:
    """The id of the response stream ``sid`` carries."""
    return RESPONSE_PREFIX + sid


def stream_of(rid: str) -> str | None:
    """The stream id inside response id ``rid``, or ``None`` when ``rid`` is not one of ours."""
    sid = rid[len(RESPONSE_PREFIX):] if rid.startswith(RESPONSE_PREFIX) else ""
    return sid if is_stream_id(sid) else None


def item_stream(item_id: str) -> str | None:
    """The stream id in output item id ``item_id`` (``msg_`` / ``rs_`` / ``fc_<sid>_<n>``), or ``None``."""
    prefix, _, rest = item_id.partition("_")
    sid, _, index = rest.rpartition("_")
    if prefix not in _ITEM_PREFIXES or not index.isdigit() or not is_stream_id(sid):
        return None
    return sid


def response_error(failed: Failed) -> dict[str, str]:
    """A failure as OpenAI's ``ResponseError``: its closed list of codes (an upstream 429 is
    ``rate_limit_exceeded``, the rest ``server_error``), our own code leading the message."""
    code = "rate_limit_exceeded" if failed.upstream_status == 429 else "server_error"
    return {"code": code, "message": f"{failed.code}: {failed.message}"}


def responses_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage in the Responses API's names; details only where the upstream gave them; the
    record's ``source`` (and ``method``) beside them. ``None`` when no count is known."""
    if not usage or usage.get("source") == "unknown":
        return None
    inp, out = usage.get("prompt_tokens"), usage.get("completion_tokens")
    total = usage.get("total_tokens")
    if total is None and isinstance(inp, int) and isinstance(out, int):
        total = inp + out
    result: dict[str, Any] = {"input_tokens": inp, "output_tokens": out, "total_tokens": total}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is not None:
        result["input_tokens_details"] = {"cached_tokens": cached}
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
    if reasoning is not None:
        result["output_tokens_details"] = {"reasoning_tokens": reasoning}
    for key in ("source", "method"):
        if usage.get(key) is not None:
            result[key] = usage[key]
    return result


class _Item:
    """One output item being built: its kind, ids, and text (or arguments) pieces."""

    __slots__ = ("call_id", "data", "id", "index", "kind", "name", "pieces")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind, self.id, self.index = kind, item_id, index
        self.pieces: list[str] = []
        self.name = ""
        self.call_id = ""

    def text(self) -> str:
        return "".join(self.pieces)

    def part(self) -> dict[str, Any]:
        """Its content part (message and reasoning items), with the text so far."""
        if self.kind == "message":
            return {"type": "output_text", "text": self.text(), "annotations": [], "logprobs": []}
        return {"type": "reasoning_text", "text": self.text()}

    def as_dict(self, status: str, empty: bool = False) -> dict[str, Any]:
        """The item as the API shows it; ``empty``: as first announced, before any content."""
        if self.kind == "message":
            return {"id": self.id, "type": "message", "status": status, "role": "assistant",
                    "content": [] if empty else [self.part()]}
        if self.kind == "reasoning":
            return {"id": self.id, "type": "reasoning", "status": status, "summary": [],
                    "content": [] if empty else [self.part()]}
        return {"id": self.id, "type": "function_call", "status": status, "call_id": self.call_id,
                "name": self.name, "arguments": "" if empty else self.text()}


class ResponseBuilder:
    """Responses events and the ``response`` object of one stream, from its log in order.

    ``meta`` is the stream's metadata: ``model``, ``created`` and ``echo`` (the request's
    fields a response object repeats)."""

    def __init__(self, sid: str, meta: dict[str, Any]) -> None:
        self.sid, self.meta = sid, meta
        self.rid = response_id(sid)
        self.seq = -1
        self.done: dict[int, dict[str, Any]] = {}  # finished output items, by output_index
        self.open: _Item | None = None  # the message or reasoning item being written
        self.calls: dict[int, _Item] = {}  # function calls being written, by ToolCall.index
        self.count = 0  # output items so far
        self.status = "queued"
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None

    # -- events ---------------------------------------------------------------------------
    def _ev(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq, **fields}

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The Responses events that ``event`` (the log's next) makes."""
        out: list[dict[str, Any]] = []
        if self.status == "queued":
            self.status = "in_progress"
            out.append(self._ev("response.created", response=self.response()))
            out.append(self._ev("response.in_progress", response=self.response()))
        if isinstance(event, Delta):
            item = self._current("message", out)
            item.pieces.append(event.text)
            out.append(self._ev("response.output_text.delta", item_id=item.id, output_index=item.index,
                                content_index=0, delta=event.text, logprobs=[]))
        elif isinstance(event, Reasoning):
            item = self._current("reasoning", out)
            item.pieces.append(event.text)
            out.append(self._ev("response.reasoning_text.delta", item_id=item.id, output_index=item.index,
                                content_index=0, delta=event.text))
        elif isinstance(event, ToolCall):
            self._tool_call(event, out)
        elif isinstance(event, Done):
            self._end_done(event, out)
        elif isinstance(event, Failed):
            self._close_all("incomplete", out)
            self.status = "failed"
            self.error = response_error(event)
            self.usage = responses_usage(event.usage)
            out.append(self._ev("response.failed", response=self.response()))
        return out

    def _new(self, kind: str, prefix: str) -> _Item:
        item = _Item(kind, f"{prefix}_{self.sid}_{self.count}", self.count)
        self.count += 1
        return item

    def _current(self, kind: str, out: list[dict[str, Any]]) -> _Item:
        item = self.open
        if item is not None and item.kind == kind:
            return item
        if item is not None:
            self._close(item, "completed", out)
        item = self.open = self._new(kind, "msg" if kind == "message" else "rs")
        out.append(self._ev("response.output_item.added", output_index=item.index,
                            item=item.as_dict("in_progress", empty=True)))
        out.append(self._ev("response.content_part.added", item_id=item.id, output_index=item.index,
                            content_index=0, part=item.part()))
        return item

    def _tool_call(self, event: ToolCall, out: list[dict[str, Any]]) -> None:
        item = self.calls.get(event.index)
        if item is None:
            if self.open is not None:
                self._close(self.open, "completed", out)
                self.open = None
            item = self.calls[event.index] = self._new("function_call", "fc")
            item.call_id = event.id or f"call_{self.sid}_{event.index}"
            item.name = event.name or ""
            out.append(self._ev("response.output_item.added", output_index=item.index,
                                item=item.as_dict("in_progress", empty=True)))
        elif event.name and not item.name:
            item.name = event.name
        if event.arguments:
            item.pieces.append(event.arguments)
            out.append(self._ev("response.function_call_arguments.delta", item_id=item.id,
                                output_index=item.index, delta=event.arguments))

    def _close(self, item: _Item, status: str, out: list[dict[str, Any]]) -> None:
        if item.kind == "function_call":
            out.append(self._ev("response.function_call_arguments.done", item_id=item.id,
                                output_index=item.index, name=item.name, arguments=item.text()))
        else:
            text = item.text()
            kind = "response.output_text.done" if item.kind == "message" else "response.reasoning_text.done"
            extra = {"logprobs": []} if item.kind == "message" else {}
            out.append(self._ev(kind, item_id=item.id, output_index=item.index, content_index=0,
                                text=text, **extra))
            out.append(self._ev("response.content_part.done", item_id=item.id, output_index=item.index,
                                content_index=0, part=item.part()))
        final = item.as_dict(status)
        self.done[item.index] = final
        out.append(self._ev("response.output_item.done", output_index=item.index, item=final))

    def _close_all(self, status: str, out: list[dict[str, Any]]) -> None:
        """At the end: close the open message or reasoning item and every function call, in output order."""
        items = sorted([*self.calls.values(), *([self.open] if self.open else [])], key=lambda i: i.index)
        self.open = None
        self.calls.clear()
        for item in items:
            self._close(item, status, out)

    def _end_done(self, event: Done, out: list[dict[str, Any]]) -> None:
        status, details = _UNFINISHED.get(event.finish_reason, ("completed", None))
        self._close_all("completed" if status == "completed" else "incomplete", out)
        self.status, self.incomplete = status, details
        self.usage = responses_usage(event.usage)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(self._ev(kind, response=self.response()))

    # -- the object -----------------------------------------------------------------------
    def output(self) -> list[dict[str, Any]]:
        """The output items as they stand (finished, or being written), in output order."""
        items = dict(self.done)
        for item in [*self.calls.values(), *([self.open] if self.open else [])]:
            items[item.index] = item.as_dict("in_progress")
        return [items[index] for index in sorted(items)]

    def response(self) -> dict[str, Any]:
        """The ``response`` object as it stands."""
        meta = self.meta
        echo = meta.get("echo") or {}
        reasoning = echo.get("reasoning") or {}
        return {
            "id": self.rid, "object": "response", "created_at": int(meta.get("created") or 0),
            "status": self.status, "background": bool(echo.get("background")), "error": self.error,
            "incomplete_details": self.incomplete, "instructions": echo.get("instructions"),
            "max_output_tokens": echo.get("max_output_tokens"), "max_tool_calls": None,
            "model": str(meta.get("model") or ""), "output": self.output(),
            "parallel_tool_calls": echo.get("parallel_tool_calls", True),
            "previous_response_id": echo.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "service_tier": "default", "store": echo.get("store", True),
            "temperature": echo.get("temperature"), "text": echo.get("text") or {"format": {"type": "text"}},
            "tool_choice": echo.get("tool_choice") or "auto", "tools": echo.get("tools") or [],
            "top_p": echo.get("top_p"), "truncation": "disabled", "usage": self.usage,
            "user": echo.get("user"), "metadata": echo.get("metadata") or {},
        }


def build_response(sid: str, meta: dict[str, Any], events: list[Event]) -> dict[str, Any]:
    """The ``response`` object of stream ``sid`` after ``events`` (its log so far, in order)."""
    builder = ResponseBuilder(sid, meta)
    for event in events:
        builder.feed(event)
    return builder.response()
