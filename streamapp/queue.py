"""A fair queue at the stream caps: a stream that finds its caps full waits for a slot.

With ``QUEUE_WAIT_S`` above 0, a stream start that finds a cap full (the client's, its
detached one, or this process's) takes a :class:`Ticket` and waits up to that long for a
slot, first come first served per client: only the oldest ticket of a client may take a
slot, so a newcomer never overtakes a waiter. A waiter that gives up (its client left, or
its wait ran out) leaves the queue at once.

With Redis, a client's tickets are a sorted set ``P:queue:<client>`` (member -> arrival
number from ``P:queue:<client>:seq``) with leases in ``P:queued:<client>`` (member ->
expiry, Redis time in ms); one Lua script drops expired tickets, renews the caller's, and
takes the slot for the head only, in the same step as :mod:`streamapp.slots`' acquisition,
so every worker and host keeps one order. A waiter polls every ``poll_s`` and wakes at once
when a slot of this process is given back; a worker that dies loses its tickets within
``TICKET_LEASE_S``. Without Redis the queue is this process's memory.
"""

from __future__ import annotations

import logging
import secrets
import time

import gevent
import gevent.event
import redis

from .errors import TooManyStreams
from .slots import Slot, StreamSlots, client_caps, refusal

__all__ = ["SlotQueue", "Ticket"]

logger = logging.getLogger(__name__)

TICKET_LEASE_S = 5.0  # a waiter's ticket outlives its last renewal this long

# KEYS: the queue, its leases, its arrival counter, then the slot sets. ARGV: the ticket,
# the slot lease (ms), the ticket lease (ms), whether this process has room (1/0), then each
# set's cap. Returns -1 when another ticket is ahead, -2 when the process is full, the index
# of the first full set, or 0 when the slot was taken (the ticket then leaves the queue).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local queue, leases, seq, token = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
for _, dead in ipairs(redis.call('ZRANGEBYSCORE', leases, '-inf', now)) do
  redis.call('ZREM', queue, dead)
  redis.call('ZREM', leases, dead)
end
if not redis.call('ZSCORE', queue, token) then
  redis.call('ZADD', queue, redis.call('INCR', seq), token)
end
redis.call('ZADD', leases, now + tonumber(ARGV[3]), token)
for _, key in ipairs({queue, leases, seq}) do redis.call('PEXPIRE', key, 2 * tonumber(ARGV[3])) end
if redis.call('ZRANGE', queue, 0, 0)[1] ~= token then return -1 end
if ARGV[4] ~= '1' then return -2 end
for i = 4, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if redis.call('ZCARD', KEYS[i]) >= tonumber(ARGV[i + 1]) then return i - 3 end
end
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], now + tonumber(ARGV[2]), token)
  redis.call('PEXPIRE', KEYS[i], 2 * tonumber(ARGV[2]))
end
redis.call('ZREM', queue, token)
redis.call('ZREM', leases, token)
return 0
"""

_AHEAD, _PROCESS_FULL = -1, -2


class Ticket:
    """One stream's place in its client's queue: :meth:`wait` for the slot, :meth:`leave`."""

    def __init__(self, queue: SlotQueue, identity: str, digest: str, caps: dict[str, int],
                 token: str, outcome: int) -> None:
        self.queue, self.identity, self.digest, self.caps = queue, identity, digest, caps
        self.token, self.outcome = token, outcome
        self.queued = False  # it had to wait (its wait is measured)
        self.since = time.monotonic()
        self.deadline = self.since + queue.wait_s
        self.done = False

    @property
    def expired(self) -> bool:
        """The wait ran out."""
        return time.monotonic() >= self.deadline

    def wait(self, timeout: float, gone: gevent.event.Event | None = None) -> Slot | None:
        """The slot, once this ticket is first and a slot frees; ``None`` after ``timeout``
        (at most until the deadline) or once ``gone`` is set: the ticket stays queued."""
        until = min(self.deadline, time.monotonic() + timeout)
        queue = self.queue
        try:
            while True:
                left = until - time.monotonic()
                if left <= 0 or (gone is not None and gone.is_set()):
                    return None
                queue.freed.wait(min(left, queue.poll_s))
                if gone is not None and gone.is_set():
                    return None
                slot = queue.try_take(self)
                if slot is not None:
                    return slot
        except BaseException:
            self.leave("left")  # killed while waiting (a worker going away): never a stale ticket
            raise

    def leave(self, outcome: str) -> None:
        """Leave the queue (idempotent), the wait counted with ``outcome`` (started, timeout, left)."""
        if self.done:
            return
        self.done = True
        self.queue.leave(self)
        self.queue.observe(outcome, time.monotonic() - self.since)

    def refusal(self) -> TooManyStreams:
        """The 429 of a wait that ran out, naming the cap that stayed full."""
        if self.outcome == _PROCESS_FULL:
            return self.queue.slots.process_refusal()
        keys = list(self.caps)
        key = keys[self.outcome - 1] if 0 < self.outcome <= len(keys) else keys[0] if keys else ""
        return refusal(key, self.caps.get(key, 0), self.identity)


class SlotQueue:
    """The stream caps of :class:`StreamSlots` with a fair wait of up to ``wait_s`` for a slot."""

    def __init__(self, slots: StreamSlots, wait_s: float, poll_s: float = 0.2) -> None:
        self.slots, self.wait_s, self.poll_s = slots, wait_s, poll_s
        self.freed = gevent.event.Event()  # set (and replaced) when a slot here frees up
        self._local: dict[str, list[str]] = {}  # client digest -> tickets in arrival order (memory mode)
        self._take = None
        self.observer = None  # called with (outcome, seconds) for each wait that ended
        slots.on_release = self.wake
        if slots.redis is not None:
            self._take = slots.redis.register_script(_TAKE)

    def acquire(self, identity: str, cap: int | None = None, *, detached: bool = False) -> Slot | Ticket:
        """A slot now, or (its caps full and ``wait_s`` above 0) a :class:`Ticket` in the queue;
        ``TooManyStreams`` when full and nobody may wait."""
        if not self.wait_s:
            return self.slots.acquire(identity, cap, detached=detached)
        digest, caps = client_caps(self.slots, identity, cap, detached)
        ticket = Ticket(self, identity, digest, caps, secrets.token_hex(8), 0)
        slot = self.try_take(ticket)
        if slot is not None:
            return slot
        ticket.queued = True
        return ticket

    def try_take(self, ticket: Ticket) -> Slot | None:
        """The slot for ``ticket`` when it is first in its queue and every cap has room
        (it then leaves the queue), else ``None`` (it stays, renewed)."""
        slots = self.slots
        room = not slots.per_process or len(slots.running) < slots.per_process
        keys = list(ticket.caps)
        if self._take is None:
            waiting = self._local.setdefault(ticket.digest, [])
            if ticket.token not in waiting:
                waiting.append(ticket.token)
            if waiting[0] != ticket.token:
                outcome = _AHEAD
            elif not room:
                outcome = _PROCESS_FULL
            else:
                full = slots.take(ticket.token, ticket.caps)
                outcome = keys.index(full) + 1 if full is not None else 0
        else:
            prefix = f"{slots.prefix}:queue:{ticket.digest}"
            try:
                outcome = int(self._take(
                    keys=[prefix, f"{slots.prefix}:queued:{ticket.digest}", f"{prefix}:seq", *keys],
                    args=[ticket.token, int(slots.lease_s * 1000), int(TICKET_LEASE_S * 1000),
                          "1" if room else "0", *ticket.caps.values()]))
            except redis.RedisError as exc:
                # Fail open as the slots do: the client caps are not counted meanwhile.
                logger.warning("could not queue for a stream slot in Redis (%s); not counting this stream",
                               exc)
                outcome = 0 if room else _PROCESS_FULL
                keys = []
            if outcome == 0 and keys:
                slots.hold_lease(ticket.token, tuple(keys))
        ticket.outcome = outcome
        if outcome != 0:
            return None
        self._drop_local(ticket)
        ticket.done = True
        if ticket.queued:
            self.observe("started", time.monotonic() - ticket.since)
        self.wake()  # the next ticket is first now
        return slots.started(ticket.token, tuple(keys))

    def leave(self, ticket: Ticket) -> None:
        """Take ``ticket`` out of its queue (its slot, if it took one, stays)."""
        self._drop_local(ticket)
        if self._take is not None:
            try:
                with self.slots.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(f"{self.slots.prefix}:queue:{ticket.digest}", ticket.token)
                    pipe.zrem(f"{self.slots.prefix}:queued:{ticket.digest}", ticket.token)
                    pipe.execute()
            except redis.RedisError as exc:
                logger.warning("could not leave the stream queue (%s); the ticket expires in %.0f s",
                               exc, TICKET_LEASE_S)
        self.wake()

    def _drop_local(self, ticket: Ticket) -> None:
        waiting = self._local.get(ticket.digest)
        if waiting is not None and ticket.token in waiting:
            waiting.remove(ticket.token)
            if not waiting:
                del self._local[ticket.digest]

    def wake(self) -> None:
        """Wake this process's waiters: a slot freed, or the head of a queue changed."""
        freed, self.freed = self.freed, gevent.event.Event()
        freed.set()

    def observe(self, outcome: str, seconds: float) -> None:
        """Report a wait that ended to ``observer`` (the metrics)."""
        if self.observer is not None:
            self.observer(outcome, seconds)

