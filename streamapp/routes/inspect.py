"""The stream inspector: ``/inspect`` (the page), and the streams it shows as JSON and live SSE.

Admin keys only (``auth.require_admin``); ``GET /api/streams`` also answers any key with its
own streams. The page is public so that a browser without a session, or with a key that is
not admin, meets words rather than a JSON error (``auth.page_viewer``). Its table follows
``GET /api/streams/live``: one SSE connection per page, a snapshot and then a diff each
second; a stream's events come from ``GET /api/streams/<id>/watch``, read by a reader that
holds no lease (``Lifecycle.watch``): the stream counts it as no reader and never waits for it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import gevent.event
from flask import Blueprint, Response, current_app, g, jsonify, render_template, request

from .. import sse
from ..auth import is_admin, page_viewer, require_admin
from ..errors import ApiError, Forbidden, StoreError
from ..openapi import describe
from ..openapi.models import StreamFailure, StreamList, StreamsDiff
from ..openapi.parts import (
    HTML,
    LAST_EVENT_ID,
    NO_CONTENT,
    SID,
    SSE,
    errors,
    json_body,
    response,
    sse_event,
    stream,
)
from ..schemas import StreamsQuery, parse
from ..streams import get_inspector, get_lifecycle
from ..streams.inspect import SNAPSHOT_REUSE_S, Filters, Inspector
from ..streams.live import LIVE_S
from ..wire import encoder, is_stream_id
from .edge import DepartureWatch, http_body
from .streaming import SSE_TYPE, STREAM_HEADERS, nothing_to_resume, requested_resume

bp = Blueprint("inspect", __name__)

HEARTBEAT_EVERY = 15  # samples without a change between two keep-alive comments on the live table


@describe("The stream inspector (a page)", "inspector", {
    "200": response("The page: the live table of streams, a stream's events, cancel (no CDN).", HTML),
    "401": response("Words for a browser without a session (and a form to sign in with an admin key).", HTML),
    "403": response("Words for a key that is not admin.", HTML)})
@bp.get("/inspect")
def page() -> tuple[str, int]:
    """The inspector's page, for admin keys (anyone when no key is configured)."""
    if not current_app.extensions["auth"]:
        return render_template("inspect.html", viewer="admin", client=None), 200
    client = page_viewer()
    if client is None:
        return render_template("inspect.html", viewer="nobody", client=None), 401
    if not client.admin:
        return render_template("inspect.html", viewer="refused", client=client.name), 403
    return render_template("inspect.html", viewer="admin", client=client.name), 200


def _listing(filters: Filters, limit: int | None = None, publish: bool = True) -> dict[str, Any]:
    return {"now": round(time.time(), 3), "streams": get_inspector().rows(filters, limit, publish=publish)}


@describe("Recent streams, every process's", "inspector", {
    "200": json_body(StreamList, "Streams running and recently ended, newest first: an admin key's "
                                 "view has every client's, another key's only its own."),
    **errors("400", "403", "503")}, query=(StreamsQuery,),
    description="Admin keys see every stream (STREAMAPP_ADMIN_KEYS); any other key only its own, "
                "and a 403 (`admin_only`) when it names another `key`; its running streams of other "
                "processes have their live figures only while an admin inspects. At most "
                "{INSPECT_MAX_STREAMS} recent streams (INSPECT_MAX_STREAMS). An empty parameter "
                "(`?state=`) is one not given.")
@bp.get("/api/streams")
def streams() -> Response:
    """Recent streams as JSON, filtered by ``state``, ``key`` and ``model``."""
    query = parse(StreamsQuery, request.args.to_dict())
    key = query.key
    client = g.get("client")
    admin = is_admin()
    if not admin:
        if key is not None and key != client.name:
            raise Forbidden("only an admin key may list another key's streams", code="admin_only")
        key = client.name
    # Only an admin's listing has every process publish its figures (``Store.inspected``).
    return jsonify(_listing(Filters(query.state, key, query.model), query.limit, publish=admin))


LIVE_EVENTS = response(
    "SSE, until INSPECT_LIVE_S ({INSPECT_LIVE_S} s) passed (an `EventSource` reconnects): first "
    "`event: snapshot` with `{\"now\", \"streams\"}` (the answer of `GET /api/streams`, every stream), "
    "then at most once a second `event: diff` with `{\"now\", \"upsert\": [rows], \"remove\": [ids]}`; "
    "`event: problem` with `{\"code\", \"message\"}` while the store fails; `: keep-alive` comments. "
    "The `schema` describes one event.",
    {SSE: {"schema": {"oneOf": [
        sse_event("snapshot", StreamList, "every recent stream (the first event; carries `retry`)"),
        sse_event("diff", StreamsDiff, "what changed since the last event"),
        sse_event("problem", StreamFailure, "the store fails (`store_unavailable`); the table waits")]}}})


@describe("The inspector's live table", "inspector", {"200": LIVE_EVENTS, **errors("403")},
          description="Admin keys only. One connection per page; the rows are those of `GET /api/streams`.")
@bp.get("/api/streams/live")
def live() -> Response:
    """The live table: a snapshot, then what changed, each second."""
    require_admin()
    config = current_app.config
    body = _live_body(get_inspector(), get_lifecycle().stopping, request.environ.get("gunicorn.socket"),
                      until=time.monotonic() + config["INSPECT_LIVE_S"], retry_ms=config["RETRY_MS"],
                      write_timeout=config["WRITE_TIMEOUT_S"])
    return Response(body, content_type=SSE_TYPE, headers=STREAM_HEADERS)


def _live_body(inspector: Inspector, stopping: gevent.event.Event, sock: Any, *, until: float,
               retry_ms: int, write_timeout: float) -> Iterator[bytes]:
    """The live table's events until ``until`` (monotonic), the client's departure (watched on
    ``sock``, whose writes time out after ``write_timeout``) or shutdown."""
    gone = gevent.event.Event()
    watch, old_timeout = None, None
    if sock is not None:
        old_timeout = sock.gettimeout()
        sock.settimeout(write_timeout)
        watch = DepartureWatch(sock, gone.set)
    shown: dict[str, dict[str, Any]] | None = None  # what the page has, by stream id
    quiet = 0
    try:
        yield sse.comment("streams")
        while not gone.is_set() and not stopping.is_set():
            try:
                rows = inspector.rows(reuse=SNAPSHOT_REUSE_S)
            except StoreError as exc:
                yield sse.encode(_json({"code": exc.code, "message": exc.message}), event="problem")
                rows = None
            if rows is not None:
                now = round(time.time(), 3)
                if shown is None:
                    yield sse.encode(_json({"now": now, "streams": rows}), event="snapshot", retry=retry_ms)
                    shown = {r["stream_id"]: r for r in rows}
                else:
                    fresh = {r["stream_id"]: r for r in rows}
                    upsert = [r for sid, r in fresh.items() if shown.get(sid) != r]
                    remove = [sid for sid in shown if sid not in fresh]
                    shown = fresh
                    if upsert or remove:
                        quiet = 0
                        diff = {"now": now, "upsert": upsert, "remove": remove}
                        yield sse.encode(_json(diff), event="diff")
                    else:
                        quiet += 1
                        if quiet >= HEARTBEAT_EVERY:
                            quiet = 0
                            yield sse.comment("keep-alive")
            if time.monotonic() >= until:
                return
            gone.wait(LIVE_S)
    finally:
        if watch is not None:
            watch.stop()
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass  # already closed by the server


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@describe("Watch a stream's events as they are produced", "inspector", {
    "200": stream("chat", "The stream's events from its start (or after `Last-Event-ID`) and on as they "
                          "come, as `POST /api/chat` writes them, whatever the stream's own format. The "
                          "watcher counts as no reader: the stream neither waits for it nor lives on "
                          "for it."),
    "204": NO_CONTENT, **errors("403", "404", "503")}, headers=(LAST_EVENT_ID,), path_params=SID,
    description="Admin keys only.")
@bp.get("/api/streams/<sid>/watch")
def watch(sid: str) -> Response:
    """Follow stream ``sid`` as an onlooker (the inspector's live view)."""
    require_admin()
    lifecycle = get_lifecycle()
    meta = lifecycle.manager.store.meta(sid) if is_stream_id(sid) else None
    if meta is None:
        raise ApiError(f"no stream {sid}", code="not_found", status=404, field="stream_id")
    point = requested_resume()
    after = point[1] if point and point[0] == sid else 0
    if not lifecycle.has_more(sid, meta, after):
        return nothing_to_resume()
    reader = lifecycle.watch(sid, after)
    body = http_body(reader, encoder("chat", current_app.config["RETRY_MS"], meta),
                     write_timeout=current_app.config["WRITE_TIMEOUT_S"],
                     sock=request.environ.get("gunicorn.socket"))
    return Response(body, content_type=SSE_TYPE, headers={**STREAM_HEADERS, "X-Stream-Id": sid})
