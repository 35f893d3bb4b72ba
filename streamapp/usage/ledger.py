"""The usage ledger: tokens and streams per key name, model, upstream and day (UTC).

Each stream is added once, at its end, by the process that ran it (:meth:`add` with the
stream's id: a second add of the same id changes nothing), so readers, resumes and replays
never count again. A key is its name, never the key itself; ``-`` stands for the callers of
a service open without keys.

- :class:`MemoryLedger`: this process's streams, in a dict.
- :class:`RedisLedger`: every worker's and host's, in Redis: per day and key, a hash
  ``P:usage:<day>:<key>`` whose fields are ``[model, upstream, count]`` (JSON) added to with
  ``HINCRBY`` by one script that first marks the stream counted (``SET NX``); per day, the set
  ``P:usage:<day>:keys`` of the keys that used anything. Everything expires ``retention_days``
  after its last addition.

Counts are ``prompt``, ``completion``, ``total``, ``streams`` and ``cost`` (in billionths of
the price table's currency: integers add exactly).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import redis

ANONYMOUS = "-"  # the key name of callers when no key is configured
COUNTS = ("prompt", "completion", "total", "streams", "cost")
COUNTED_TTL_S = 86_400  # how long a stream id stays marked as counted (a second add is a no-op)
COUNTED_KEPT = 100_000  # memory mode: the latest stream ids remembered as counted

# KEYS: the stream's counted mark, the day's hash of its key, the day's key set.
# ARGV: retention (s), the key name, the counted mark's TTL, then field, amount pairs.
_ADD = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[3])) then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
redis.call('SADD', KEYS[3], ARGV[2])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[1]))
return 1
"""


@dataclass(frozen=True)
class Entry:
    """One stream's addition: who, what, where, when and how much."""

    sid: str
    key: str
    model: str
    upstream: str
    day: date
    prompt: int
    completion: int
    total: int
    cost: int = 0  # billionths of the price table's currency

    def amounts(self) -> dict[str, int]:
        """The counts it adds (one stream)."""
        return {"prompt": self.prompt, "completion": self.completion, "total": self.total, "streams": 1,
                "cost": self.cost}


Row = tuple[date, str, str, str, dict[str, int]]  # day, key, model, upstream, counts


def days(first: date, last: date) -> list[date]:
    """Every day from ``first`` to ``last``, both included."""
    return [first + timedelta(n) for n in range((last - first).days + 1)]


class MemoryLedger:
    """This process's ledger."""

    def __init__(self) -> None:
        self._rows: dict[tuple[date, str, str, str], dict[str, int]] = {}
        self._counted: dict[str, None] = {}  # the latest COUNTED_KEPT ids, oldest first

    def add(self, entry: Entry) -> bool:
        """Add ``entry`` unless its stream was added already; whether it was added."""
        if entry.sid in self._counted:
            return False
        self._counted[entry.sid] = None
        if len(self._counted) > COUNTED_KEPT:
            del self._counted[next(iter(self._counted))]
        where = (entry.day, entry.key, entry.model, entry.upstream)
        row = self._rows.setdefault(where, dict.fromkeys(COUNTS, 0))
        for name, amount in entry.amounts().items():
            row[name] += amount
        return True

    def rows(self, keys: Iterable[str] | None, first: date, last: date) -> list[Row]:
        """The rows of ``keys`` (``None``: every key) from day ``first`` to ``last``."""
        wanted = None if keys is None else set(keys)
        return sorted((day, key, model, upstream, dict(counts))
                      for (day, key, model, upstream), counts in self._rows.items()
                      if first <= day <= last and (wanted is None or key in wanted))


class RedisLedger:
    """The ledger every worker and host shares through Redis under ``prefix``."""

    def __init__(self, url: str, prefix: str, retention_days: int, pool_size: int = 8,
                 client: redis.Redis | None = None) -> None:
        self.prefix, self.retention_s = prefix, retention_days * 86_400
        # ``client``: the app's pool for short commands (the store's), else one of our own.
        self.redis = client or redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=pool_size, timeout=2, socket_timeout=2, socket_connect_timeout=2))
        self._add = self.redis.register_script(_ADD)

    def _day(self, day: date) -> str:
        return f"{self.prefix}:usage:{day.isoformat()}"

    def add(self, entry: Entry) -> bool:
        """Add ``entry`` unless its stream was added already (on any process); whether it was.
        ``redis.RedisError`` when Redis fails."""
        args: list[str | int] = [self.retention_s, entry.key, COUNTED_TTL_S]
        for name, amount in entry.amounts().items():
            if amount:
                args += [json.dumps([entry.model, entry.upstream, name]), amount]
        day = self._day(entry.day)
        keys = [f"{self.prefix}:usage:counted:{entry.sid}", f"{day}:{entry.key}", f"{day}:keys"]
        return bool(self._add(keys=keys, args=args))

    def rows(self, keys: Iterable[str] | None, first: date, last: date) -> list[Row]:
        """The rows of ``keys`` (``None``: every key) from day ``first`` to ``last`` (two round
        trips). ``redis.RedisError`` when Redis fails."""
        span = days(first, last)
        if keys is None:
            with self.redis.pipeline(transaction=False) as pipe:
                for day in span:
                    pipe.smembers(f"{self._day(day)}:keys")
                named = [(day, sorted(k.decode() for k in found)) for day, found in zip(span, pipe.execute(),
                                                                                        strict=True)]
        else:
            wanted = sorted(set(keys))
            named = [(day, wanted) for day in span]
        pairs = [(day, key) for day, names in named for key in names]
        with self.redis.pipeline(transaction=False) as pipe:
            for day, key in pairs:
                pipe.hgetall(f"{self._day(day)}:{key}")
            found = pipe.execute()
        out: dict[tuple[date, str, str, str], dict[str, int]] = {}
        for (day, key), fields in zip(pairs, found, strict=True):
            for field, value in fields.items():
                model, upstream, name = json.loads(field)
                row = out.setdefault((day, key, model, upstream), dict.fromkeys(COUNTS, 0))
                row[name] = int(value)
        return sorted((*where, counts) for where, counts in out.items())
