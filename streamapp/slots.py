"""Concurrent-stream caps: how many streams one client, and one process, may run at once.

A stream takes a :class:`Slot` before its producer starts and gives it back when the producer
exits, however it ends (the manager's ``on_exit``). A slot counts against up to three caps:
the client's concurrent streams (``MAX_STREAMS_PER_KEY`` or its key's ``streams=``), its
detached ones, streams started with ``on_disconnect=finish`` that may generate with nobody
reading (``MAX_DETACHED_PER_CLIENT``), and this process's (``MAX_STREAMS_PER_PROCESS``). A
client is its API key's name, or its address when the service runs open.

With Redis, a client's slots are leases in sorted sets ``P:slots:<client>`` and
``P:detached:<client>`` (member -> expiry in Redis time, ms), taken by one Lua script that
drops expired leases, checks every cap and adds to every set, or to none, so workers and hosts
never race. This process renews its leases every third of ``SLOT_LEASE_S``, only those still
in their set (a slot given back while a renewal was on its way stays gone), so a worker that
dies loses its slots within one lease. Redis down: the client caps are not counted (a warning),
the per-process one still holds. Without Redis the sets are this process's memory.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from typing import Any

import gevent
import redis

from .errors import TooManyDetachedStreams, TooManyStreams

__all__ = ["Lease", "Slot", "StreamSlots", "TooManyDetachedStreams", "TooManyStreams", "client_caps",
           "refusal"]

logger = logging.getLogger(__name__)


# Take a slot in every set of KEYS at once, or none: drop expired leases, check each cap
# (ARGV[2 + i]), then add member ARGV[1] with expiry now + ARGV[2] ms. Returns the index of
# the first full set, 0 when taken. Redis's clock, so hosts' clocks need not agree.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[i + 2]) then return i end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', key, 2 * tonumber(ARGV[2]))
end
return 0
"""
# Renew leases: KEYS[i] holds member ARGV[i + 1]; ARGV[1] is the lease (ms). Only members
# still there (XX): a slot released or purged while the renewal was on its way stays gone.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
  redis.call('PEXPIRE', key, 2 * tonumber(ARGV[1]))
end
return 0
"""

Lease = tuple[str, tuple[str, ...]]  # a slot's token and the Redis sets it holds a lease in


class Slot:
    """One stream's slot; :meth:`release` gives it back (idempotent)."""

    __slots__ = ("keys", "owner", "token")

    def __init__(self, owner: StreamSlots, token: str, keys: tuple[str, ...]) -> None:
        self.owner, self.token, self.keys = owner, token, keys

    def release(self) -> None:
        """Give the slot back (any number of times)."""
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.release(self)


class StreamSlots:
    """Concurrent-stream caps: per client, all its streams and its detached ones (Redis leases
    or this process's memory), and per process."""

    def __init__(self, per_key: int, per_process: int, lease_s: float, redis_url: str = "",
                 prefix: str = "streamapp", pool_size: int = 16, *, per_detached: int = 0,
                 client: Any = None) -> None:
        self.per_key, self.per_process, self.lease_s = per_key, per_process, lease_s
        self.per_detached = per_detached
        self.prefix = prefix
        self.running: set[str] = set()  # tokens of this process's slots
        self._local: dict[str, set[str]] = {}  # set key -> tokens (memory mode)
        self._leases: dict[str, tuple[str, ...]] = {}  # token -> its Redis sets (renewed while held)
        self._renewer: gevent.Greenlet | None = None
        self.on_release: Callable[[], None] | None = None  # called when a slot is given back (the queue)
        self.redis = None
        if redis_url:
            # ``client``: the app's pool for short commands (the store's), else one of our own.
            self.redis = client or redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
                redis_url, max_connections=pool_size, timeout=2, socket_timeout=2,
                socket_connect_timeout=2))
            self._acquire = self.redis.register_script(_ACQUIRE)
            self._renew = self.redis.register_script(_RENEW)

    def acquire(self, identity: str, cap: int | None = None, *, detached: bool = False) -> Slot:
        """A slot for a stream of ``identity`` (cap: its own, else the per-key setting; a
        ``detached`` one also counts against ``per_detached``), or ``TooManyStreams``."""
        if self.per_process and len(self.running) >= self.per_process:
            raise self.process_refusal()
        _, caps = client_caps(self, identity, cap, detached)
        token = secrets.token_hex(8)
        full = self.take(token, caps)
        if full is not None:
            raise refusal(full, caps[full], identity)
        return self.started(token, tuple(caps))

    def process_refusal(self) -> TooManyStreams:
        """The 429 of a full process."""
        return TooManyStreams(
            f"too many concurrent streams on this server process: at most {self.per_process} "
            f"(STREAMAPP_MAX_STREAMS_PER_PROCESS); try again shortly")

    def started(self, token: str, keys: tuple[str, ...]) -> Slot:
        """The slot ``token`` took in the sets ``keys``, counted against this process."""
        self.running.add(token)
        return Slot(self, token, keys)

    def take(self, token: str, caps: dict[str, int]) -> str | None:
        """Add ``token`` to every set of ``caps``, or to none: the first full set, if one is."""
        if not caps:
            return None
        if self.redis is None:
            for key, cap in caps.items():
                if len(self._local.get(key, ())) >= cap:
                    return key
            for key in caps:
                self._local.setdefault(key, set()).add(token)
            return None
        keys = list(caps)
        try:
            full = self._acquire(keys=keys, args=[token, int(self.lease_s * 1000), *caps.values()])
        except redis.RedisError as exc:
            # Fail open: Redis down must not stop every stream; the per-process cap still holds.
            logger.warning("could not take a stream slot in Redis (%s); not counting this stream", exc)
            return None
        if full:
            return keys[full - 1]
        self.hold_lease(token, tuple(keys))
        return None

    def hold_lease(self, token: str, keys: tuple[str, ...]) -> None:
        """Renew the leases ``token`` took in Redis sets ``keys`` while its slot is held."""
        self._leases[token] = keys
        if self._renewer is None or self._renewer.dead:
            self._renewer = gevent.spawn(self._renew_loop)

    def release(self, slot: Slot) -> None:
        """Give ``slot`` back."""
        self.running.discard(slot.token)
        try:
            self._give_back(slot)
        finally:
            if self.on_release is not None:
                self.on_release()

    def _give_back(self, slot: Slot) -> None:
        if not slot.keys:
            return
        if self.redis is None:
            for key in slot.keys:
                held = self._local.get(key)
                if held is not None:
                    held.discard(slot.token)
                    if not held:
                        del self._local[key]
            return
        if self._leases.pop(slot.token, None) is None:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for key in slot.keys:
                    pipe.zrem(key, slot.token)
                pipe.execute()
        except redis.RedisError as exc:
            logger.warning("could not give a stream slot back (%s); its lease runs out in %.0f s",
                           exc, self.lease_s)

    def leases(self) -> list[Lease]:
        """The Redis leases this process holds now (what a renewal renews)."""
        return list(self._leases.items())

    def renew(self, leases: list[Lease]) -> None:
        """Extend ``leases`` by a whole lease from now; one given back meanwhile stays gone.
        ``redis.RedisError`` when Redis fails."""
        pairs = [(key, token) for token, keys in leases for key in keys]
        if pairs:
            self._renew(keys=[key for key, _ in pairs],
                        args=[int(self.lease_s * 1000), *(token for _, token in pairs)])

    def _renew_loop(self) -> None:
        while self._leases:
            gevent.sleep(self.lease_s / 3)
            try:
                self.renew(self.leases())
            except redis.RedisError as exc:
                logger.warning("could not renew stream slot leases: %s", exc)


def client_caps(slots: StreamSlots, identity: str, cap: int | None,
                detached: bool) -> tuple[str, dict[str, int]]:
    """The digest naming ``identity`` in Redis, and the sets its stream counts in with their caps."""
    cap = slots.per_key if cap is None else cap
    digest = hashlib.sha256(identity.encode()).hexdigest()[:32]
    caps = {}
    if cap:
        caps[f"{slots.prefix}:slots:{digest}"] = cap
    if detached and slots.per_detached:
        caps[f"{slots.prefix}:detached:{digest}"] = slots.per_detached
    return digest, caps


def refusal(key: str, cap: int, identity: str) -> TooManyStreams:
    """The 429 of a full set ``key`` of cap ``cap``."""
    who = "API key" if identity.startswith("key:") else "client address"
    if ":detached:" in key:
        return TooManyDetachedStreams(
            f"too many detached streams (on_disconnect=finish): at most {cap} running per {who} "
            f"(STREAMAPP_MAX_DETACHED_PER_CLIENT); wait for one to end, cancel one, or use "
            f"on_disconnect=cancel")
    return TooManyStreams(
        f"too many concurrent streams: at most {cap} per {who} "
        f"(STREAMAPP_MAX_STREAMS_PER_KEY); end one, or try again when one finishes")
