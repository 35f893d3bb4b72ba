"""Ollama: ``POST {OLLAMA_HOST}/api/chat``, NDJSON, one JSON object per line.

Each line has ``message.content``; the last has ``done: true`` with
``done_reason``, ``prompt_eval_count`` and ``eval_count``. A line with an
``error`` member is a failure. Closing the response stops generation
(ollama #1695).
"""

from __future__ import annotations

from collections.abc import Iterator

import requests

from .. import sse
from ..errors import UpstreamError
from ..events import Delta, Done, Event
from ._http import bad_shape, new_session, parse_object, post_stream, stream_response, token_count
from .base import ChatRequest


class OllamaProvider:
    """Streams ``/api/chat`` from an Ollama server."""

    name = "ollama"
    what = "Ollama upstream"

    def __init__(self, host: str, default_model: str, timeouts: tuple[float, float],
                 session: requests.Session | None = None) -> None:
        self.url = f"{host.rstrip('/')}/api/chat"
        self.default_model = default_model
        self.timeouts = timeouts
        self.session = session or new_session(self.url)

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, ``Delta``s, ``Done``; raise ``UpstreamError``."""
        payload = {"model": request.model or self.default_model,
                   "messages": request.messages, "stream": True}
        resp = post_stream(self.session, self.what, self.url, payload,
                           {"Accept": "application/x-ndjson"}, self.timeouts)
        yield from stream_response(resp, self.what, lambda chunks: self._events(sse.iter_lines(chunks)))

    def _events(self, lines: Iterator[str]) -> Iterator[Event]:
        index = 0
        for line in lines:
            if not line.strip():
                continue
            obj = parse_object(line, self.what)
            message = obj.get("message")
            if message is not None and not isinstance(message, dict):
                raise bad_shape(self.what, "message is not an object", line)
            text = message.get("content") if message else None
            if text is None:
                text = obj.get("response")  # /api/generate's shape
            if text is not None and not isinstance(text, str):
                raise bad_shape(self.what, "message.content is not a string", line)
            if text:
                yield Delta(text, index)
                index += 1
            done = obj.get("done")
            if done is not None and not isinstance(done, bool):
                raise bad_shape(self.what, "done is not a boolean", line)
            if done:
                reason = obj.get("done_reason")
                if reason is not None and not isinstance(reason, str):
                    raise bad_shape(self.what, "done_reason is not a string", line)
                # Ollama leaves a count out when it is 0 (a cached prompt, say).
                prompt = token_count(obj, "prompt_eval_count", self.what, line) or 0
                completion = token_count(obj, "eval_count", self.what, line) or 0
                yield Done(reason or "stop",
                           {"prompt_tokens": prompt, "completion_tokens": completion,
                            "total_tokens": prompt + completion})
                return
        raise UpstreamError(f"{self.what} ended the stream before done: true",
                            code="upstream_disconnected")
