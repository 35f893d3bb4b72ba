"""GET streams (``/stream``, ``/ai-stream``, ``/local-ai``) and the stream API."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app, jsonify, request

from ..auth import require_owner_or_admin
from ..errors import ApiError
from ..models import Resolved
from ..openapi import describe
from ..openapi.models import CancelResult, ResumeQuery, StreamInfo
from ..openapi.parts import GET_STREAM, LAST_EVENT_ID, NO_CONTENT, RESUMED, SID, errors, json_body
from ..providers import ChatRequest
from ..schemas import PromptQuery, StreamQuery, parse
from ..streams import get_manager
from ..usage.record import usage_meta
from ..wire import is_stream_id
from .door import answer
from .model import request_model
from .streaming import requested_resume, resume_if_asked, resume_stream, start_stream

bp = Blueprint("sse", __name__)

DEFAULT_TEXT = "Hello! 你好，世界！This is streamapp, streaming one token at a time."


def _resume_or(route: str, start):
    """Resume the stream of ``route`` named by ``Last-Event-ID``, else call ``start()``."""
    resumed = resume_if_asked(route)
    return start() if resumed is None else resumed


@describe("SSE demo: text one token per event", "streams", GET_STREAM, query=(StreamQuery, ResumeQuery),
          headers=(LAST_EVENT_ID,), description="With `Last-Event-ID` it resumes a `/stream` stream.")
@bp.get("/stream")
def stream() -> Response:
    """SSE demo: ``text`` one token per event every ``delay_ms``."""
    query = parse(StreamQuery, request.args.to_dict())
    config = current_app.config
    delay = query.delay_ms if query.delay_ms is not None else config["STREAM_DEFAULT_DELAY_MS"]
    text = query.text or DEFAULT_TEXT
    if len(text) > config["STREAM_MAX_TEXT"]:
        raise ApiError(f"text must be at most {config['STREAM_MAX_TEXT']} characters", field="text")
    options = {"text": text, "delay_ms": min(delay, config["STREAM_MAX_DELAY_MS"])}
    chat = ChatRequest([{"role": "user", "content": text}], options=options)
    meta = {"route": "stream", "provider": "demo", "model": "demo", **usage_meta(chat.messages, {})}
    return _resume_or("stream", lambda: start_stream(answer(Resolved("demo", "demo", "demo"), chat), "plain",
                                                     meta, query.on_disconnect))


def _prompt_stream(provider_name: str) -> Response:
    def start() -> Response:
        query = parse(PromptQuery, request.args.to_dict())
        resolved = request_model(query.model, provider_name)  # with an upstreams file: a route's kind
        chat = ChatRequest([{"role": "user", "content": query.prompt}], model=resolved.model)
        meta = {"route": provider_name, "provider": resolved.provider, "model": resolved.model,
                "public_model": resolved.public_name, **usage_meta(chat.messages, {})}
        return start_stream(answer(resolved, chat), "plain", meta, query.on_disconnect)
    return _resume_or(provider_name, start)


@describe("The OpenAI-compatible provider as SSE", "streams", GET_STREAM, query=(PromptQuery, ResumeQuery),
          headers=(LAST_EVENT_ID,))
@bp.get("/ai-stream")
def ai_stream() -> Response:
    """The OpenAI provider as SSE, one ``data:`` per delta."""
    return _prompt_stream("openai")


@describe("The Ollama provider as SSE", "streams", GET_STREAM, query=(PromptQuery, ResumeQuery),
          headers=(LAST_EVENT_ID,))
@bp.get("/local-ai")
def local_ai() -> Response:
    """The Ollama provider as SSE, one ``data:`` per delta."""
    return _prompt_stream("ollama")


@describe("Resume a stream in the format it was made in", "stream API",
          {"200": RESUMED, "204": NO_CONTENT, **errors("404", "503")},
          query=(ResumeQuery,), headers=(LAST_EVENT_ID,), path_params=SID)
@bp.get("/api/streams/<sid>")
def resume(sid: str) -> Response:
    """Replay stream ``sid`` after ``Last-Event-ID`` (or from the start), then follow it."""
    point = requested_resume()
    after = point[1] if point and point[0] == sid else 0
    return resume_stream(sid, after)


def _unknown(sid: str) -> ApiError:
    return ApiError(f"no stream {sid}", code="not_found", status=404, field="stream_id")


@describe("A stream's state", "stream API",
          {"200": json_body(StreamInfo, "The stream's state, route, readers, number of events, and the "
                                        "upstream attempts of its start."),
           **errors("404", "503")}, path_params=SID)
@bp.get("/api/streams/<sid>/info")
def info(sid: str) -> Response:
    """A stream's state, reader count, number of events, the upstreams its start tried and, once
    it ended, its usage record."""
    manager = get_manager()
    meta = manager.store.meta(sid) if is_stream_id(sid) else None
    if meta is None:
        raise _unknown(sid)
    require_owner_or_admin(meta)
    return jsonify({"stream_id": sid, "state": meta.get("state"), "route": meta.get("route"),
                    "pid": os.getpid(),  # the worker answering, handy when tracing a stream
                    "readers": manager.store.readers(sid),
                    "events": manager.store.count(sid), "usage": _final_usage(sid, meta),
                    "upstream": meta.get("upstream"), "attempts": meta.get("attempts") or []})


def _final_usage(sid: str, meta: dict) -> dict | None:
    """The usage record of a finished stream (its final event's), else ``None``."""
    last = meta.get("last")
    if meta.get("state") != "finished" or not isinstance(last, int) or last < 1:
        return None
    final = get_manager().store.read(sid, last - 1, 1)
    return getattr(final[0][1], "usage", None) if final else None


@describe("Stop a generation, wherever it runs", "stream API",
          {"200": json_body(CancelResult, "The stream had already ended (`finished`)."),
           "202": json_body(CancelResult, "The producer was asked to stop (`cancelling`)."),
           **errors("404", "503")}, path_params=SID)
@bp.post("/api/streams/<sid>/cancel")
def cancel(sid: str) -> Response:
    """Stop generation of ``sid`` on whichever worker or host runs it."""
    manager = get_manager()
    meta = manager.store.meta(sid) if is_stream_id(sid) else None
    if meta is not None:
        require_owner_or_admin(meta)
    state = manager.cancel(sid) if meta is not None else None
    if state is None:
        raise _unknown(sid)
    resp = jsonify({"stream_id": sid, "status": state})
    resp.status_code = 202 if state == "cancelling" else 200
    return resp
