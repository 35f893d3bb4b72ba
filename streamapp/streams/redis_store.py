"""The Redis store: stream logs shared by every worker and host.

Keys (``P`` is ``STREAMAPP_REDIS_PREFIX``), each with a TTL so nothing grows
without bound:

- ``P:log:<sid>``      a Redis stream; entry ``0-<seq>`` holds ``{"e": json}``
- ``P:meta:<sid>``     a hash of JSON values: format, route, owner, state, and
                       ``last`` (the final seq) once finished
- ``P:readers:<sid>``  a sorted set: reader id -> lease expiry (unix time)
- ``P:cancel:<sid>``   set when a cancel was requested
- ``P:owner:<owner>``  a process's liveness key, renewed on every manager tick
- ``P:bell:<id>``      a doorbell that interrupts a dispatcher's blocking read

A stream's meta, readers and cancel keys get its log's TTL with every write,
so none of them expires before the log; a finished stream's keys expire
``ttl`` seconds after its end.

Control messages ("cancel <sid>", "idle <sid>") go by pub/sub to
``P:ctl:<owner>``, the channel of the process that runs the producer.

The process producing a stream keeps a local mirror of its log (a
``MemoryStore``): its readers never wait on Redis. A writer greenlet sends
what was appended meanwhile to Redis in one script call per batch (group
commit); a publisher greenlet does the same for new streams' metadata, while
their upstream requests are under way. A stream's events wait for its
metadata, and its id reaches no client before it is in (``published``); a
stream whose metadata Redis does not take is served by this process only, and
never reaches Redis (what may have, a reply lost, is deleted). The readers in the
producing process hold their leases in the mirror only (its counts are added
to Redis's). The mirror is freed once the stream's final event is in Redis.

Readers on other processes do not hold a connection each while they wait: a
few dispatcher greenlets (``blocking_pool_size``, each with its own
connection) run one ``XREAD BLOCK`` over every log watched in this process and
wake the readers whose stream moved on. Short commands use another pool
(``pool_size``), so waiting readers never starve the liveness key, leases or
appends.

When Redis is down, operations on streams that live only in Redis raise
``StoreError``; streams produced here go on for their local readers. A stream
created during an outage is served by this process only (it never reaches
Redis). The store notices Redis coming back on its own (the heartbeat).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event
import orjson
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from ..errors import StoreError
from ..events import Event, from_dict, to_dict
from .store import MemoryStore, Store

logger = logging.getLogger(__name__)
OWNER_TTL_S = 10  # a process unheard of this long is taken for dead
ALIVE_CACHE_S = 1.0  # how long an answer about another process's liveness is reused
BLOCK_MS = 5000  # a dispatcher's XREAD returns at least this often (its doorbell interrupts it)
MAX_UNRECORDED_ENDS = 10_000  # ends of streams still to be written to Redis after a lost batch
WRITE_CHUNK = 256  # streams per script call (a long script holds Redis up)
PUBLISH_TRIES = 3  # a new stream's metadata is tried this often before it is served here only
BATCH_EVENTS = 64  # this many pending appends are written at once, without the commit window
# The writer's one command per batch, for every stream in it: KEYS are each stream's log, meta,
# readers and cancel keys; ARGV[1] and ARGV[2] the TTLs of a running and of an ended stream; then
# per stream: how many events follow, its final seq (0 while it runs), and the events' seq, JSON
# pairs. It appends the events (one already there, after a retry, is skipped), records the end,
# and gives every key of the stream the log's TTL, so its meta, readers and cancel keys never
# expire before its log.
_WRITE = b"""
local a = 3
for k = 1, #KEYS, 4 do
  local nevents, last = tonumber(ARGV[a]), ARGV[a + 1]
  a = a + 2
  for i = a, a + 2 * nevents - 1, 2 do
    redis.pcall('XADD', KEYS[k], '0-' .. ARGV[i], 'e', ARGV[i + 1])
  end
  a = a + 2 * nevents
  local ttl = ARGV[1]
  if last ~= '0' then
    redis.call('HSET', KEYS[k + 1], 'state', '"finished"', 'last', last)
    ttl = ARGV[2]
  end
  for i = k, k + 3 do
    redis.call('EXPIRE', KEYS[i], ttl)
  end
end
"""
# The publisher's one command per batch: KEYS are new streams' meta keys, ARGV[1] a running
# stream's TTL; then per stream: how many field, value pairs follow, and the pairs. A field
# already there (the end, if the writer was first) is kept, and so is a TTL.
_PUBLISH = b"""
local a = 2
for k = 1, #KEYS do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + 2 * n, 2 do
    redis.call('HSETNX', KEYS[k], ARGV[i], ARGV[i + 1])
  end
  a = a + 1 + 2 * n
  redis.call('EXPIRE', KEYS[k], ARGV[1], 'NX')
end
"""
# Live leases of each stream (KEYS: readers keys; ARGV[1]: now), in one command.
_COUNT = b"""
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], ARGV[1], '+inf')
end
return out
"""


def _outage(exc: Exception) -> bool:
    """Whether ``exc`` says Redis cannot be reached; a full connection pool (redis-py's
    ``BlockingConnectionPool`` timing out, "No connection available.") is load, not an outage."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and \
        "No connection available" not in str(exc)


def _encode(event: Event) -> bytes:
    """An event's JSON, UTF-8 (orjson: a third of json's time); what orjson refuses (a lone
    surrogate, a provider's bad text; an integer past 64 bits) json writes, escaped."""
    obj = to_dict(event)
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj).encode()


def _decode(raw: bytes) -> Event:
    """Inverse of :func:`_encode`."""
    try:
        return from_dict(orjson.loads(raw))
    except orjson.JSONDecodeError:  # an escaped lone surrogate
        return from_dict(json.loads(raw))


class RedisStore(Store):
    """Streams in Redis; see the module docstring for the keys, pools and degraded mode."""

    shared = True
    write_tries = 5  # a batch Redis will not take is dropped after this many tries
    backoff = 0.1  # seconds before the second try; doubles each time
    end_retry_s = 1.0  # how often the end of a stream whose last batch was dropped is retried

    def __init__(self, url: str, prefix: str, ttl: float, running_ttl: float, lease: float,
                 pool_size: int = 100, blocking_pool_size: int = 4, commit_window: float = 0.0) -> None:
        super().__init__()
        self.url, self.prefix, self.ttl, self.lease = url, prefix, int(ttl) or 1, lease
        # The writer gathers appends this long (or until BATCH_EVENTS) before each batch: at
        # thousands of slow streams, a batch per append cost ~10 % of the CPU.
        self.commit_window = commit_window
        self.running_ttl = int(running_ttl) + self.ttl
        self.lease_ttl = int(lease) + 1  # a readers key outlives every lease in it
        name = re.sub(r"[^\w:.-]", "_", f"{prefix}-{os.getpid()}")  # CLIENT LIST shows who is who
        # Short commands: fail fast (one retry, for a connection Redis closed when it
        # restarted); the writer and the callers retry where it matters.
        self.redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=max(1, pool_size), timeout=5, socket_timeout=5,
            socket_connect_timeout=2, health_check_interval=30, client_name=f"{name}-short",
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1)))
        # Blocking reads: one connection per dispatcher, never shared with short commands;
        # one immediate retry, so a connection dropped under it does not end its readers.
        self._blocking = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=max(1, blocking_pool_size), timeout=5,
            socket_timeout=BLOCK_MS / 1000 + 10, socket_connect_timeout=2,
            health_check_interval=30, client_name=f"{name}-block", retry=Retry(NoBackoff(), 1)))
        self._name = name
        # The scripts: EVALSHA, loaded again by redis-py if Redis lost them (a restart).
        self._write_script = self.redis.register_script(_WRITE)
        self._publish_script = self.redis.register_script(_PUBLISH)
        self._count_script = self.redis.register_script(_COUNT)
        self._dispatchers: list[_Dispatcher | None] = [None] * max(1, blocking_pool_size)
        self._owner = ""
        self.local = MemoryStore(ttl, lease=lease)  # mirrors of the logs this process produces
        self._local_only: set[str] = set()  # created while Redis was down: never sent to it
        self._down = False  # Redis failed and has not answered since
        self._pending: list[tuple[str, int, bytes, bool]] = []  # the writer's next batch, in order
        self._new: list[tuple[str, list[str]]] = []  # the publisher's: (sid, meta fields and values)
        self._publishing: dict[str, gevent.event.Event] = {}  # sid -> set once Redis has its meta
        self._forget: set[str] = set()  # local-only streams to delete from Redis once it answers
        self._announce = gevent.event.Event()
        self._own: dict[str, redis.Redis] = {}  # the writer's and the publisher's connections
        self._ends: dict[str, int] = {}  # sid -> final seq whose batch was dropped
        self._kick = gevent.event.Event()
        self._full = gevent.event.Event()  # BATCH_EVENTS are pending: no need to wait for more
        self._flushed = gevent.event.Event()
        self._writing = False
        self._greenlets: list[gevent.Greenlet] = []
        self._beat: gevent.Greenlet | None = None
        self.closed = False
        self._alive: dict[str, tuple[float, bool]] = {}  # owner -> (asked at, alive)

    def _key(self, kind: str, sid: str) -> str:
        return f"{self.prefix}:{kind}:{sid}"

    # -- Redis health ---------------------------------------------------------
    def _lost(self, exc: Exception) -> None:
        """Note a failure; the first of an outage is logged."""
        if not self._down and _outage(exc):
            self._down = True
            logger.warning("Redis is unavailable (%s); streams started now are served by this "
                           "process only, until it is back", exc)

    def _back(self) -> None:
        if self._down:
            self._down = False
            logger.warning("Redis is back; new streams are shared again")

    @contextmanager
    def _failing(self) -> Iterator[None]:
        """Raise ``StoreError`` (a 503) when Redis fails."""
        try:
            yield
        except redis.RedisError as exc:
            raise self._store_error(exc) from exc

    def _store_error(self, exc: redis.RedisError) -> StoreError:
        self._lost(exc)
        return StoreError(f"the stream store (Redis) is unavailable: {exc}")

    def _shared(self, sid: str) -> bool:
        """Whether Redis should hear about a local stream now (not local-only, Redis not down)."""
        return sid not in self._local_only and not self._down

    # -- lifecycle ------------------------------------------------------------
    def start(self, owner: str) -> None:
        self._owner = owner
        self.heartbeat()
        self._greenlets = [gevent.spawn(self._listen), gevent.spawn(self._write_loop),
                           gevent.spawn(self._publish_loop)]

    def close(self) -> None:
        self.closed = True
        self.flush()
        greenlets = self._greenlets + [d.greenlet for d in self._dispatchers if d is not None]
        if self._beat is not None:
            greenlets.append(self._beat)  # a liveness write in flight: its connection closes below
        for greenlet in greenlets:
            greenlet.kill(block=False)
        self.redis.connection_pool.disconnect()
        self._blocking.connection_pool.disconnect()
        for client in self._own.values():
            client.close()

    def _listen(self) -> None:
        """Deliver control messages; survives idle periods and Redis restarts."""
        channel = f"{self.prefix}:ctl:{self._owner}"
        failures = 0
        while True:
            # No socket timeout: an idle subscriber must not die (flask-sse #6).
            client = redis.Redis.from_url(
                self.url, socket_timeout=None, socket_connect_timeout=2, socket_keepalive=True,
                health_check_interval=30, client_name=f"{self._name}-ctl",
                retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                failures = 0
                for message in pubsub.listen():
                    self._on_message(message["data"])
            except redis.RedisError as exc:
                self._lost(exc)
                failures += 1
                gevent.sleep(min(2.0, 0.05 * 2 ** failures))
            finally:
                pubsub.close()
                client.close()

    def _on_message(self, data: bytes) -> None:
        kind, _, sid = data.decode(errors="replace").partition(" ")
        if kind == "cancel":
            self.local.request_cancel(sid)  # the mirror's flag, for cancelled()
        try:
            self.control_handler(kind, sid)
        except Exception:  # noqa: BLE001 - one bad message must not stop the control channel
            logger.exception("control message %r failed", data)

    def _tell_owner(self, sid: str, kind: str) -> None:
        if self.is_local(sid):
            self.control_handler(kind, sid)  # no round trip for our own streams
            return
        with self._failing():
            owner = self.redis.hget(self._key("meta", sid), "owner")
            if owner is None:
                return
            owner = json.loads(owner)
            if owner == self._owner:  # ours, already finished (its mirror was freed)
                self.control_handler(kind, sid)
            else:
                self.redis.publish(f"{self.prefix}:ctl:{owner}", f"{kind} {sid}")

    def heartbeat(self) -> None:
        # A process that dies (SIGKILL, a lost host) stops renewing its liveness key.
        # In a greenlet of its own: a Redis that does not answer must not hold up the tick.
        if self._beat is None or self._beat.dead:
            self._beat = gevent.spawn(self._renew_liveness)

    def _renew_liveness(self) -> None:
        if self._local_only:  # forget the local-only streams whose mirror expired
            self._local_only = {sid for sid in self._local_only if self.local.meta(sid) is not None}
        try:
            self.redis.set(f"{self.prefix}:owner:{self._owner}", 1, ex=OWNER_TTL_S)
            if self._forget:  # local-only streams whose metadata may have reached Redis
                forget = list(self._forget)
                self.redis.delete(*(self._key(kind, sid) for sid in forget for kind in ("meta", "log")))
                self._forget.difference_update(forget)
        except redis.RedisError as exc:
            self._lost(exc)
            return
        self._back()

    def check(self) -> str | None:
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            self._lost(exc)
            return "Redis unreachable: new streams are served by their own process only, " \
                   "and shared rate limits count per process"
        self._back()
        return None

    def owner_alive(self, meta: dict[str, Any]) -> bool:
        owner = meta.get("owner")
        if owner is None or owner == self._owner:
            return True  # our own (a local record carries no owner)
        # Every reader of every stream of that process asks: one answer serves them for a second.
        now = time.monotonic()
        known = self._alive.get(owner)
        if known is not None and now - known[0] < ALIVE_CACHE_S:
            return known[1]
        with self._failing():
            alive = bool(self.redis.exists(f"{self.prefix}:owner:{owner}"))
        if len(self._alive) > 1000:
            self._alive = {o: k for o, k in self._alive.items() if now - k[0] < ALIVE_CACHE_S}
        self._alive[owner] = (now, alive)
        return alive

    def cancelled(self, sids: list[str]) -> set[str]:
        """Cancels of our own streams; while Redis is down, those asked here only."""
        found = {sid for sid in sids if self.local.cancel_requested(sid)}
        shared = [sid for sid in sids if sid not in found and self._shared(sid)]
        if not shared:
            return found
        try:
            hits = self.redis.mget([self._key("cancel", sid) for sid in shared])  # one command
        except redis.RedisError as exc:
            self._lost(exc)
            return found
        return found | {sid for sid, hit in zip(shared, hits, strict=True) if hit is not None}

    # -- streams --------------------------------------------------------------
    def create(self, sid: str, meta: dict[str, Any]) -> None:
        # The publisher sends the meta while the upstream request is under way: nothing
        # waits for Redis until the stream's id is about to be shown (``published``).
        fields = [x for k, v in meta.items() for x in (k, json.dumps(v))]
        fields += ("owner", json.dumps(self._owner))
        self.local.create(sid, meta)
        if self._down:  # degraded: this process serves it alone, Redis never sees it
            self._local_only.add(sid)
            return
        self._publishing[sid] = gevent.event.Event()
        self._new.append((sid, fields))
        self._announce.set()

    def published(self, sid: str, timeout: float) -> None:
        done = self._publishing.get(sid)
        if done is not None:
            done.wait(timeout)

    def _publish_loop(self) -> None:
        """Send new streams' metadata to Redis, batch after batch; never dies. The writer
        holds a stream's events back until its metadata is in (or given up)."""
        while True:
            self._announce.wait()
            self._announce.clear()
            batch, self._new = self._new, []
            try:
                self._publish(batch)
            except Exception:  # noqa: BLE001 - the last line: a publisher that dies strands new streams
                logger.exception("the Redis publisher failed a round")
                self._local_only.update(sid for sid, _ in batch)
            for sid, _ in batch:
                self._publishing.pop(sid).set()
            if self._pending:
                self._kick.set()  # the events held back meanwhile
            self._flushed.set()

    def _publish(self, batch: list[tuple[str, list[str]]]) -> None:
        """Try a few times; then the batch's streams are served by this process only, and
        whatever of them reached Redis (a reply lost, a chunk in) is deleted once it answers."""
        for attempt in range(PUBLISH_TRIES):
            try:
                self._run_script("publish", self._publish_script, self._publish_calls(batch))
            except Exception as exc:  # noqa: BLE001 - Redis, or a bug: retried, then given up
                problem: Exception = exc
                if isinstance(exc, redis.RedisError):
                    self._lost(exc)
                if attempt + 1 < PUBLISH_TRIES:
                    gevent.sleep(self.backoff * 2 ** attempt)
                continue
            self._back()
            return
        sids = [sid for sid, _ in batch]
        self._local_only.update(sids)
        self._forget.update(sids)
        if not self._down:
            logger.warning("%d new streams are served by this process only: %s", len(sids), problem)

    def _publish_calls(self, batch: list[tuple[str, list[str]]]) -> list[tuple[list, list]]:
        calls = []
        for start in range(0, len(batch), WRITE_CHUNK):
            chunk = batch[start:start + WRITE_CHUNK]
            args: list = [self.running_ttl]
            for _, fields in chunk:
                args.append(len(fields) // 2)
                args += fields
            calls.append(([self._key("meta", sid) for sid, _ in chunk], args))
        return calls

    def meta(self, sid: str) -> dict[str, Any] | None:
        local = self.local.meta(sid)
        if local is not None:
            return local  # this process produces it: its own record is current
        with self._failing():
            raw = self.redis.hgetall(self._key("meta", sid))
        if not raw:
            return None
        out: dict[str, Any] = {}
        for k, v in raw.items():
            try:
                out[k.decode()] = json.loads(v)
            except ValueError:
                out[k.decode()] = v.decode(errors="replace")
        return out

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        # Local readers see the event now; Redis gets it from the writer greenlet,
        # which sends everything appended meanwhile in one script call (group commit).
        self.local.append(sid, seq, event, final)
        if sid in self._local_only:
            return
        try:
            data = _encode(event)
        except (TypeError, ValueError):
            logger.exception("stream %s: event %d cannot be serialised; remote readers miss it", sid, seq)
            if final:
                self._remember_end(sid, seq)
            return
        self._pending.append((sid, seq, data, final))
        self._kick.set()
        if len(self._pending) >= BATCH_EVENTS:
            self._full.set()

    def _write_loop(self) -> None:
        """Send pending appends to Redis, batch after batch, in order; never dies."""
        while True:
            self._kick.wait(self.end_retry_s if self._ends else None)
            if self.commit_window and not self.closed:
                # Readers here have them already: only other processes' readers wait.
                self._full.wait(self.commit_window)
            self._kick.clear()
            self._full.clear()
            batch, self._pending = self._pending, []
            if self._local_only or self._publishing:
                batch = self._sendable(batch)
            self._writing = True
            try:
                if batch:
                    self._write(batch)
                if self._ends:
                    self._record_ends()
            except Exception:  # noqa: BLE001 - the last line: a writer that dies loses every stream
                logger.exception("the Redis writer failed a round")
            finally:
                self._writing = False
                self._flushed.set()

    def _sendable(self, batch: list[tuple[str, int, bytes, bool]]) -> list[tuple[str, int, bytes, bool]]:
        """``batch`` without the streams Redis must never see (local-only), and without those
        whose metadata is not in yet: put back, in order, for a later batch."""
        held, out = [], []
        for item in batch:
            if item[0] in self._publishing:
                held.append(item)
            elif item[0] not in self._local_only:
                out.append(item)
        self._pending[:0] = held
        return out

    def _write(self, batch: list[tuple[str, int, bytes, bool]]) -> None:
        for attempt in range(self.write_tries):
            try:
                ended = self._commit(batch)
            except Exception as exc:  # noqa: BLE001 - Redis or a bad event: retried, then dropped
                if isinstance(exc, redis.RedisError):
                    self._lost(exc)  # an outage is reported once; its tries are details
                    logger.log(logging.INFO if self._down else logging.WARNING,
                               "writing %d events to Redis failed (%s), try %d", len(batch), exc, attempt + 1)
                else:
                    logger.exception("writing %d events to Redis failed, try %d", len(batch), attempt + 1)
                if attempt + 1 < self.write_tries:
                    gevent.sleep(self.backoff * 2 ** attempt)
                continue
            self._back()
            for sid in ended:
                self._ends.pop(sid, None)
                self.local.drop(sid)  # its readers here go on from Redis
            return
        streams = {sid for sid, _, _, _ in batch}
        logger.error("dropped %d events of %d streams that Redis would not take; their remote "
                     "readers will find a gap", len(batch), len(streams))
        for sid, seq, _, final in batch:
            if final:
                self._remember_end(sid, seq)

    def _commit(self, batch: list[tuple[str, int, bytes, bool]]) -> list[str]:
        """One script call per batch (every stream's events and end); the sids ended."""
        streams: dict[str, list] = {}  # sid -> [seq, event, seq, event, ...]
        ends: dict[str, int] = {}  # sid -> its final seq
        for sid, seq, data, final in batch:
            events = streams.get(sid)
            if events is None:
                events = streams[sid] = []
            events += (seq, data)
            if final:
                ends[sid] = seq
        self._run_writes([(sid, ends.get(sid, 0), events) for sid, events in streams.items()])
        return list(ends)

    def _run_writes(self, writes: list[tuple[str, int, list]]) -> None:
        """``_WRITE`` for ``(sid, last, events)``, ``WRITE_CHUNK`` streams a call."""
        p = self.prefix
        calls = []
        for start in range(0, len(writes), WRITE_CHUNK):
            keys: list = []
            args: list = [self.running_ttl, self.ttl]
            for sid, last, events in writes[start:start + WRITE_CHUNK]:
                keys += (f"{p}:log:{sid}", f"{p}:meta:{sid}", f"{p}:readers:{sid}", f"{p}:cancel:{sid}")
                args += (len(events) // 2, last)
                args += events
            calls.append((keys, args))
        self._run_script("write", self._write_script, calls)

    def _run_script(self, role: str, script: Any, calls: list[tuple[list, list]]) -> None:
        """``script`` once per ``(keys, args)``, on the connection of ``role`` (the writer's
        or the publisher's); every script here is safe to repeat."""
        client = self._own.get(role)
        if client is None:
            client = self._own[role] = self._own_client(role)
        for keys, args in calls:
            script(keys, args, client=client)

    def _own_client(self, role: str) -> redis.Redis:
        """A client that keeps one connection for a greenlet sending one command at a time:
        no checkout from a pool (which polls the socket) per command. It connects now (the
        caller's failure if Redis is down), and again after a connection it lost."""
        return redis.Redis.from_url(
            self.url, single_connection_client=True, socket_timeout=5, socket_connect_timeout=2,
            health_check_interval=30, client_name=f"{self._name}-{role}",
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1))

    def _remember_end(self, sid: str, seq: int) -> None:
        """Keep trying to record that ``sid`` ended at ``seq`` (its final event was lost)."""
        if len(self._ends) >= MAX_UNRECORDED_ENDS:
            lost = next(iter(self._ends))
            del self._ends[lost]
            logger.error("stream %s: gave up recording its end in Redis (too many pending)", lost)
        self._ends[sid] = seq
        self._kick.set()

    def _record_ends(self) -> None:
        ends = dict(self._ends)
        try:
            self._run_writes([(sid, last, []) for sid, last in ends.items()])
        except redis.RedisError as exc:
            self._lost(exc)
            return
        self._back()
        for sid, last in ends.items():
            if self._ends.get(sid) == last:
                del self._ends[sid]
        logger.warning("recorded the end of %d streams whose final event was lost", len(ends))

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything appended so far is in Redis (or dropped)."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._kick.is_set() or self._writing or self._publishing) \
                and time.monotonic() < deadline:
            self._flushed.clear()
            self._flushed.wait(max(0.0, deadline - time.monotonic()))

    def is_local(self, sid: str) -> bool:
        """Whether this process produces ``sid`` (its log is mirrored here)."""
        return self.local.meta(sid) is not None

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        if self.is_local(sid):
            return self.local.read(sid, after, limit)
        with self._failing():
            entries = self.redis.xrange(self._key("log", sid), min=f"(0-{after}", count=limit)
        return [(int(eid.split(b"-")[1]), _decode(fields[b"e"])) for eid, fields in entries]

    def count(self, sid: str) -> int:
        if self.is_local(sid):
            return self.local.count(sid)
        with self._failing():
            return self.redis.xlen(self._key("log", sid))

    # -- waiting --------------------------------------------------------------
    def _dispatcher(self, sid: str) -> _Dispatcher:
        """The dispatcher that serves ``sid`` (started on first use)."""
        index = zlib.crc32(sid.encode()) % len(self._dispatchers)
        dispatcher = self._dispatchers[index]
        if dispatcher is None:
            bell = f"{self.prefix}:bell:{secrets.token_hex(6)}"
            dispatcher = self._dispatchers[index] = _Dispatcher(self, bell)
        return dispatcher

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        if self.is_local(sid):
            self.local.watch(sid, wake)
        else:
            self._dispatcher(sid).watch(self._key("log", sid), wake)

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        self.local.unwatch(sid, wake)
        dispatcher = self._dispatchers[zlib.crc32(sid.encode()) % len(self._dispatchers)]
        if dispatcher is not None:
            dispatcher.unwatch(self._key("log", sid), wake)

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        if self.is_local(sid):
            self.local.wait(sid, after, timeout, wake)
        elif not wake.is_set():
            self._dispatcher(sid).wait(self._key("log", sid), after, timeout, wake)

    def _ring(self, bell: str) -> None:
        """Make a dispatcher's XREAD return (it then reads the logs added since it began)."""
        with self._failing(), self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(bell, {"r": "1"}, maxlen=1, approximate=False)
            pipe.expire(bell, self.ttl)
            pipe.execute()

    # -- readers and cancel ---------------------------------------------------
    def attach(self, sid: str, reader: str) -> None:
        if self.is_local(sid):
            # Leases on our own streams are kept here (``reader_counts`` adds Redis's, those of
            # other processes' readers): the producer is in this process, nobody else needs them.
            self.local.attach(sid, reader)
            return
        key = self._key("readers", sid)
        with self._failing(), self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {reader: time.time() + self.lease})
            # TTL: at least the lease, never shorter than it was (the log's).
            pipe.expire(key, self.lease_ttl, nx=True)
            pipe.expire(key, self.lease_ttl, gt=True)
            pipe.execute()

    def detach(self, sid: str, reader: str) -> int:
        if self.is_local(sid):
            # The last of our readers: "idle" to ourselves; the grace's end counts Redis's too.
            before = self.local.readers(sid)
            left = self.local.detach(sid, reader)  # the mirror tells nobody: we do
            if left < before and not left:
                self.control_handler("idle", sid)
            return left
        key = self._key("readers", sid)
        with self._failing(), self.redis.pipeline() as pipe:
            pipe.zrem(key, reader)
            pipe.zcount(key, time.time(), "+inf")
            gone, left = pipe.execute()
        if gone and not left:
            self._tell_owner(sid, "idle")
        return left

    def detach_quietly(self, sid: str, reader: str) -> None:
        if self.is_local(sid):
            self.local.detach_quietly(sid, reader)
            return
        with self._failing():
            self.redis.zrem(self._key("readers", sid), reader)

    def readers(self, sid: str) -> int:
        return self.reader_counts([sid])[0]

    def reader_counts(self, sids: list[str]) -> list[int]:
        """Live leases per stream: Redis's (other processes' readers), plus the mirror's for
        our own streams (only the mirror's while Redis is down); one round trip."""
        counts = [self.local.readers(sid) for sid in sids]
        ask = [i for i, sid in enumerate(sids) if self._shared(sid) or not self.is_local(sid)]
        if not ask:
            return counts
        try:
            found = self._count_script([self._key("readers", sids[i]) for i in ask], [time.time()])
        except redis.RedisError as exc:
            if any(not self.is_local(sids[i]) for i in ask):
                raise self._store_error(exc) from exc
            self._lost(exc)
            return counts
        for i, count in zip(ask, found, strict=True):
            counts[i] += count
        return counts

    def request_cancel(self, sid: str) -> None:
        if self.is_local(sid):
            self.local.request_cancel(sid)
            self.control_handler("cancel", sid)  # no round trip, and works with Redis down
            if self._shared(sid):
                try:
                    self.redis.set(self._key("cancel", sid), 1, ex=max(self.ttl, self.lease_ttl))
                except redis.RedisError as exc:
                    self._lost(exc)
            return
        with self._failing():
            self.redis.set(self._key("cancel", sid), 1, ex=max(self.ttl, self.lease_ttl))
        self._tell_owner(sid, "cancel")

    def cancel_requested(self, sid: str) -> bool:
        local = self.is_local(sid)
        if local and (self.local.cancel_requested(sid) or not self._shared(sid)):
            return self.local.cancel_requested(sid)
        try:
            return bool(self.redis.exists(self._key("cancel", sid)))
        except redis.RedisError as exc:
            if not local:
                raise self._store_error(exc) from exc
            self._lost(exc)
            return False


class _Watch:
    """What a dispatcher knows of one log: who watches it, who waits past which seq."""

    __slots__ = ("watchers", "waiters", "seen")

    def __init__(self) -> None:
        self.watchers: set[gevent.event.Event] = set()
        self.waiters: dict[gevent.event.Event, int] = {}  # wake -> the cursor it waits past
        self.seen = -1  # the highest seq this dispatcher saw in the log (-1: none yet)


class _Dispatcher:
    """One blocking connection serving every wait on a share of the remote logs.

    Its greenlet runs ``XREAD BLOCK`` over all the logs with waiters or watchers
    (one entry each, from the lowest cursor waited past), wakes the readers whose
    log moved past their cursor, and goes round again. A wait on a log the
    XREAD in flight does not cover rings the dispatcher's doorbell (an ``XADD``
    to a key in the same XREAD), which cannot be missed the way a wake-up sent
    before the XREAD began could.
    """

    def __init__(self, store: RedisStore, bell: str) -> None:
        self.store, self.bell = store, bell
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
                self.store._ring(self.bell)
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
                if self.store.closed:
                    return  # killed by close() in the middle of its XREAD
                if isinstance(exc, redis.RedisError):
                    self.store._lost(exc)
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
            reply = self.store._blocking.xread(streams, count=1, block=BLOCK_MS)
        finally:
            self.inflight = None
        self.store._back()
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
