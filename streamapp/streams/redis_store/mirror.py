"""The local mirror: the logs this process produces, served without Redis."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent.event
import redis

from ...events import Event
from ..store import MemoryStore
from .control import ControlChannel
from .health import Health

logger = logging.getLogger(__name__)


class Mirror:
    """The per-stream operations of the store on a stream this process produces.

    Its readers never wait on Redis: they read, wait and hold their leases here (reader
    counts add Redis's, the other processes' readers). A stream is *shared* when Redis
    should hear about it now: not local-only (created while Redis was down, or its
    metadata given up) and Redis not down. ``notify(kind, sid)`` tells the producer
    ("idle", "cancel"). Once a stream's end is in Redis (``ended``) its mirror is freed,
    as soon as no reader here uses it: a reader here never turns to Redis for the last events
    of a stream it reads, nor to leave it (a reader stuck longer than ``lease`` does)."""

    def __init__(self, ttl: float, lease: float, health: Health, control: ControlChannel,
                 notify: Callable[[str, str], None]) -> None:
        self.logs = logs = MemoryStore(ttl, lease=lease)
        self.health, self.control, self.notify = health, control, notify
        self.local_only: set[str] = set()  # never sent to Redis
        self._held: set[str] = set()  # created here and not dropped (some may have expired)
        self._prune_at = 1024  # _held is pruned of expired mirrors when it grows past this
        self.kept_for = lease  # seconds an ended mirror is kept at most for its readers here
        self._over: dict[str, float] = {}  # sid -> when its end reached Redis (monotonic)
        # The operations that are the log's own: the memory store's, without a call between.
        self.meta, self.read, self.count = logs.meta, logs.read, logs.count
        self.watch, self.wait = logs.watch, logs.wait
        self.attach, self.readers = logs.attach, logs.readers

    def holds(self, sid: str) -> bool:
        """Whether this process produces ``sid`` (its log is mirrored here)."""
        return self.logs.meta(sid) is not None

    def shared(self, sid: str) -> bool:
        """Whether Redis should hear about ``sid`` now."""
        return sid not in self.local_only and not self.health.down

    def create(self, sid: str, meta: dict[str, Any]) -> None:
        """Start mirroring a new stream."""
        self.logs.create(sid, meta)
        held = self._held
        held.add(sid)
        if len(held) > self._prune_at:
            for gone in [s for s in held if self.logs.meta(s) is None]:
                held.discard(gone)
            self._prune_at = max(1024, 2 * len(held))

    def keep_local(self, sids: list[str]) -> None:
        """Serve these streams from here only: Redis never hears of them."""
        self.local_only.update(sids)

    def drop(self, sid: str) -> None:
        """Free ``sid``'s mirror now (forgotten); its readers here go on from Redis."""
        self.logs.drop(sid)
        self._held.discard(sid)
        self._over.pop(sid, None)

    def ended(self, sid: str) -> None:
        """``sid``'s end is in Redis (its log is whole there): free its mirror, now or once
        the last reader here leaves it."""
        if self.logs.in_use(sid):
            self._over[sid] = time.monotonic()
        else:
            self.drop(sid)

    def _left(self, sid: str) -> None:
        if sid in self._over and not self.logs.in_use(sid):
            self.drop(sid)

    def tidy(self) -> None:
        """Forget the local-only streams whose mirror expired; free the ended mirrors kept
        ``kept_for`` for a reader here that has not left."""
        if self.local_only:
            self.local_only.difference_update([sid for sid in self.local_only if self.logs.meta(sid) is None])
        if self._over:
            due = time.monotonic() - self.kept_for
            for sid in [sid for sid, at in self._over.items() if at <= due]:
                self.drop(sid)

    def shared_streams(self) -> list[str]:
        """The shared streams mirrored here."""
        return [sid for sid in self._held if self.holds(sid) and self.shared(sid)]

    def log(self, sid: str) -> tuple[dict[str, Any], list[tuple[int, Event]]]:
        """``sid``'s metadata and its whole log so far."""
        return self.logs.meta(sid) or {}, self.logs.read(sid, 0)

    def flag(self, sid: str) -> None:
        """Note a cancel asked elsewhere (for ``cancel_requested``)."""
        self.logs.request_cancel(sid)

    # -- the per-stream operations beyond the log's own (the facade routes here for
    # -- the streams it holds)
    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        self.logs.unwatch(sid, wake)
        if self._over:
            self._left(sid)

    def detach(self, sid: str, reader: str) -> int:
        # The last of our readers: "idle" to the producer; the grace's end counts Redis's too.
        before = self.logs.readers(sid)
        left = self.logs.detach(sid, reader)
        if left < before and not left:
            self.notify("idle", sid)
        if self._over:
            self._left(sid)
        return left

    def detach_quietly(self, sid: str, reader: str) -> None:
        self.logs.detach_quietly(sid, reader)
        if self._over:
            self._left(sid)

    def request_cancel(self, sid: str) -> None:
        self.logs.request_cancel(sid)
        self.notify("cancel", sid)  # no round trip, and works with Redis down
        if self.shared(sid):
            try:
                self.control.flag_cancel(sid)
            except redis.RedisError as exc:
                self.health.lost(exc)

    def cancel_requested(self, sid: str) -> bool:
        if self.logs.cancel_requested(sid) or not self.shared(sid):
            return self.logs.cancel_requested(sid)
        try:
            return self.control.cancel_flagged(sid)
        except redis.RedisError as exc:
            self.health.lost(exc)
            return False
