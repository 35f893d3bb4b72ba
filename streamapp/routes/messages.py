"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

The official SDKs (and Claude Code) use it unmodified: point their base URL at
``http://host:port`` (the SDK adds ``/v1/messages``), the key as ``x-api-key`` or a bearer
token; ``anthropic-version`` and ``anthropic-beta`` are accepted. ``model`` picks the provider
as on ``/v1/chat/completions`` (the app's one resolver), and keys' model lists, input limits,
rate limits, stream caps, metrics and logs are the same. The request is mapped onto the one
provider request (``messages.mapper``); streaming answers are Anthropic's events
(``messages.encoder``) on the one stream lifecycle: ``X-Stream-Id``, an SSE id per event group
(resume with ``Last-Event-ID`` on this route, or ``GET /api/streams/<id>``). Non-streaming
answers are the same stream collected into one ``message``. Errors are Anthropic's
``{"type": "error", "error": {"type", "message"}}`` with its statuses (``errors.error_response``).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..errors import error_response
from ..events import Done, Failed
from ..limits import check_chat_input
from ..messages import encoder as _encoder  # noqa: F401 - registers the "messages" wire format
from ..messages.docs import COUNT_RESPONSES, HEADERS, MESSAGES_RESPONSES
from ..messages.mapper import chat_messages, chat_request, estimate_tokens, input_texts
from ..messages.objects import message
from ..messages.schemas import CountTokensRequest, MessagesRequest
from ..openapi import describe
from ..providers import ChatRequest
from ..schemas import parse
from ..usage.record import usage_meta
from .body import read_json_body
from .door import answer
from .model import request_model
from .streaming import collect_stream, failure_headers, resume_if_asked, start_stream

bp = Blueprint("messages", __name__, url_prefix="/v1/messages")
ROUTE = "messages"


def _fail(failed: Failed, headers: dict[str, str]) -> Response:
    """A failure before the first byte, Anthropic-shaped; an upstream 404 (an unknown model) stays a 404."""
    status = 404 if failed.upstream_status == 404 else failed.status
    return error_response(status, failed.code, failed.message, headers=headers)


@describe("Anthropic Messages API", "anthropic", MESSAGES_RESPONSES,
          description="`model` picks the provider: `demo`, `openai/<model>`, `ollama/<model>`, or a bare "
                      "name for the default provider; with an upstreams file, a route's name or `demo`. "
                      "`max_tokens` is required. With `Last-Event-ID` it "
                      "resumes a Messages stream. Errors are in Anthropic's shape.",
          body=MessagesRequest, headers=HEADERS,
          example={"model": "demo", "max_tokens": 256, "messages": [{"role": "user", "content": "Hi there"}],
                   "stream": True})
@bp.post("")
def messages() -> Response:
    """A message, streamed (``stream: true``) or whole."""
    resumed = resume_if_asked(ROUTE)
    if resumed is not None:
        return resumed
    body = parse(MessagesRequest, read_json_body())
    resolved = request_model(body.model)
    name, model = resolved.provider, resolved.model
    check_chat_input("messages", input_texts(body), name, model, {"max_tokens": body.max_tokens})
    chat = chat_request(body, model)
    meta: dict[str, Any] = {"route": ROUTE, "provider": name, "model": body.model,
                            **usage_meta(chat.messages, chat.params)}
    if body.stream:
        return start_stream(answer(resolved, chat), "messages", meta, body.on_disconnect, fail=_fail)
    sid, events = collect_stream(answer(resolved, chat), {**meta, "format": "messages"}, body.on_disconnect)
    end = events[-1] if events else Failed("client_gone", "the client left", 499)
    if isinstance(end, Failed):
        return _fail(end, failure_headers(sid, end))
    resp = jsonify(message(sid, body.model, events))
    resp.headers["X-Stream-Id"] = sid
    return resp


def _provider_count(name: str, body: CountTokensRequest) -> int | None:
    """The provider's own count of the input, where it has one: the demo's (what its answer would
    report as ``prompt_tokens``); the OpenAI and Ollama chat APIs have no count endpoint."""
    if name != "demo":
        return None
    provider = current_app.extensions["providers"][name]
    for event in provider.stream(ChatRequest(chat_messages(body), options={"delay_ms": 0})):
        if isinstance(event, Done) and event.usage:
            return int(event.usage["prompt_tokens"])
    return None


@describe("Count a Messages request's input tokens", "anthropic", COUNT_RESPONSES,
          description="The upstream's own count where it has one (the demo's), else an estimate: the "
                      "input's UTF-8 bytes over 4, plus 4 per turn. Starts no generation.",
          body=CountTokensRequest,
          example={"model": "demo", "messages": [{"role": "user", "content": "Hi there"}]})
@bp.post("/count_tokens")
def count_tokens() -> Response:
    """The input tokens of a Messages request."""
    body = parse(CountTokensRequest, read_json_body())
    resolved = request_model(body.model)
    count = _provider_count(resolved.provider, body)
    return jsonify({"input_tokens": estimate_tokens(body) if count is None else count})
