"""One WebSocket connection's conversation: chats, stop, resume and ping (the protocol: README,
"WebSocket").

The connection's own greenlet reads the client's messages; the stream it runs or follows
(started, found and followed through the one stream lifecycle, ``streams.lifecycle``) is
relayed by a second greenlet around a :class:`StreamReader`, as the HTTP edge relays one,
so the client can send ``stop`` while the answer streams. One stream, and one relay, at a
time: a ``chat`` or ``resume`` while a stream runs is refused (``busy``), not queued; one
sent on receipt of a stream's ``end`` waits for that relay to finish.

Every send takes one lock, the same one the connection's socket takes for the frames
simple-websocket sends by itself (pongs, pings, closes): frames never interleave, and
each goes out whole (:class:`FrameSocket`). A refused message gets an ``error`` message
and the socket stays usable; a socket that closes is a departure (``on_disconnect`` and
the resume grace apply), not a stop.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
from flask import current_app
from flask_limiter.errors import RateLimitExceeded
from simple_websocket import ConnectionClosed

from ..errors import ApiError, BudgetExceeded, StoreError, UpstreamUnavailable, log_store_error
from ..limits import count_stream_start, retry_after
from ..queue import Ticket
from ..schemas import ChatBody, WsResume, load_json, parse
from ..slots import Slot
from ..streams import get_lifecycle
from ..streams.reader import StreamReader
from ..wire import ws_message, ws_text
from .chat import chat_events
from .door import LeftQueue, admit, find, give_up, launch, refuse, take_slot

logger = logging.getLogger(__name__)

GOING_AWAY, SERVICE_RESTART = 1001, 1012  # close codes (RFC 6455, IANA registry)
TYPES = "chat, stop, resume, ping"


class FrameSocket:
    """The connection's socket as simple-websocket uses it: a send goes out whole
    (``sendall``; a plain ``send`` may write part of a frame under back-pressure) and holds
    ``lock``, which the session's sends hold too. Everything else is the socket's own."""

    def __init__(self, sock: socket.socket, lock: gevent.lock.RLock) -> None:
        self._sock, self._lock = sock, lock

    def send(self, data: bytes) -> int:
        with self._lock:
            self._sock.sendall(data)
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class WsSession:
    """The conversation over one accepted simple-websocket connection ``ws``."""

    def __init__(self, ws: Any, lock: gevent.lock.RLock | None = None) -> None:
        config = current_app.config
        self.ws = ws
        self.lock = lock or gevent.lock.RLock()
        self.lifecycle = get_lifecycle()
        self.max_bytes = config["MAX_BODY_BYTES"]
        self.tick = config["WS_PING_S"]
        self.reader: StreamReader | None = None  # the stream being relayed, until its end is sent
        self.relay: gevent.Greenlet | None = None
        self.finishing = False  # the relay's stream is over: it sends its last message and detaches
        self.closing = False
        self.starting = False  # a chat or resume is being started (its stream not followed yet)
        self.handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "chat": self._chat, "stop": self._stop, "resume": self._resume, "ping": self._ping}

    # -- the connection's greenlet -----------------------------------------------------
    def run(self) -> None:
        """Answer the client's messages until the socket closes."""
        stopping = self.lifecycle.stopping
        stopping.rawlink(self._on_shutdown)
        try:
            while True:
                try:
                    raw = self.ws.receive(timeout=self.tick)
                except ConnectionClosed:
                    return
                if raw is None:
                    if self.closing:
                        return  # we closed the socket and the peer never answered
                    continue
                try:
                    self._handle(raw)
                except (ConnectionClosed, OSError):
                    return
        finally:
            stopping.unlink(self._on_shutdown)
            reader = self.reader
            if reader is not None:
                reader.leave()  # a departure, not a stop
            if self.relay is not None:
                self.relay.join(timeout=5)

    def _handle(self, raw: str | bytes) -> None:
        try:
            data = raw.encode() if isinstance(raw, str) else raw
            if len(data) > self.max_bytes:
                raise ApiError(f"the message is larger than {self.max_bytes} bytes (MAX_BODY_BYTES)",
                               code="message_too_large", status=413)
            try:
                message = load_json(data)
            except ApiError as exc:
                raise ApiError(exc.message, code="invalid_json") from None
            if not isinstance(message, dict):
                raise ApiError("a message must be a JSON object with a type", code="invalid_json")
            kind = message.get("type")
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ApiError(f"type must be one of {TYPES}", code="unknown_type", field="type")
            handler(message)
        except (ApiError, StoreError) as exc:
            if isinstance(exc, StoreError):
                log_store_error(exc)  # the client gets the fixed message; the log, the cause
            refusal = {"type": "error", "code": exc.code, "message": exc.message}
            if exc.field:
                refusal["field"] = exc.field
            if isinstance(exc, (BudgetExceeded, UpstreamUnavailable)):
                refusal["retry_after"] = exc.retry_after  # the budget's reset, the circuit's wait
            self.send(refusal)
        except RateLimitExceeded as exc:
            self.send({"type": "error", "code": "rate_limited",
                       "message": exc.description or "rate limit exceeded", "retry_after": retry_after()})

    def _free(self) -> None:
        """Refuse a new stream while one runs; wait for a relay that is sending its end."""
        reader = self.reader
        if self.starting or reader is not None and not (reader.ended or self.finishing):
            raise ApiError("a stream is running on this socket: send stop, or wait for its end",
                           code="busy", status=409)
        if self.relay is not None:
            self.relay.join()  # its last message is being sent: bounded by the socket's write timeout

    def _starting(self, start: Callable[[dict[str, Any]], None], message: dict[str, Any]) -> None:
        """Run ``start`` (a chat or a resume) protected from a shutdown meanwhile."""
        self._free()
        self.starting = True  # a shutdown meanwhile leaves the closing to the relay
        try:
            start(message)
        finally:
            self.starting = False
            if self.reader is None and self.lifecycle.stopping.is_set():
                self.close(GOING_AWAY, "server shutting down")  # refused, or failed, while stopping

    def _chat(self, message: dict[str, Any]) -> None:
        self._starting(self._start_chat, message)

    def _resume(self, message: dict[str, Any]) -> None:
        self._starting(self._start_resume, message)

    def _start_chat(self, message: dict[str, Any]) -> None:
        body = parse(ChatBody, message)
        count_stream_start()  # the same rate limit as an HTTP stream start
        meta, events = chat_events(body)
        # The token budget and the circuits refuse at once, before any slot or wait for one.
        meta = admit(events, {"route": "ws", "format": "chat", **meta})
        try:
            slot = take_slot(body.on_disconnect)
            if isinstance(slot, Ticket):
                slot = self._queued(slot, body.uid)
        except BaseException:
            refuse(events, meta)  # no slot: the stream never starts
            raise
        if slot is None:
            refuse(events, meta)  # it left the queue
            return
        sid = launch(events, meta, body.on_disconnect, slot=slot, admitted=True)
        try:
            self.lifecycle.publish(sid)
            self.send({"type": "start", "stream_id": sid, "uid": body.uid})
        except (ConnectionClosed, OSError):
            self.lifecycle.abandon(sid)  # its client never learnt the stream id
            raise
        self._follow(sid, 0)

    def _queued(self, ticket: Ticket, uid: Any) -> Slot | None:
        """Wait for a slot at a full cap, reading the client meanwhile: ``stop`` or a close
        leaves the queue (``None``); the wait running out is the 429's ``error``."""
        self.send({"type": "queued", "uid": uid, "wait_s": ticket.queue.wait_s})
        gone = gevent.event.Event()
        stopped: list[bool] = []
        watcher = gevent.spawn(self._read_while_queued, gone, stopped)
        try:
            slot = ticket.wait(ticket.queue.wait_s, gone)
        finally:
            watcher.kill()
        if slot is not None:
            return slot
        try:
            give_up(ticket, gone)
        except LeftQueue:
            if stopped:  # else the socket closed: the connection's loop ends on its next read
                self.send({"type": "error", "code": "cancelled", "uid": uid,
                           "message": "stopped while waiting for a stream slot"})
        return None

    def _read_while_queued(self, gone: gevent.event.Event, stopped: list[bool]) -> None:
        """The client's messages while a chat waits: ``stop`` or a close sets ``gone``; any
        other is answered as usual (a chat or resume is ``busy``)."""
        try:
            while True:
                raw = self.ws.receive(timeout=self.tick)
                if raw is None:
                    continue
                try:
                    message = load_json(raw.encode() if isinstance(raw, str) else raw)
                except ApiError:
                    message = None
                if isinstance(message, dict) and message.get("type") == "stop":
                    stopped.append(True)
                    gone.set()
                    return
                self._handle(raw)
        except (ConnectionClosed, OSError):
            gone.set()

    def _start_resume(self, message: dict[str, Any]) -> None:
        point = parse(WsResume, message)
        found = find(point.stream_id, point.last_seq)  # another client's stream: not_stream_owner
        if found is None:
            raise ApiError(f"no stream {point.stream_id} with events after {point.last_seq}",
                           code="not_found", status=404, field="stream_id")
        self.send({"type": "start", "stream_id": found.sid, "resumed": True})
        self._follow(found.sid, found.after)

    def _stop(self, message: dict[str, Any]) -> None:
        reader = self.reader
        if reader is None or reader.ended or self.finishing:
            raise ApiError("no stream is running on this socket", code="no_active_stream", status=409)
        self.lifecycle.cancel(reader.sid)  # its end ("cancelled") reaches the client through the relay

    def _ping(self, message: dict[str, Any]) -> None:
        self.send({"type": "pong"})

    # -- the stream's greenlet ---------------------------------------------------------
    def _follow(self, sid: str, after: int) -> None:
        reader = self.lifecycle.follow(sid, after, held=True)  # read from now on, by this relay
        self.reader, self.finishing = reader, False
        self.relay = gevent.spawn(self._relay, reader)

    def _relay(self, reader: StreamReader) -> None:
        stopping = self.lifecycle.stopping
        try:
            for batch in reader:  # an empty batch (idle): ping frames keep the socket alive
                for seq, event in batch:
                    message = ws_message(reader.sid, seq, event)
                    if message is not None:
                        self.send(message)
            self.finishing = True  # a chat or resume from now on waits for this relay, not "busy"
            if not reader.ended and not reader.gone and not stopping.is_set():
                # The stream ended before the point asked for (a resume past its end).
                self.send({"type": "error", "code": "not_found", "stream_id": reader.sid,
                           "message": f"stream {reader.sid} has no events after {reader.cursor}"})
        except (ConnectionClosed, OSError) as exc:  # closed, or a write that made no progress
            logger.info("stream %s: its WebSocket client is gone (%s)", reader.sid, type(exc).__name__)
            reader.leave()
            self._abort()
        finally:
            reader.join_departure()
            reader.close()
            if self.reader is reader:
                self.reader = None
            if stopping.is_set():
                # Ended: the worker is going. Not ended: the stream goes on elsewhere (Redis).
                self.close(GOING_AWAY if reader.ended else SERVICE_RESTART,
                           "server shutting down" if reader.ended else "service restart: resume the stream")

    # -- sending and closing ------------------------------------------------------------
    def send(self, message: dict[str, Any]) -> None:
        """Send one message (whole, never interleaved with another frame)."""
        text = ws_text(message)
        with self.lock:
            self.ws.send(text)

    def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` (idempotent); the connection's greenlet then ends."""
        if self.closing:
            return
        self.closing = True
        try:
            with self.lock:
                self.ws.close(code, reason)
        except (ConnectionClosed, OSError):
            pass

    def _abort(self) -> None:
        """Drop a connection whose writes fail: its reads end too."""
        self.closing = True
        try:
            self.ws.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _on_shutdown(self, _event: Any) -> None:
        # Called in the hub (it must not block): an idle socket closes now; a running
        # stream's relay closes it when the stream ends or hands over.
        if self.reader is None and not self.starting:
            gevent.spawn(self.close, GOING_AWAY, "server shutting down")
