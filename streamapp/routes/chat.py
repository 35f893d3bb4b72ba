"""``POST /api/chat``: a chat answer as SSE JSON deltas or chunked text."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from ..failover import Failover
from ..limits import check_chat_input
from ..openapi import describe
from ..openapi.models import ChatFormatQuery, ResumeQuery
from ..openapi.parts import CHAT_ANSWER, LAST_EVENT_ID, NO_CONTENT, errors
from ..providers import ChatRequest
from ..schemas import ChatBody, parse
from ..usage.record import usage_meta
from .body import read_json_body
from .door import answer
from .model import request_model
from .streaming import resume_if_asked, start_stream

bp = Blueprint("chat", __name__)


def chat_events(body: ChatBody) -> tuple[dict[str, Any], Failover]:
    """The stream metadata (``provider``, ``model``, ``uid``) and the events of the model's
    answer to ``body`` (input limits checked: ``ApiError`` naming the field). Shared by
    ``POST /api/chat`` and WebSocket chats. Without ``provider``, ``model`` names one as on ``/v1``."""
    resolved = request_model(body.model, body.provider)
    name, model = resolved.provider, resolved.model
    params = {"max_tokens": body.max_tokens} if body.max_tokens is not None else {}
    check_chat_input("history", [*((f"history.{i}.content", m.content) for i, m in enumerate(body.history)),
                                 ("message", body.message)], name, model, params)
    messages = [m.model_dump() for m in body.history]
    messages.append({"role": "user", "content": body.message})
    meta = {"uid": body.uid, "provider": name, "model": model, "public_model": resolved.public_name,
            **usage_meta(messages, params)}
    return meta, answer(resolved, ChatRequest(messages, model=model, params=params))


@describe("Stream a chat answer", "streams",
          {"200": CHAT_ANSWER, "204": NO_CONTENT,
           **errors("400", "404", "408", "413", "415", "429", "502", "503", "504")},
          description="With `Last-Event-ID` (header) or `last_event_id` (query) it resumes a chat stream "
                      "instead, and takes no body.",
          query=(ChatFormatQuery, ResumeQuery), body=ChatBody, headers=(LAST_EVENT_ID,),
          example={"uid": 1, "message": "Hi there"})
@bp.post("/api/chat")
def chat() -> Response:
    """Stream an answer to ``message`` (after ``history``) from ``provider``."""
    resumed = resume_if_asked("chat")
    if resumed is not None:
        return resumed
    body = parse(ChatBody, read_json_body())
    meta, events = chat_events(body)
    return start_stream(events, "chat", {"route": "chat", **meta}, body.on_disconnect)
