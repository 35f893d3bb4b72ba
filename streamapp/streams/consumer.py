"""The consumer: follows a stream's log from a cursor and writes it out.

It is the body of an HTTP response. It writes one byte-carrying comment right
away, every event after the cursor exactly once and in order, a heartbeat when
nothing was written for ``heartbeat`` seconds, and stops at the stream's last
event. A watcher greenlet notices a client that went away even while nothing is
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


def _watch(sock: Any, reader: Reader) -> None:
    """Mark the reader gone when the peer closes (EOF or reset) its socket."""
    while True:
        try:
            data = sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            continue
        except OSError:
            data = b""
        if data:
            return  # the client sent more (a pipelined request): not a departure
        reader.gone = True
        reader.wake.set()
        reader.close()  # detach now, so a zero grace stops the upstream at once
        return


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
        watcher = gevent.spawn(_watch, sock, reader)
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
            if now - reader.attached_at >= lease_every:
                reader.refresh()
            if store.shared and now - checked_at > 5 and not store.is_local(sid):
                checked_at = now
                if store.meta(sid) is None:
                    return  # expired, or its producer's host died: nothing more will come
            store.wait(sid, cursor, max(0.0, heartbeat - (now - last_write)), wake)
    finally:
        if watcher is not None:
            if reader.gone:
                watcher.join(timeout=5)  # it is detaching the reader: let it finish
            # Never leave it reading the socket the server reads next.
            watcher.kill(block=True, timeout=1)
        if sock is not None:
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass  # already closed by the server
        reader.close()


def store_lease(manager: StreamManager) -> float:
    """The reader lease length the store uses (memory: effectively forever)."""
    return getattr(manager.store, "lease", 3600.0)
