"""OpenAI-compatible upstreams: ``POST {base}/chat/completions`` with ``stream: true``.

The body is SSE (decoded by ``streamapp.sse``); each ``data:`` is a
``chat.completion.chunk`` JSON object until ``data: [DONE]``. An event whose
JSON has an ``error`` member is an in-band failure. With
``stream_options.include_usage`` the last chunk before ``[DONE]`` carries usage
and no choices.
"""

from __future__ import annotations

from collections.abc import Iterator

import requests

from .. import sse
from ..errors import UpstreamError
from ..events import Delta, Done, Event
from ._http import bad_shape, new_session, parse_object, post_stream, stream_response, token_count
from .base import ChatRequest

_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


class OpenAIProvider:
    """Streams chat completions from any OpenAI-compatible server."""

    name = "openai"
    what = "OpenAI upstream"

    def __init__(self, base_url: str, api_key: str, default_model: str,
                 timeouts: tuple[float, float], session: requests.Session | None = None) -> None:
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        self.api_key = api_key
        self.default_model = default_model
        self.timeouts = timeouts
        self.session = session or new_session(self.url)

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, ``Delta``s, ``Done``; raise ``UpstreamError``."""
        payload = {
            "model": request.model or self.default_model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"Accept": "text/event-stream"}
        if not self.api_key and "api.openai.com" in self.url:
            raise UpstreamError("OPENAI_API_KEY is not set, so api.openai.com will refuse the request",
                                code="upstream_auth")
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        resp = post_stream(self.session, self.what, self.url, payload, headers, self.timeouts)
        yield from stream_response(resp, self.what, lambda chunks: self._events(sse.iter_events(chunks)))

    def _events(self, events: Iterator[sse.ServerSentEvent]) -> Iterator[Event]:
        index = 0
        finish_reason: str | None = None
        usage: dict[str, int] = {}
        for event in events:
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
                    if text is not None and not isinstance(text, str):
                        raise bad_shape(self.what, "delta.content is not a string", event.data)
                    if text:
                        yield Delta(text, index)
                        index += 1
                reason = choice.get("finish_reason")
                if reason is not None and not isinstance(reason, str):
                    raise bad_shape(self.what, "finish_reason is not a string", event.data)
                finish_reason = reason or finish_reason
        raise UpstreamError(f"{self.what} ended the stream without [DONE]",
                            code="upstream_disconnected")

    def _usage(self, counts: object, text: str) -> dict[str, int]:
        """The integer members of ``usage``; the three standard counts must be counts."""
        if not isinstance(counts, dict):
            raise bad_shape(self.what, "usage is not an object", text)
        for key in _COUNTS:
            token_count(counts, key, self.what, text)
        return {k: v for k, v in counts.items() if type(v) is int}
