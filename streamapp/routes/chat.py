"""``POST /api/chat``: a chat answer as SSE JSON deltas or chunked text."""

from __future__ import annotations

import json

from flask import Blueprint, Response, current_app, request

from ..errors import ApiError
from ..providers import ChatRequest
from ..schemas import ChatBody, parse
from .streaming import nothing_to_resume, requested_resume, resume_stream, start_stream

bp = Blueprint("chat", __name__)


def _json_body() -> object:
    if not request.is_json:
        raise ApiError("Content-Type must be application/json", code="unsupported_media_type",
                       status=415)
    raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ApiError(f"malformed JSON: {exc}", code="malformed_json") from None


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
