"""The publisher: new streams' metadata to Redis, off the start path."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent
import gevent.event
import redis

from .codec import Keys
from .health import Health
from .scripts import Scripts

logger = logging.getLogger(__name__)


class Publisher:
    """A greenlet that sends announced streams' metadata to Redis, batch after batch (one
    script call per batch, on a connection of its own), while their upstream requests are
    under way. A stream's id reaches no client before its metadata is in (``published``).

    A batch Redis does not take in ``tries`` tries is given up: ``give_up(sids)`` (those
    streams are then served by this process only), and whatever of it reached Redis anyway
    (a reply lost) is deleted by :meth:`forget_strays` once Redis answers. ``done()`` is
    called after every round (the writer sends what waited for the metadata)."""

    tries = 3
    backoff = 0.1  # seconds before the second try; doubles each time

    def __init__(self, connect: Callable[[], redis.Redis], scripts: Scripts, client: redis.Redis,
                 keys: Keys, health: Health, give_up: Callable[[list[str]], None],
                 done: Callable[[], None]) -> None:
        self.connect, self.scripts, self.client, self.keys = connect, scripts, client, keys
        self.health, self.give_up, self.done = health, give_up, done
        self.publishing: dict[str, gevent.event.Event] = {}  # sid -> set once Redis has its meta
        self._new: list[tuple[str, list[str]]] = []  # the next batch: (sid, meta fields and values)
        self._strays: set[str] = set()  # given up: to delete from Redis once it answers
        self._announce = gevent.event.Event()
        self._own: redis.Redis | None = None

    def announce(self, sid: str, fields: list[str]) -> None:
        """Queue ``sid``'s metadata (``fields``: field, JSON value, ...); returns at once."""
        if sid not in self.publishing:
            self.publishing[sid] = gevent.event.Event()
        self._new.append((sid, fields))
        self._announce.set()

    def published(self, sid: str, timeout: float) -> None:
        """Wait (at most ``timeout``) until ``sid``'s metadata is in Redis or given up."""
        done = self.publishing.get(sid)
        if done is not None:
            done.wait(timeout)

    def run(self) -> None:
        """The publisher's loop; never dies."""
        while True:
            self._announce.wait()
            self._announce.clear()
            batch, self._new = self._new, []
            try:
                self._publish(batch)
            except Exception:  # noqa: BLE001 - the last line: a publisher that dies strands new streams
                logger.exception("the Redis publisher failed a round")
                self.give_up([sid for sid, _ in batch])
            for sid, _ in batch:
                done = self.publishing.pop(sid, None)
                if done is not None:
                    done.set()
            self.done()

    def _publish(self, batch: list[tuple[str, list[str]]]) -> None:
        problem: Exception | None = None
        for attempt in range(self.tries):
            try:
                if self._own is None:
                    self._own = self.connect()
                self.scripts.publish(self._own, batch)
            except Exception as exc:  # noqa: BLE001 - Redis, or a bug: retried, then given up
                problem = exc
                if isinstance(exc, redis.RedisError):
                    self.health.lost(exc)
                if attempt + 1 < self.tries:
                    gevent.sleep(self.backoff * 2 ** attempt)
                continue
            self.health.back()
            return
        sids = [sid for sid, _ in batch]
        self.give_up(sids)
        self._strays.update(sids)
        if not self.health.down:
            logger.warning("%d new streams are served by this process only: %s", len(sids), problem)

    def forget_strays(self) -> None:
        """Delete what Redis may hold of the streams given up (raises ``redis.RedisError``)."""
        if self._strays:
            strays = list(self._strays)
            self.client.delete(*(self.keys(kind, sid) for sid in strays for kind in ("meta", "log")))
            self._strays.difference_update(strays)

    def close(self) -> None:
        """Close the publisher's connection."""
        if self._own is not None:
            self._own.close()
