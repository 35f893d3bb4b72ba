"""Ollama: ``POST {OLLAMA_HOST}/api/chat``, NDJSON, one JSON object per line.

Each line has ``message`` with ``content``, and where they apply ``thinking``
(the reasoning, with ``think`` set) and ``tool_calls`` (whole calls: ``function``
with ``name`` and ``arguments`` as a JSON object, no fragments); the last line
has ``done: true`` with ``done_reason``, ``prompt_eval_count`` and
``eval_count``. A line with an ``error`` member is a failure. Closing the
response stops generation (ollama #1695). Shapes: docs.ollama.com (api,
capabilities/thinking, capabilities/tool-calling) and ollama ``api/types.go``.

Requests come in OpenAI's shape and are translated (:func:`ollama_messages`,
:func:`ollama_params`) the way Ollama's own OpenAI layer (``openai/openai.go``)
does; answers go out in OpenAI's: each tool call becomes one ``ToolCall`` with
its own ``index``, an id and its arguments as a JSON string, and the answer
finishes with ``tool_calls`` (LiteLLM #37792, #35711 passed them on as is).

Embeddings: ``POST {OLLAMA_HOST}/api/embed`` (``{"model", "input"}``, and ``dimensions``
when asked; text only: token ids are refused before any request) answers
``{"embeddings": [[...]], "prompt_eval_count"}``, rendered as OpenAI's embedding list
(usage from ``prompt_eval_count``, none without it). ``user`` has no Ollama equivalent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import requests

from .. import sse
from ..errors import ApiError, UpstreamError
from ..events import Delta, Done, Event, Reasoning, ToolCall
from ..pausing import PAUSE
from ._http import (
    bad_shape,
    new_session,
    parse_object,
    post_json,
    post_stream,
    probe,
    stream_response,
    token_count,
)
from .base import ChatRequest, EmbedRequest, content_text
from .embedding import check_vector, embedding_list

# OpenAI request fields that are Ollama ``options`` under the same name.
_OPTIONS = ("temperature", "top_p", "top_k", "seed", "presence_penalty", "frequency_penalty")
# reasoning_effort -> think: Ollama takes a level (low, medium, high) or a bool; "minimal"
# is below its lowest level, as in Ollama's own translation.
_THINK: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                 "high": "high", "xhigh": "high"}


def ollama_params(params: dict[str, Any]) -> dict[str, Any]:
    """The members of an Ollama ``/api/chat`` request that OpenAI's ``params`` stand for.

    ``options``: temperature, top_p, top_k (Anthropic's, from ``/v1/messages``), seed,
    presence_penalty, frequency_penalty, ``stop`` (always a list), ``num_predict``
    (``max_completion_tokens``, else ``max_tokens``); ``format``: ``"json"`` for a
    ``json_object`` response format, the schema of a ``json_schema`` one; ``tools`` as they are (Ollama takes
    OpenAI's function tools); ``think``: the ``reasoning_effort`` level (``none``
    is ``false``, ``minimal`` is ``low``, any other ``true``). ``tool_choice`` and
    ``user`` have no Ollama equivalent and are dropped. Absent options keep the
    model's defaults.
    """
    out: dict[str, Any] = {}
    options = {key: params[key] for key in _OPTIONS if params.get(key) is not None}
    stop = params.get("stop")
    if stop is not None:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    limit = params.get("max_completion_tokens")
    if limit is None:
        limit = params.get("max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    if options:
        out["options"] = options
    response_format = params.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        schema = response_format.get("json_schema")
        if kind == "json_object":
            out["format"] = "json"
        elif kind == "json_schema" and isinstance(schema, dict) and schema.get("schema") is not None:
            out["format"] = schema["schema"]
    if params.get("tools") is not None:
        out["tools"] = params["tools"]
    effort = params.get("reasoning_effort")
    if effort is not None:
        out["think"] = _THINK.get(effort, True)
    return out


def ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as Ollama's: content parts joined to text, an
    assistant's ``tool_calls`` with their arguments as objects, a tool result
    named by ``tool_name`` (its ``name``, else the name of the call its
    ``tool_call_id`` answers), ``developer`` as ``system``, reasoning as ``thinking``."""
    names: dict[str, str] = {}  # tool call id -> function name, for results that give only the id
    out = []
    for message in messages:
        role = message.get("role")
        item: dict[str, Any] = {"role": "system" if role == "developer" else role,
                                "content": content_text(message.get("content"))}
        thinking = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(thinking, str) and thinking:
            item["thinking"] = thinking
        calls = message.get("tool_calls")
        if role == "assistant" and isinstance(calls, list) and calls:
            item["tool_calls"] = [_tool_call(call, names) for call in calls if isinstance(call, dict)]
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name") or names.get(call_id)
            if name:
                item["tool_name"] = name
            if call_id:
                item["tool_call_id"] = call_id
        out.append(item)
    return out


def _tool_call(call: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """One OpenAI tool call in Ollama's shape; arguments that are not a JSON object stay a string."""
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    name, arguments = function.get("name"), function.get("arguments")
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        arguments = {}  # a call without arguments
    elif isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            arguments = parsed
    out: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    call_id = call.get("id")
    if isinstance(call_id, str) and call_id:
        out["id"] = call_id
        if isinstance(name, str):
            names[call_id] = name
    return out


class OllamaProvider:
    """Streams ``/api/chat`` from an Ollama server."""

    name = "ollama"
    what = "Ollama upstream"

    def __init__(self, host: str, default_model: str, timeouts: tuple[float, float],
                 session: requests.Session | None = None) -> None:
        self.url = f"{host.rstrip('/')}/api/chat"
        self.embed_url = f"{host.rstrip('/')}/api/embed"
        self.default_model = default_model
        self.timeouts = timeouts
        self.session = session or new_session(self.url)

    def check(self) -> str | None:
        """``None`` if Ollama answers ``GET /api/version``, else why not."""
        return probe(self.session, self.url.rsplit("/api/chat", 1)[0] + "/api/version")

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, the answer's events, ``Done``; raise ``UpstreamError``."""
        payload = {"model": request.model or self.default_model,
                   "messages": ollama_messages(request.messages), "stream": True,
                   **ollama_params(request.params)}
        resp = post_stream(self.session, self.what, self.url, payload,
                           {"Accept": "application/x-ndjson"}, self.timeouts)
        del request, payload  # sent: the conversation is not kept while the answer streams
        yield from stream_response(resp, self.what, lambda chunks: self._events(sse.iter_lines(chunks)))

    def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """``/api/embed``'s vectors as OpenAI's embedding list; raise ``UpstreamError``, or
        ``ApiError`` for token ids (Ollama embeds text only)."""
        inputs = request.inputs
        if not isinstance(inputs[0], str):
            raise ApiError("Ollama embeds text only: send input as a string or a list of strings, "
                           "not token ids", field="input", code="unsupported_input")
        payload: dict[str, Any] = {"model": request.model, "input": request.input}
        if request.params.get("dimensions") is not None:
            payload["dimensions"] = request.params["dimensions"]
        obj, text = post_json(self.session, self.what, self.embed_url, payload, {}, self.timeouts)
        vectors = obj.get("embeddings")
        if not isinstance(vectors, list):
            raise bad_shape(self.what, "embeddings is not a list", text)
        if len(vectors) != len(inputs):
            raise bad_shape(self.what, f"{len(vectors)} embeddings for {len(inputs)} inputs", text)
        for vector in vectors:
            check_vector(vector, self.what, text)
        count = token_count(obj, "prompt_eval_count", self.what, text)
        usage = None if count is None else {"prompt_tokens": count, "total_tokens": count}
        model = obj.get("model")
        return embedding_list(vectors, model if isinstance(model, str) else request.model, usage,
                              request.params.get("encoding_format"))

    def _events(self, lines: Iterator[str]) -> Iterator[Event]:
        index = 0
        calls = 0  # tool calls so far: the next one's index
        for line in lines:
            if line is PAUSE:
                yield line  # type: ignore[misc]  # the pump stepped out (streamapp.pausing)
                continue
            if not line.strip():
                continue
            obj = parse_object(line, self.what)
            message = obj.get("message")
            if message is not None and not isinstance(message, dict):
                raise bad_shape(self.what, "message is not an object", line)
            text = message.get("content") if message else None
            if text is not None and len(message) == 2:
                # The hot path, a plain text line: Ollama always sends role and content
                # (api/types.go, no omitempty), and thinking or tool calls as more members.
                if not isinstance(text, str):
                    raise bad_shape(self.what, "message.content is not a string", line)
                if text:
                    yield Delta(text, index)
                    index += 1
            else:
                thought = message.get("thinking") if message else None
                if thought is not None:
                    if not isinstance(thought, str):
                        raise bad_shape(self.what, "message.thinking is not a string", line)
                    if thought:
                        yield Reasoning(thought)
                if text is None:
                    text = obj.get("response")  # /api/generate's shape
                if text is not None and not isinstance(text, str):
                    raise bad_shape(self.what, "message.content is not a string", line)
                if text:
                    yield Delta(text, index)
                    index += 1
                tool_calls = message.get("tool_calls") if message else None
                if tool_calls is not None:
                    for call in self._tool_calls(tool_calls, calls, line):
                        yield call
                        calls += 1
            done = obj.get("done")
            if done is not None and not isinstance(done, bool):
                raise bad_shape(self.what, "done is not a boolean", line)
            if done:
                reason = obj.get("done_reason")
                if reason is not None and not isinstance(reason, str):
                    raise bad_shape(self.what, "done_reason is not a string", line)
                reason = reason or "stop"
                if calls and reason == "stop":  # as Ollama's OpenAI layer: a cut answer stays "length"
                    reason = "tool_calls"
                yield Done(reason, self._usage(obj, line))
                return
        raise UpstreamError(f"{self.what} ended the stream before done: true",
                            code="upstream_cut")

    def _tool_calls(self, calls: object, first: int, line: str) -> list[ToolCall]:
        """Whole Ollama tool calls as ``ToolCall`` events numbered from ``first``,
        each checked before any is used."""
        if not isinstance(calls, list):
            raise bad_shape(self.what, "message.tool_calls is not a list", line)
        out = []
        for index, call in enumerate(calls, first):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                raise bad_shape(self.what, "a tool call has no function object", line)
            name, arguments, call_id = function.get("name"), function.get("arguments"), call.get("id")
            if not isinstance(name, str) or not name:
                raise bad_shape(self.what, "a tool call's function.name is not a string", line)
            if arguments is not None and not isinstance(arguments, dict):
                raise bad_shape(self.what, "a tool call's function.arguments is not an object", line)
            if call_id is not None and not isinstance(call_id, str):
                raise bad_shape(self.what, "a tool call's id is not a string", line)
            out.append(ToolCall(index, call_id or f"call_{secrets.token_hex(12)}", name,
                                json.dumps(arguments or {}, ensure_ascii=False, separators=(",", ":"))))
        return out

    def _usage(self, obj: dict[str, Any], line: str) -> dict[str, int | None] | None:
        """Usage from the last line's counts (one it left out ``None``); ``None`` when it has neither."""
        prompt = token_count(obj, "prompt_eval_count", self.what, line)
        completion = token_count(obj, "eval_count", self.what, line)
        if prompt is None and completion is None:
            return None
        # Ollama leaves a count out when it did not make one (a prompt served from its cache,
        # say): that count stays unknown (None), never a 0 it did not report.
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": None if prompt is None or completion is None else prompt + completion}
