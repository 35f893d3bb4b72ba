"""The stream manager: starts producers, attaches readers, cancels, drains.

One instance per process lives in ``app.extensions["streams"]``. It keeps the
producers this process runs; the store keeps everything a reader on another
process needs. When the last reader of a stream leaves, the producer keeps
going for the resume grace and is then stopped as ``client_gone``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event

from ..errors import StoreError
from ..events import Event, Opened
from .producer import Producer
from .store import Store

logger = logging.getLogger(__name__)


class Reader:
    """One attached consumer of a stream; ``close`` is idempotent."""

    def __init__(self, manager: StreamManager, sid: str) -> None:
        self.manager, self.sid = manager, sid
        self.id = secrets.token_hex(6)
        self.wake = gevent.event.Event()  # set: new events, client gone, or shutting down
        self.gone = False
        self.closed = False
        self.renewed_at = time.monotonic()
        manager.store.attach(sid, self.id)
        manager.store.watch(sid, self.wake)
        manager._readers.add(self)

    def refresh(self) -> None:
        """Renew this reader's presence lease."""
        self.manager.store.attach(self.sid, self.id)
        self.renewed_at = time.monotonic()

    def close(self) -> None:
        """Detach; the last reader leaving starts the grace period."""
        if self.closed:
            return
        self.closed = True
        self.manager._readers.discard(self)
        self.manager.store.unwatch(self.sid, self.wake)
        if self.manager.stopping.is_set():
            # Leaving only so the client resumes elsewhere: not a departure.
            self.manager.store.detach_quietly(self.sid, self.id)
        else:
            self.manager.store.detach(self.sid, self.id)


class StreamManager:
    """Per-process registry of producers and readers over a shared store."""

    def __init__(self, store: Store, grace: float, tick: float = 1.0) -> None:
        self.store = store
        self.grace = grace
        self.tick = tick  # readers are woken this often to send heartbeats and renew leases
        self.owner = secrets.token_hex(8)
        self.stopping = gevent.event.Event()
        self._producers: dict[str, Producer] = {}
        self._grace_timers: dict[str, gevent.Greenlet] = {}
        self._readers: set[Reader] = set()
        store.control_handler = self._on_control
        self._started = False

    def _ensure_started(self) -> None:
        # Started lazily so no greenlet or connection exists before gunicorn forks.
        if not self._started:
            self._started = True
            self.store.start(self.owner)
            gevent.spawn(self._tick)

    def _tick(self) -> None:
        # One timer for every reader, so a reader waits for new events without a
        # timer of its own (cheaper per event); woken, it sees what is due.
        while True:
            gevent.sleep(self.tick)
            for reader in list(self._readers):
                reader.wake.set()
            self.store.heartbeat()
            try:
                # Cancels travel as messages; this poll catches one that was lost.
                for sid in self.store.cancelled(list(self._producers)):
                    self._on_control("cancel", sid)
            except StoreError as exc:
                logger.warning("could not poll for cancels: %s", exc)

    # -- producing ---------------------------------------------------------
    def start(self, events: Iterator[Event], meta: dict[str, Any]) -> str:
        """Register a stream, start its producer, return its id."""
        self._ensure_started()
        sid = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        self.store.create(sid, {**meta, "state": "running"})
        self._producers[sid] = Producer(sid, events, self.store, self._producer_exit)
        return sid

    def _producer_exit(self, sid: str) -> None:
        self._producers.pop(sid, None)
        timer = self._grace_timers.pop(sid, None)
        if timer is not None:
            timer.kill(block=False)

    def attach(self, sid: str) -> Reader:
        """A new reader of ``sid`` (it must be closed)."""
        self._ensure_started()
        return Reader(self, sid)

    def cancel(self, sid: str) -> str | None:
        """Ask the stream's producer, wherever it runs, to stop.

        Returns ``"cancelling"``, ``"finished"``, or ``None`` for an unknown stream.
        """
        self._ensure_started()
        meta = self.store.meta(sid)
        if meta is None:
            return None
        if meta.get("state") == "finished" or not self.store.owner_alive(meta):
            return "finished"  # over, or its producer died with its process
        self.store.request_cancel(sid)
        return "cancelling"

    def _on_control(self, kind: str, sid: str) -> None:
        producer = self._producers.get(sid)
        if producer is None:
            return
        if kind == "cancel":
            producer.stop("cancelled")
        elif kind == "idle":
            self._start_grace(sid)

    def _start_grace(self, sid: str) -> None:
        old = self._grace_timers.pop(sid, None)
        if old is not None:
            old.kill(block=False)
        if self.grace <= 0:
            self._grace_over(sid)
        else:
            self._grace_timers[sid] = gevent.spawn_later(self.grace, self._grace_over, sid)

    def _grace_over(self, sid: str) -> None:
        self._grace_timers.pop(sid, None)
        producer = self._producers.get(sid)
        if producer is not None and self.store.readers(sid) == 0:
            producer.stop("client_gone")

    # -- waiting -----------------------------------------------------------
    def first_event(self, sid: str, header_wait: float, limit: float,
                    give_up: gevent.event.Event) -> Event | None:
        """Wait for the first event that decides the response's status.

        Returns the first non-``Opened`` event, or ``Opened`` once
        ``header_wait`` has passed since the upstream accepted the request,
        or ``None`` after ``limit`` seconds or once ``give_up`` is set.
        """
        wake = gevent.event.Event()
        give_up.rawlink(lambda _: wake.set())
        deadline = time.monotonic() + limit
        opened_at: float | None = None
        self.store.watch(sid, wake)
        try:
            while not give_up.is_set():
                wake.clear()
                events = self.store.read(sid, 0)
                for _, event in events:
                    if not isinstance(event, Opened):
                        return event
                now = time.monotonic()
                if events and opened_at is None:
                    opened_at = now
                    deadline = min(deadline, now + header_wait)
                if now >= deadline:
                    return events[0][1] if events else None
                self.store.wait(sid, len(events), deadline - now, wake)
            return None
        finally:
            self.store.unwatch(sid, wake)

    def abandon(self, sid: str) -> None:
        """Stop a stream whose client left before it could be given the stream id."""
        producer = self._producers.get(sid)
        if producer is not None:
            producer.stop("client_gone")

    # -- shutdown ----------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Wake every reader; those whose client can resume elsewhere end cleanly."""
        self.stopping.set()
        for reader in list(self._readers):
            reader.wake.set()

    def drain(self, timeout: float) -> None:
        """Let running producers finish for up to ``timeout``, then stop them."""
        greenlets = [p.greenlet for p in self._producers.values()]
        gevent.joinall(greenlets, timeout=timeout)
        for producer in list(self._producers.values()):
            producer.stop("shutdown")
        gevent.joinall([p.greenlet for p in self._producers.values()], timeout=2)
        self.store.close()
