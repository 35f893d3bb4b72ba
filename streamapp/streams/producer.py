"""The producer: pulls a stream's provider events into a store, in one greenlet per stream.

It numbers events from 1 and appends each to the stream's log; readers follow
the log on their own. Who runs the provider is the producer's business:

- its own greenlet (:meth:`Producer._run`), from the start to the first token, and whenever
  the stream is not read by exactly one reader in this process;
- after the first token, the stream's only reader here, in its greenlet (:meth:`Producer.pump`,
  :meth:`Producer.offer`): it pulls the upstream's next events into the log, reads them back
  and writes them, with no hand-off; the producer greenlet exits, so a stream waiting for its
  upstream holds one greenlet. The provider's waits are pause points (:mod:`streamapp.pausing`)
  the reader steps out of (to write, for a heartbeat, to give generation back). Anything else
  (a second reader, the reader leaving, a slow client, a reader elsewhere, a stop, shutdown)
  moves generation back to a greenlet of its own (:meth:`Producer.release`) between two
  events: nothing lost, doubled or reordered; the upstream sees one connection read on.

``stop(reason)`` ends generation at once, even while the upstream is silent: whichever greenlet
waits for the upstream is interrupted there, the provider's ``finally`` closes the upstream
response, and the stream ends with ``Done(finish_reason=reason)``. A stream that reaches its
limits ends the same way with ``finish_reason: "length"``: ``max_events`` events that carry
content (text, reasoning, tool-call fragments), or ``max_bytes`` of that content (UTF-8,
:func:`~streamapp.events.content_bytes`), or more content events than its budget reservation's
output (``meta["budget_output"]``).
Whatever happens, the exit path runs to its end: the final event is appended
and ``on_exit`` is called. The final event, the upstream's or ours, carries the stream's usage
record (:func:`streamapp.usage.record.final_usage`): the producer knows whether the upstream
accepted the request, how many content chunks it produced and how the stream ended;
``meta["prompt_estimate"]``, when the door put it there, is the input's estimate.

After the first token the stream never ends silently: with ``stall`` set, an upstream
that yields no event for that long ends the stream with ``Failed("upstream_stalled")``
(:mod:`.stall`, nothing per event), and so does a read timeout after the first token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import gevent

from .. import pausing
from ..errors import UpstreamError
from ..events import Delta, Done, Event, Failed, Opened, Reasoning, ToolCall, content_bytes, is_terminal
from ..pausing import PAUSE
from ..usage.record import final_usage
from .driving import END, FAIR_EVENTS, Driving
from .observe import StreamSummary, outcome_of
from .stall import StallWatch
from .store import Store

logger = logging.getLogger(__name__)
# gevent.sleep(0) lets other greenlets run but polls no socket (gevent runs its callbacks for up
# to its switch interval, 5 ms, before it polls); the shortest timer lets the loop poll once.
IO_YIELD_S = 1e-6


class StreamStopped(Exception):
    """Thrown into a producer to stop it; ``args[0]`` is the finish reason."""


class StreamStalled(Exception):
    """Thrown into a producer whose upstream yielded no event for its stall timeout."""



class Producer(Driving):
    """Runs ``events`` into ``store`` under stream id ``sid``.

    ``on_disconnect`` is ``"cancel"`` (stop once nobody reads, after the grace) or ``"finish"``
    (generate to the end; the manager bounds its duration). ``unread_since`` is when the manager
    last saw it without readers. ``stall`` (seconds, 0: none) ends it with ``upstream_stalled``
    when no event comes for that long after the first token. On exit, ``on_exit(sid, summary)``
    gets the stream's :class:`StreamSummary` (``meta``: the stream's metadata). ``on_first`` is
    called once with the first token (it must be quick), or with the final event before it is
    appended when the stream ends before a token (the start's outcome); the fields it returns,
    if any, are added to the stream's metadata (``Store.annotate``: the upstream attempts) and
    ``meta``. ``on_move(to, reason)`` is told each move of generation.
    """

    __slots__ = tuple(  # one per stream: no __dict__ (about 1.2 KB less per stream)
        "sid store on_disconnect started_at unread_since meta max_events max_bytes clock first_at "
        "first_seq tokens chunks opened usage _events _on_exit _on_first _in_upstream _ended_with "
        "ended_at _stop_reason seq _counted _others _size _final stall _watch driver local_readers "
        "shared_read _handoff _release_wanted _ending _runner _pump _on_move greenlet _stall_hit".split())

    def __init__(self, sid: str, events: Iterator[Event], store: Store,
                 on_exit: Callable[[str, StreamSummary], None], *, max_events: int = 0,
                 max_bytes: int = 0, on_disconnect: str = "cancel", started_at: float = 0.0,
                 meta: dict[str, Any] | None = None, stall: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_first: Callable[[Event | None], dict[str, Any] | None] | None = None,
                 on_move: Callable[[str, str], None] | None = None) -> None:
        self.sid = sid
        self.store = store
        self.on_disconnect = on_disconnect
        self.started_at = started_at
        self.unread_since: float | None = started_at
        self.meta = meta or {}
        # A budget's reservation (``meta["budget_output"]``) bounds the output too: an upstream
        # that ignores the max_tokens it was asked for is cut when it passes it.
        budget = self.meta.get("budget_output")
        if isinstance(budget, int) and budget > 0:
            max_events = min(max_events, budget) if max_events else budget
        self.max_events, self.max_bytes = max_events, max_bytes
        self.clock = clock
        self.first_at: float | None = None  # when the first token was appended
        self.first_seq: int | None = None  # its sequence number: every event from it on is content
        self.tokens = 0
        self.chunks = 0  # content chunks the upstream produced (text, reasoning, tool-call fragments)
        self.opened = False  # the upstream accepted the request
        self.usage: dict[str, Any] | None = None  # the usage record of the final event
        self._events = events
        self._on_exit = on_exit
        self._on_first = on_first
        self._in_upstream = False
        self._ended_with: Event | None = None
        self.ended_at: float | None = None
        self._stop_reason: str | None = None
        self.seq = 0
        self._counted = self._others = self._size = 0  # content events (others: not text), their bytes
        self._final: Event | None = None  # the end still to record, once a step found it
        self.stall = stall
        self._watch: StallWatch | None = None  # armed at the first token (streams.stall)
        self._stall_hit = False  # it found a stall: the stream ends
        # Who generates: this producer's own greenlet, or the reader that drives the stream in
        # its greenlet (``driver``, :meth:`pump`); never both. ``_runner`` is the greenlet in a
        # step now.
        self.driver: object | None = None
        self.local_readers = 0  # readers attached in this process (the manager counts them)
        self.shared_read = False  # read elsewhere too: never driven by a reader again
        self._handoff: Any = None  # a reader asking to drive: given at the next event
        self._release_wanted = ""  # why the driver is to give generation back when it steps out
        self._ending = False  # the end was found: the finish runs (or ran)
        self._runner: Any = None
        self._pump = pausing.Pump()  # the pause points' state, for whichever greenlet runs the provider
        self._on_move = on_move  # told (to, reason) each time generation moves
        self.greenlet: gevent.Greenlet | None = gevent.spawn(self._run)

    # -- stopping ----------------------------------------------------------------------------
    def stop(self, reason: str) -> None:
        """End generation with ``finish_reason=reason`` (idempotent)."""
        if self._stop_reason is not None or self._ending:
            return
        self._stop_reason = reason
        if self.driver is not None and self._runner is None:
            self._to_greenlet("stopped")  # the driver is writing: the stream's own greenlet ends it now
        elif self._in_upstream:
            self._interrupt(StreamStopped(reason))  # never a store write half done

    def _interrupt(self, exc: BaseException) -> None:
        """Throw ``exc`` into the greenlet waiting for the upstream, from the hub, if it still
        waits there then (``Paused`` only at a pause point)."""
        gevent.get_hub().loop.run_callback(self._throw, exc)

    def _throw(self, exc: BaseException) -> None:
        runner = self._runner  # Paused only at a pause point
        if runner is not None and self._in_upstream and not runner.dead and \
                (self._pump.waiting or not isinstance(exc, pausing.Paused)):
            runner.throw(exc)

    # -- generating ----------------------------------------------------------------------------
    def _append(self, event: Event, final: bool = False) -> None:
        self.seq += 1
        self.store.append(self.sid, self.seq, event, final=final)

    def _run(self) -> None:
        """The producer greenlet: steps until the end, or until a reader takes the stream over."""
        self._runner = gevent.getcurrent()
        self._pump.step_out = False
        token = pausing.CURRENT.set(self._pump)  # its waits are pause points: a reader may take over
        run = 0
        handed = False
        try:
            while True:
                halt = self._halt()
                if halt is not None:
                    self._final = halt
                    break
                handoff = self._handoff
                if handoff is not None:
                    self._handoff = None
                    if not self.shared_read:
                        handed = True
                        self.driver = handoff  # it pumps from its next read on
                        self._runner = self.greenlet = None
                        handoff.wake.set()  # it may wait with nothing new to read
                        self._moved("reader", "alone")
                        return
                got = self._step()
                if got is END:
                    break
                if got is PAUSE:
                    continue  # stepped out of the upstream wait: a reader asks to drive
                run += 1
                if self.seq == 2:
                    # The first token: its reader writes it now, and whatever it waits for
                    # on a socket (the stream's publication) is answered before we go on.
                    run = 0
                    gevent.sleep(IO_YIELD_S)
                elif run >= FAIR_EVENTS:
                    run = 0
                    gevent.sleep(0)  # readers woken by the appends write now
        finally:
            pausing.CURRENT.reset(token)
            if not handed:
                self._runner = None
                self._ending = True
                self._finish(self._final)

    def _step(self) -> object:
        """One upstream event into the log: ``None`` to go on, ``PAUSE`` when a pump stepped out,
        or ``END`` with ``_final`` the end still to record (``None``: the upstream's own end,
        appended already)."""
        try:
            self._in_upstream = True
            try:
                event = next(self._events, None)
            finally:
                self._in_upstream = False
            if event is PAUSE:
                return PAUSE
            if event is None:
                self._final = Failed("upstream_bad_response", "the provider ended without a result")
                return END
            cls = type(event)
            if cls is Delta or cls is Reasoning or cls is ToolCall:
                if cls is Delta:
                    text = event.text
                    if not text:
                        return None
                    self._size += len(text.encode("utf-8", "replace"))
                else:
                    self._others += 1
                    self._size += content_bytes(event)
                self._counted += 1
                if (self.max_events and self._counted > self.max_events) or \
                        (self.max_bytes and self._size > self.max_bytes):
                    self._final = Done("length")  # this stream's limits: the upstream is closed below
                    return END
            if is_terminal(event):
                # Readers get the end now; closing the provider may still tidy
                # the upstream connection up for reuse.
                self.chunks = self._counted
                event = self._with_usage(event, from_upstream=True)
                self._append(event, final=True)
                self._ended_with = event
                self._final = None
                return END
            self._append(event)
            if cls is Opened:
                self.opened = True
            elif self.first_at is None:
                self.first_at = self.clock()  # the first token (text, reasoning or a tool call)
                self.first_seq = self.seq
                if self.stall:
                    self._watch = StallWatch(self.stall, lambda: self.seq, lambda: self._in_upstream,
                                             self._stalled)
                if self._on_first is not None:
                    self._annotate(self._on_first(event))
            return None
        except StreamStopped as stop:
            self._final = Done(stop.args[0])
        except StreamStalled:
            self._final = self._halt()
        except pausing.Paused:  # thrown where the provider has no pause point: not expected
            logger.error("stream %s: a pause reached a provider without a pause point", self.sid)
            self._final = Failed("internal_error", "internal error: Paused", 500)
        except Exception as exc:  # noqa: BLE001 - stopped: whatever the upstream's close raised
            if self._stop_reason is None:
                self._final = self._failure(exc)
            else:
                logger.warning("stream %s: the upstream failed while stopping: %r", self.sid, exc)
                self._final = Done(self._stop_reason)
        return END

    def _stalled(self) -> None:
        """The stall check's verdict: ends the stream between two steps, or now in a wait."""
        if self._stop_reason is None:
            self._stall_hit = True
            self._interrupt(StreamStalled())

    def _halt(self) -> Event | None:
        """The end a stop or a stall asked for (checked between steps), if any."""
        if self._stop_reason is not None:
            return Done(self._stop_reason)
        if self._stall_hit:  # the stream ends with the first end returned: logged once
            logger.warning("stream %s: upstream_stalled: no event for %g s", self.sid, self.stall,
                           extra={"stream_id": self.sid, "request_id": self.meta.get("request_id")})
            return Failed("upstream_stalled", f"the upstream sent no event for {self.stall:g} s", 504)
        return None

    def _annotate(self, fields: dict[str, Any] | None) -> None:
        """Add ``fields`` to the stream's metadata (the store's and ``meta``)."""
        if fields:
            self.meta = {**self.meta, **fields}
            self.store.annotate(self.sid, fields)

    def _failure(self, exc: Exception) -> Failed:
        """The final event for a failure of the provider (a read timeout after the first
        token is a stall)."""
        if isinstance(exc, UpstreamError):  # the detail (hosts, raw bodies) is for the log only
            code = exc.code
            if code == "upstream_timeout" and self.first_at is not None:
                code = "upstream_stalled"
            logger.warning("stream %s: %s: %s", self.sid, code, exc.detail,
                           extra={"stream_id": self.sid, "request_id": self.meta.get("request_id")})
            # usage: the counts the upstream sent before it failed (final_usage keeps them)
            return Failed(code, exc.message, exc.status, exc.upstream_status, usage=exc.usage,
                          retry_after=exc.retry_after)
        # A provider bug must end the stream, not hang it.
        logger.error("producer of stream %s failed", self.sid, exc_info=exc)
        return Failed("internal_error", f"internal error: {type(exc).__name__}", 500)

    def _finish(self, final: Event | None) -> None:
        """Close the upstream, record the end, tell the manager: each step whatever the others do."""
        self.ended_at = self.clock()  # the stream's end; closing may still read the upstream's tail
        self.tokens = self._counted - self._others  # text deltas
        self.chunks = self._counted
        if self._watch is not None:
            self._watch.close()
        if self.first_at is None and self._on_first is not None:
            try:  # no token came: the end is the start's outcome, told before any reader sees it
                self._annotate(self._on_first(final if final is not None else self._ended_with))
            except Exception:  # noqa: BLE001 - a hook must not keep the end from being recorded
                logger.exception("the start hook of stream %s failed", self.sid)
        try:
            self._events.close()  # closes the upstream response if it is still open
        except Exception:  # noqa: BLE001 - closing failed; the end must still be recorded
            logger.exception("closing the upstream of stream %s failed", self.sid)
        try:
            if final is not None:
                final = self._ended_with = self._with_usage(final, from_upstream=False)
                self._append(final, final=True)
        except Exception:  # noqa: BLE001 - the store failed; readers here still got the end
            logger.exception("could not record the end of stream %s", self.sid)
        finally:
            self._on_exit(self.sid, self.summary())

    def _with_usage(self, end: Event, from_upstream: bool) -> Event:
        """``end`` carrying the stream's usage record (kept as :attr:`usage` for the summary)."""
        estimate = self.meta.get("prompt_estimate")
        self.usage = final_usage(end, from_upstream=from_upstream, opened=self.opened, chunks=self.chunks,
                                 prompt_estimate=estimate if isinstance(estimate, int) else None)
        if isinstance(end, Done):
            return Done(end.finish_reason, self.usage)
        if isinstance(end, Failed):
            return replace(end, usage=self.usage)  # its Retry-After kept
        return end

    def content_events(self) -> int:
        """Events with content in the log so far (text, reasoning, tool-call fragments): all
        from the first token on but the end (this stream's events after its exit)."""
        if self.first_seq is None:
            return 0
        return self.seq - self.first_seq + (0 if self.ended_at is not None else 1)

    def summary(self) -> StreamSummary:
        """What this stream did, for observers (at its end)."""
        final = self._ended_with
        now = self.ended_at if self.ended_at is not None else self.clock()
        return StreamSummary(
            sid=self.sid, meta=self.meta, outcome=outcome_of(final),
            finish_reason=final.finish_reason if isinstance(final, Done) else None,
            error_code=final.code if isinstance(final, Failed) else None,
            ttft_s=None if self.first_at is None else self.first_at - self.started_at,
            events=self.seq, tokens=self.tokens, duration_s=now - self.started_at, usage=self.usage)
