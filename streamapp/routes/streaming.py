"""The HTTP front doors' edge of the stream lifecycle: a stream as an HTTP response (not a blueprint).

Before the first byte, a failure is an HTTP error with a JSON body (502, or
504 on an upstream timeout); after it, the stream's final ``event: error``.
Headers are held until the upstream accepted the request and produced a first
token, or ``HEADER_WAIT_S`` after it accepted, whichever comes first.

A stream is admitted (the key's token budget, the circuits: ``door.admit``) before it takes a
slot: a refusal is an HTTP error at once, never after a wait in the queue. A stream that
waits for a slot at a full cap (``QUEUE_WAIT_S``) holds its headers too,
except an SSE one still waiting after a second: it is answered 200 then, gets a comment
each second while it waits, and an ``error`` event ``too_many_streams`` when the wait runs
out; a failure before its first token is then its stream's ``error`` event as well.

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
from flask import Response, current_app, request, stream_with_context

from .. import sse
from ..errors import ApiError, StoreError, TooManyStreams, error_response, retry_after_header
from ..events import Event, Failed
from ..failover import Failover
from ..queue import Ticket
from ..slots import Slot
from ..streams import get_lifecycle
from ..wire import Encoder, encoder, parse_event_id
from .door import LeftQueue, admit, client_meta, find, give_up, launch, refuse, take_slot, wait_slot
from .edge import DepartureWatch, http_body

STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_TYPE = "text/event-stream; charset=utf-8"
QUEUED_COMMENT_S = 1.0  # an SSE stream waiting for a slot gets a comment this often


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


def stream_response(sid: str, after: int, enc: Encoder) -> Response:
    """Stream ``sid`` after event ``after`` through ``enc`` as this request's response body.

    An encoder that ``replays`` (it keeps state across events) is fed the log from the
    start; what it writes up to ``after`` is dropped."""
    quiet = after if getattr(enc, "replays", False) else 0
    reader = get_lifecycle().follow(sid, after - quiet, resumable=enc.resumable)
    body = http_body(reader, enc, write_timeout=current_app.config["WRITE_TIMEOUT_S"],
                     sock=request.environ.get("gunicorn.socket"), quiet_until=quiet)
    return Response(body, content_type=enc.content_type,
                    headers={**STREAM_HEADERS, "X-Stream-Id": sid})


ErrorBody = Callable[[Failed, dict[str, str]], Response]  # a failure before the first byte, as a response


def failure_headers(sid: str, failed: Failed) -> dict[str, str]:
    """The headers of a failure before the first byte: the stream's id, and the upstream's
    ``Retry-After`` when it gave one (an upstream's 429 is a 429 with it)."""
    return {"X-Stream-Id": sid, **retry_after_header(failed.retry_after, failed.status)}


def json_error(failed: Failed, headers: dict[str, str]) -> Response:
    """Our JSON error body for a failure before the first byte."""
    return error_response(failed.status, failed.code, failed.message, headers=headers)


def _watch_departure(on_gone: Callable[[], None]) -> DepartureWatch | None:
    sock = request.environ.get("gunicorn.socket")
    return DepartureWatch(sock, on_gone) if sock is not None else None


def start_stream(events: Failover, fmt: str, meta: dict[str, Any],
                 on_disconnect: str = "cancel", fail: ErrorBody = json_error) -> Response:
    """Start a generation in wire format ``fmt`` and answer with its stream (or its early
    failure, shaped by ``fail``).

    ``HEAD`` gets the headers a ``GET`` would and starts nothing.
    """
    config = current_app.config
    if fmt == "chat" and wants_text():
        fmt = "text"
    meta = client_meta({**meta, "format": fmt})
    enc = encoder(fmt, config["RETRY_MS"], meta)
    if request.method == "HEAD":
        return Response(status=200, content_type=enc.content_type, headers=STREAM_HEADERS)
    meta = admit(events, meta)  # 429 (a token budget), 503 (circuits) at once: before any slot
    client_gone = gevent.event.Event()
    watch = _watch_departure(client_gone.set)
    try:
        try:
            taken = take_slot(on_disconnect)
            if isinstance(taken, Ticket):
                slot = taken.wait(QUEUED_COMMENT_S, client_gone)
                if slot is None and enc.content_type == SSE_TYPE and watch is not None \
                        and not client_gone.is_set() and not taken.expired:
                    body = _queued_body(taken, lambda got: launch(events, meta, on_disconnect, slot=got,
                                                                  admitted=True),
                                        enc, watch, client_gone, lambda: refuse(events, meta))
                    watch = None  # the body watches the client now
                    return Response(stream_with_context(body), content_type=enc.content_type,
                                    headers=STREAM_HEADERS)
                taken = slot if slot is not None else wait_slot(taken, client_gone)
        except BaseException:
            refuse(events, meta)  # no slot: the stream never starts
            raise
        sid = launch(events, meta, on_disconnect, slot=taken, admitted=True)
        first = get_lifecycle().decide(sid, client_gone)
    except LeftQueue:
        return Response(status=204)  # the client left while its stream waited: nothing started
    finally:
        if watch is not None:
            watch.stop()
    if first is None:
        return Response(status=204)  # the client left before it learnt the stream id
    if isinstance(first, Failed):
        return fail(first, failure_headers(sid, first))
    return stream_response(sid, 0, enc)


def _queued_body(ticket: Ticket, start: Callable[[Slot], str], enc: Encoder, watch: DepartureWatch,
                 gone: gevent.event.Event, refuse: Callable[[], None]) -> Iterator[bytes]:
    """An SSE stream that waits for its slot: a comment each second, then the stream, or the
    ``error`` event ``too_many_streams`` when the wait runs out. A client that leaves
    meanwhile leaves the queue. A stream that gets no slot gives back what its admission
    took (``refuse``)."""
    slot = None
    try:
        yield sse.comment("queued: waiting for a stream slot")
        while (slot := ticket.wait(QUEUED_COMMENT_S, gone)) is None:
            if gone.is_set() or ticket.expired:
                try:
                    give_up(ticket, gone)
                except LeftQueue:
                    return
                except TooManyStreams as exc:
                    yield enc.event("", 0, Failed(exc.code, exc.message, exc.status), True)
                    return
            yield sse.comment("queued: waiting for a stream slot")
    finally:
        watch.stop()
        if slot is None:
            ticket.leave("left")  # closed by the server: idempotent after give_up
            refuse()
    try:
        sid = start(slot)
    except (ApiError, StoreError) as exc:  # refused once its turn came (a circuit opened): the 200 is out
        yield enc.event("", 0, Failed(exc.code, exc.message, exc.status), True)
        return
    lifecycle = get_lifecycle()
    lifecycle.publish(sid)
    reader = lifecycle.follow(sid, 0, resumable=enc.resumable)
    yield from http_body(reader, enc, write_timeout=current_app.config["WRITE_TIMEOUT_S"],
                         sock=request.environ.get("gunicorn.socket"))


def resume_stream(sid: str, after: int, route: str | None = None) -> Response:
    """Continue stream ``sid`` after event ``after`` in the format it was made in.

    With ``route``, only a stream that route made. 204 by the resume rule.
    """
    found = find(sid, after, route)
    if found is None:
        return nothing_to_resume()
    return stream_response(sid, found.after, encoder(found.fmt, current_app.config["RETRY_MS"], found.meta))


def collect_stream(events: Failover, meta: dict[str, Any],
                   on_disconnect: str = "cancel") -> tuple[str, list[Event]]:
    """Start a generation and read it whole in this request (a non-streaming answer).

    The request is the stream's reader: a client that leaves is a departure like any
    other (``on_disconnect`` applies), and what was read so far is returned. The stream's
    metadata says ``stream: false`` (telemetry's ``gen_ai.request.stream``).
    """
    lifecycle = get_lifecycle()
    gone = gevent.event.Event()
    queued = _watch_departure(gone.set)  # a client that leaves while its stream waits for a slot
    try:
        sid = launch(events, {**meta, "stream": False}, on_disconnect, gone=gone)
    finally:
        if queued is not None:
            queued.stop()
    reader = lifecycle.follow(sid, 0, resumable=False)
    watch = _watch_departure(reader.leave)
    got: list[Event] = []
    try:
        for batch in reader:
            got.extend(event for _, event in batch)
    finally:
        if watch is not None:
            watch.stop()
            reader.join_departure()
        reader.close()
    lifecycle.publish(sid)  # its id goes out with the answer
    return sid, got
