"""The reader: follows one stream's log after a cursor, knowing nothing of transports.

Iterating a :class:`StreamReader` yields batches of ``(seq, event)``: every event
after the cursor exactly once and in order, in pages of at most ``page`` events.
An empty batch means nothing new arrived for ``idle`` seconds (a transport may
send a heartbeat). Iteration ends after the stream's final event, or after a
final ``Failed`` event the reader makes up itself when the rest of the stream
can no longer arrive:

- ``stream_gap``: the log has a hole (a sequence number is missing), or the
  stream ended or expired before the events this reader needs.
- ``producer_lost``: the process generating the stream is gone.
- ``store_unavailable``: the store (Redis) failed while reading a stream that
  lives only there.

A made-up event carries the cursor's own sequence number, so a client that
resumes with its id loses nothing it had not already lost.

While it reads, the reader holds a lease in the store. It renews the lease
itself each time it is iterated once a third of the lease has passed; while
its transport is blocked in a write (a slow client, up to ``WRITE_TIMEOUT_S``)
the host's tick renews it instead (:meth:`lease_due`, :meth:`renew`), so a live reader
never counts as gone. Transports (the HTTP edge, WebSocket) wrap it: they own
their sockets, call :meth:`leave` when their client goes, and :meth:`close`
when they are done.

A leased reader that has read everything of a stream generated in its process, and is its
only reader there, *drives* it: it pulls the upstream's next events itself
(``Producer.pump``, through :meth:`ReaderHost.driven_by`) instead of waiting to be woken;
while it waits for the upstream there, the host's tick renews its lease and asks it to step
out when a heartbeat is due. Leaving, it hands generation back (:meth:`ReaderHost.undrive`).

A reader made with ``lease=False`` (the inspector's) takes no lease: it reads and waits like
any other, but no stream counts it as a reader, so it keeps none alive
(``on_disconnect=cancel``) and its leaving tells nobody anything.

The reader knows its host (the stream manager) only through :class:`ReaderHost`.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import gevent
import gevent.event

from ..errors import StoreError
from ..events import Event, Failed, is_terminal
from .store import Store

logger = logging.getLogger(__name__)

Batch = list[tuple[int, Event]]
REMOTE_CHECK_S = 2.0  # how often a reader of another process's stream asks if its end can still come


class ReaderHost(Protocol):
    """What a reader needs of the process that hosts it (the stream manager)."""

    store: Store
    clock: Callable[[], float]
    readers: set[StreamReader]  # this process's readers: woken by the tick and at shutdown
    stopping: gevent.event.Event  # set when the process shuts down

    def reader_attached(self, sid: str) -> None:
        """A reader in this process holds ``sid``: it is being read."""

    def reader_joined(self, reader: StreamReader) -> None:
        """``reader`` follows its stream from this process now (a leased one)."""

    def reader_left(self, reader: StreamReader) -> None:
        """``reader`` (a leased one) stopped following its stream."""

    def undrive(self, reader: StreamReader) -> None:
        """``reader`` drives its stream no more: generation goes on in a greenlet of its own."""

    def driven_by(self, reader: StreamReader) -> Any:
        """The producer ``reader`` drives now (it has nothing left to read), or ``None``."""


class StreamReader:
    """One reader of stream ``sid`` from event ``after`` on (0: the start)."""

    def __init__(self, manager: ReaderHost, sid: str, after: int = 0, *, page: int = 256,
                 idle: float = 15.0, leave_at_shutdown: bool = False, lease: bool = True) -> None:
        self.manager, self.sid, self.cursor = manager, sid, after
        self.page, self.idle = page, idle
        self.leave_at_shutdown = leave_at_shutdown
        self.lease = lease  # False: an onlooker, never counted as the stream's reader
        self.id = secrets.token_hex(6)
        self.wake = gevent.event.Event()  # set: new events, the tick, client gone, shutdown
        self.gone = False  # the client left
        self.ended = False  # the stream's final event (its own or one made up here) was handed over
        self.writing = False  # a batch is out with the transport (which may be blocked writing it)
        self.closed = False
        self.delivered = 0  # events handed to the transport
        self.last_yield = 0.0  # when a batch (or a heartbeat) last went to the transport
        self.drives = lease  # may drive its stream (pump it in this greenlet) when alone on it
        self.pumping = False  # in a pump of its stream now (waiting for the upstream, maybe)
        self._attached = False
        self._renewed_at = 0.0
        self._departing: gevent.Greenlet | None = None

    # -- lease ---------------------------------------------------------------
    def _attach(self) -> None:
        store = self.manager.store
        self._attached = True
        self.manager.readers.add(self)
        store.watch(self.sid, self.wake)
        if self.lease:
            self.manager.reader_joined(self)
        self._renew(self.manager.clock())

    def lease_due(self, now: float) -> bool:
        """Whether the host must renew this reader's lease: its transport is blocked in a write,
        or it waits for the upstream in a pump (so it does not iterate and renew it itself), and a
        third of the lease passed."""
        return (self.writing or self.pumping) and self._attached and not self.closed and \
            now - self._renewed_at >= self.manager.store.lease / 3

    def renew(self, now: float) -> None:
        """Renew this reader's lease now (the host, for a reader blocked in a write)."""
        if self._attached and not self.closed:
            self._renew(now)

    def _renew(self, now: float) -> None:
        self._renewed_at = now
        if not self.lease:
            return
        try:
            self.manager.store.attach(self.sid, self.id)
        except StoreError as exc:  # reading may still work (a local stream); reading says if not
            logger.warning("could not renew a reader's lease on stream %s: %s", self.sid, exc)
        self.manager.reader_attached(self.sid)

    def leave(self) -> None:
        """The client went away: stop at once, and detach without blocking the caller."""
        self.gone = True
        self.wake.set()
        if self.drives:
            self.drives = False
            self.manager.undrive(self)  # out of a pump: generation goes on in a greenlet of its own
        if self._departing is None and self._attached and not self.closed:
            # Detach now (a zero grace stops the upstream now); it may talk to Redis.
            self._departing = gevent.spawn(self.close)

    def close(self) -> None:
        """Detach (idempotent); the last reader leaving starts the resume grace."""
        if self.closed:
            return
        self.closed = True
        if not self._attached:
            return
        manager = self.manager
        manager.readers.discard(self)
        manager.store.unwatch(self.sid, self.wake)
        if not self.lease:
            return
        manager.reader_left(self)
        try:
            if manager.stopping.is_set() and self.leave_at_shutdown:
                # Leaving only so the client resumes elsewhere: not a departure.
                manager.store.detach_quietly(self.sid, self.id)
            else:
                manager.store.detach(self.sid, self.id)
        except StoreError as exc:  # the lease runs out by itself
            logger.warning("could not detach a reader of stream %s: %s", self.sid, exc)

    def join_departure(self, timeout: float = 5.0) -> None:
        """Wait for a detach started by :meth:`leave`."""
        if self._departing is not None:
            self._departing.join(timeout)

    # -- following -------------------------------------------------------------
    def _shutting_down(self) -> bool:
        # Leave for another worker only once the client has an event id to come back with:
        # an EventSource that got a 200 with no event would start a new generation.
        return self.leave_at_shutdown and self.delivered > 0 and self.manager.stopping.is_set()

    def _fail(self, code: str, message: str) -> Batch:
        self.ended = True
        return [(self.cursor, Failed(code, message, 502 if code != "store_unavailable" else 503))]

    def hold(self) -> None:
        """Take this reader's lease now rather than on the first read: from here on its stream
        counts as read (a transport that starts following from another greenlet)."""
        if not self._attached and not self.closed:
            self._attach()

    def __iter__(self) -> Iterator[Batch]:
        self.hold()
        manager, sid, wake = self.manager, self.sid, self.wake
        store, clock = manager.store, manager.clock
        renew_every = store.lease / 3
        self.last_yield = checked_at = clock()
        driving = None  # the producer this reader drove last (``Producer.pump``)
        while not self.gone and not self._shutting_down():
            now = clock()
            if now - self._renewed_at >= renew_every:
                self._renew(now)
            wake.clear()  # before reading: an append after this point sets it again
            try:
                batch = store.read(sid, self.cursor, self.page)
            except StoreError:
                yield self._fail("store_unavailable", "the stream store is unavailable")
                return
            if batch:
                out, ended = self._take(batch)
                self.delivered += len(out)
                self.last_yield = clock()
                self.writing = True  # until the transport has written it and asks for more
                yield out
                self.writing = False
                if ended:
                    return
                if driving is None or driving.driver is not self or self.gone:
                    continue
                # Driving: nobody else appends to the log, so it has nothing new: pump at once.
            elif self.drives and (driving := manager.driven_by(self)) is not None:
                # Alone on a stream generated here: it runs in this greenlet.
                if now - self.last_yield >= self.idle:
                    yield from self._beat(now)  # the upstream is silent: a heartbeat first
                    continue
            else:
                driving = None
            if driving is not None:
                self.pumping = True
                try:
                    full = driving.pump(self)  # its next events into the log
                finally:
                    self.pumping = False
                if full:
                    gevent.sleep(0)  # a burst: other streams' greenlets run too
                continue
            local = store.is_local(sid)
            if local or now - checked_at >= REMOTE_CHECK_S:  # local: a dict lookup
                checked_at = now
                try:
                    end = self._cannot_continue(local)
                except StoreError:
                    end = self._fail("store_unavailable", "the stream store is unavailable")
                if end is not None:
                    if end:
                        self.delivered += 1
                        yield end
                    return
            if now - self.last_yield >= self.idle:
                yield from self._beat(now)
                continue
            # The manager's tick wakes us for leases, heartbeats and the checks above.
            try:
                store.wait(sid, self.cursor, None, wake)
            except StoreError:
                yield self._fail("store_unavailable", "the stream store is unavailable")
                return

    def _beat(self, now: float) -> Iterator[Batch]:
        """An empty batch: nothing new for ``idle`` seconds (the transport may send a heartbeat)."""
        self.last_yield = now
        self.writing = True
        yield []
        self.writing = False

    def _take(self, batch: Batch) -> tuple[Batch, bool]:
        """The events of ``batch`` up to the end or a hole; whether the stream ended."""
        out: Batch = []
        for seq, event in batch:
            if seq != self.cursor + 1:
                logger.error("stream %s: event %d missing from the log", self.sid, self.cursor + 1)
                out.extend(self._fail("stream_gap", "part of this stream was lost; it cannot go on"))
                return out, True
            self.cursor = seq
            out.append((seq, event))
            if is_terminal(event):
                self.ended = True
                return out, True
        return out, False

    def _cannot_continue(self, local: bool) -> Batch | None:
        """``None`` while more may come; else what to end with (``[]``: nothing)."""
        store, sid = self.manager.store, self.sid
        meta = store.meta(sid)
        if meta is None:  # expired or gone before we saw its end
            if store.read(sid, self.cursor, 1) or store.recovering():
                return None  # more to read, or Redis lost it and its producer sends it again
            return self._fail("stream_gap", "the rest of this stream expired before it was read")
        if meta.get("state") == "finished":
            if store.read(sid, self.cursor, 1):
                return None  # the end arrived between our read and this check
            if self.cursor >= int(meta.get("last") or 0):
                return []  # nothing after our cursor: a resume at the end
            logger.error("stream %s finished at %s but its log stops at %d",
                         sid, meta.get("last"), self.cursor)
            return self._fail("stream_gap", "the end of this stream was lost")
        if not local and not store.owner_alive(meta):
            if store.read(sid, self.cursor, 1):
                return None
            return self._fail("producer_lost", "the process generating this stream is gone")
        return None
