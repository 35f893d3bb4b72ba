"""Stream logs: numbered events kept apart from any HTTP connection.

A store keeps, per stream id, its metadata, its event log (sequence numbers
from 1), the set of readers attached to it, and a cancel flag. ``MemoryStore``
serves one process; ``streamapp.streams.redis_store.RedisStore`` serves every
worker and host sharing a Redis. A finished stream's log expires ``ttl``
seconds after it ends, or goes at once when forgotten (a deleted response).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent.event

from ..events import Event


class Store:
    """The interface both stores implement.

    Contract every implementation keeps (the reader in ``streams.reader``
    relies on it):

    - ``meta`` of a finished stream has ``state == "finished"`` and ``last``,
      the sequence number of its final event.
    - ``read`` returns events in order; a hole in the log (a sequence number
      missing) is left visible as a jump, never papered over.
    - readers hold leases of ``lease`` seconds, renewed by ``attach``; a reader
      that stops renewing (its process died) stops counting when its lease
      runs out.
    - a failure of a shared backend (Redis) raises ``StoreError``, never
      anything else.
    """

    shared = False  # True when other processes see the same streams
    lease = 30.0  # seconds a reader counts as present after its last attach

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

    def owners_alive(self, owners: set[str | None]) -> set[str | None]:
        """Which of these producing processes (streams' ``owner``) still run, in one round trip."""
        return set(owners)

    def cancelled(self, sids: list[str]) -> set[str]:
        """Which of these streams have a cancel request (a poll behind the messages)."""
        return set()

    def heartbeat(self) -> None:
        """Tell other processes this one is alive (called on every manager tick)."""

    def recovering(self) -> bool:
        """Whether the shared backend lost its data lately (an empty restart) and the processes
        producing streams may still be sending theirs again: a missing stream may come back."""
        return False

    def check(self) -> str | None:
        """``None`` when the store works, else why not (for ``/readyz``; names no host)."""
        return None

    def create(self, sid: str, meta: dict[str, Any]) -> None:
        """Register a new running stream, without waiting for anything (its producer,
        already spawned, runs as soon as the caller waits)."""
        raise NotImplementedError

    def published(self, sid: str, timeout: float) -> None:
        """Wait (at most ``timeout``) until other processes can find ``sid``, created
        here: called before its id reaches a client, who may resume it anywhere."""

    def meta(self, sid: str) -> dict[str, Any] | None:
        """The stream's metadata, or ``None`` when unknown or expired."""
        raise NotImplementedError

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        """Add event number ``seq``; ``final`` marks the stream finished (``last = seq``)."""
        raise NotImplementedError

    def annotate(self, sid: str, fields: dict[str, Any]) -> None:
        """Add ``fields`` (JSON values) to the metadata of ``sid``, a stream produced here (its
        upstream attempts, its usage...), replacing fields of the same name. Never waits on a
        shared backend: ``meta`` here has them at once, other processes' a moment later (a
        stream unknown, or forgotten, is left as it is)."""
        raise NotImplementedError

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        """Events with a sequence number above ``after``, in order, at most ``limit``."""
        raise NotImplementedError

    def count(self, sid: str) -> int:
        """How many events the stream's log holds (0 when unknown), without decoding them."""
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
        """Record a reader, or renew its lease."""
        raise NotImplementedError

    def detach(self, sid: str, reader: str) -> int:
        """Forget a reader; return how many readers remain (0 tells the owner)."""
        raise NotImplementedError

    def detach_quietly(self, sid: str, reader: str) -> None:
        """Forget a reader without telling the owner (it leaves to come back)."""
        raise NotImplementedError

    def readers(self, sid: str) -> int:
        """How many readers hold a live lease."""
        raise NotImplementedError

    def reader_counts(self, sids: list[str]) -> list[int]:
        """:meth:`readers` of several streams at once (one round trip where it matters)."""
        return [self.readers(sid) for sid in sids]

    def request_cancel(self, sid: str) -> None:
        """Flag the stream for cancellation and tell its producer's process."""
        raise NotImplementedError

    def cancel_requested(self, sid: str) -> bool:
        """Whether a cancel was requested."""
        raise NotImplementedError

    def forget(self, sid: str) -> None:
        """Remove an ended stream for every process at once (its log, metadata, readers and
        cancel flag): it is then unknown, as if expired, and a reader still attached ends with
        ``stream_gap``. Not for a running stream: its producer would append to nothing."""
        raise NotImplementedError

    # -- the directory the inspector reads (``streams.inspect``) ----------------------------
    def recent(self, limit: int) -> list[str]:
        """Ids of the streams started lately (running, or ended and still kept), newest first,
        at most ``limit``; some may have expired since."""
        raise NotImplementedError

    def metas(self, sids: list[str], fields: tuple[str, ...]) -> list[dict[str, Any] | None]:
        """The ``fields`` of several streams' metadata (those they have), ``None`` for a
        stream unknown or expired; one round trip where it matters."""
        out: list[dict[str, Any] | None] = []
        for sid in sids:
            meta = self.meta(sid)
            out.append(None if meta is None else {k: meta[k] for k in fields if k in meta})
        return out

    def count_resume(self, sid: str) -> None:
        """Add one to the stream's ``resumes`` (nothing if it is unknown)."""

    def inspected(self) -> None:
        """Someone lists the streams (other processes publish their figures for a while)."""

    def publish_live(self, counters: dict[str, list[Any]]) -> None:
        """Show the figures of this process's running streams (``streams.live``) to other
        processes while someone inspects, each with its readers attached here (``live``)."""

    def live(self, owners: list[str]) -> dict[str, list[Any]]:
        """The figures ``owners`` last published (:meth:`publish_live`), by stream id."""
        return {}


@dataclass
class _Log:
    meta: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    readers: dict[str, float] = field(default_factory=dict)  # reader id -> lease expiry
    finished_at: float | None = None
    cancel: bool = False
    watchers: set[gevent.event.Event] = field(default_factory=set)


class MemoryStore(Store):
    """One process's streams, in a dict; expired logs are swept lazily.

    ``clock`` (monotonic seconds) is a parameter so tests can move time by hand.
    """

    def __init__(self, ttl: float, lease: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.ttl = ttl
        self.lease = lease
        self.clock = clock
        self._logs: dict[str, _Log] = {}
        self._next_sweep = 0.0

    def _get(self, sid: str) -> _Log | None:
        log = self._logs.get(sid)
        if log is not None and log.finished_at is not None and \
                self.clock() - log.finished_at > self.ttl:
            del self._logs[sid]
            return None
        return log

    def _sweep(self) -> None:
        now = self.clock()
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

    def drop(self, sid: str) -> None:
        """Forget a stream at once (a mirror whose log now lives elsewhere)."""
        log = self._logs.pop(sid, None)
        if log is not None:
            for wake in log.watchers:
                wake.set()  # its readers go and read where the log lives now

    def forget(self, sid: str) -> None:
        self.drop(sid)  # its readers wake and find it gone

    def meta(self, sid: str) -> dict[str, Any] | None:
        log = self._get(sid)
        return None if log is None else log.meta

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        log = self._logs[sid]
        log.events.append(event)
        if final:
            log.finished_at = self.clock()
            log.meta["state"] = "finished"
            log.meta["last"] = seq
        for wake in log.watchers:
            wake.set()

    def annotate(self, sid: str, fields: dict[str, Any]) -> None:
        log = self._get(sid)
        if log is not None:
            log.meta.update(fields)

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        log = self._get(sid)
        if log is None:
            return []
        end = None if limit is None else after + limit
        return list(enumerate(log.events[after:end], start=after + 1))

    def count(self, sid: str) -> int:
        log = self._get(sid)
        return 0 if log is None else len(log.events)

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
            log.readers[reader] = self.clock() + self.lease

    def _live(self, log: _Log) -> int:
        now = self.clock()
        return sum(1 for expiry in log.readers.values() if expiry > now)

    def detach(self, sid: str, reader: str) -> int:
        log = self._get(sid)
        if log is None:
            return 0
        if log.readers.pop(reader, None) is not None:
            left = self._live(log)
            if not left:
                self.control_handler("idle", sid)
            return left
        return self._live(log)

    def detach_quietly(self, sid: str, reader: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.readers.pop(reader, None)

    def readers(self, sid: str) -> int:
        log = self._get(sid)
        return 0 if log is None else self._live(log)

    def in_use(self, sid: str) -> bool:
        """Whether a reader holds a live lease on ``sid`` or watches it."""
        log = self._get(sid)
        return log is not None and bool(log.watchers or self._live(log))

    def request_cancel(self, sid: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.cancel = True
            self.control_handler("cancel", sid)

    def cancel_requested(self, sid: str) -> bool:
        log = self._get(sid)
        return bool(log and log.cancel)

    def recent(self, limit: int) -> list[str]:
        self._sweep()
        out = []
        for sid in reversed(list(self._logs)):  # insertion order: the order they started
            if len(out) >= limit:
                break
            if self._get(sid) is not None:
                out.append(sid)
        return out

    def count_resume(self, sid: str) -> None:
        log = self._get(sid)
        if log is not None:
            log.meta["resumes"] = int(log.meta.get("resumes") or 0) + 1
