"""The one place a stream becomes an HTTP response (not a blueprint).

Before the first byte, a failure is an HTTP error with a JSON body (502, or
504 on an upstream timeout); after it, the stream's final ``event: error``.
Headers are held until the upstream accepted the request and produced a first
token, or ``HEADER_WAIT_S`` after it accepted, whichever comes first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gevent.event
from flask import Response, current_app, request, stream_with_context

from ..errors import error_response
from ..events import Event, Failed
from ..streams import get_manager
from ..streams.consumer import DepartureWatch, consume
from ..wire import SSEEncoder, TextEncoder, is_stream_id, parse_event_id

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wants_text() -> bool:
    """``?format=text`` or an ``Accept`` that prefers ``text/plain`` over SSE."""
    if request.args.get("format") == "text":
        return True
    best = request.accept_mimetypes.best_match(["text/event-stream", "text/plain"])
    return best == "text/plain" and request.accept_mimetypes["text/plain"] > \
        request.accept_mimetypes["text/event-stream"]


def requested_resume() -> tuple[str, int] | None | bool:
    """The ``(stream_id, seq)`` a client asks to resume from.

    ``None`` when it asks for nothing; ``False`` when its id is not one of ours.
    """
    value = request.headers.get("Last-Event-ID") or request.args.get("last_event_id")
    if not value:
        return None
    return parse_event_id(value) or False


def _respond(sid: str, after: int, encoder: SSEEncoder | TextEncoder) -> Response:
    config = current_app.config
    body = consume(get_manager(), sid, after, encoder,
                   heartbeat=config["HEARTBEAT_S"], write_timeout=config["WRITE_TIMEOUT_S"],
                   sock=request.environ.get("gunicorn.socket"))
    resp = Response(stream_with_context(body), content_type=encoder.content_type,
                    headers={**STREAM_HEADERS, "X-Stream-Id": sid})
    return resp


def start_stream(events: Iterator[Event], flavor: str, meta: dict[str, Any]) -> Response:
    """Start a generation and answer with its stream (or its early failure)."""
    config = current_app.config
    text = flavor == "chat" and wants_text()
    manager = get_manager()
    sid = manager.start(events, {**meta, "flavor": flavor})
    limit = config["CONNECT_TIMEOUT_S"] + config["READ_TIMEOUT_S"] + 5
    client_gone = gevent.event.Event()
    sock = request.environ.get("gunicorn.socket")
    watch = DepartureWatch(sock, client_gone.set) if sock is not None else None
    try:
        first = manager.first_event(sid, config["HEADER_WAIT_S"], limit, client_gone)
    finally:
        if watch is not None:
            watch.stop()
    if client_gone.is_set():
        manager.abandon(sid)  # it never learnt the stream id, so it cannot resume
        return Response(status=204)
    if isinstance(first, Failed):
        return error_response(first.status, first.code, first.message,
                              headers={"X-Stream-Id": sid})
    if first is None:
        manager.cancel(sid)
        return error_response(504, "upstream_timeout", "the upstream did not answer in time",
                              headers={"X-Stream-Id": sid})
    encoder = TextEncoder() if text else SSEEncoder(flavor, config["RETRY_MS"])
    return _respond(sid, 0, encoder)


def resume_stream(sid: str, after: int) -> Response:
    """Continue stream ``sid`` after event ``after``; 204 if it is unknown or expired."""
    store = get_manager().store
    meta = store.meta(sid) if is_stream_id(sid) else None
    if meta is None or (meta.get("state") == "finished" and not store.read(sid, after)):
        return Response(status=204)  # nothing to resume: an EventSource stops reconnecting
    return _respond(sid, after, SSEEncoder(meta.get("flavor", "plain"),
                                           current_app.config["RETRY_MS"]))
