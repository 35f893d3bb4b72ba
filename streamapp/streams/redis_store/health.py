"""Whether Redis answers: one tracker every part of the store reports to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from ...errors import StoreError

logger = logging.getLogger(__name__)


def outage(exc: Exception) -> bool:
    """Whether ``exc`` says Redis cannot be reached; a full connection pool (redis-py's
    ``BlockingConnectionPool`` timing out, "No connection available.") is load, not an outage."""
    return isinstance(exc, (redis.ConnectionError, redis.TimeoutError)) and \
        "No connection available" not in str(exc)


class Health:
    """Redis down or up, as the last operation found; the first failure of an outage and
    the return are logged, once each."""

    def __init__(self) -> None:
        self.down = False  # Redis failed and has not answered since

    def lost(self, exc: Exception) -> None:
        """Note a failure (an outage, or a refused command, which changes nothing here)."""
        if not self.down and outage(exc):
            self.down = True
            logger.warning("Redis is unavailable (%s); streams started now are served by this "
                           "process only, until it is back", exc)

    def back(self) -> None:
        """Note that Redis answered."""
        if self.down:
            self.down = False
            logger.warning("Redis is back; new streams are shared again")

    def error(self, exc: redis.RedisError) -> StoreError:
        """Note ``exc``; the ``StoreError`` (a 503) to raise for it."""
        self.lost(exc)
        return StoreError(f"the stream store (Redis) is unavailable: {exc}")

    @contextmanager
    def failing(self) -> Iterator[None]:
        """Raise ``StoreError`` when Redis fails inside the block."""
        try:
            yield
        except redis.RedisError as exc:
            raise self.error(exc) from exc
