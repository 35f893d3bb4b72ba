"""Stream logs: numbered events kept apart from any HTTP connection.

A store keeps, per stream id, its metadata, its event log (sequence numbers
from 1), the set of readers attached to it, and a cancel flag. ``MemoryStore``
serves one process; ``streamapp.streams.redis_store.RedisStore`` serves every
worker and host sharing a Redis. A finished stream's log expires ``ttl``
seconds after it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent.event

from ..events import Event


class Store:
    """The interface both stores implement."""

    shared = False  # True when other processes see the same streams

    def __init__(self) -> None:
        # Called as handler(kind, sid) in the producer's process when a
        # "cancel" is requested or a stream becomes "idle" (no readers left).
        self.control_handler: Callable[[str, str], None] = lambda kind, sid: None

    def start(self, owner: str) -> None:
        """Begin delivering control messages addressed to ``owner``."""

    def close(self) -> None:
        """Release connections and greenlets."""

    def is_local(self, sid: str) -> bool:
        """Whether this process holds the stream's log itself."""
        return True

    def owner_alive(self, meta: dict[str, Any]) -> bool:
        """Whether the process producing a stream (its ``meta``) still runs."""
        return True

    def cancelled(self, sids: list[str]) -> set[str]:
        """Which of these streams have a cancel request (a poll behind the messages)."""
        return set()

    def heartbeat(self) -> None:
        """Tell other processes this one is alive (called on every manager tick)."""

    def create(self, sid: str, meta: dict[str, Any]) -> None:
        """Register a new running stream."""
        raise NotImplementedError

    def meta(self, sid: str) -> dict[str, Any] | None:
        """The stream's metadata, or ``None`` when unknown or expired."""
        raise NotImplementedError

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        """Add event number ``seq``; ``final`` marks the stream finished."""
        raise NotImplementedError

    def read(self, sid: str, after: int) -> list[tuple[int, Event]]:
        """Events with a sequence number above ``after``, in order."""
        raise NotImplementedError

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        """Set ``wake`` whenever this process may find new events of ``sid``."""

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        """Undo :meth:`watch`."""

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        """Block until an event above ``after`` may exist, ``wake`` (a watched
        event, cleared by the caller before it last read) is set, or ``timeout``
        (``None``: no timeout of its own; the manager's tick sets ``wake``)."""
        raise NotImplementedError

    def attach(self, sid: str, reader: str) -> None:
        """Record a reader (refreshes its lease)."""
        raise NotImplementedError

    def detach(self, sid: str, reader: str) -> int:
        """Forget a reader; return how many readers remain (0 tells the owner)."""
        raise NotImplementedError

    def detach_quietly(self, sid: str, reader: str) -> None:
        """Forget a reader without telling the owner (it leaves to come back)."""
        raise NotImplementedError

    def readers(self, sid: str) -> int:
        """How many readers are attached."""
        raise NotImplementedError

    def request_cancel(self, sid: str) -> None:
        """Flag the stream for cancellation and tell its producer's process."""
        raise NotImplementedError

    def cancel_requested(self, sid: str) -> bool:
        """Whether a cancel was requested."""
        raise NotImplementedError


@dataclass
class _Log:
    meta: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    readers: set[str] = field(default_factory=set)
    finished_at: float | None = None
    cancel: bool = False
    watchers: set[gevent.event.Event] = field(default_factory=set)


class MemoryStore(Store):
    """One process's streams, in a dict; expired logs are swept lazily."""

    def __init__(self, ttl: float) -> None:
        super().__init__()
        self.ttl = ttl
        self._logs: dict[str, _Log] = {}
        self._next_sweep = 0.0

    def _get(self, sid: str) -> _Log | None:
        log = self._logs.get(sid)
        if log is not None and log.finished_at is not None and \
                time.monotonic() - log.finished_at > self.ttl:
            del self._logs[sid]
            return None
        return log

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 1.0
        expired = [sid for sid, log in self._logs.items()
                   if log.finished_at is not None and now - log.finished_at > self.ttl]
        for sid in expired:
            del self._logs[sid]

    def create(self, sid: str, meta: dict[str, Any]) -> None:
        self._sweep()
        self._logs[sid] = _Log(dict(meta))

    def meta(self, sid: str) -> dict[str, Any] | None:
        log = self._get(sid)
        return None if log is None else log.meta

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        log = self._logs[sid]
        log.events.append(event)
        if final:
            log.finished_at = time.monotonic()
            log.meta["state"] = "finished"
        for wake in log.watchers:
            wake.set()

    def read(self, sid: str, after: int) -> list[tuple[int, Event]]:
        log = self._get(sid)
        if log is None:
            return []
        return list(enumerate(log.events[after:], start=after + 1))

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        log = self._get(sid)
        if log is not None:
            log.watchers.add(wake)

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        log = self._logs.get(sid)
        if log is not None:
            log.watchers.discard(wake)

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        log = self._get(sid)
        if log is not None and len(log.events) <= after:
            wake.wait(timeout)

    def attach(self, sid: str, reader: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.readers.add(reader)

    def detach(self, sid: str, reader: str) -> int:
        log = self._get(sid)
        if log is None:
            return 0
        if reader in log.readers:
            log.readers.discard(reader)
            if not log.readers:
                self.control_handler("idle", sid)
        return len(log.readers)

    def detach_quietly(self, sid: str, reader: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.readers.discard(reader)

    def readers(self, sid: str) -> int:
        log = self._get(sid)
        return 0 if log is None else len(log.readers)

    def request_cancel(self, sid: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.cancel = True
            self.control_handler("cancel", sid)

    def cancel_requested(self, sid: str) -> bool:
        log = self._get(sid)
        return bool(log and log.cancel)
