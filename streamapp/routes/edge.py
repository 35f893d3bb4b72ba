"""The HTTP edge of a stream: a response body around a :class:`StreamReader`.

The reader owns order, gaps and the end; the encoder owns the bytes; this edge
owns the socket. It writes one byte-carrying opening right away, each batch the
reader hands over in chunks of at most ``chunk_bytes`` (so a catch-up of a long
log is many small writes), and a heartbeat when the reader reports it was idle.
The socket's timeout applies to each write, and writes are bounded, so
``write_timeout`` means "no progress for that long", not "the whole catch-up
took that long": a slow but healthy client is not dropped. An I/O watcher
notices a client that went away even while nothing is being written (a silent
upstream): a write is not needed to detect it, and an empty chunk writes
nothing (flask #4385).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.exceptions

from ..events import is_terminal
from ..streams.reader import StreamReader
from ..wire import Encoder

CHUNK_BYTES = 65536


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


def http_body(reader: StreamReader, encoder: Encoder, *, write_timeout: float, sock: Any = None,
              chunk_bytes: int = CHUNK_BYTES, quiet_until: int = 0) -> Iterator[bytes]:
    """Yield the encoded stream until the reader ends; always detaches the reader.

    Events up to ``quiet_until`` are encoded (a stateful encoder learns from them) but not
    written: a resume through an encoder that replays the log. A final event is written
    whatever its number (the reader's own failure when the rest cannot come)."""
    sid = reader.sid
    watcher = None
    old_timeout = None
    if sock is not None:
        old_timeout = sock.gettimeout()
        sock.settimeout(write_timeout)  # a write that makes no progress this long fails
        watcher = DepartureWatch(sock, reader.leave)
    try:
        opening = encoder.open(sid)
        if opening:
            yield opening
        first = True
        coalesce = encoder.coalesce
        for batch in reader:
            if not batch:
                beat = encoder.heartbeat()
                if beat:
                    yield beat
                continue
            if quiet_until and batch[0][0] <= quiet_until:
                kept = []
                for seq, event in batch:
                    # A final event is always written: one the reader made up (the rest cannot
                    # come) carries its cursor, which may lie before the resume point.
                    if seq > quiet_until or is_terminal(event):
                        kept.append((seq, event))
                    else:
                        encoder.event(sid, seq, event, first)
                        first = False
                batch = kept
                if not batch:
                    continue
            if coalesce:  # events read together share a chunk, up to chunk_bytes
                parts: list[bytes] = []
                size = 0
                for seq, event in batch:
                    chunk = encoder.event(sid, seq, event, first)
                    first = False
                    parts.append(chunk)
                    size += len(chunk)
                    if size >= chunk_bytes:
                        yield b"".join(parts)
                        parts, size = [], 0
                if parts:
                    yield b"".join(parts)
            else:
                for seq, event in batch:
                    chunk = encoder.event(sid, seq, event, first)
                    first = False
                    if chunk:
                        yield chunk
    finally:
        if watcher is not None:
            watcher.stop()  # never leave it watching the socket the server reads next
            reader.join_departure()
        if sock is not None:
            try:
                sock.settimeout(old_timeout)
            except OSError:
                pass  # already closed by the server
        reader.close()
