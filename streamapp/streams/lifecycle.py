"""One stream lifecycle for every front door: start, follow, resume, tear down.

A front door (SSE, chunked text, ``/v1`` chunks, WebSocket) is a request mapper,
an encoder and a socket edge. Everything between "a provider's events" and
"batches of numbered events to write" happens here, the same way for all:

- **start** (:meth:`Lifecycle.start`): the producer is launched; the door may hold
  its answer until the first event decides it (:meth:`Lifecycle.decide`: the first
  token, a failure, or ``header_wait`` after the upstream accepted); the stream is
  published (:meth:`Lifecycle.publish`) before its id reaches the client, who may
  resume it on any process; then the first reader is attached (:meth:`follow`).
  A client that leaves before it learnt the id abandons the stream.
- **follow** (:meth:`Lifecycle.follow`): a :class:`StreamReader` from a position;
  it leaves at shutdown when another process can go on (a shared store and an
  encoder whose client resumes by id).
- **resume** (:meth:`Lifecycle.find`): one rule for every door. The stream must
  exist (and, for a door that says so, be one it made); its owner is checked
  before anything else about it is told; then whether it can be resumed in its
  format and has events after the position.
- **tear down**: the edge closes its reader when it is done, and calls
  ``reader.leave()`` when its client goes; the manager stops what nobody reads.
- **watch** (:meth:`Lifecycle.watch`): the inspector's reader, from the start of a
  stream: the same reader, without a lease, so it counts as no reader (a stream whose
  client left still stops) and is no resume.
- **forget** (:meth:`Lifecycle.forget`): an ended stream removed for every
  process before its retention ends (a deleted response); a running one is
  cancelled first (:meth:`cancel`) by the door.

No Flask here: who the client is and how a refusal looks belong to the door.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

from ..events import Event, Failed
from ..wire import is_resumable, is_stream_id
from .manager import PUBLISH_WAIT_S, StreamManager
from .reader import StreamReader

RECOVERY_POLL_S = 0.1  # how often a resume looks for a stream Redis lost and is getting back


@dataclass(frozen=True)
class Timing:
    """The lifecycle's settings: how long a start holds its answer, how often a reader beats."""

    header_wait: float  # after the upstream accepted, hold the answer at most this long
    first_limit: float  # with no answer from the upstream at all, give up after this long
    heartbeat: float  # a reader with nothing new for this long yields an empty batch


@dataclass(frozen=True)
class Resumable:
    """A stream a client may resume: from event ``after`` on, in its format ``fmt``."""

    sid: str
    after: int
    meta: dict[str, Any]
    fmt: str


class Lifecycle:
    """The stream lifecycle over this process's :class:`StreamManager`."""

    def __init__(self, manager: StreamManager, timing: Timing) -> None:
        self.manager, self.timing = manager, timing

    @property
    def stopping(self) -> gevent.event.Event:
        """Set when this process shuts down."""
        return self.manager.stopping

    # -- start ---------------------------------------------------------------------------
    def start(self, events: Iterator[Event], meta: dict[str, Any], on_disconnect: str = "cancel",
              on_exit: Callable[[], None] | None = None,
              on_first: Callable[[Event | None], dict[str, Any] | None] | None = None) -> str:
        """Launch a stream of ``events``; its id. ``on_exit`` runs once when its producer exits;
        ``on_first`` once with the first token, or with the end when none came (``Producer``)."""
        return self.manager.start(events, meta, on_disconnect, on_exit=on_exit, on_first=on_first)

    def decide(self, sid: str, give_up: gevent.event.Event) -> Event | None:
        """Hold until the event that decides the answer's status, then publish ``sid``.

        The first non-``Opened`` event, ``Opened`` once ``header_wait`` passed since the
        upstream accepted, or ``Failed("upstream_timeout")`` (the stream cancelled) when
        the upstream never answered. ``None`` when ``give_up`` was set (the client left
        before it learnt the id): the stream is abandoned.
        """
        manager, timing = self.manager, self.timing
        with manager.holding(sid):
            first = manager.first_event(sid, timing.header_wait, timing.first_limit, give_up)
        if give_up.is_set():
            manager.abandon(sid)
            return None
        if first is None:
            manager.cancel(sid)
            return Failed("upstream_timeout", "the upstream did not answer in time", 504)
        return first

    def publish(self, sid: str) -> None:
        """Wait until every process can find ``sid``: before its id reaches the client."""
        self.manager.published(sid)

    def abandon(self, sid: str) -> None:
        """Stop a stream whose client left before it was given the stream id."""
        self.manager.abandon(sid)

    # -- follow ----------------------------------------------------------------------------
    def follow(self, sid: str, after: int = 0, *, resumable: bool = True, held: bool = False) -> StreamReader:
        """A reader of ``sid`` after event ``after`` (its edge must close it).

        ``resumable``: its client can resume by id, so at shutdown the reader leaves for
        another process (with a shared store). ``held``: take the lease now, the stream
        counting as read from here on (an edge that follows from another greenlet).
        """
        manager = self.manager
        reader = manager.attach(sid, after, idle=self.timing.heartbeat,
                                leave_at_shutdown=resumable and manager.store.shared)
        if held:
            with manager.holding(sid):
                reader.hold()
        return reader

    def watch(self, sid: str, after: int = 0) -> StreamReader:
        """An onlooker's reader of ``sid`` after event ``after`` (its edge must close it): it
        holds no lease, so the stream counts it as no reader, and it ends at shutdown."""
        return self.manager.attach(sid, after, idle=self.timing.heartbeat, lease=False,
                                   leave_at_shutdown=True)

    # -- resume ----------------------------------------------------------------------------
    def find(self, sid: str, after: int, *, check_owner: Callable[[dict[str, Any]], None],
             route: str | None = None, recovery_wait: float = PUBLISH_WAIT_S) -> Resumable | None:
        """The stream to resume after event ``after``, or ``None`` when there is nothing to
        resume (unknown or expired, another door's stream, nothing after ``after``).

        ``check_owner(meta)`` raises when the caller may not see the stream; it runs before
        anything else about the stream is looked at. With ``route``, only a stream that door
        made, and only in a format whose client resumes by id; without it (the stream API),
        a stream whose format has no ids is replayed whole. While the store is recovering
        (Redis lost its data), a missing stream is waited for up to ``recovery_wait``: its
        producer's process sends it again.
        """
        manager = self.manager
        if not is_stream_id(sid):
            return None
        meta = manager.store.meta(sid)
        if meta is None and manager.store.recovering():
            meta = self._sent_again(sid, recovery_wait)
        if meta is None:
            return None
        check_owner(meta)
        if route is not None and meta.get("route") != route:
            return None
        fmt = meta.get("format", "plain")
        if not is_resumable(fmt):
            if route is not None:
                return None  # its client never had ids to resume with
            after = 0
        if not self.has_more(sid, meta, after):
            return None
        manager.resumed(sid, meta)
        return Resumable(sid, after, meta, fmt)

    def _sent_again(self, sid: str, timeout: float) -> dict[str, Any] | None:
        """``sid``'s metadata once its producer's process sent it again, or ``None`` after
        ``timeout`` (a poll: nothing announces it to this process)."""
        store, deadline = self.manager.store, time.monotonic() + timeout
        while time.monotonic() < deadline:
            gevent.sleep(min(RECOVERY_POLL_S, max(0.0, deadline - time.monotonic())))
            meta = store.meta(sid)
            if meta is not None:
                return meta
        return None

    def has_more(self, sid: str, meta: dict[str, Any], after: int) -> bool:
        """Whether stream ``sid`` (metadata ``meta``) has, or will have, events after ``after``."""
        if meta.get("state") != "finished":
            return True
        last = meta.get("last")
        return after < int(last) if last is not None else bool(self.manager.store.read(sid, after, 1))

    # -- cancel ----------------------------------------------------------------------------
    def cancel(self, sid: str) -> str | None:
        """Stop ``sid`` wherever it runs: ``"cancelling"``, ``"finished"``, or ``None`` if unknown."""
        return self.manager.cancel(sid)

    # -- forget ----------------------------------------------------------------------------
    def forget(self, sid: str) -> str | None:
        """Remove ``sid`` for every process if it ended (or its producer's process died):
        ``"forgotten"``; ``"running"`` (cancel it, and forget it once it ended), or ``None``
        if unknown. Readers still attached end with ``stream_gap``."""
        store = self.manager.store
        meta = store.meta(sid)
        if meta is None:
            return None
        if meta.get("state") != "finished" and store.owner_alive(meta):
            return "running"
        store.forget(sid)
        return "forgotten"
