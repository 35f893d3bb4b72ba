"""Who generates a stream: its producer greenlet, or its only reader here (``streams.producer``).

From the start to the first token a stream's provider runs in the producer's own greenlet.
After it, a reader that has read everything, and is the stream's only reader in this process,
*offers* to drive it (:meth:`Driving.offer`): the producer greenlet steps out of its upstream
wait (a pause point, :mod:`streamapp.pausing`) or finishes its next event, gives the stream to
that reader and exits. The reader then *pumps* it (:meth:`Driving.pump`): it pulls the next
events into the log in its own greenlet, then writes them. Only a provider whose waits are
pause points is driven (a body urllib3 reads, compressed or not chunked, has none: it stays
in its greenlet), so the reader can always step out to write, for a heartbeat (the manager's
tick, :meth:`Driving.pause`) or to give generation back (:meth:`Driving.release`): then a new
producer greenlet goes on from the same place, between two events.

At most one greenlet is ever inside the provider: the driver only while it pumps, the producer
greenlet only while the stream has no driver.
"""

from __future__ import annotations

from typing import Any

import gevent

from .. import pausing
from ..events import Done
from ..pausing import PAUSE

# Fairness: a producer that finds a burst of upstream data (one read holding many events)
# lets readers write after the first token and then after every FAIR_EVENTS events, so the
# first event of a burst reaches its client at once and other streams' gaps stay short; a
# driver writes at least every FAIR_EVENTS events too.
FAIR_EVENTS = 16
END = object()  # a step found the stream's end


class Driving:
    """The moves of generation between a producer greenlet and its driver (a mixin of
    ``Producer``, whose slots hold the state: ``driver``, ``_handoff``, ``_release_wanted``,
    ``_runner``, ``_pump``, ``greenlet``)."""

    __slots__ = ()
    driver: Any
    _handoff: Any
    _release_wanted: str
    _runner: Any
    _pump: pausing.Pump
    greenlet: Any
    _ending: bool
    _stop_reason: str | None
    first_at: float | None
    shared_read: bool
    _final: Any
    _on_move: Any

    def offer(self, reader: object) -> bool:
        """``reader`` (this stream's only reader here) has nothing left to read: whether it drives
        the stream now (:meth:`pump`). After the first token, generation moves to it once the
        producer greenlet steps out of its upstream wait (asked to, at a pause point) or has
        its next event; until then it waits for events as any reader does."""
        if self.driver is reader:
            return True
        if self.driver is not None or self._ending or self._stop_reason is not None \
                or self.first_at is None or self.shared_read or not self._pump.pausable:
            return False
        self._handoff = reader
        if self._pump.waiting:
            self._interrupt(pausing.Paused())  # the producer greenlet waits for the upstream: now
        return False

    def involves(self, reader: object) -> bool:
        """Whether ``reader`` drives this stream, or asked to."""
        return self.driver is reader or self._handoff is reader

    def release(self, reason: str) -> None:
        """Generation moves to the stream's own greenlet (``reason``, for the metrics): at once when
        its driver is not in a step, else as soon as the driver steps out (woken at its pause
        point)."""
        self._handoff = None
        if self.driver is None:
            return
        if self._runner is None:
            self._to_greenlet(reason)
        else:
            self._release_wanted = reason
            self._interrupt(pausing.Paused())

    def pause(self) -> None:
        """Have the driver step out of an upstream wait (a heartbeat is due)."""
        if self.driver is not None and self._runner is not None:
            self._interrupt(pausing.Paused())

    def _to_greenlet(self, reason: str) -> None:
        self.driver = None
        self._release_wanted = ""
        self.greenlet = gevent.spawn(self._run)
        self._moved("greenlet", reason)

    def _moved(self, to: str, reason: str) -> None:
        if self._on_move is not None:
            self._on_move(to, reason)  # the manager's: it tells observers, who never raise

    def pump(self, driver: object) -> bool:
        """Generate in the calling greenlet, ``driver``'s: pull upstream events into the log until
        some were appended and the upstream would make it wait, or the end (its finish then runs
        in a greenlet of its own, the final event appended as usual). Returns whether it stopped
        at ``FAIR_EVENTS`` events without waiting (the caller lets other greenlets run)."""
        if self.driver is not driver:
            return False
        pump = self._pump
        pump.step_out = False
        token = pausing.CURRENT.set(pump)
        self._runner = gevent.getcurrent()
        try:
            for _ in range(FAIR_EVENTS):
                halt = self._halt()  # a stop or a stall found between steps
                if halt is not None:
                    self._final = halt
                got = END if halt is not None else self._step()
                if got is END:
                    self._end_in_greenlet()
                    return False
                if got is PAUSE or self._release_wanted:
                    return False
                pump.step_out = True
            return True
        except BaseException:  # killed (a worker's exit): the stream ends here, recorded
            self._final = Done(self._stop_reason or "shutdown")
            self._end_in_greenlet()
            raise
        finally:
            pausing.CURRENT.reset(token)
            self._runner = None
            if self._release_wanted:
                self._to_greenlet(self._release_wanted)

    def _end_in_greenlet(self) -> None:
        """A driver found the end: it records it in a greenlet of its own, so the driver writes
        the end without waiting for the upstream's close or the exit hooks."""
        self.driver = None
        self._release_wanted = ""
        self._ending = True
        self.greenlet = gevent.spawn(self._finish, self._final)

    # -- the producer's ------------------------------------------------------------------------
    def _interrupt(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _step(self) -> object:
        raise NotImplementedError

    def _halt(self) -> Any:
        raise NotImplementedError

    def _finish(self, final: Any) -> None:
        raise NotImplementedError
