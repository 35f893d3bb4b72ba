"""Token budgets: how many tokens a key may use an hour or a day, held under concurrency.

A budget is ``N/period`` (``minute``, ``hour``, ``day``), counted in fixed UTC windows (a day
budget resets at midnight UTC, an hour one at the top of the hour). A key's budgets are its
keys-file options (``tokens=2000000/day tokens=50000/hour``), else ``TOKEN_BUDGET``'s.

At a stream's start :meth:`Budgets.reserve` takes a reservation in every window of the key at
once, or in none: the stream's most output (its ``max_tokens``, else ``BUDGET_DEFAULT_MAX_TOKENS``)
plus its input estimate. It is refused (:class:`BudgetExceeded`, 429 ``budget_exceeded`` with
``Retry-After`` until the window resets) when what the window spent, plus what running streams
hold, plus this reservation would pass the budget: streams started at once cannot together
overspend by more than their reservations can be off. At the stream's end :meth:`settle`
gives the reservation back and adds what the stream used (its usage record's total), however
it ended; a stream that crosses into a new window counts in the window it started in.

With Redis, every worker and host shares the windows: per key and window a hash
``P:budget:<key>:<period>:<start>`` (``spent``, ``reserved``, ``r:<token>`` each reservation's
amount) and a sorted set ``...:leases`` (token -> expiry, Redis time), changed by one Lua
script each, like stream slots' leases: this process renews its reservations every third of
``BUDGET_LEASE_S``, so a worker killed mid-stream loses its reservations within one lease.
Redis out of reach lets streams start (logged), as the stream caps do. Without Redis the
windows are this process's memory. :class:`Budgets` keeps this process's reservations and
their renewal; the windows are one of two backends, :class:`MemoryWindows` or
:class:`RedisWindows`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import gevent
import redis

from ..errors import BudgetExceeded

logger = logging.getLogger(__name__)
PERIODS = {"minute": 60, "hour": 3600, "day": 86400}
Limit = tuple[int, str]  # (tokens, period)

# KEYS: per window its hash and its lease set. ARGV: token, amount, lease (ms), then per window
# its budget and its TTL (s). Drops expired leases, checks every window, then reserves in all.
# Returns {0, 0} when reserved, else {the full window's index, what it holds}.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local amount = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local gone = redis.call('ZRANGEBYSCORE', z, '-inf', now)
  for _, m in ipairs(gone) do
    local r = redis.call('HGET', h, 'r:' .. m)
    if r then
      redis.call('HINCRBY', h, 'reserved', -tonumber(r))
      redis.call('HDEL', h, 'r:' .. m)
    end
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', z, '-inf', now) end
  local held = tonumber(redis.call('HGET', h, 'spent') or '0')
    + tonumber(redis.call('HGET', h, 'reserved') or '0')
  if held + amount > tonumber(ARGV[2 + 2 * i]) then return {i, held} end
end
for i = 1, #KEYS / 2 do
  local h, z, ttl = KEYS[2 * i - 1], KEYS[2 * i], tonumber(ARGV[3 + 2 * i])
  redis.call('HINCRBY', h, 'reserved', amount)
  redis.call('HSET', h, 'r:' .. ARGV[1], amount)
  redis.call('ZADD', z, now + tonumber(ARGV[3]), ARGV[1])
  redis.call('EXPIRE', h, ttl)
  redis.call('EXPIRE', z, ttl)
end
return {0, 0}
"""
# KEYS: per window its hash and its lease set. ARGV: token, tokens used, then per window its TTL.
# Gives the reservation back where it is still held and adds what was used.
_SETTLE = """
for i = 1, #KEYS / 2 do
  local h, z = KEYS[2 * i - 1], KEYS[2 * i]
  local r = redis.call('HGET', h, 'r:' .. ARGV[1])
  if r then
    redis.call('HINCRBY', h, 'reserved', -tonumber(r))
    redis.call('HDEL', h, 'r:' .. ARGV[1])
    redis.call('ZREM', z, ARGV[1])
  end
  redis.call('HINCRBY', h, 'spent', tonumber(ARGV[2]))
  redis.call('EXPIRE', h, tonumber(ARGV[2 + i]))
end
return 0
"""
# KEYS: lease sets; ARGV: lease (ms), then the token held in each. Only leases still there (XX).
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + tonumber(ARGV[1]), ARGV[i + 1])
end
return 0
"""


def parse_limit(value: str, where: str) -> Limit:
    """``"2000000/day"`` as ``(2000000, "day")``; ``ValueError`` naming ``where``."""
    count, _, period = value.partition("/")
    try:
        tokens = int(count)
    except ValueError:
        tokens = -1
    if tokens < 1 or period not in PERIODS:
        raise ValueError(f"{where}: a token budget is N/minute, N/hour or N/day with N >= 1, got {value!r}")
    return tokens, period


def budget_limits(value: str, where: str) -> tuple[Limit, ...]:
    """Comma-separated budgets (``"2000000/day,50000/hour"``); ``""``: none."""
    return tuple(parse_limit(item.strip(), where) for item in str(value or "").split(",") if item.strip())


@dataclass
class _Window:
    spent: int = 0
    reserved: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Reservation:
    """A stream's reservation: its token and the windows (key name, period, start) it holds."""

    token: str
    windows: tuple[tuple[str, str, int], ...]
    ttls: tuple[int, ...]


Window = tuple[str, str, int]  # (key name, period, start)


class MemoryWindows:
    """The windows in this process's memory (no Redis): nothing to lease, past windows swept."""

    leased = False

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._windows: dict[Window, _Window] = {}
        self._next_sweep = 0.0  # when past windows are next dropped

    def take(self, token: str, windows: tuple[Window, ...], ttls: tuple[int, ...], limits: list[int],
             amount: int) -> tuple[int, int] | None:
        """Reserve in every window or none: ``None``, or the first full window and what it holds."""
        self._sweep()
        for i, window in enumerate(windows):
            w = self._windows.get(window) or _Window()
            held = w.spent + sum(w.reserved.values())
            if held + amount > limits[i]:
                return i, held
        for window in windows:
            self._windows.setdefault(window, _Window()).reserved[token] = amount
        return None

    def settle(self, reservation: Reservation, used: int) -> None:
        """Give ``reservation`` back and count ``used`` tokens in its windows."""
        for window in reservation.windows:
            w = self._windows.setdefault(window, _Window())
            w.reserved.pop(reservation.token, None)
            w.spent += used

    def held(self, window: Window) -> int:
        """What ``window`` holds now, spent and reserved."""
        w = self._windows.get(window) or _Window()
        return w.spent + sum(w.reserved.values())

    def renew(self, reservations: list[Reservation]) -> None:
        pass  # nothing expires here: the process that holds them is the one that counts

    def _sweep(self) -> None:
        """Drop the windows that ended, once a minute (their streams settle into nothing that
        is read again)."""
        now = self.clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + 60
        for window in [w for w in self._windows if w[2] + PERIODS[w[1]] <= now]:
            if not self._windows[window].reserved:
                del self._windows[window]


class RedisWindows:
    """The windows in Redis, shared by every worker and host: one Lua script each to reserve,
    settle and renew; reservations leased (``lease_s``), so a killed worker's expire."""

    leased = True

    def __init__(self, url: str, prefix: str, lease_s: float, client: redis.Redis | None = None) -> None:
        self.prefix, self.lease_s = prefix, lease_s
        # ``client``: the app's pool for short commands (the store's), else one of our own.
        self.redis = client or redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=8, timeout=2, socket_timeout=2, socket_connect_timeout=2))
        self._reserve = self.redis.register_script(_RESERVE)
        self._settle = self.redis.register_script(_SETTLE)
        self._renew = self.redis.register_script(_RENEW)

    def _keys(self, window: Window) -> list[str]:
        key, period, start = window
        base = f"{self.prefix}:budget:{key}:{period}:{start}"
        return [base, f"{base}:leases"]

    def take(self, token: str, windows: tuple[Window, ...], ttls: tuple[int, ...], limits: list[int],
             amount: int) -> tuple[int, int] | None:
        """Reserve in every window or none: ``None``, or the first full window and what it holds.
        Redis out of reach: ``None`` (logged), the stream not counted."""
        keys = [k for window in windows for k in self._keys(window)]
        args: list[int | str] = [token, amount, int(self.lease_s * 1000)]
        for limit, ttl in zip(limits, ttls, strict=True):
            args += [limit, ttl]
        try:
            index, held = self._reserve(keys=keys, args=args)
        except redis.RedisError as exc:
            # Fail open, as the stream caps do: Redis down must not stop every stream.
            logger.warning("could not reserve a token budget in Redis (%s); not counting this stream", exc)
            return None
        return (int(index) - 1, int(held)) if index else None

    def settle(self, reservation: Reservation, used: int) -> None:
        """Give ``reservation`` back where it is still held and count ``used`` tokens."""
        keys = [k for window in reservation.windows for k in self._keys(window)]
        try:
            self._settle(keys=keys, args=[reservation.token, used, *reservation.ttls])
        except redis.RedisError as exc:
            logger.warning("could not settle a token budget reservation (%s); it expires in %.0f s",
                           exc, self.lease_s)

    def held(self, window: Window) -> int:
        """What ``window`` holds now, spent and reserved."""
        h, _ = self._keys(window)
        spent, reserved = self.redis.hmget(h, "spent", "reserved")
        return int(spent or 0) + int(reserved or 0)

    def renew(self, reservations: list[Reservation]) -> None:
        """Extend the leases of ``reservations`` (those still held)."""
        pairs = [(self._keys(w)[1], r.token) for r in reservations for w in r.windows]
        if not pairs:
            return
        try:
            self._renew(keys=[k for k, _ in pairs], args=[int(self.lease_s * 1000), *(t for _, t in pairs)])
        except redis.RedisError as exc:
            logger.warning("could not renew token budget reservations: %s", exc)


class Budgets:
    """Every key's token budgets, with ``defaults`` for keys that name none, over the windows
    of :class:`RedisWindows` (with ``redis_url``) or :class:`MemoryWindows`."""

    def __init__(self, defaults: tuple[Limit, ...], lease_s: float, redis_url: str = "",
                 prefix: str = "streamapp", clock: Callable[[], float] = time.time,
                 client: redis.Redis | None = None) -> None:
        self.defaults, self.lease_s, self.clock = defaults, lease_s, clock
        self.windows: MemoryWindows | RedisWindows = \
            RedisWindows(redis_url, prefix, lease_s, client) if redis_url else MemoryWindows(clock)
        self._held: dict[str, Reservation] = {}  # this process's reservations, by token
        self._renewer: gevent.Greenlet | None = None

    def reserve(self, key: str, limits: tuple[Limit, ...] | None, amount: int) -> str | None:
        """Reserve ``amount`` tokens for a stream of ``key`` in every window of its budgets
        (``limits``, else the defaults); its token, ``None`` when it has no budget.
        :class:`BudgetExceeded` when a window cannot cover it."""
        limits = self.defaults if limits is None else limits
        if not limits:
            return None
        now = self.clock()
        windows = tuple((key, period, int(now // PERIODS[period]) * PERIODS[period]) for _, period in limits)
        ttls = tuple(PERIODS[period] * 2 for _, period in limits)
        token = secrets.token_hex(8)
        full = self.windows.take(token, windows, ttls, [n for n, _ in limits], amount)
        if full is not None:
            index, held = full
            tokens, period = limits[index]
            reset = windows[index][2] + PERIODS[period]
            when = datetime.fromtimestamp(reset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise BudgetExceeded(
                f"the token budget of {key} is spent: {tokens} tokens a {period}, "
                f"{max(0, tokens - held)} left, and this stream reserves {amount} (its max_tokens and "
                f"its input); it resets at {when}",
                reset - now)
        self._held[token] = Reservation(token, windows, ttls)
        if self.windows.leased and (self._renewer is None or self._renewer.dead):
            self._renewer = gevent.spawn(self._renew_loop)
        return token

    def settle(self, token: str, used: int) -> None:
        """Give reservation ``token`` back and count ``used`` tokens (idempotent)."""
        reservation = self._held.pop(token, None)
        if reservation is not None:
            self.windows.settle(reservation, used)

    def held(self, key: str, period: str) -> int:
        """What ``key``'s current ``period`` window holds now (spent and reserved), for tests and
        diagnostics."""
        start = int(self.clock() // PERIODS[period]) * PERIODS[period]
        return self.windows.held((key, period, start))

    def _renew_loop(self) -> None:
        while self._held:
            gevent.sleep(self.lease_s / 3)
            self.windows.renew(list(self._held.values()))
