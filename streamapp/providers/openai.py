"""OpenAI-compatible upstreams: ``POST {base}/chat/completions`` with ``stream: true``.

The body is SSE (decoded by ``streamapp.sse``); each ``data:`` is a
``chat.completion.chunk`` JSON object until ``data: [DONE]``. An event whose
JSON has an ``error`` member is an in-band failure. With
``stream_options.include_usage`` the last chunk before ``[DONE]`` carries usage
and no choices. Shapes: openai-python ``types/chat/chat_completion_chunk.py``
and ``types/completion_usage.py``.

A chunk's ``delta`` becomes events: ``content`` a ``Delta``;
``reasoning_content`` (vLLM, DeepSeek, LM Studio) or ``reasoning`` (OpenRouter,
Ollama's compatibility layer) a ``Reasoning``; each ``tool_calls[]`` entry a
``ToolCall`` fragment as given (``index``, ``id``/``name`` on a call's first
fragment, a piece of ``arguments``).

Embeddings: ``POST {base}/embeddings`` with the client's fields as they are (``input`` a
string, strings or token ids; ``encoding_format``, ``dimensions``, ``user``); of the answer
only the vectors (floats or base64), their indexes and the counts are kept, each checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import requests

from .. import sse
from ..errors import UpstreamError
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
from .base import ChatRequest, EmbedRequest
from .embedding import check_vector

_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")
_DETAILS = ("prompt_tokens_details", "completion_tokens_details")


class OpenAIProvider:
    """Streams chat completions from any OpenAI-compatible server."""

    name = "openai"
    what = "OpenAI upstream"

    def __init__(self, base_url: str, api_key: str, default_model: str,
                 timeouts: tuple[float, float], session: requests.Session | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.embed_url = f"{base_url.rstrip('/')}/embeddings"
        self.api_key = api_key
        self.default_model = default_model
        self.timeouts = timeouts
        self.session = session or new_session(self.url)

    def check(self) -> str | None:
        """``None`` if the upstream answers ``GET /models`` with our key, else why not."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        return probe(self.session, self.url.rsplit("/chat/completions", 1)[0] + "/models", headers)

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, the answer's events, ``Done``; raise ``UpstreamError``.

        ``request.messages`` and ``request.params`` go to the upstream as they are:
        both are already in OpenAI's shape.
        """
        payload = {
            **request.params,
            "model": request.model or self.default_model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Accept": "text/event-stream", **self._auth()}
        resp = post_stream(self.session, self.what, self.url, payload, headers, self.timeouts)
        del request, payload  # sent: the conversation is not kept while the answer streams
        yield from stream_response(resp, self.what, lambda chunks: self._events(sse.iter_events(chunks)))

    def _auth(self) -> dict[str, str]:
        """The ``Authorization`` header, if we have a key (api.openai.com without one: ``UpstreamError``)."""
        if not self.api_key and "api.openai.com" in self.url:
            raise UpstreamError("OPENAI_API_KEY is not set, so api.openai.com will refuse the request",
                                code="upstream_auth")
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """The upstream's embedding list for ``request``, passed on as is; raise ``UpstreamError``."""
        payload = {**request.params, "model": request.model, "input": request.input}
        obj, text = post_json(self.session, self.what, self.embed_url, payload, self._auth(), self.timeouts)
        data = obj.get("data")
        if not isinstance(data, list):
            raise bad_shape(self.what, "data is not a list", text)
        out = []
        for item in data:
            if not isinstance(item, dict):
                raise bad_shape(self.what, "an embedding is not an object", text)
            index, vector = item.get("index"), item.get("embedding")
            if type(index) is not int or index < 0:  # not isinstance: a bool is an int too
                raise bad_shape(self.what, "an embedding's index is not an integer", text)
            check_vector(vector, self.what, text, encoded=True)
            out.append({"object": "embedding", "index": index, "embedding": vector})
        model = obj.get("model")
        answer: dict[str, Any] = {"object": "list", "data": out,
                                  "model": model if isinstance(model, str) else request.model}
        counts = obj.get("usage")
        if counts is not None:
            if not isinstance(counts, dict):
                raise bad_shape(self.what, "usage is not an object", text)
            usage = {key: value for key in ("prompt_tokens", "total_tokens")
                     if (value := token_count(counts, key, self.what, text)) is not None}
            if len(usage) == 2:  # OpenAI's usage has both; part of it is passed on as none
                answer["usage"] = usage
        return answer

    def _events(self, events: Iterator[sse.ServerSentEvent]) -> Iterator[Event]:
        index = 0
        finish_reason: str | None = None
        usage: dict[str, Any] | None = None  # None until a usage chunk: unknown, never zeros
        try:
            for event in events:
                if event is PAUSE:
                    yield event  # type: ignore[misc]  # the pump stepped out (streamapp.pausing)
                    continue
                if event.data == "[DONE]":
                    yield Done(finish_reason or "stop", usage)
                    return
                if not event.data:
                    continue
                chunk = parse_object(event.data, self.what)
                counts = chunk.get("usage")
                if counts is not None:
                    usage = self._usage(counts, event.data) or usage
                choices = chunk.get("choices")
                if choices is None:
                    continue
                if not isinstance(choices, list):
                    raise bad_shape(self.what, "choices is not a list", event.data)
                for choice in choices:
                    if not isinstance(choice, dict):
                        raise bad_shape(self.what, "a choice is not an object", event.data)
                    delta = choice.get("delta")
                    if delta is not None:
                        if not isinstance(delta, dict):
                            raise bad_shape(self.what, "delta is not an object", event.data)
                        text = delta.get("content")
                        if text is not None and len(delta) == 1:  # the hot path: a plain text delta
                            if not isinstance(text, str):
                                raise bad_shape(self.what, "delta.content is not a string", event.data)
                            if text:
                                yield Delta(text, index)
                                index += 1
                        else:  # the first (with role), reasoning, tool calls, the last
                            thought = delta.get("reasoning_content")
                            if thought is None:
                                thought = delta.get("reasoning")
                            if thought is not None:
                                if not isinstance(thought, str):
                                    raise bad_shape(self.what, "delta reasoning is not a string", event.data)
                                if thought:
                                    yield Reasoning(thought)
                            if text is not None and not isinstance(text, str):
                                raise bad_shape(self.what, "delta.content is not a string", event.data)
                            if text:
                                yield Delta(text, index)
                                index += 1
                            calls = delta.get("tool_calls")
                            if calls is not None:
                                yield from self._tool_calls(calls, event.data)
                    reason = choice.get("finish_reason")
                    if reason is not None and not isinstance(reason, str):
                        raise bad_shape(self.what, "finish_reason is not a string", event.data)
                    finish_reason = reason or finish_reason
        except UpstreamError as exc:  # cut, or a bad chunk, after the usage chunk: its counts kept
            if exc.usage is None:
                exc.usage = usage
            raise
        raise UpstreamError(f"{self.what} ended the stream without [DONE]",
                            code="upstream_cut", usage=usage)

    def _tool_calls(self, calls: object, text: str) -> list[ToolCall]:
        """One ``ToolCall`` per ``delta.tool_calls[]`` entry, each checked before any is used."""
        if not isinstance(calls, list):
            raise bad_shape(self.what, "delta.tool_calls is not a list", text)
        out = []
        for call in calls:
            if not isinstance(call, dict):
                raise bad_shape(self.what, "a tool call is not an object", text)
            index = call.get("index")
            if type(index) is not int or index < 0:  # not isinstance: a bool is an int too
                raise bad_shape(self.what, "a tool call's index is not an integer", text)
            call_id, function = call.get("id"), call.get("function")
            if call_id is not None and not isinstance(call_id, str):
                raise bad_shape(self.what, "a tool call's id is not a string", text)
            name = arguments = None
            if function is not None:
                if not isinstance(function, dict):
                    raise bad_shape(self.what, "a tool call's function is not an object", text)
                name, arguments = function.get("name"), function.get("arguments")
                if name is not None and not isinstance(name, str):
                    raise bad_shape(self.what, "a tool call's function.name is not a string", text)
                if arguments is not None and not isinstance(arguments, str):
                    raise bad_shape(self.what, "a tool call's function.arguments is not a string", text)
            out.append(ToolCall(index, call_id or None, name or None, arguments or ""))
        return out

    def _usage(self, counts: object, text: str) -> dict[str, Any]:
        """The integer members of ``usage`` and of its ``*_tokens_details`` objects
        (``cached_tokens``, ``reasoning_tokens`` ...); the three standard counts must be counts."""
        if not isinstance(counts, dict):
            raise bad_shape(self.what, "usage is not an object", text)
        for key in _COUNTS:
            token_count(counts, key, self.what, text)
        usage: dict[str, Any] = {k: v for k, v in counts.items() if type(v) is int}
        for key in _DETAILS:
            details = counts.get(key)
            if isinstance(details, dict):
                kept = {k: v for k, v in details.items() if type(v) is int}
                if kept:
                    usage[key] = kept
        return usage
