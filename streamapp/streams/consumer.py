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
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import gevent
import gevent.event
import gevent.exceptions

from ..events import Event, Failed, is_terminal
from .manager import Reader, StreamManager

logger = logging.getLogger(__name__)


class Encoder(Protocol):
    """What ``streamapp.wire`` encoders provide."""

    def open(self, sid: str) -> bytes: ...
    def heartbeat(self) -> bytes: ...
    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes: ...


class DepartureWatch:
    """Calls ``on_gone`` (in the hub: it must not block) when the client closes
    its socket (EOF or reset).

    A libev I/O watcher, not a greenlet: the check runs only when the socket
    turns readable, and an idle stream costs no greenlet stack.
    """

    def __init__(self, sock: Any, on_gone: Callable[[], None]) -> None:
        self.sock, self.on_gone = sock, on_gone
        self.io = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable
        self.io.start(self._readable)

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, gevent.exceptions.BlockingSwitchOutError):
            return  # a spurious wake-up: gevent's socket would wait, which the hub cannot
        except OSError:
            data = b""
        self.stop()
        if not data:  # data would be a pipelined request: not a departure
            self.on_gone()

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
    detaching: list[gevent.Greenlet] = []
    store, wake = manager.store, reader.wake
    # At shutdown, leave early only if the client can resume on another worker;
    # otherwise follow the producer, which gets the graceful timeout to finish.
    stopping = manager.stopping if store.shared and getattr(encoder, "resumable", False) \
        else gevent.event.Event()
    coalesce = getattr(encoder, "coalesce", False)
    watcher = None
    old_timeout = None
    if sock is not None:
        old_timeout = sock.gettimeout()
        sock.settimeout(write_timeout)  # a write that makes no progress this long fails
        watcher = DepartureWatch(sock, lambda: _reader_gone(reader, detaching))
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
            local = store.is_local(sid)
            if local or now - checked_at > 5:  # local: a dict lookup
                checked_at = now
                meta = store.meta(sid)
                if meta is None:
                    return  # expired: nothing more will come
                if meta.get("state") == "finished":
                    if store.read(sid, cursor):
                        continue  # the end arrived between our read and this check
                    return  # ended before our cursor: nothing more will come
                if not local and not store.owner_alive(meta):
                    lost = Failed("producer_lost", "the process generating this stream is gone", 502)
                    yield encoder.event(sid, cursor + 1, lost, first)
                    return
            store.wait(sid, cursor, None, wake)  # the manager's tick wakes us for heartbeats
    finally:
        if watcher is not None:
            watcher.stop()  # never leave it watching the socket the server reads next
            gevent.joinall(detaching, timeout=5)
        if sock is not None:
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass  # already closed by the server
        reader.close()


def _reader_gone(reader: Reader, detaching: list[gevent.Greenlet]) -> None:
    reader.gone = True
    reader.wake.set()
    # Detach at once (a zero grace stops the upstream now); it may talk to Redis.
    detaching.append(gevent.spawn(reader.close))


def store_lease(manager: StreamManager) -> float:
    """The reader lease length the store uses (memory: effectively forever)."""
    return getattr(manager.store, "lease", 3600.0)
