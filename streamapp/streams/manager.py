"""The stream manager: starts producers, keeps readers, cancels, drains.

One instance per process lives in ``app.extensions["streams"]``. It keeps the
producers this process runs; the store keeps everything a reader on another
process needs.

Nobody reading means nothing generating. A stream whose last reader leaves
keeps going for the resume grace and is then stopped as ``client_gone``: the
store says ``idle`` when the last reader detaches, and a periodic check (the
tick) is the backstop for everything that message cannot cover: a first
reader that never attached (a response never iterated), an ``idle`` message
that was lost, a reader whose process died (its lease runs out). A stream
asked to ``finish`` is exempt and bounded by ``max_duration`` instead, like
every stream.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import gevent.event

from ..errors import StoreError
from ..events import Event, Opened
from .live import LIVE_S, Pulse
from .observe import StreamObserver, StreamSummary
from .producer import Producer
from .reader import StreamReader
from .store import Store

logger = logging.getLogger(__name__)
PUBLISH_WAIT_S = 5.0  # at most this long a new stream's id waits for other processes to know it
SLOW_WRITE_S = 0.5  # a reader driving its stream whose write is blocked this long gives generation up


class StreamManager:
    """Per-process registry of producers and readers over a shared store."""

    def __init__(self, store: Store, grace: float, tick: float = 1.0, *, max_events: int = 0,
                 max_bytes: int = 0, max_duration: float = 0.0, stall: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.grace = grace
        self.tick = tick  # readers are woken this often to send heartbeats and renew leases
        self.max_events, self.max_bytes, self.max_duration = max_events, max_bytes, max_duration
        self.stall = stall  # a running stream without an event this long after its first token fails
        self.clock = clock
        self.owner = secrets.token_hex(8)
        self.stopping = gevent.event.Event()
        self.readers: set[StreamReader] = set()
        self._producers: dict[str, Producer] = {}
        self._held: dict[str, int] = {}  # streams whose starting request still holds its headers
        self._grace_timers: dict[str, gevent.Greenlet] = {}
        self._on_exit: dict[str, Callable[[], None]] = {}  # sid -> called when its producer exits
        self._renewing: gevent.Greenlet | None = None  # the tick's lease renewals under way
        self.observers: list[StreamObserver] = []  # the log's summary line, metrics
        self.pulse = Pulse(clock)  # the running streams' live figures, for the inspector
        self.process = ""  # host:pid, in each stream's metadata (known once started: after the fork)
        store.control_handler = self._on_control
        self._started = False

    def _ensure_started(self) -> None:
        # Started lazily so no greenlet or connection exists before gunicorn forks.
        if not self._started:
            self._started = True
            self.process = f"{socket.gethostname()}:{os.getpid()}"
            self.store.start(self.owner)
            gevent.spawn(self._tick)
            gevent.spawn(self._sample)

    def _tick(self) -> None:
        # One timer for every reader, so a reader waits for new events without a
        # timer of its own (cheaper per event); woken, it sees what is due.
        while True:
            gevent.sleep(self.tick)
            self.renew_leases(self.clock())
            self._check_drivers(self.clock())
            self.store.heartbeat()
            try:
                # Cancels travel as messages; this poll catches one that was lost.
                for sid in self.store.cancelled(list(self._producers)):
                    self._on_control("cancel", sid)
            except StoreError as exc:
                logger.warning("could not poll for cancels: %s", exc)
            self.check(self.clock())

    def _sample(self) -> None:
        # The inspector's live figures: sampled, and shown to other processes, once a second.
        while True:
            gevent.sleep(LIVE_S)
            try:
                self.store.publish_live(self.pulse.sample(self._producers))
            except Exception:  # noqa: BLE001 - figures for the inspector must never stop streams
                logger.exception("could not sample the running streams' figures")

    def renew_leases(self, now: float) -> gevent.Greenlet | None:
        """Wake every reader of this process (heartbeats, checks), then renew the leases of those
        whose transport is blocked in a write (they do not renew by themselves), in a greenlet of
        its own so a slow store never holds up the tick; that greenlet, if one was started."""
        due = []
        for reader in list(self.readers):
            reader.wake.set()
            if reader.lease_due(now):
                due.append(reader)
        if not due or (self._renewing is not None and not self._renewing.dead):
            return None
        self._renewing = gevent.spawn(lambda: [reader.renew(now) for reader in due])
        return self._renewing

    def check(self, now: float) -> None:
        """The producer side's backstop: stop streams unread for the grace, or past their duration."""
        watched = []
        for sid, producer in list(self._producers.items()):
            if self.max_duration and now - producer.started_at >= self.max_duration:
                producer.stop("length")
            elif sid not in self._held and (producer.on_disconnect == "cancel" or producer.driver):
                watched.append(sid)  # its readers counted: the grace, or a reader elsewhere too
        if not watched:
            return
        try:
            counts = self.store.reader_counts(watched)
        except StoreError as exc:
            logger.warning("could not count readers: %s", exc)
            return
        for sid, count in zip(watched, counts, strict=True):
            producer = self._producers.get(sid)
            if producer is None:
                continue
            if count > producer.local_readers and producer.driver is not None:
                producer.shared_read = True  # read elsewhere too (a resume on another process)
                producer.release("read_elsewhere")
            if producer.on_disconnect != "cancel":
                continue
            if count:
                producer.unread_since = None
            elif producer.unread_since is None:
                producer.unread_since = now
            elif now - producer.unread_since >= self.grace:
                logger.info("stream %s: nobody read it for %.1f s; stopping it", sid, self.grace)
                producer.stop("client_gone")

    # -- producing ---------------------------------------------------------
    def start(self, events: Iterator[Event], meta: dict[str, Any], on_disconnect: str = "cancel",
              on_exit: Callable[[], None] | None = None,
              on_first: Callable[[Event | None], dict[str, Any] | None] | None = None) -> str:
        """Register a stream, start its producer, return its id. ``on_exit`` is called once
        when the producer exits, however the stream ends (a stream slot's release); ``on_first``
        is the producer's (an upstream's circuit)."""
        self._ensure_started()
        sid = secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
        if on_exit is not None:
            self._on_exit[sid] = on_exit
        # Spawned first, so that it sends the upstream request before anything the store
        # does in the background for the new stream (it runs once this greenlet waits, and
        # finds the stream created: create() does not wait).
        producer = Producer(
            sid, events, self.store, self._producer_exit, max_events=self.max_events,
            max_bytes=self.max_bytes, on_disconnect=on_disconnect, started_at=self.clock(),
            meta=meta, stall=self.stall, clock=self.clock, on_first=on_first, on_move=self._moved)
        try:
            self.store.create(sid, {**meta, "state": "running", "on_disconnect": on_disconnect,
                                    "started": round(time.time(), 3), "process": self.process})
        except BaseException:
            producer.greenlet.kill(block=False)  # not started: it never runs
            self._run_on_exit(sid)
            raise
        self._producers[sid] = producer
        # The client is an API key's name, never the key.
        logger.info("stream %s started: route %s, provider %s, client %s", sid, meta.get("route"),
                    meta.get("provider", "-"), meta.get("client", "-"),
                    extra={"stream_id": sid, "request_id": meta.get("request_id")})
        self._notify("stream_started", sid, meta)
        return sid

    def resumed(self, sid: str, meta: dict[str, Any]) -> None:
        """A client resumes stream ``sid`` (metadata ``meta``): counted in its metadata, and
        told to observers."""
        try:
            self.store.count_resume(sid)
        except StoreError as exc:  # a count missing from the inspector; the resume goes on
            logger.warning("could not count a resume of stream %s: %s", sid, exc)
        self._notify("stream_resumed", sid, meta)

    def _moved(self, to: str, reason: str) -> None:
        """A stream's generation moved ``to`` its reader's greenlet or its own (``reason``)."""
        self._notify("generation_moved", to, reason)

    def _notify(self, method: str, *args: Any) -> None:
        for observer in self.observers:
            call = getattr(observer, method, None)
            if call is None:
                continue  # an observer of some events only
            try:
                call(*args)
            except Exception:  # noqa: BLE001 - an observer must never break a stream
                logger.exception("a stream observer failed in %s", method)

    def _producer_exit(self, sid: str, summary: StreamSummary) -> None:
        producer = self._producers.pop(sid, None)
        if producer is not None:
            self.store.annotate(sid, end_figures(producer, summary))
        timer = self._grace_timers.pop(sid, None)
        if timer is not None:
            timer.kill(block=False)
        self._run_on_exit(sid)
        self._notify("stream_ended", summary)

    def _run_on_exit(self, sid: str) -> None:
        callback = self._on_exit.pop(sid, None)
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a hook must not break the producer's exit
                logger.exception("stream %s: an exit hook failed", sid)

    @contextmanager
    def holding(self, sid: str) -> Iterator[None]:
        """While the request that started ``sid`` decides its response, it counts as read."""
        self._held[sid] = self._held.get(sid, 0) + 1
        try:
            yield
        finally:
            left = self._held.pop(sid) - 1
            if left:
                self._held[sid] = left
            producer = self._producers.get(sid)
            if producer is not None:
                producer.unread_since = self.clock()  # the grace for a first reader starts now

    def reader_attached(self, sid: str) -> None:
        """A reader in this process holds ``sid``: it is being read."""
        producer = self._producers.get(sid)
        if producer is not None:
            producer.unread_since = None

    # -- who generates: a stream's producer greenlet, or its only reader here (``Producer.pump``) --
    def reader_joined(self, reader: StreamReader) -> None:
        """A leased reader follows ``reader.sid`` here: a second one takes generation back to the
        stream's own greenlet (neither waits for the other's client)."""
        producer = self._producers.get(reader.sid)
        if producer is not None:
            producer.local_readers += 1
            if producer.local_readers > 1:
                producer.release("second_reader")

    def reader_left(self, reader: StreamReader) -> None:
        """A leased reader stopped following its stream here."""
        producer = self._producers.get(reader.sid)
        if producer is not None:
            producer.local_readers -= 1
            self.undrive(reader)

    def undrive(self, reader: StreamReader) -> None:
        """``reader`` drives its stream no more (its client left): generation moves now."""
        producer = self._producers.get(reader.sid)
        if producer is not None and producer.involves(reader):
            producer.release("reader_left")

    def driven_by(self, reader: StreamReader) -> Producer | None:
        """The producer ``reader`` drives now, or ``None``: only a stream generated here, its only
        leased reader here, not while this process shuts down (``Producer.offer``)."""
        producer = self._producers.get(reader.sid)
        if producer is None or producer.local_readers != 1 or self.stopping.is_set():
            return None
        return producer if producer.offer(reader) else None

    def _check_drivers(self, now: float) -> None:
        """The tick's look at streams driven by their readers: one whose heartbeat is due steps out
        of its upstream wait; one whose client is slow (a write blocked ``SLOW_WRITE_S``) gives
        generation back to the stream's own greenlet, for good."""
        for reader in list(self.readers):
            if not reader.drives:
                continue
            producer = self._producers.get(reader.sid)
            if producer is None or producer.driver is not reader:
                continue
            if reader.writing and now - reader.last_yield >= SLOW_WRITE_S:
                reader.drives = False
                producer.release("slow_client")
            elif reader.pumping and now - reader.last_yield >= reader.idle:
                producer.pause()

    def attach(self, sid: str, after: int = 0, **options: Any) -> StreamReader:
        """A new reader of ``sid`` after event ``after`` (it must be closed)."""
        self._ensure_started()
        return StreamReader(self, sid, after, **options)

    def cancel(self, sid: str) -> str | None:
        """Ask the stream's producer, wherever it runs, to stop.

        Returns ``"cancelling"``, ``"finished"``, or ``None`` for an unknown stream.
        """
        self._ensure_started()
        meta = self.store.meta(sid)
        if meta is None:
            return None
        if meta.get("state") == "finished" or not self.store.owner_alive(meta):
            return "finished"  # over, or its producer died with its process
        self.store.request_cancel(sid)
        return "cancelling"

    def _on_control(self, kind: str, sid: str) -> None:
        producer = self._producers.get(sid)
        if producer is None:
            return
        if kind == "cancel":
            producer.stop("cancelled")
        elif kind == "idle" and producer.on_disconnect == "cancel":
            producer.unread_since = self.clock()
            self._start_grace(sid)

    def _start_grace(self, sid: str) -> None:
        old = self._grace_timers.pop(sid, None)
        if old is not None:
            old.kill(block=False)
        if self.grace <= 0:
            self._grace_over(sid)
        else:
            self._grace_timers[sid] = gevent.spawn_later(self.grace, self._grace_over, sid)

    def _grace_over(self, sid: str) -> None:
        self._grace_timers.pop(sid, None)
        producer = self._producers.get(sid)
        if producer is None or sid in self._held:
            return
        try:
            readers = self.store.readers(sid)
        except StoreError as exc:
            logger.warning("could not count the readers of stream %s: %s", sid, exc)
            return  # the tick's check tries again
        if readers == 0:
            producer.stop("client_gone")

    # -- waiting -----------------------------------------------------------
    def published(self, sid: str) -> None:
        """Wait until stream ``sid`` (started here) can be found by every process: before its
        id reaches the client, who may resume it on any of them."""
        self.store.published(sid, PUBLISH_WAIT_S)

    def first_event(self, sid: str, header_wait: float, limit: float,
                    give_up: gevent.event.Event) -> Event | None:
        """Wait for the first event that decides the response's status, then until the
        stream is :meth:`published`.

        Returns the first non-``Opened`` event, or ``Opened`` once
        ``header_wait`` has passed since the upstream accepted the request,
        or ``None`` after ``limit`` seconds or once ``give_up`` is set.
        """
        first = self._first_event(sid, header_wait, limit, give_up)
        if not give_up.is_set():
            self.published(sid)
        return first

    def _first_event(self, sid: str, header_wait: float, limit: float,
                     give_up: gevent.event.Event) -> Event | None:
        wake = gevent.event.Event()
        give_up.rawlink(lambda _: wake.set())
        deadline = time.monotonic() + limit
        opened_at: float | None = None
        self.store.watch(sid, wake)
        try:
            while not give_up.is_set():
                wake.clear()
                events = self.store.read(sid, 0, 2)
                for _, event in events:
                    if not isinstance(event, Opened):
                        return event
                now = time.monotonic()
                if events and opened_at is None:
                    opened_at = now
                    deadline = min(deadline, now + header_wait)
                if now >= deadline:
                    return events[0][1] if events else None
                self.store.wait(sid, len(events), deadline - now, wake)
            return None
        finally:
            self.store.unwatch(sid, wake)

    def abandon(self, sid: str) -> None:
        """Stop a stream whose client left before it could be given the stream id."""
        producer = self._producers.get(sid)
        if producer is not None:
            producer.stop("client_gone")

    # -- shutdown ----------------------------------------------------------
    def begin_shutdown(self) -> None:
        """Wake every reader; those whose client can resume elsewhere end cleanly."""
        self.stopping.set()
        for producer in list(self._producers.values()):
            producer.release("shutdown")  # generation in the streams' own greenlets: drained as before
        for reader in list(self.readers):
            reader.wake.set()

    def drain(self, timeout: float, close: bool = True) -> None:
        """Let running producers (those started meanwhile too) finish for up to ``timeout``,
        then stop them; with ``close``, then close the store."""
        deadline = time.monotonic() + timeout
        while self._producers and time.monotonic() < deadline:
            running = self._greenlets()
            if not running:  # a driver is stepping out of its pump (begin_shutdown): timers and I/O run
                gevent.sleep(0.01)
                continue
            gevent.joinall(running, timeout=max(0.0, deadline - time.monotonic()))
        for producer in list(self._producers.values()):
            producer.stop("shutdown")
        gevent.joinall(self._greenlets(), timeout=2)
        if close:
            self.store.close()

    def _greenlets(self) -> list[gevent.Greenlet]:
        greenlets = [p.greenlet for p in self._producers.values()]
        return [g for g in greenlets if g is not None and not g.dead]  # none: a stream its reader drives


def end_figures(producer: Producer, summary: StreamSummary) -> dict[str, Any]:
    """What a stream's metadata keeps of its end, for the inspector: when, how, the time to its
    first token, its content events (text, reasoning, tool-call fragments) and its usage record."""
    return {"ended": round(time.time(), 3), "outcome": summary.outcome,
            "finish_reason": summary.finish_reason, "error": summary.error_code,
            "ttft_s": None if summary.ttft_s is None else round(summary.ttft_s, 4),
            "tokens": producer.content_events(), "duration_s": round(summary.duration_s, 4),
            "usage": summary.usage}
