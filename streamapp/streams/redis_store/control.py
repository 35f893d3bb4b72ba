"""Between processes: control messages, cancel flags and liveness.

Control messages ("cancel <sid>", "idle <sid>", "forget <sid>") go by pub/sub to
``P:ctl:<owner>``, the channel of the process that runs (or ran) the stream's producer;
a cancel also sets ``P:cancel:<sid>``, which the producer's process polls in case the
message was lost.
Each process renews ``P:owner:<owner>`` on every manager tick: a process unheard of
for ``OWNER_TTL_S`` is taken for dead, and the key vanishing while this process is
alive tells it that Redis lost its data (a restart without persistence). Every
heartbeat also renews ``P:up``; the one that finds it missing sets ``P:recovering``
for ``RECOVERY_S`` first, so any process can tell from Redis alone that a missing
stream may still come back (``P:up`` missing, or ``P:recovering`` there).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

import gevent
import redis

from .clients import Clients
from .codec import Keys
from .health import Health
from .scripts import RENEW

logger = logging.getLogger(__name__)
OWNER_TTL_S = 10  # a process unheard of this long is taken for dead
RECOVERY_S = OWNER_TTL_S  # after Redis lost its data, this long a missing stream may come back
ALIVE_CACHE_S = 1.0  # how long an answer about another process's liveness is reused


class ControlChannel:
    """This process's control channel and the cancel flags. ``deliver(kind, sid)`` is
    called for every message addressed to this process. The methods that talk to Redis
    raise ``redis.RedisError``: the caller decides whether that is a ``StoreError``."""

    def __init__(self, clients: Clients, client: redis.Redis, keys: Keys, health: Health,
                 deliver: Callable[[str, str], None], flag_ttl: int) -> None:
        self.clients, self.client, self.keys, self.health = clients, client, keys, health
        self.deliver, self.flag_ttl = deliver, flag_ttl
        self.owner = ""

    def start(self, owner: str) -> gevent.Greenlet:
        """Listen on ``owner``'s channel (a greenlet that survives idle periods and restarts)."""
        self.owner = owner
        return gevent.spawn(self._listen)

    def _listen(self) -> None:
        channel = self.keys("ctl", self.owner)
        failures = 0
        while True:
            client = self.clients.subscriber()
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(channel)
                failures = 0
                for message in pubsub.listen():
                    self._on_message(message["data"])
            except redis.RedisError as exc:
                self.health.lost(exc)
                failures += 1
                gevent.sleep(min(2.0, 0.05 * 2 ** failures))
            finally:
                pubsub.close()
                client.close()

    def _on_message(self, data: bytes) -> None:
        kind, _, sid = data.decode(errors="replace").partition(" ")
        try:
            self.deliver(kind, sid)
        except Exception:  # noqa: BLE001 - one bad message must not stop the control channel
            logger.exception("control message %r failed", data)

    def tell_owner(self, sid: str, kind: str) -> None:
        """Send ``kind`` to the process producing ``sid`` (ourselves included, a stream of
        ours that finished and whose mirror was freed); nothing if Redis does not know it."""
        owner = self.client.hget(self.keys("meta", sid), "owner")
        if owner is None:
            return
        owner = json.loads(owner)
        if owner == self.owner:
            self.deliver(kind, sid)
        else:
            self.client.publish(self.keys("ctl", owner), f"{kind} {sid}")

    def flag_cancel(self, sid: str) -> None:
        """Set ``sid``'s cancel flag."""
        self.client.set(self.keys("cancel", sid), 1, ex=self.flag_ttl)

    def cancel_flagged(self, sid: str) -> bool:
        """Whether ``sid``'s cancel flag is set."""
        return bool(self.client.exists(self.keys("cancel", sid)))

    def cancel_flags(self, sids: list[str]) -> set[str]:
        """Which of ``sids`` have their cancel flag set (one command)."""
        hits = self.client.mget([self.keys("cancel", sid) for sid in sids])
        return {sid for sid, hit in zip(sids, hits, strict=True) if hit is not None}


class Liveness:
    """This process's liveness key, and other processes' as seen from here (cached for
    ``ALIVE_CACHE_S``: every reader of every stream of a process asks). Both methods
    raise ``redis.RedisError``."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.client, self.keys = client, keys
        self.owner = ""
        self._renewed = False  # the key was set at least once
        self._up, self._recovering = f"{keys.prefix}:up", f"{keys.prefix}:recovering"
        self._renew = client.register_script(RENEW)
        self._alive: dict[str, tuple[float, bool]] = {}  # owner -> (asked at, alive)

    def renew(self) -> bool:
        """Renew this process's key; whether Redis lost its data since the last renewal (a
        restart that emptied it, or an outage longer than the key's TTL)."""
        had = self._renew([self.keys("owner", self.owner), self._up, self._recovering],
                          [OWNER_TTL_S, RECOVERY_S])
        lost = self._renewed and not had
        self._renewed = True
        return lost

    def recovering(self) -> bool:
        """Whether Redis lost its data lately, as any process noticed it, or not noticed
        by anyone yet (``P:up`` missing)."""
        up, recovering = self.client.mget(self._up, self._recovering)
        return up is None or recovering is not None

    def alive(self, owner: str) -> bool:
        """Whether process ``owner`` renewed its key within ``OWNER_TTL_S``."""
        now = time.monotonic()
        known = self._alive.get(owner)
        if known is not None and now - known[0] < ALIVE_CACHE_S:
            return known[1]
        return owner in self.alive_many([owner])

    def alive_many(self, owners: list[str]) -> set[str]:
        """Which of ``owners`` renewed their key within ``OWNER_TTL_S``: those not asked within
        ``ALIVE_CACHE_S`` in one ``MGET``."""
        now = time.monotonic()
        known = {o: self._alive.get(o) for o in owners}
        ask = [o for o, k in known.items() if k is None or now - k[0] >= ALIVE_CACHE_S]
        found = {o for o, k in known.items() if o not in ask and k is not None and k[1]}
        if not ask:
            return found
        if len(self._alive) > 1000:
            self._alive = {o: k for o, k in self._alive.items() if now - k[0] < ALIVE_CACHE_S}
        for owner, value in zip(ask, self.client.mget([self.keys("owner", o) for o in ask]), strict=True):
            self._alive[owner] = (now, value is not None)
            if value is not None:
                found.add(owner)
        return found
