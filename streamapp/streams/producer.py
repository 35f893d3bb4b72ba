"""The producer: one greenlet per stream pulling provider events into a store.

It numbers events from 1 and appends each to the stream's log; readers follow
the log on their own. ``stop(reason)`` ends generation at once, even while the
upstream is silent: the greenlet is interrupted where it waits for the
upstream, the provider's ``finally`` closes the upstream response, and the
stream ends with ``Done(finish_reason=reason)``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import gevent

from ..errors import UpstreamError
from ..events import Delta, Done, Event, Failed, is_terminal
from .store import Store

logger = logging.getLogger(__name__)


class StreamStopped(Exception):
    """Thrown into a producer to stop it; ``args[0]`` is the finish reason."""


class Producer:
    """Runs ``events`` into ``store`` under stream id ``sid``."""

    def __init__(self, sid: str, events: Iterator[Event], store: Store,
                 on_exit: Callable[[str], None]) -> None:
        self.sid = sid
        self.store = store
        self._events = events
        self._on_exit = on_exit
        self._in_upstream = False
        self._stop_reason: str | None = None
        self.seq = 0
        self.greenlet = gevent.spawn(self._run)

    def stop(self, reason: str) -> None:
        """End generation with ``finish_reason=reason`` (idempotent)."""
        if self._stop_reason is not None or self.greenlet.dead:
            return
        self._stop_reason = reason
        if self._in_upstream:
            # Interrupt the wait for the upstream; never a store write half done.
            self.greenlet.kill(StreamStopped(reason), block=False)

    def _append(self, event: Event) -> None:
        self.seq += 1
        self.store.append(self.sid, self.seq, event, final=is_terminal(event))

    def _run(self) -> None:
        final: Event | None = None
        events = self._events
        try:
            while self._stop_reason is None:
                self._in_upstream = True
                try:
                    event = next(events, None)
                finally:
                    self._in_upstream = False
                if event is None:
                    final = Failed("upstream_bad_response", "the provider ended without a result")
                    break
                if isinstance(event, Delta) and not event.text:
                    continue
                if is_terminal(event):
                    # Readers get the end now; closing the provider may still tidy
                    # the upstream connection up for reuse.
                    self._append(event)
                    break
                self._append(event)
            else:
                final = Done(self._stop_reason)
        except StreamStopped as stop:
            final = Done(stop.args[0])
        except UpstreamError as exc:
            final = Failed(exc.code, exc.message, exc.status)
        except Exception as exc:  # noqa: BLE001 - a provider bug must end the stream, not hang it
            logger.exception("producer of stream %s failed", self.sid)
            final = Failed("internal_error", f"internal error: {type(exc).__name__}", 500)
        finally:
            events.close()  # closes the upstream response if it is still open
            try:
                if final is not None:
                    self._append(final)
            except Exception:  # noqa: BLE001 - the store failed; readers here still got the end
                logger.exception("could not record the end of stream %s", self.sid)
            finally:
                self._on_exit(self.sid)
