"""What the stream core tells observers (the log's summary line, metrics): a stream started,
was resumed, ended. Observers are registered on the manager; one that fails is logged and
never breaks a stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..events import Done, Event, Failed

# Finish reasons that are not a completed answer; every other Done is "completed".
_STOPPED = {"cancelled": "cancelled", "client_gone": "client_gone", "shutdown": "shutdown"}


def outcome_of(final: Event | None) -> str:
    """A stream's outcome from its final event: ``completed``, ``cancelled``, ``client_gone``,
    ``shutdown``, ``upstream_error`` (the provider failed) or ``error`` (anything else)."""
    if isinstance(final, Done):
        return _STOPPED.get(final.finish_reason, "completed")
    if isinstance(final, Failed) and final.code.startswith("upstream"):
        return "upstream_error"
    return "error"


@dataclass(frozen=True)
class StreamSummary:
    """One stream's end, as its producer saw it."""

    sid: str
    meta: dict[str, Any]  # route, provider, model, client, request_id
    outcome: str
    finish_reason: str | None  # of a Done
    error_code: str | None  # of a Failed
    ttft_s: float | None  # from the start to the first token (text, reasoning or tool call); None: none came
    events: int  # events in the log, the end included
    tokens: int  # deltas of text relayed
    duration_s: float
    usage: dict[str, Any] | None = None  # the usage record of its final event (streamapp.usage.record)


class StreamObserver(Protocol):
    """What the manager calls; each method must be quick and must not block."""

    def stream_started(self, sid: str, meta: dict[str, Any]) -> None: ...
    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None: ...
    def stream_ended(self, summary: StreamSummary) -> None: ...
    # optional: ``generation_moved(to, reason)``, when a stream's generation moves between its
    # reader's greenlet and its own (``streams.producer``)
