"""Circuit breakers: an upstream that keeps failing to start streams is skipped for a while.

Each upstream, by name (today a provider: ``openai``, ``ollama``), has a circuit:

- **closed**: starts go to it; a start that fails adds one to a count, a start that succeeds
  sets it back to 0. ``CIRCUIT_FAILURES`` failures in a row open the circuit.
- **open**: every start is refused at once (the failover skips it; with every target of a
  model open, 503 ``upstream_unavailable`` with ``Retry-After``), with no request to it, until
  ``CIRCUIT_COOLDOWN_S`` passed.
- **half-open**: the cool-down is over; the next start goes (the probe), the others are refused
  until its outcome: a success closes the circuit, a failure opens it for another cool-down.
  A probe that brings no verdict (the client left, a 404) lets the next start probe; a probe
  that never reports (its process died) is replaced after a cool-down.

Only a stream's start counts (:func:`verdict`): its first token is a success; its end before
any token is a failure when it is what issue 18 calls failover-worthy (connection refused or
reset, a timeout, HTTP 408/409/429/5xx, a malformed first event), and no verdict when it is
the client's fault (400/401/403/404) or the stream was stopped. After the first token nothing
is recorded. The failover (``streamapp.failover``) reports each attempt once: nothing per event.

With ``REDIS_URL`` the circuits are shared by every worker and host (one small script per
check and per record, on keys that expire ``RECORD_TTL_S`` after their last failure; a
circuit with no record at all is trusted clear for ``CLEAR_TRUST_S``, so the common start
costs no Redis call and a circuit opened elsewhere is seen here within that time);
without it, each process keeps its own. Redis out of reach lets every start go (logged).
The interface (:meth:`Circuits.allow`, :meth:`Circuits.judge`) knows upstream names only: the
failover asks it for each target it tries.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
from flask import Flask

from .events import Done, Event, Failed
from .streams import short_client

logger = logging.getLogger(__name__)
EXTENSION = "circuits"
STATES = {"closed": 0, "half_open": 1, "open": 2}  # the metric's values
POOL_SIZE = 16  # Redis connections per worker for the circuits
RECORD_TTL_S = 600  # a circuit's Redis key lives this long past its cool-down after a failure
CLEAR_TRUST_S = 1.0  # a circuit found with no record in Redis is trusted clear this long
# Codes of a start failure that is the upstream's (issue 18's failover-worthy list); an answer
# with an HTTP status is judged by the status instead.
FAILURE_CODES = frozenset({"upstream_unreachable", "upstream_timeout", "upstream_cut",
                           "upstream_stalled", "upstream_bad_response"})
_NO_VERDICT_ENDS = frozenset({"cancelled", "client_gone", "shutdown"})


def verdict(event: Event | None) -> str:
    """How a stream's first token or its end before one judges its upstream:
    ``success``, ``failure`` or ``none`` (no verdict)."""
    if isinstance(event, Failed):
        status = event.upstream_status
        if status is not None:
            return "failure" if status in (408, 409, 429) or status >= 500 else "none"
        return "failure" if event.code in FAILURE_CODES else "none"
    if event is None or (isinstance(event, Done) and event.finish_reason in _NO_VERDICT_ENDS):
        return "none"
    return "success"  # a token, or an answer that ended properly


@dataclass
class _Circuit:
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    probe_until: float = 0.0  # half-open: the probe's turn ends then


class MemoryCircuits:
    """The circuits of this process."""

    def __init__(self, failures: int, cooldown: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures, self.cooldown, self.clock = failures, cooldown, clock
        self._circuits: dict[str, _Circuit] = {}

    def allow(self, name: str, take: bool = True) -> float:
        """0 when a start may go to ``name`` now (taking the probe's turn when half-open,
        unless ``take`` is false: only a look), else the seconds to wait."""
        c = self._circuits.get(name)
        if c is None or not c.open_until:
            return 0.0
        now = self.clock()
        if now < c.open_until:
            return c.open_until - now
        if now < c.probe_until:
            return c.probe_until - now
        if take:
            c.probe_until = now + self.cooldown
        return 0.0

    def record(self, name: str, outcome: str) -> None:
        """Count a start's ``outcome`` (:func:`verdict`)."""
        if outcome == "success":
            self._circuits.pop(name, None)
            return
        c = self._circuits.get(name)
        now = self.clock()
        if outcome == "failure":
            c = self._circuits.setdefault(name, _Circuit())
            if not c.open_until:
                c.failures += 1
                if c.failures >= self.failures:
                    c.failures, c.open_until = 0, now + self.cooldown
            elif now >= c.open_until:  # half-open: the probe failed
                c.open_until, c.probe_until = now + self.cooldown, 0.0
        elif c is not None and c.open_until and now >= c.open_until:
            c.probe_until = 0.0  # no verdict: the next start probes

    def trusted(self, name: str) -> bool:
        """Whether recording ``name``'s outcome costs nothing (always, in memory)."""
        return True

    def state(self, name: str) -> tuple[str, float]:
        """``(state, seconds left of the cool-down)``."""
        c = self._circuits.get(name)
        if c is None or not c.open_until:
            return "closed", 0.0
        left = c.open_until - self.clock()
        return ("open", left) if left > 0 else ("half_open", 0.0)


# KEYS[1] the circuit; ARGV: cool-down, "1" to take the probe's turn ("0": only a look). Returns
# the seconds to wait ("0": go), or "clear" when the circuit has no record at all (closed, no
# failure counted): the caller may trust that a while.
_ALLOW = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 'clear' end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return '0' end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
if now < open_until then return tostring(open_until - now) end
local probe = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe then return tostring(probe - now) end
if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[1]))) end
return '0'
"""
# KEYS[1] the circuit; ARGV: outcome, failures to open, cool-down, TTL.
_RECORD = """
if ARGV[1] == 'success' then redis.call('DEL', KEYS[1]) return 0 end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cooldown = tonumber(ARGV[3])
if ARGV[1] == 'failure' then
  if open_until == 0 then
    if redis.call('HINCRBY', KEYS[1], 'failures', 1) >= tonumber(ARGV[2]) then
      redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown))
      redis.call('HDEL', KEYS[1], 'failures')
    end
  elseif now >= open_until then
    redis.call('HSET', KEYS[1], 'open_until', tostring(now + cooldown))
    redis.call('HDEL', KEYS[1], 'probe_until')
  end
  redis.call('EXPIRE', KEYS[1], ARGV[4])
elseif open_until > 0 and now >= open_until then
  redis.call('HDEL', KEYS[1], 'probe_until')
end
return 0
"""
# KEYS[1] the circuit. Returns {state, seconds left}.
_STATE = """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if open_until == 0 then return {'closed', '0'} end
local t = redis.call('TIME')
local left = open_until - (tonumber(t[1]) + tonumber(t[2]) / 1000000)
if left > 0 then return {'open', tostring(left)} end
return {'half_open', '0'}
"""


class RedisCircuits:
    """The circuits every worker and host shares, in Redis (Redis's clock decides)."""

    def __init__(self, url: str, prefix: str, failures: int, cooldown: float,
                 clock: Callable[[], float] = time.monotonic, client: Any = None) -> None:
        import redis  # only needed with Redis

        self.failures, self.cooldown, self.prefix = failures, cooldown, prefix
        self.errors = (redis.RedisError, OSError)
        # No connection before the first command: gunicorn forks before any. A few connections
        # serve every start (a check, a record: one short script each); past them a start waits
        # its turn, at most the timeout, and then goes through unchecked.
        # ``client``: the app's pool for short commands (the store's), else one of our own.
        self.client = client or redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=POOL_SIZE, timeout=2, socket_timeout=2, socket_connect_timeout=2))
        self._allow = self.client.register_script(_ALLOW)
        self._record = self.client.register_script(_RECORD)
        self._state = self.client.register_script(_STATE)
        self.ttl = math.ceil(cooldown) + RECORD_TTL_S
        self.clock = clock
        # name -> until when this process trusts that the circuit has no record in Redis (closed,
        # no failure counted): starts and successes then cost no Redis call.
        self._clear_until: dict[str, float] = {}

    def _key(self, name: str) -> str:
        return f"{self.prefix}:circuit:{name}"

    def allow(self, name: str, take: bool = True) -> float:
        """As :meth:`MemoryCircuits.allow`; every start may go while Redis is out of reach.

        A circuit found without any record is trusted clear for ``CLEAR_TRUST_S``: a circuit
        opened by another process is seen here that much later at most."""
        now = self.clock()
        if now < self._clear_until.get(name, 0.0):
            return 0.0
        try:
            answer = self._allow(keys=[self._key(name)], args=[self.cooldown, int(take)])
        except self.errors as exc:
            logger.warning("circuit of %s not checked (Redis): %r", name, exc)
            return 0.0
        if answer == b"clear":
            self._clear_until[name] = now + CLEAR_TRUST_S
            return 0.0
        return float(answer)

    def trusted(self, name: str) -> bool:
        """Whether ``name``'s circuit is trusted clear now (a success then costs no Redis call)."""
        return self.clock() < self._clear_until.get(name, 0.0)

    def record(self, name: str, outcome: str) -> None:
        """As :meth:`MemoryCircuits.record`; a success or no verdict while the circuit is trusted
        clear has nothing to reset (no probe was taken) and costs no Redis call."""
        if outcome != "failure" and self.trusted(name):
            return
        if outcome == "failure":
            self._clear_until.pop(name, None)
        try:
            self._record(keys=[self._key(name)], args=[outcome, self.failures, self.cooldown, self.ttl])
        except self.errors as exc:
            logger.warning("circuit of %s: a %s not recorded (Redis): %r", name, outcome, exc)

    def state(self, name: str) -> tuple[str, float]:
        """As :meth:`MemoryCircuits.state`; ``unknown`` while Redis is out of reach."""
        try:
            state, left = self._state(keys=[self._key(name)])
        except self.errors:
            return "unknown", 0.0
        return state.decode(), float(left)


class Circuits:
    """The circuits of the upstreams ``names``, over a memory or Redis backend."""

    def __init__(self, backend: MemoryCircuits | RedisCircuits, names: list[str]) -> None:
        self.backend, self.names = backend, names

    def allow(self, name: str) -> float:
        """0 when a start may go to ``name`` now, else the seconds to wait (its circuit is open,
        or another start is its probe)."""
        return self.backend.allow(name)

    def open_for(self, name: str) -> float:
        """The seconds left of ``name``'s cool-down when its circuit is open, else 0 (half-open:
        0); a circuit trusted clear costs no Redis call."""
        backend = self.backend
        if isinstance(backend, RedisCircuits) and backend.trusted(name):
            return 0.0
        state, left = backend.state(name)
        return left if state == "open" else 0.0

    def wait(self, name: str) -> float:
        """As :meth:`allow`, without taking the probe's turn: whether a start could go now."""
        return self.backend.allow(name, take=False)

    def record(self, name: str, outcome: str) -> None:
        """Count a start's outcome: ``success``, ``failure`` or ``none``."""
        self.backend.record(name, outcome)

    def judge(self, name: str, outcome: str) -> None:
        """Record a start's outcome without holding up a first token: a success with nothing
        to reset is recorded at once (no Redis call), any other success in the background; a
        failure before its client hears of it, so the next start sees it."""
        if outcome == "success" and not self.backend.trusted(name):
            gevent.spawn(self.record, name, outcome)
        else:
            self.record(name, outcome)

    def states(self) -> dict[str, dict[str, Any]]:
        """Each upstream's ``state`` and, when open, the ``retry_after`` seconds."""
        out = {}
        for name in self.names:
            state, left = self.backend.state(name)
            out[name] = {"state": state, "retry_after": math.ceil(left)} if left else {"state": state}
        return out


def init_app(app: Flask) -> None:
    """This app's circuits (``app.extensions["circuits"]``), one per upstream provider."""
    config = app.config
    failures, cooldown = config["CIRCUIT_FAILURES"], config["CIRCUIT_COOLDOWN_S"]
    if config["REDIS_URL"]:
        backend: MemoryCircuits | RedisCircuits = RedisCircuits(
            config["REDIS_URL"], config["REDIS_PREFIX"], failures, cooldown, client=short_client(app))
    else:
        backend = MemoryCircuits(failures, cooldown)
    names = [name for name in app.extensions.get("providers", {}) if name != "demo"] \
        if failures else []  # 0: no breakers
    app.extensions[EXTENSION] = Circuits(backend, names)

