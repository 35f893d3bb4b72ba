"""The store's Lua scripts, and the calls that pack their arguments.

Every script is sent by EVALSHA; redis-py loads it again when Redis lost it (a restart).
Each is safe to repeat: a batch retried after a lost reply changes nothing twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import redis

from .codec import Keys

WRITE_CHUNK = 256  # streams per script call (a long script holds Redis up)
WRITE_EVENTS = 512  # events per write call at most: a long log is split over several calls

# The writer's one command per batch, for every stream in it: KEYS are each stream's log, meta,
# readers and cancel keys; ARGV[1] and ARGV[2] the TTLs of a running and of an ended stream; then
# per stream: how many events follow, its final seq (0 while it runs), how many metadata fields
# follow (``annotate``), the events' seq, JSON pairs and the fields' name, JSON pairs. A stream
# whose meta is missing (Redis lost it: a restart) is left untouched, and its position returned
# when it came with events or its end, so that nothing of it lands without its metadata (fields
# alone for a missing meta, a stream forgotten or expired, are dropped: no hash without a TTL).
# Otherwise the script appends the events (one already there, after a retry, is skipped; any other
# refusal, out of memory say, fails the call), records the end, gives every key of the stream the
# log's TTL (so its meta, readers and cancel keys never expire before its log), then sets the
# fields.
WRITE = b"""
local a, lost = 3, {}
for k = 1, #KEYS, 4 do
  local nevents, last, nfields = tonumber(ARGV[a]), ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local log = nevents > 0 or last ~= '0'
  if redis.call('EXISTS', KEYS[k + 1]) == 0 then
    if log then
      lost[#lost + 1] = (k + 3) / 4
    end
  else
    for i = a, a + 2 * nevents - 1, 2 do
      local r = redis.pcall('XADD', KEYS[k], '0-' .. ARGV[i], 'e', ARGV[i + 1])
      if type(r) == 'table' and r.err and not string.find(r.err, 'equal or smaller', 1, true) then
        return redis.error_reply(r.err)
      end
    end
    if log then
      local ttl = ARGV[1]
      if last ~= '0' then
        redis.call('HSET', KEYS[k + 1], 'state', '"finished"', 'last', last)
        ttl = ARGV[2]
      end
      for i = k, k + 3 do
        redis.call('EXPIRE', KEYS[i], ttl)
      end
    end
    for i = a + 2 * nevents, a + 2 * (nevents + nfields) - 1, 2 do
      redis.call('HSET', KEYS[k + 1], ARGV[i], ARGV[i + 1])
    end
  end
  a = a + 2 * (nevents + nfields)
end
return lost
"""
# The publisher's one command per batch: KEYS[1] is the recent streams' sorted set, then streams'
# meta keys; ARGV[1] a running stream's TTL (also the longest any stream is kept), ARGV[2] now
# (unix seconds), ARGV[3] how many recent streams to keep; then per stream: how many field, value
# pairs follow, and the pairs. A field already there (the end, if the writer was first) is kept,
# and so is a TTL. Each stream joins the recent set (scored by now), which loses what is older
# than a stream can be kept and all but the newest ARGV[3].
PUBLISH = b"""
local recent, now = KEYS[1], tonumber(ARGV[2])
local a = 4
for k = 2, #KEYS do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + 2 * n, 2 do
    redis.call('HSETNX', KEYS[k], ARGV[i], ARGV[i + 1])
  end
  a = a + 1 + 2 * n
  redis.call('EXPIRE', KEYS[k], ARGV[1], 'NX')
  redis.call('ZADD', recent, now, string.match(KEYS[k], '[^:]+$'))
end
redis.call('ZREMRANGEBYSCORE', recent, '-inf', '(' .. (now - tonumber(ARGV[1])))
redis.call('ZREMRANGEBYRANK', recent, 0, -(tonumber(ARGV[3]) + 1))
redis.call('EXPIRE', recent, ARGV[1])
"""
# One more resume of a stream (KEYS[1]: its meta key), unless its meta is gone.
RESUMED = b"""
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'resumes', 1)
end
"""
# A reader's lease (KEYS[1]: the readers key; ARGV: reader, lease expiry, the key's least TTL,
# and minus the time one lease ago). A reader that left is kept with a negative score (minus when
# it left) for a lease, and is not brought back by a renewal that was on its way; a reader missing
# altogether (its first attach, or Redis lost it) is added. The key's TTL: at least the lease,
# never shorter than it was (the log's).
ATTACH = b"""
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < 0 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '(' .. ARGV[4], '(0')
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
# A process's heartbeat (KEYS: its liveness key, P:up, P:recovering; ARGV: the liveness TTL, how
# long recovery lasts): renews both keys; P:up missing (Redis lost its data, or no process beat
# for a TTL) sets P:recovering first. Returns whether the liveness key was there.
RENEW = b"""
local before = redis.call('SET', KEYS[1], 1, 'EX', ARGV[1], 'GET')
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[3], 1, 'EX', ARGV[2])
end
redis.call('SET', KEYS[2], 1, 'EX', ARGV[1])
return before and 1 or 0
"""
# Live leases of each stream (KEYS: readers keys; ARGV[1]: now), in one command.
COUNT = b"""
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('ZCOUNT', KEYS[i], ARGV[1], '+inf')
end
return out
"""

Write = tuple[str, int, list]  # (sid, final seq or 0, [seq, event JSON, seq, event JSON, ...])
_Entry = tuple[str, int, list, list]  # a Write and its metadata fields [field, JSON, ...]


class Scripts:
    """The scripts, registered on ``client``; ``write`` and ``publish`` run on the
    connection they are given (the writer's, the publisher's)."""

    def __init__(self, client: redis.Redis, keys: Keys, ttl: int, running_ttl: int,
                 recent_max: int = 1000) -> None:
        self.keys, self.ttl, self.running_ttl = keys, ttl, running_ttl
        self.recent_max = recent_max  # streams the recent set keeps at most
        self._write = client.register_script(WRITE)
        self._publish = client.register_script(PUBLISH)
        self._resumed = client.register_script(RESUMED)
        self._count = client.register_script(COUNT)
        self._attach = client.register_script(ATTACH)

    def write(self, client: redis.Redis, writes: list[Write],
              fields: dict[str, list[str]] | None = None) -> list[str]:
        """Append and end streams, and add metadata ``fields`` (sid -> field, JSON value, ...;
        after the events), at most ``WRITE_CHUNK`` streams and ``WRITE_EVENTS`` events a call
        (a long log goes in parts, its end with the last); the sids left untouched because
        Redis has no metadata for them (and none of their later parts)."""
        p = self.keys.prefix
        entries: list[_Entry] = [(sid, last, events, []) for sid, last, events in writes]
        if fields:
            entries += [(sid, 0, [], pairs) for sid, pairs in fields.items()]
        lost: dict[str, None] = {}
        for chunk in _calls(entries):
            if lost:
                chunk = [entry for entry in chunk if entry[0] not in lost]
            keys: list = []
            args: list = [self.running_ttl, self.ttl]
            for sid, last, events, pairs in chunk:
                keys += (f"{p}:log:{sid}", f"{p}:meta:{sid}", f"{p}:readers:{sid}", f"{p}:cancel:{sid}")
                args += (len(events) // 2, last, len(pairs) // 2)
                args += events
                args += pairs
            missing = self._write(keys, args, client=client) if chunk else None
            if missing:
                lost.update((chunk[int(i) - 1][0], None) for i in missing)
        return list(lost)

    def publish(self, client: redis.Redis, batch: list[tuple[str, list[str]]]) -> None:
        """Write ``(sid, meta fields and values)``, ``WRITE_CHUNK`` streams a call, and list
        the streams in the recent set."""
        recent = f"{self.keys.prefix}:recent"
        for start in range(0, len(batch), WRITE_CHUNK):
            chunk = batch[start:start + WRITE_CHUNK]
            args: list[Any] = [self.running_ttl, time.time(), self.recent_max]
            for _, fields in chunk:
                args.append(len(fields) // 2)
                args += fields
            self._publish([recent, *(self.keys("meta", sid) for sid, _ in chunk)], args, client=client)

    def resumed(self, sid: str) -> None:
        """Count one more resume of ``sid``."""
        self._resumed([self.keys("meta", sid)])

    def attach(self, key: str, reader: str, now: float, lease: float, ttl: int) -> None:
        """Record or renew ``reader``'s lease in readers key ``key``, unless it left."""
        self._attach([key], [reader, now + lease, ttl, lease - now])

    def count(self, sids: list[str], now: float) -> list[int]:
        """Live leases in each stream's readers key, in one command."""
        return self._count([self.keys("readers", sid) for sid in sids], [now])


def _calls(entries: list[_Entry]) -> Iterator[list[_Entry]]:
    """``entries`` in calls of at most ``WRITE_CHUNK`` streams and ``WRITE_EVENTS`` events,
    a stream with more events than fit split into parts (only the last carries its end)."""
    call: list[_Entry] = []
    room = WRITE_EVENTS
    for sid, last, events, pairs in entries:
        while True:
            if len(events) <= 2 * room:
                part, events = events, []
            else:
                part, events = events[:2 * room], events[2 * room:]
            call.append((sid, 0 if events else last, part, [] if events else pairs))
            room -= len(part) // 2
            if room <= 0 or len(call) >= WRITE_CHUNK:
                yield call
                call, room = [], WRITE_EVENTS
            if not events:
                break
    if call:
        yield call
