"""The consumer: follows a stream's log from a cursor and writes it out.

It is the body of an HTTP response. It writes one byte-carrying comment right
away, every event after the cursor exactly once and in order, a heartbeat when
nothing was written for ``heartbeat`` seconds, and stops at the stream's last
event. An I/O watcher notices a client that went away even while nothing is
being written (a silent upstream): a write is not needed to detect it, and an
empty chunk writes nothing (flask #4385). A client that stops reading is
dropped after ``write_timeout`` by the socket's own timeout.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any, Protocol

import gevent

from ..events import Event, is_terminal
from .manager import Reader, StreamManager

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """What ``streamapp.wire`` encoders provide."""

    def open(self, sid: str) -> bytes: ...
    def heartbeat(self) -> bytes: ...
    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes: ...


class _DepartureWatch:
    """Marks a reader gone when its client closes the socket (EOF or reset).

    A libev I/O watcher, not a greenlet: the check runs only when the socket
    turns readable, and an idle stream costs no greenlet stack.
    """

    def __init__(self, sock: Any, reader: Reader) -> None:
        self.sock, self.reader = sock, reader
        self.detaching: gevent.Greenlet | None = None
        self.io = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable
        self.io.start(self._readable)

    def _readable(self) -> None:
        # Runs in the hub: no blocking here, so peek without waiting.
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # a spurious wake-up
        except OSError:
            data = b""
        self.stop()
        if data:
            return  # the client sent more (a pipelined request): not a departure
        self.reader.gone = True
        self.reader.wake.set()
        # Detach at once (a zero grace stops the upstream now); it may talk to Redis.
        self.detaching = gevent.spawn(self.reader.close)

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        if self.io is not None:
            self.io.stop()
            self.io.close()
            self.io = None


def consume(manager: StreamManager, sid: str, after: int, encoder: Encoder, *,
            heartbeat: float, write_timeout: float, sock: Any = None) -> Iterator[bytes]:
    """Yield the encoded events of ``sid`` after ``after`` until the stream ends.

    Events found together are written together (one chunk) when the encoder
    allows it, so a reader that fell behind catches up in few writes.
    """
    reader = manager.attach(sid)
    store, wake, stopping = manager.store, reader.wake, manager.stopping
    coalesce = getattr(encoder, "coalesce", False)
    watcher = None
    old_timeout = None
    if sock is not None:
        old_timeout = sock.gettimeout()
        sock.settimeout(write_timeout)  # a write that makes no progress this long fails
        watcher = _DepartureWatch(sock, reader)
    lease_every = store_lease(manager) / 3
    checked_at = time.monotonic()
    try:
        opening = encoder.open(sid)
        if opening:
            yield opening
        last_write = time.monotonic()
        first = True
        cursor = after
        while not reader.gone and not stopping.is_set():
            wake.clear()  # before reading: an append after this point sets it again
            batch = store.read(sid, cursor)
            if batch:
                parts = []
                ended = False
                for seq, event in batch:
                    cursor = seq
                    chunk = encoder.event(sid, seq, event, first)
                    first = False
                    if chunk:
                        parts.append(chunk)
                    if is_terminal(event):
                        ended = True
                        break
                if coalesce:
                    parts = [b"".join(parts)]
                for chunk in parts:
                    yield chunk
                last_write = time.monotonic()
                if ended:
                    return
                continue
            now = time.monotonic()
            if now - last_write >= heartbeat:
                beat = encoder.heartbeat()
                if beat:
                    yield beat
                last_write = now
            if now - reader.renewed_at >= lease_every:
                reader.refresh()
            if store.shared and now - checked_at > 5 and not store.is_local(sid):
                checked_at = now
                if store.meta(sid) is None:
                    return  # expired, or its producer's host died: nothing more will come
            store.wait(sid, cursor, None, wake)  # the manager's tick wakes us for heartbeats
    finally:
        if watcher is not None:
            watcher.stop()  # never leave it watching the socket the server reads next
            if watcher.detaching is not None:
                watcher.detaching.join(timeout=5)
        if sock is not None:
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass  # already closed by the server
        reader.close()


def store_lease(manager: StreamManager) -> float:
    """The reader lease length the store uses (memory: effectively forever)."""
    return getattr(manager.store, "lease", 3600.0)
