"""The Redis store: stream logs shared by every worker and host.

Keys (``P`` is ``STREAMAPP_REDIS_PREFIX``), each with a TTL so nothing grows
without bound:

- ``P:log:<sid>``      a Redis stream; entry ``0-<seq>`` holds ``{"e": json}``
- ``P:meta:<sid>``     a hash: flavor, owner, state, ...
- ``P:readers:<sid>``  a sorted set: reader id -> lease expiry (unix time)
- ``P:cancel:<sid>``   set when a cancel was requested

Control messages ("cancel <sid>", "idle <sid>") go by pub/sub to
``P:ctl:<owner>``, the channel of the process that runs the producer. Readers
on other processes block on ``XREAD`` for new entries; readers in the
producer's own process read a local mirror of the log (a ``MemoryStore``) and
never wait on Redis.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event
import redis

from ..errors import StoreError
from ..events import Event, from_dict, to_dict
from .store import MemoryStore, Store

logger = logging.getLogger(__name__)
OWNER_TTL_S = 10  # a process unheard of this long is taken for dead


@contextmanager
def store_errors() -> Iterator[None]:
    """Raise ``StoreError`` (a 503) when Redis fails."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreError(f"the stream store (Redis) is unavailable: {exc}") from exc


class RedisStore(Store):
    """Streams in Redis; see the module docstring for the key layout."""

    shared = True

    def __init__(self, url: str, prefix: str, ttl: float, running_ttl: float, lease: float,
                 max_connections: int = 2000) -> None:
        super().__init__()
        self.url, self.prefix, self.ttl, self.lease = url, prefix, int(ttl) or 1, lease
        self.running_ttl = int(running_ttl) + self.ttl
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=10,
            socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
        self.redis = redis.Redis(connection_pool=pool)
        self._listener: gevent.Greenlet | None = None
        self._owner = ""
        self.local = MemoryStore(ttl)  # mirrors of the logs this process produces
        self._pending: list[tuple[str, int, str, bool]] = []
        self._kick = gevent.event.Event()
        self._flushed = gevent.event.Event()
        self._writer: gevent.Greenlet | None = None
        self._writing = False

    def _key(self, kind: str, sid: str) -> str:
        return f"{self.prefix}:{kind}:{sid}"

    # -- lifecycle ---------------------------------------------------------
    def start(self, owner: str) -> None:
        self._owner = owner
        self.heartbeat()
        self._listener = gevent.spawn(self._listen)
        self._writer = gevent.spawn(self._write_loop)

    def close(self) -> None:
        self.flush()
        for greenlet in (self._listener, self._writer):
            if greenlet is not None:
                greenlet.kill(block=False)
        self.redis.connection_pool.disconnect()

    def _listen(self) -> None:
        """Deliver control messages; survives idle periods and Redis restarts."""
        channel = f"{self.prefix}:ctl:{self._owner}"
        while True:
            # No socket timeout: an idle subscriber must not die (flask-sse #6).
            client = redis.Redis.from_url(self.url, socket_timeout=None,
                                          socket_keepalive=True, health_check_interval=30)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                for message in pubsub.listen():
                    kind, _, sid = message["data"].decode().partition(" ")
                    self.control_handler(kind, sid)
            except redis.RedisError as exc:
                logger.warning("control listener lost Redis (%s); reconnecting", exc)
                gevent.sleep(0.5)
            finally:
                pubsub.close()
                client.close()

    def _tell_owner(self, sid: str, kind: str) -> None:
        if self.is_local(sid):
            self.control_handler(kind, sid)  # no round trip for our own streams
            return
        owner = self.redis.hget(self._key("meta", sid), "owner")
        if owner is not None:
            self.redis.publish(f"{self.prefix}:ctl:{json.loads(owner)}", f"{kind} {sid}")

    def heartbeat(self) -> None:
        # A process that dies (SIGKILL, a lost host) stops renewing this key.
        try:
            self.redis.set(f"{self.prefix}:owner:{self._owner}", 1, ex=OWNER_TTL_S)
        except redis.RedisError as exc:
            logger.warning("could not renew this process's liveness key: %s", exc)

    def owner_alive(self, meta: dict[str, Any]) -> bool:
        owner = meta.get("owner")
        if owner is None or owner == self._owner:
            return True  # our own (a local record carries no owner)
        with store_errors():
            return bool(self.redis.exists(f"{self.prefix}:owner:{owner}"))

    def cancelled(self, sids: list[str]) -> set[str]:
        if not sids:
            return set()
        with store_errors(), self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.exists(self._key("cancel", sid))
            found = pipe.execute()
        return {sid for sid, hit in zip(sids, found, strict=True) if hit}

    # -- streams -----------------------------------------------------------
    def create(self, sid: str, meta: dict[str, Any]) -> None:
        key = self._key("meta", sid)
        with store_errors(), self.redis.pipeline() as pipe:
            pipe.hset(key, mapping={k: json.dumps(v) for k, v in meta.items()})
            pipe.hset(key, "owner", json.dumps(self._owner))
            pipe.expire(key, self.running_ttl)
            pipe.execute()
        self.local.create(sid, meta)  # only once Redis has it: no orphan if Redis is down

    def meta(self, sid: str) -> dict[str, Any] | None:
        local = self.local.meta(sid)
        if local is not None:
            return local  # this process produces it: its own record is current
        with store_errors():
            raw = self.redis.hgetall(self._key("meta", sid))
        if not raw:
            return None
        out: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = json.loads(v)
            except ValueError:
                out[k.decode()] = v.decode()
        return out

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        # Local readers see the event now; Redis gets it from the writer greenlet,
        # which sends everything appended meanwhile in one pipeline (group commit).
        self.local.append(sid, seq, event, final)
        self._pending.append((sid, seq, json.dumps(to_dict(event), ensure_ascii=False), final))
        self._kick.set()

    def _write_loop(self) -> None:
        """Send pending appends to Redis, batch after batch, in order."""
        while True:
            self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending, []
            if batch:
                self._writing = True
                try:
                    self._write(batch)
                finally:
                    self._writing = False
                    self._flushed.set()

    def _write(self, batch: list[tuple[str, int, str, bool]]) -> None:
        for attempt in range(5):
            try:
                # One transaction: a stream's last event, its finished state and
                # its TTLs become visible together.
                with self.redis.pipeline(transaction=True) as pipe:
                    touched: dict[str, bool] = {}
                    for sid, seq, data, final in batch:
                        pipe.xadd(self._key("log", sid), {"e": data}, id=f"0-{seq}")
                        touched[sid] = touched.get(sid, False) or final
                    for sid, final in touched.items():
                        ttl = self.ttl if final else self.running_ttl
                        pipe.expire(self._key("log", sid), ttl)
                        if final:
                            pipe.hset(self._key("meta", sid), "state", json.dumps("finished"))
                            for kind in ("meta", "readers", "cancel"):
                                pipe.expire(self._key(kind, sid), ttl)
                    pipe.execute(raise_on_error=False)
                return
            except redis.RedisError as exc:
                logger.warning("writing %d events to Redis failed (%s), try %d", len(batch), exc, attempt + 1)
                gevent.sleep(0.1 * 2 ** attempt)
        logger.error("dropped %d events that Redis would not take; remote readers miss them", len(batch))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything appended so far is in Redis."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._kick.is_set() or self._writing) and time.monotonic() < deadline:
            self._flushed.clear()
            self._flushed.wait(max(0.0, deadline - time.monotonic()))

    def is_local(self, sid: str) -> bool:
        """Whether this process produces ``sid`` (its log is mirrored here)."""
        return self.local.meta(sid) is not None

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        if self.is_local(sid):
            return self.local.read(sid, after, limit)
        entries = self.redis.xrange(self._key("log", sid), min=f"(0-{after}", count=limit)
        return [(int(eid.split(b"-")[1]), from_dict(json.loads(fields[b"e"])))
                for eid, fields in entries]

    def count(self, sid: str) -> int:
        if self.is_local(sid):
            return self.local.count(sid)
        return self.redis.xlen(self._key("log", sid))

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        self.local.watch(sid, wake)  # only streams produced here; others wait in XREAD

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        self.local.unwatch(sid, wake)

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        if self.is_local(sid):
            self.local.wait(sid, after, timeout, wake)
            return
        # XREAD blocks in Redis; keep each block short so a wake-up is seen soon.
        block = max(1, int(min(1.0 if timeout is None else timeout, 1.0) * 1000))
        if not wake.is_set():
            self.redis.xread({self._key("log", sid): f"0-{after}"}, count=1, block=block)

    def attach(self, sid: str, reader: str) -> None:
        key = self._key("readers", sid)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {reader: time.time() + self.lease})
            pipe.expire(key, self.running_ttl)
            pipe.execute()

    def detach(self, sid: str, reader: str) -> int:
        key = self._key("readers", sid)
        with self.redis.pipeline() as pipe:
            pipe.zrem(key, reader)
            pipe.zcount(key, time.time(), "+inf")
            removed, left = pipe.execute()
        if removed and not left:
            self._tell_owner(sid, "idle")
        return left

    def detach_quietly(self, sid: str, reader: str) -> None:
        self.redis.zrem(self._key("readers", sid), reader)

    def readers(self, sid: str) -> int:
        return self.redis.zcount(self._key("readers", sid), time.time(), "+inf")

    def request_cancel(self, sid: str) -> None:
        with store_errors():
            self.redis.set(self._key("cancel", sid), 1, ex=self.running_ttl)
            self._tell_owner(sid, "cancel")

    def cancel_requested(self, sid: str) -> bool:
        return bool(self.redis.exists(self._key("cancel", sid)))
