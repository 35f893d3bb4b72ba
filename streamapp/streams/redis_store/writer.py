"""The writer: appended events to Redis in batches (group commit), in order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

import gevent
import gevent.event
import redis

from ...events import Event
from .codec import encode, meta_fields
from .health import Health
from .scripts import WRITE_EVENTS, Scripts

logger = logging.getLogger(__name__)
# This many pending appends are written at once, without waiting out the commit window: as many
# as one write call takes, so a burst of a few hundred tokens is one script call, not one per 64.
BATCH_EVENTS = WRITE_EVENTS
MAX_UNRECORDED_ENDS = 10_000  # ends of streams still to be written to Redis after a lost batch

Item = tuple[str, int, bytes, bool]  # (sid, seq, event JSON, final)


class Writer:
    """A greenlet that sends what was appended meanwhile to Redis in one script call per
    batch, on a connection of its own, gathering appends for ``commit_window`` seconds (or
    until ``BATCH_EVENTS``). It never dies.

    It is handed what it must not send yet or ever: ``held`` (streams whose metadata is not
    in Redis yet: their events wait, in order) and ``local_only`` (streams Redis never
    sees). ``ended(sid)`` is called once a stream's end is in Redis; ``lost(sids)`` when
    Redis has no metadata for streams it was to write (it lost them: the caller sends them
    again, see :meth:`rewrite`). A batch Redis refuses is logged and retried ``tries``
    times, then dropped (logged as an error); the end of a stream in a dropped batch is
    recorded as soon as Redis takes it. ``progress`` is set after every round.

    Fields added to a stream's metadata (:meth:`annotate`) go in the same script call as the
    round's events, after them, and wait as its events do; a stream Redis has no metadata
    for gets none of them (no hash without a TTL). They are retried and dropped with the
    round's events."""

    tries = 5
    backoff = 0.1  # seconds before the second try; doubles each time
    end_retry_s = 1.0  # how often the end of a stream whose last batch was dropped is retried

    def __init__(self, connect: Callable[[], redis.Redis], scripts: Scripts, health: Health, *,
                 commit_window: float, held: Collection[str], local_only: Collection[str],
                 ended: Callable[[str], None], lost: Callable[[list[str]], None],
                 progress: gevent.event.Event) -> None:
        self.connect, self.scripts, self.health = connect, scripts, health
        self.commit_window = commit_window  # readers here have the events already: only others wait
        self.held, self.local_only = held, local_only
        self.ended, self.lost, self.progress = ended, lost, progress
        self.pending: list[Item] = []  # the next batch, in order
        self.writing = False
        self.closing = False  # no more commit window: flush at once
        self._ends: dict[str, int] = {}  # sid -> final seq whose batch was dropped
        self._resend: set[str] = set()  # streams Redis lost, to hand to ``lost`` between batches
        self.annotations: dict[str, dict] = {}  # sid -> metadata fields still to send
        self._kick = gevent.event.Event()
        self._full = gevent.event.Event()  # BATCH_EVENTS are pending: no need to wait for more
        self._own: redis.Redis | None = None

    def append(self, sid: str, seq: int, event: Event, final: bool) -> None:
        """Queue event ``seq`` of ``sid`` for the next batch."""
        try:
            data = encode(event)
        except (TypeError, ValueError):
            logger.exception("stream %s: event %d cannot be serialised; remote readers miss it", sid, seq)
            if final:
                self._remember_end(sid, seq)
            return
        pending = self.pending
        pending.append((sid, seq, data, final))
        self._kick.set()
        if len(pending) >= BATCH_EVENTS:
            self._full.set()

    def annotate(self, sid: str, fields: dict) -> None:
        """Queue metadata ``fields`` of ``sid`` for the next round."""
        self.annotations.setdefault(sid, {}).update(fields)
        self._kick.set()

    def rewrite(self, sid: str, events: list[tuple[int, Event]], last: int) -> None:
        """Send ``sid``'s log again from its first event (``last``: its final seq, 0 while
        it runs), in place of what of it is pending."""
        self.pending = [item for item in self.pending if item[0] != sid]
        for seq, event in events:
            self.append(sid, seq, event, seq == last)
        if self.pending and self.pending[-1][0] == sid and self.pending[-1][3]:
            self._ends.pop(sid, None)  # the end goes with the log
        self._kick.set()

    def resend(self, sids: list[str]) -> None:
        """Redis lost these streams: hand them to ``lost`` between two batches."""
        self._resend.update(sids)
        self._kick.set()

    def discard(self, sid: str) -> None:
        """Send nothing more of ``sid`` (forgotten): its pending events and its end go."""
        self.pending = [item for item in self.pending if item[0] != sid]
        self._ends.pop(sid, None)
        self.annotations.pop(sid, None)

    def forget_end(self, sid: str) -> None:
        """Stop trying to record ``sid``'s end."""
        self._ends.pop(sid, None)

    def wake(self) -> None:
        """Look at the pending events again (those held back may be free to go)."""
        if self.pending or self.annotations:
            self._kick.set()
        self.progress.set()

    def busy(self) -> bool:
        """Whether something appended is not in Redis (nor dropped) yet."""
        return bool(self.pending or self.annotations or self._kick.is_set() or self.writing)

    def run(self) -> None:
        """The writer's loop: batch after batch, in order; never dies."""
        while True:
            self._kick.wait(self.end_retry_s if self._ends else None)
            if self.commit_window and not self.closing:
                self._full.wait(self.commit_window)
            self._kick.clear()
            self._full.clear()
            self.writing = True
            try:
                if self._resend:
                    sids = list(self._resend)
                    self._resend.clear()
                    self.lost(sids)
                batch, self.pending = self.pending, []
                if self.local_only or self.held:
                    batch = self._sendable(batch)
                fields = self._ready_fields() if self.annotations else {}
                if batch or fields:
                    self._write(batch, fields)
                if self._ends:
                    self._record_ends()
            except Exception:  # noqa: BLE001 - the last line: a writer that dies loses every stream
                logger.exception("the Redis writer failed a round")
            finally:
                self.writing = False
                self.progress.set()

    def _sendable(self, batch: list[Item]) -> list[Item]:
        """``batch`` without the local-only streams, and without those whose metadata is
        not in yet: put back, in order, for a later batch."""
        held, out = [], []
        for item in batch:
            if item[0] in self.held:
                held.append(item)
            elif item[0] not in self.local_only:
                out.append(item)
        self.pending[:0] = held
        return out

    def _ready_fields(self) -> dict[str, list[str]]:
        """The metadata fields to send now (field, JSON value, ...): those of the streams whose
        metadata is in Redis (held ones wait; local-only ones are dropped)."""
        ready = {sid: fields for sid, fields in self.annotations.items() if sid not in self.held}
        for sid in ready:
            del self.annotations[sid]
        return {sid: meta_fields(fields) for sid, fields in ready.items() if sid not in self.local_only}

    def _client(self) -> redis.Redis:
        if self._own is None:
            self._own = self.connect()
        return self._own

    def _write(self, batch: list[Item], fields: dict[str, list[str]]) -> None:
        problem: Exception | None = None
        for attempt in range(self.tries):
            try:
                ended, lost = self._commit(batch, fields)
            except Exception as exc:  # noqa: BLE001 - Redis or a bad event: retried, then dropped
                problem = exc
                if isinstance(exc, redis.RedisError):
                    self.health.lost(exc)  # an outage is reported once; its tries are details
                    logger.log(logging.INFO if self.health.down else logging.WARNING,
                               "writing %d events to Redis failed (%s), try %d", len(batch), exc, attempt + 1)
                else:
                    logger.exception("writing %d events to Redis failed, try %d", len(batch), attempt + 1)
                if attempt + 1 < self.tries:
                    gevent.sleep(self.backoff * 2 ** attempt)
                continue
            self.health.back()
            for sid in ended:
                self._ends.pop(sid, None)
                self.ended(sid)
            if lost:
                self.lost(lost)
            return
        streams = {sid for sid, _, _, _ in batch}
        logger.error("dropped %d events of %d streams (and the metadata fields of %d) that Redis "
                     "would not take (%s); their remote readers will find a gap", len(batch),
                     len(streams), len(fields), problem)
        for sid, seq, _, final in batch:
            if final:
                self._remember_end(sid, seq)

    def _commit(self, batch: list[Item], fields: dict[str, list[str]]) -> tuple[list[str], list[str]]:
        """One script call per batch (every stream's events, end and metadata fields): the
        sids ended, and those Redis had no metadata for (untouched)."""
        streams: dict[str, list] = {}  # sid -> [seq, event, seq, event, ...]
        ends: dict[str, int] = {}  # sid -> its final seq
        for sid, seq, data, final in batch:
            events = streams.get(sid)
            if events is None:
                events = streams[sid] = []
            events += (seq, data)
            if final:
                ends[sid] = seq
        writes = [(sid, ends.get(sid, 0), events) for sid, events in streams.items()]
        lost = self.scripts.write(self._client(), writes, fields)
        if lost:
            return [sid for sid in ends if sid not in lost], lost
        return list(ends), lost

    def _remember_end(self, sid: str, seq: int) -> None:
        """Keep trying to record that ``sid`` ended at ``seq`` (its final event was lost)."""
        if len(self._ends) >= MAX_UNRECORDED_ENDS:
            gone = next(iter(self._ends))
            del self._ends[gone]
            logger.error("stream %s: gave up recording its end in Redis (too many pending)", gone)
        self._ends[sid] = seq
        self._kick.set()

    def _record_ends(self) -> None:
        ends = dict(self._ends)
        try:
            lost = self.scripts.write(self._client(), [(sid, last, []) for sid, last in ends.items()])
        except redis.RedisError as exc:
            self.health.lost(exc)
            return
        self.health.back()
        recorded = 0
        for sid, last in ends.items():
            if sid not in lost and self._ends.get(sid) == last:
                del self._ends[sid]
                recorded += 1
        if recorded:
            logger.warning("recorded the end of %d streams whose final event was lost", recorded)
        if lost:
            self.lost(lost)

    def close(self) -> None:
        """Close the writer's connection."""
        if self._own is not None:
            self._own.close()
