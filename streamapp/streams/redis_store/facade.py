"""``RedisStore``: the store's interface over its parts, with one routing point."""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent
import gevent.event
import redis

from ...events import Event
from ..store import Store
from .clients import Clients
from .codec import Keys, meta_fields
from .control import RECOVERY_S, ControlChannel, Liveness
from .directory import Directory
from .dispatcher import Dispatchers
from .health import Health
from .mirror import Mirror
from .publisher import Publisher
from .remote import Remote
from .scripts import Scripts
from .writer import Writer

logger = logging.getLogger(__name__)


class RedisStore(Store):
    """Streams in Redis; see the package docstring for the keys, the parts and degraded mode.

    Every per-stream operation goes through :meth:`_side`: the mirror for a stream this
    process produces, Redis for the rest."""

    shared = True

    def __init__(self, url: str, prefix: str, ttl: float, running_ttl: float, lease: float,
                 pool_size: int = 100, blocking_pool_size: int = 4, commit_window: float = 0.0,
                 recent_max: int = 1000) -> None:
        super().__init__()
        self.prefix, self.lease = prefix, lease
        ended_ttl = int(ttl) or 1
        keys, clients = Keys(prefix), Clients(url, prefix)
        self.health = Health()
        self.redis = clients.short(pool_size)
        self._blocking = clients.blocking(blocking_pool_size)
        self.scripts = Scripts(self.redis, keys, ended_ttl, int(running_ttl) + ended_ttl, recent_max)
        self.control = ControlChannel(clients, self.redis, keys, self.health, self._deliver,
                                      flag_ttl=max(ended_ttl, int(lease) + 1))
        self.liveness = Liveness(self.redis, keys)
        self.dispatchers = Dispatchers(self._blocking, self.redis, keys, self.health,
                                       blocking_pool_size, bell_ttl=ended_ttl)
        self.mirror = Mirror(ttl, lease, self.health, self.control, self._notify)
        self.directory = Directory(self.redis, keys, self.health, self.scripts)
        self.remote = Remote(self.redis, keys, self.health, self.control, self.dispatchers,
                             self.scripts, lease)
        self._progress = gevent.event.Event()  # set after each round of the writer or the publisher
        self.publisher = Publisher(lambda: clients.own("publish"), self.scripts, self.redis, keys,
                                   self.health, give_up=self.mirror.keep_local, done=self._published_round)
        self.writer = Writer(lambda: clients.own("write"), self.scripts, self.health,
                             commit_window=commit_window, held=self.publisher.publishing,
                             local_only=self.mirror.local_only, ended=self.mirror.ended,
                             lost=self._republish, progress=self._progress)
        # The append path, without a lookup per event.
        self._logs, self._local_only = self.mirror.logs, self.mirror.local_only
        self._write = self.writer.append
        self._greenlets: list[gevent.Greenlet] = []
        self._beat: gevent.Greenlet | None = None
        self._lost = False  # Redis lost this process's keys: its streams are still to be sent again
        self._lost_at = -RECOVERY_S  # monotonic time the loss was last noticed
        self.closed = False

    def _side(self, sid: str) -> Mirror | Remote:
        """The one routing point: a stream produced here is served from its mirror, any
        other from Redis."""
        return self.mirror if self._logs.meta(sid) is not None else self.remote

    def _notify(self, kind: str, sid: str) -> None:
        self.control_handler(kind, sid)

    def _deliver(self, kind: str, sid: str) -> None:
        """A control message addressed to this process."""
        if kind == "forget":
            self._forget_here(sid)
            return
        if kind == "cancel":
            self.mirror.flag(sid)  # for cancel_requested()
        self.control_handler(kind, sid)

    def _published_round(self) -> None:
        self.writer.wake()  # the events held back for the metadata

    # -- lifecycle ------------------------------------------------------------
    def start(self, owner: str) -> None:
        self.liveness.owner = self.directory.owner = owner
        self.heartbeat()
        self._greenlets = [self.control.start(owner), gevent.spawn(self.writer.run),
                           gevent.spawn(self.publisher.run)]

    def close(self) -> None:
        self.closed = True
        self.writer.closing = True
        self.flush()
        greenlets = list(self._greenlets)
        if self._beat is not None:
            greenlets.append(self._beat)  # a liveness write in flight: its connection closes below
        self.dispatchers.close()
        for greenlet in greenlets:
            greenlet.kill(block=False)
        self.redis.connection_pool.disconnect()
        self._blocking.connection_pool.disconnect()
        self.writer.close()
        self.publisher.close()

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything appended so far is in Redis (or dropped)."""
        deadline = time.monotonic() + timeout
        while (self.writer.busy() or self.publisher.publishing) and time.monotonic() < deadline:
            self._progress.clear()
            self._progress.wait(max(0.0, deadline - time.monotonic()))

    def heartbeat(self) -> None:
        # A process that dies (SIGKILL, a lost host) stops renewing its liveness key.
        # In a greenlet of its own: a Redis that does not answer must not hold up the tick.
        if self._beat is None or self._beat.dead:
            self._beat = gevent.spawn(self._renew)

    def _renew(self) -> None:
        self.mirror.tidy()
        try:
            if self.liveness.renew():
                self._noticed_loss()
            self.publisher.forget_strays()
        except redis.RedisError as exc:
            self.health.lost(exc)
            return
        self.health.back()
        if self._lost:
            self._lost = False
            sids = self.mirror.shared_streams()
            logger.warning("Redis lost this process's keys (restarted empty?); publishing its %d "
                           "running streams again", len(sids))
            self.writer.resend(sids)

    def _noticed_loss(self) -> None:
        """Redis lost this process's keys: others' streams may be missing for a while, and
        ours are to be sent again (by the next heartbeat that reaches Redis)."""
        self._lost = True
        self._lost_at = time.monotonic()

    def recovering(self) -> bool:
        if time.monotonic() - self._lost_at < RECOVERY_S:
            return True
        try:  # asked when a stream is missing: maybe Redis lost it since our last tick
            recovering = self.liveness.recovering()
        except redis.RedisError as exc:
            self.health.lost(exc)
            return False
        if recovering and self.liveness.owner:  # started: ours go out now, if lost too
            self.heartbeat()
        return recovering

    def _republish(self, sids: list[str]) -> None:
        """Redis has no metadata for these streams of ours (it lost them): send it and
        each log so far again, the log held back until the metadata is in."""
        self._lost_at = time.monotonic()
        for sid in sids:
            if sid in self.publisher.publishing:
                continue  # its metadata is on its way; its events wait for it
            if not self.mirror.holds(sid) or not self.mirror.shared(sid):
                self.writer.forget_end(sid)
                logger.warning("stream %s: Redis lost it and this process no longer holds it", sid)
                continue
            meta, events = self.mirror.log(sid)
            self.publisher.announce(sid, meta_fields(meta, self.liveness.owner))
            self.writer.rewrite(sid, events, int(meta.get("last") or 0))

    def check(self) -> str | None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            self.health.lost(exc)
            return "Redis unreachable: new streams are served by their own process only, " \
                   "and shared rate limits count per process"
        self.health.back()
        return None

    def owner_alive(self, meta: dict[str, Any]) -> bool:
        owner = meta.get("owner")
        if owner is None or owner == self.liveness.owner:
            return True  # our own (a local record carries no owner)
        with self.health.failing():
            return self.liveness.alive(owner)

    def owners_alive(self, owners: set[str | None]) -> set[str | None]:
        others = sorted(o for o in owners if o is not None and o != self.liveness.owner)
        mine = owners.difference(others)  # our own, and local records (no owner)
        if not others:
            return mine
        with self.health.failing():
            return mine | self.liveness.alive_many(others)

    def cancelled(self, sids: list[str]) -> set[str]:
        """Cancels of our own streams; while Redis is down, those asked here only."""
        found = {sid for sid in sids if self.mirror.logs.cancel_requested(sid)}
        shared = [sid for sid in sids if sid not in found and self.mirror.shared(sid)]
        if not shared:
            return found
        try:
            return found | self.control.cancel_flags(shared)
        except redis.RedisError as exc:
            self.health.lost(exc)
            return found

    # -- streams --------------------------------------------------------------
    def create(self, sid: str, meta: dict[str, Any]) -> None:
        # The publisher sends the meta while the upstream request is under way: nothing
        # waits for Redis until the stream's id is about to be shown (``published``).
        self.mirror.create(sid, meta)
        if self.health.down:  # degraded: this process serves it alone, Redis never sees it
            self.mirror.keep_local([sid])
            return
        self.publisher.announce(sid, meta_fields(meta, self.liveness.owner))

    def published(self, sid: str, timeout: float) -> None:
        self.publisher.published(sid, timeout)

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        # Local readers see the event now; Redis gets it from the writer's next batch.
        self._logs.append(sid, seq, event, final)
        if sid not in self._local_only:
            self._write(sid, seq, event, final)

    def annotate(self, sid: str, fields: dict[str, Any]) -> None:
        # The mirror's metadata now; Redis's from the writer's next round, after the stream's
        # own metadata is in (the publisher's fields are never written over).
        self._logs.annotate(sid, fields)
        if sid not in self._local_only:
            self.writer.annotate(sid, fields)

    def is_local(self, sid: str) -> bool:
        return self.mirror.holds(sid)

    def meta(self, sid: str) -> dict[str, Any] | None:
        return self._side(sid).meta(sid)

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        return self._side(sid).read(sid, after, limit)

    def count(self, sid: str) -> int:
        return self._side(sid).count(sid)

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        self._side(sid).watch(sid, wake)

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        # Both: a stream watched in its mirror may be read from Redis since.
        self.mirror.unwatch(sid, wake)
        self.remote.unwatch(sid, wake)

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        self._side(sid).wait(sid, after, timeout, wake)

    # -- readers and cancel ---------------------------------------------------
    def attach(self, sid: str, reader: str) -> None:
        self._side(sid).attach(sid, reader)

    def detach(self, sid: str, reader: str) -> int:
        return self._side(sid).detach(sid, reader)

    def detach_quietly(self, sid: str, reader: str) -> None:
        self._side(sid).detach_quietly(sid, reader)

    def readers(self, sid: str) -> int:
        return self.reader_counts([sid])[0]


    def reader_counts(self, sids: list[str]) -> list[int]:
        """Live leases per stream: Redis's (other processes' readers), plus the mirror's for
        our own streams (only the mirror's while Redis is down); one round trip."""
        counts = [self.mirror.readers(sid) for sid in sids]
        sides = [self._side(sid) for sid in sids]
        ask = [i for i, sid in enumerate(sids) if sides[i] is self.remote or self.mirror.shared(sid)]
        if not ask:
            return counts
        try:
            found = self.scripts.count([sids[i] for i in ask], time.time())
        except redis.RedisError as exc:
            if any(sides[i] is self.remote for i in ask):
                raise self.health.error(exc) from exc
            self.health.lost(exc)
            return counts
        for i, count in zip(ask, found, strict=True):
            counts[i] += count
        return counts

    def request_cancel(self, sid: str) -> None:
        self._side(sid).request_cancel(sid)

    def cancel_requested(self, sid: str) -> bool:
        return self._side(sid).cancel_requested(sid)

    def forget(self, sid: str) -> None:
        """Drop ``sid`` here, then (unless Redis never saw it) its keys in Redis and the
        mirror of the process that produced it (its readers there go to Redis and find it
        gone). A Redis failure is a ``StoreError``."""
        local_only = sid in self._local_only
        self._forget_here(sid)
        if not local_only:
            self.remote.forget(sid)

    def _forget_here(self, sid: str) -> None:
        # The writer first: an event of it still pending would find no metadata in Redis,
        # and a stream Redis lost is sent again only while its mirror holds it.
        self.writer.discard(sid)
        self.mirror.drop(sid)
        self._local_only.discard(sid)

    # -- the directory ----------------------------------------------------------
    def recent(self, limit: int) -> list[str]:
        """Redis's recent streams, with this process's that Redis never saw."""
        sids = self.directory.recent(limit)
        local = [sid for sid in self._local_only if self.mirror.holds(sid)]
        return local + sids if local else sids

    def metas(self, sids: list[str], fields: tuple[str, ...]) -> list[dict[str, Any] | None]:
        local = {sid for sid in sids if sid in self._local_only}
        found = iter(self.directory.metas([sid for sid in sids if sid not in local], fields))
        out: list[dict[str, Any] | None] = []
        for sid in sids:
            if sid in local:
                meta = self.mirror.meta(sid)
                out.append(None if meta is None else {k: meta[k] for k in fields if k in meta})
            else:
                out.append(next(found))
        return out

    def count_resume(self, sid: str) -> None:
        if sid in self._local_only:
            self.mirror.logs.count_resume(sid)
        else:
            self.directory.resumed(sid)

    def inspected(self) -> None:
        self.directory.inspected()

    def publish_live(self, counters: dict[str, list[Any]]) -> None:
        try:
            self.directory.publish_live(counters, self.mirror.readers)
        except redis.RedisError as exc:
            self.health.lost(exc)

    def live(self, owners: list[str]) -> dict[str, list[Any]]:
        return self.directory.live(owners)
