"""The dispatchers: readers of other processes' streams wait on a few blocking connections."""

from __future__ import annotations

import logging
import secrets
import zlib

import gevent
import gevent.event
import redis

from ...errors import StoreError
from .clients import BLOCK_MS
from .codec import Keys
from .health import Health

logger = logging.getLogger(__name__)


class Dispatchers:
    """``size`` dispatchers, each with one blocking connection; a log is served by the one
    its key hashes to (started on first use). Readers do not hold a connection each while
    they wait."""

    def __init__(self, blocking: redis.Redis, client: redis.Redis, keys: Keys, health: Health,
                 size: int, bell_ttl: int) -> None:
        self.blocking, self.client, self.keys, self.health = blocking, client, keys, health
        self.bell_ttl = bell_ttl
        self.closed = False
        self._all: list[Dispatcher | None] = [None] * max(1, size)

    def _of(self, key: str, start: bool) -> Dispatcher | None:
        index = zlib.crc32(key.encode()) % len(self._all)
        dispatcher = self._all[index]
        if dispatcher is None and start:
            bell = self.keys("bell", secrets.token_hex(6))
            dispatcher = self._all[index] = Dispatcher(self, bell)
        return dispatcher

    def watch(self, key: str, wake: gevent.event.Event) -> None:
        """Set ``wake`` whenever the log at ``key`` moves on."""
        self._of(key, True).watch(key, wake)

    def unwatch(self, key: str, wake: gevent.event.Event) -> None:
        """Undo :meth:`watch`."""
        dispatcher = self._of(key, False)
        if dispatcher is not None:
            dispatcher.unwatch(key, wake)

    def wait(self, key: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        """Block until the log at ``key`` has an entry past ``after``, ``wake`` is set, or
        ``timeout``; ``StoreError`` if Redis failed meanwhile."""
        self._of(key, True).wait(key, after, timeout, wake)

    def ring(self, bell: str) -> None:
        """Make a dispatcher's XREAD return (it then reads the logs added since it began)."""
        with self.health.failing(), self.client.pipeline(transaction=False) as pipe:
            pipe.xadd(bell, {"r": "1"}, maxlen=1, approximate=False)
            pipe.expire(bell, self.bell_ttl)
            pipe.execute()

    def greenlets(self) -> list[gevent.Greenlet]:
        """The running dispatchers' greenlets."""
        return [d.greenlet for d in self._all if d is not None]

    def close(self) -> None:
        """Stop every dispatcher (their XREADs are cut)."""
        self.closed = True
        for greenlet in self.greenlets():
            greenlet.kill(block=False)


class _Watch:
    """What a dispatcher knows of one log: who watches it, who waits past which seq."""

    __slots__ = ("watchers", "waiters", "seen")

    def __init__(self) -> None:
        self.watchers: set[gevent.event.Event] = set()
        self.waiters: dict[gevent.event.Event, int] = {}  # wake -> the cursor it waits past
        self.seen = -1  # the highest seq this dispatcher saw in the log (-1: none yet)


class Dispatcher:
    """One blocking connection serving every wait on a share of the remote logs.

    Its greenlet runs ``XREAD BLOCK`` over all the logs with waiters or watchers
    (one entry each, from the lowest cursor waited past), wakes the readers whose
    log moved past their cursor, and goes round again. A wait on a log the
    XREAD in flight does not cover rings the dispatcher's doorbell (an ``XADD``
    to a key in the same XREAD), which cannot be missed the way a wake-up sent
    before the XREAD began could.
    """

    def __init__(self, pool: Dispatchers, bell: str) -> None:
        self.pool, self.bell = pool, bell
        self.logs: dict[str, _Watch] = {}
        self.inflight: dict[str, int] | None = None  # the XREAD under way: key -> seq
        self.rung: dict[str, int] | None = None  # the XREAD the doorbell was rung for
        self.bell_id = "0-0"
        self.failures = 0  # XREADs that failed so far; a waiter that saw one fail raises
        self.error = ""
        self.work = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)

    def watch(self, key: str, wake: gevent.event.Event) -> None:
        self.logs.setdefault(key, _Watch()).watchers.add(wake)

    def unwatch(self, key: str, wake: gevent.event.Event) -> None:
        log = self.logs.get(key)
        if log is not None:
            log.watchers.discard(wake)
            self._tidy(key, log)

    def _tidy(self, key: str, log: _Watch) -> None:
        if not log.watchers and not log.waiters and self.logs.get(key) is log:
            del self.logs[key]

    def wait(self, key: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        log = self.logs.setdefault(key, _Watch())
        if log.seen > after:
            return  # already known to have moved on
        log.waiters[wake] = after
        failures = self.failures
        try:
            self.work.set()
            inflight = self.inflight
            if inflight is not None and inflight.get(key, after + 1) > after and self.rung is not inflight:
                self.rung = inflight
                self.pool.ring(self.bell)
            wake.wait(timeout)
        finally:
            log.waiters.pop(wake, None)
            self._tidy(key, log)
        if self.failures != failures:
            raise StoreError(f"the stream store (Redis) is unavailable: {self.error}")

    def _request(self) -> dict[str, int]:
        request = {}
        for key, log in self.logs.items():
            if log.waiters:
                request[key] = min(log.waiters.values())
            elif log.seen >= 0:
                request[key] = log.seen
        return request

    def _run(self) -> None:
        failures = 0
        while True:
            try:
                self._round()
            except Exception as exc:  # noqa: BLE001 - Redis, or a bug: a dead dispatcher strands its readers
                if self.pool.closed:
                    return  # killed by close() in the middle of its XREAD
                if isinstance(exc, redis.RedisError):
                    self.pool.health.lost(exc)
                else:
                    logger.exception("a Redis dispatcher failed a round")
                self.failures += 1
                self.error = str(exc)
                self._wake_all()  # they raise StoreError
                failures += 1
                gevent.sleep(min(2.0, 0.05 * 2 ** failures))
            else:
                failures = 0

    def _round(self) -> None:
        """One XREAD over the logs waited on, and the wake-ups it brings."""
        request = self._request()
        if not request:
            self.work.clear()
            self.work.wait()
            return
        streams: dict[str, str] = {key: f"0-{seq}" for key, seq in request.items()}
        streams[self.bell] = self.bell_id
        self.inflight = request
        try:
            reply = self.pool.blocking.xread(streams, count=1, block=BLOCK_MS)
        finally:
            self.inflight = None
        self.pool.health.back()
        for name, entries in reply or ():
            if entries:
                self._moved(name.decode(), entries[-1][0])

    def _moved(self, key: str, entry_id: bytes) -> None:
        if key == self.bell:
            self.bell_id = entry_id.decode()
            return
        log = self.logs.get(key)
        if log is None:
            return
        seq = int(entry_id.split(b"-")[1])
        log.seen = max(log.seen, seq)
        for wake in log.watchers:
            wake.set()
        for wake, after in list(log.waiters.items()):
            if after < seq:
                wake.set()
                del log.waiters[wake]

    def _wake_all(self) -> None:
        for log in self.logs.values():
            for wake in log.watchers:
                wake.set()
            for wake in log.waiters:
                wake.set()
            log.waiters.clear()
