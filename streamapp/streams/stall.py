"""The stall check of a running stream: no work per event.

After the first token a stream never ends silently: an upstream that yields no event for
``stall`` seconds (silent, or sending only keep-alive bytes, which the socket's per-read
timeout does not see) ends it with ``upstream_stalled``. A timer armed once, at the first
token, wakes every ``stall / STALL_CHECKS`` and compares the stream's event count with the one
it saw last; ``STALL_CHECKS`` quiet wakes in a row while the stream waits for its upstream are
a stall, so a stall ends between ``stall`` and ``1.25 * stall`` after the last event. A wake
while the stream is not waiting for the upstream (its reader, driving it, writes to a slow
client) starts the count again: that silence is not the upstream's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gevent

STALL_CHECKS = 4  # quiet checks in a row that make a stall: one every stall / STALL_CHECKS


class StallWatch:
    """Calls ``stalled()`` (in the hub: it must not block) once ``events()`` stays the same for
    ``STALL_CHECKS`` wakes in a row while ``waiting()``; closed with the stream."""

    __slots__ = ("_events", "_waiting", "_stalled", "_seen", "_quiet", "_timer")

    def __init__(self, stall: float, events: Callable[[], int], waiting: Callable[[], bool],
                 stalled: Callable[[], None]) -> None:
        self._events, self._waiting, self._stalled = events, waiting, stalled
        self._seen = events()
        self._quiet = 0
        period = stall / STALL_CHECKS
        self._timer: Any = gevent.get_hub().loop.timer(period, period)
        self._timer.start(self._wake)

    def _wake(self) -> None:
        seen = self._events()
        if seen != self._seen or not self._waiting():
            self._seen, self._quiet = seen, 0
            return
        self._quiet += 1
        if self._quiet >= STALL_CHECKS:
            self._timer.stop()
            self._stalled()

    def close(self) -> None:
        """Stop checking (idempotent)."""
        self._timer.close()
