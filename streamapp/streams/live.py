"""Live figures of this process's running streams, sampled once a second, never per event.

A producer keeps its sequence number, and the time and number of its first token, anyway;
:class:`Pulse` reads them every ``LIVE_S`` and notes when it saw the number move: that is
"the last event" to within one sample. The figures of a stream, by stream id, are a list
``[events, content events, first token (unix time), last event seen (unix time)]``; shown to
other processes (``Store.publish_live``), they get a fifth: the readers attached in this
process (a stream's own process keeps their leases; other processes' are in the shared store).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

LIVE_S = 1.0  # the figures are sampled (and published to other processes) this often


class Sampled(Protocol):
    """What :class:`Pulse` reads of a producer."""

    seq: int
    first_at: float | None

    def content_events(self) -> int: ...


class Pulse:
    """Samples producers; ``clock`` is the producers' (monotonic) clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._seen: dict[str, tuple[int, float | None]] = {}  # sid -> (seq, when it last moved)
        self.figures: dict[str, list[Any]] = {}  # the last sample

    def sample(self, producers: Mapping[str, Sampled]) -> dict[str, list[Any]]:
        """Figures of every running producer now (also kept in ``figures``)."""
        wall, mono = time.time(), self.clock()
        seen: dict[str, tuple[int, float | None]] = {}
        figures: dict[str, list[Any]] = {}
        for sid, producer in list(producers.items()):
            seq = producer.seq
            before = self._seen.get(sid)
            moved = before[1] if before is not None and before[0] == seq else (wall if seq else None)
            seen[sid] = (seq, moved)
            first = producer.first_at
            figures[sid] = [seq, producer.content_events(),
                            None if first is None else round(wall - (mono - first), 3),
                            None if moved is None else round(moved, 3)]
        self._seen, self.figures = seen, figures
        return figures
