"""``POST /api/chat``: a chat answer as SSE JSON deltas or chunked text."""

from __future__ import annotations

import gevent
from flask import Blueprint, Response, current_app, request

from ..errors import ApiError, BodyRefused
from ..providers import ChatRequest
from ..schemas import ChatBody, load_json, parse
from .streaming import nothing_to_resume, requested_resume, resume_stream, start_stream

bp = Blueprint("chat", __name__)


def _read_body() -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` (else 413), within ``BODY_TIMEOUT_S`` (else 408).

    Read from the WSGI input itself: werkzeug's limit cuts a chunked body (no
    Content-Length) short without a word. The time limit is for the whole body,
    so a client trickling bytes cannot hold the connection either.
    """
    config = current_app.config
    limit, length = config["MAX_BODY_BYTES"], request.content_length
    too_large = BodyRefused(f"the body is larger than {limit} bytes (MAX_BODY_BYTES)")
    if length is not None and length > limit:
        raise too_large
    if length is None and not request.environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not end the input: no body (PEP 3333)
    seconds = config["BODY_TIMEOUT_S"]
    timer = gevent.Timeout(seconds if seconds > 0 else None)
    timer.start()
    try:
        raw = request.environ["wsgi.input"].read(limit + 1 if length is None else length)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise BodyRefused(f"the body did not arrive within {seconds:g} s", code="request_timeout",
                          status=408) from None
    finally:
        timer.close()
    if len(raw) > limit:
        raise too_large
    if length is not None and len(raw) < length:
        raise ApiError("the body ended before its Content-Length", code="incomplete_body")
    return raw


def _json_body() -> object:
    if not request.is_json:
        raise ApiError("Content-Type must be application/json", code="unsupported_media_type",
                       status=415)
    return load_json(_read_body())


@bp.post("/api/chat")
def chat() -> Response:
    """Stream an answer to ``message`` (after ``history``) from ``provider``."""
    point = requested_resume()
    if point is False:
        return nothing_to_resume()
    if point is not None:
        return resume_stream(*point, route="chat")
    body = parse(ChatBody, _json_body())
    name = body.provider or current_app.config["DEFAULT_PROVIDER"]
    provider = current_app.extensions["providers"][name]
    messages = [m.model_dump() for m in body.history]
    messages.append({"role": "user", "content": body.message})
    request_ = ChatRequest(messages, model=body.model)
    return start_stream(provider.stream(request_), "chat",
                        {"route": "chat", "uid": body.uid, "provider": name}, body.on_disconnect)
