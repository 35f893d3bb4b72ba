"""Pause points: where a stream driven by its reader may step out of the upstream read.

A stream usually runs in its reader's greenlet (``streams.producer``: the reader *pumps*
it): the reader pulls the upstream's next events, then writes them, with no hand-off to
another greenlet. The pump must be able to step out of the provider's generators without
ending them: to write the events it has before it waits for more, for a heartbeat while the
upstream is silent, or to hand generation to a greenlet of its own. A generator cannot be
left from the inside without being finished, so the places where a provider waits (a read of
the upstream's socket, the demo's pause between tokens) are *pause points*: there, a pump
that asks gets :data:`PAUSE`, which every layer of the provider hands up as it is, and the
generator goes on from the same place when it is next pulled.

- :func:`read` wraps one blocking read: in a pump that has events to write it returns ``None``
  without reading; while it waits, :class:`Paused` thrown into the greenlet (only there,
  :attr:`Pump.waiting`) makes it return ``None``. A read's timeout counts from when the
  wait began, across the pauses that broke it up (each new read would start the socket's
  timeout again): past it, the next read raises ``TimeoutError`` as the socket would have
  (late by at most the time to the next pause: a heartbeat's interval).
- :func:`sleep` is the same for a cooperative pause.

Outside a pump (a stream in its own greenlet, or any other caller) both are the plain read
and sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")


class Paused(Exception):
    """Thrown into a pump's greenlet waiting at a pause point: step out now."""


class _Pause:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PAUSE"


PAUSE = _Pause()  # handed up by every layer of a provider: the pump stepped out; nothing was lost


class Pump:
    """The state of one pump call, seen by the pause points of its greenlet."""

    __slots__ = ("step_out", "waiting", "since", "pausable")

    def __init__(self) -> None:
        self.step_out = False  # events wait to be written: step out rather than wait for more
        self.waiting = False  # at a pause point, waiting: ``Paused`` may be thrown in now
        self.since = 0.0  # when the read a pause broke up began waiting (0: none was)
        # The provider waited at a pause point: its waits are pause points (a body read by
        # urllib3, compressed or not chunked, has none: a reader never drives such a stream).
        self.pausable = False


# The pump of the current greenlet (each greenlet has its own context), or None.
CURRENT: ContextVar[Pump | None] = ContextVar("streamapp_pump", default=None)


def read(read1: Callable[[int], T], size: int, timeout: float | None = None) -> T | None:
    """``read1(size)``, or ``None`` where the current pump steps out instead; ``timeout`` is the
    read's own (its socket's), kept across pauses."""
    pump = CURRENT.get()
    if pump is None:
        return read1(size)
    pump.pausable = True
    if pump.step_out:
        return None
    now = time.monotonic()
    since = pump.since or now  # when this read's wait began, across the pauses that broke it up
    if timeout is not None and now - since >= timeout:
        pump.since = 0.0
        raise TimeoutError(f"the read timed out ({timeout:g} s, across pauses)")
    pump.waiting = True
    try:
        data = read1(size)
    except Paused:
        pump.since = since
        return None
    finally:
        pump.waiting = False
    pump.since = 0.0
    return data


def sleep(seconds: float) -> Iterator[_Pause]:
    """Sleep ``seconds`` (cooperatively), yielding :data:`PAUSE` each time the current pump
    steps out on the way; the sleep goes on when the generator is pulled again."""
    deadline = time.monotonic() + seconds
    while True:
        pump = CURRENT.get()
        left = deadline - time.monotonic()
        if left <= 0:
            return
        if pump is None:
            time.sleep(left)  # gevent-patched in the server: yields to the hub
            return
        pump.pausable = True
        if pump.step_out:
            yield PAUSE
            continue
        pump.waiting = True
        try:
            time.sleep(left)
            return
        except Paused:
            pass
        finally:
            pump.waiting = False
        yield PAUSE
