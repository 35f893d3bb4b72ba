"""The one place a stream becomes an HTTP response (not a blueprint).

Before the first byte, a failure is an HTTP error with a JSON body (502, or
504 on an upstream timeout); after it, the stream's final ``event: error``.
Headers are held until the upstream accepted the request and produced a first
token, or ``HEADER_WAIT_S`` after it accepted, whichever comes first.

Resuming follows one rule: a ``Last-Event-ID`` that does not name an event of
a stream made by this route in this format, with events still to come after
it (an id not ours, another route's stream, an expired stream, an id at or past
the end) is answered ``204 No Content``, which tells an ``EventSource`` to stop
reconnecting. It never starts a new generation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gevent.event
from flask import Response, current_app, g, request

from ..auth import require_owner
from ..errors import error_response
from ..events import Event, Failed
from ..limits import acquire_slot
from ..streams import get_manager
from ..wire import Encoder, encoder, is_resumable, is_stream_id, parse_event_id
from .edge import DepartureWatch, http_body

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_TYPE = "text/event-stream; charset=utf-8"


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


def resume_if_asked(route: str) -> Response | None:
    """The answer to a request of ``route`` that carries a ``Last-Event-ID`` (the resume
    rule), or ``None`` when it carries none."""
    point = requested_resume()
    if point is None:
        return None
    if point is False:
        return nothing_to_resume()
    return resume_stream(*point, route=route)


def nothing_to_resume() -> Response:
    """The 204 of the resume rule, typed as SSE (SSE client libraries check the type)."""
    return Response(status=204, content_type=SSE_TYPE)


def _respond(sid: str, after: int, enc: Encoder) -> Response:
    config = current_app.config
    manager = get_manager()
    reader = manager.attach(sid, after, idle=config["HEARTBEAT_S"],
                            leave_at_shutdown=manager.store.shared and enc.resumable)
    body = http_body(reader, enc, write_timeout=config["WRITE_TIMEOUT_S"],
                     sock=request.environ.get("gunicorn.socket"))
    return Response(body, content_type=enc.content_type,
                    headers={**STREAM_HEADERS, "X-Stream-Id": sid})


ErrorBody = Callable[[Failed, dict[str, str]], Response]  # a failure before the first byte, as a response


def json_error(failed: Failed, headers: dict[str, str]) -> Response:
    """Our JSON error body for a failure before the first byte."""
    return error_response(failed.status, failed.code, failed.message, headers=headers)


def _with_client(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the name of the client (API key) starting the stream (resuming,
    inspecting and cancelling it then take the same client: ``auth.require_owner``) and
    the id of the request that started it (``X-Request-ID``), for the logs."""
    client = g.get("client")
    out = {**meta, "request_id": g.get("request_id")}
    if client is not None:
        out["client"] = client.name
    return out


def launch(events: Iterator[Event], meta: dict[str, Any], on_disconnect: str = "cancel") -> str:
    """Start a generation for the current client, in one of its stream slots; its id.

    429 (``TooManyStreams``) over a concurrent-stream cap; the slot is given back when the
    producer exits, however the stream ends."""
    slot = acquire_slot()
    return get_manager().start(events, _with_client(meta), on_disconnect, on_exit=slot.release)


def start_stream(events: Iterator[Event], fmt: str, meta: dict[str, Any],
                 on_disconnect: str = "cancel", fail: ErrorBody = json_error) -> Response:
    """Start a generation in wire format ``fmt`` and answer with its stream (or its early
    failure, shaped by ``fail``).

    ``HEAD`` gets the headers a ``GET`` would and starts nothing.
    """
    config = current_app.config
    if fmt == "chat" and wants_text():
        fmt = "text"
    meta = _with_client({**meta, "format": fmt})
    enc = encoder(fmt, config["RETRY_MS"], meta)
    if request.method == "HEAD":
        return Response(status=200, content_type=enc.content_type, headers=STREAM_HEADERS)
    manager = get_manager()
    sid = launch(events, meta, on_disconnect)
    limit = config["CONNECT_TIMEOUT_S"] + config["READ_TIMEOUT_S"] + 5
    client_gone = gevent.event.Event()
    sock = request.environ.get("gunicorn.socket")
    watch = DepartureWatch(sock, client_gone.set) if sock is not None else None
    try:
        with manager.holding(sid):
            first = manager.first_event(sid, config["HEADER_WAIT_S"], limit, client_gone)
    finally:
        if watch is not None:
            watch.stop()
    if client_gone.is_set():
        manager.abandon(sid)  # it never learnt the stream id, so it cannot resume
        return Response(status=204)
    if first is None:
        manager.cancel(sid)
        first = Failed("upstream_timeout", "the upstream did not answer in time", 504)
    if isinstance(first, Failed):
        return fail(first, {"X-Stream-Id": sid})
    return _respond(sid, 0, enc)


def has_more(sid: str, meta: dict[str, Any], after: int) -> bool:
    """Whether stream ``sid`` (metadata ``meta``) has, or will have, events after ``after``."""
    if meta.get("state") != "finished":
        return True
    last = meta.get("last")
    return after < int(last) if last is not None else bool(get_manager().store.read(sid, after, 1))


def resume_stream(sid: str, after: int, route: str | None = None) -> Response:
    """Continue stream ``sid`` after event ``after`` in the format it was made in.

    With ``route``, only a stream that route made. 204 by the resume rule.
    """
    store = get_manager().store
    meta = store.meta(sid) if is_stream_id(sid) else None
    if meta is None or (route is not None and meta.get("route") != route):
        return nothing_to_resume()
    require_owner(meta)  # 403: another client's stream
    fmt = meta.get("format", "plain")
    if not is_resumable(fmt):
        if route is not None:
            return nothing_to_resume()  # its client never had ids to resume with
        after = 0  # the stream API replays a text stream whole
    if not has_more(sid, meta, after):
        return nothing_to_resume()
    get_manager().resumed(sid, meta)
    return _respond(sid, after, encoder(fmt, current_app.config["RETRY_MS"], meta))


def collect_stream(events: Iterator[Event], meta: dict[str, Any],
                   on_disconnect: str = "cancel") -> tuple[str, list[Event]]:
    """Start a generation and read it whole in this request (a non-streaming answer).

    The request is the stream's reader: a client that leaves is a departure like any
    other (``on_disconnect`` applies), and what was read so far is returned.
    """
    config = current_app.config
    manager = get_manager()
    sid = launch(events, meta, on_disconnect)
    reader = manager.attach(sid, 0, idle=config["HEARTBEAT_S"])
    sock = request.environ.get("gunicorn.socket")
    watch = DepartureWatch(sock, reader.leave) if sock is not None else None
    got: list[Event] = []
    try:
        for batch in reader:
            got.extend(event for _, event in batch)
    finally:
        if watch is not None:
            watch.stop()
            reader.join_departure()
        reader.close()
    manager.published(sid)  # its id goes out with the answer
    return sid, got
