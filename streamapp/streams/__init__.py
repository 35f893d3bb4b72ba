"""Stream lifecycle: producers, stores (memory, Redis), readers, cancel, resume."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from .inspect import Inspector
from .lifecycle import Lifecycle, Timing
from .manager import StreamManager
from .store import MemoryStore, Store

__all__ = ["Inspector", "Lifecycle", "StreamManager", "get_inspector", "get_lifecycle", "get_manager",
           "init_app"]


def upstream_timeouts(config: dict, fleet: Any = None) -> tuple[float, float]:
    """The longest connect and read timeouts of any upstream: the settings', or an upstreams
    file's upstream's own (``fleet``, ``app.extensions["upstreams"]``) when longer."""
    connect, read = config["CONNECT_TIMEOUT_S"], config["READ_TIMEOUT_S"]
    for upstream in (fleet.upstreams.values() if fleet is not None else ()):
        connect = max(connect, upstream.connect_timeout_s or 0)
        read = max(read, upstream.read_timeout_s or 0)
    return connect, read


def make_store(config: dict, read_timeout: float | None = None) -> Store:
    """The Redis store when ``REDIS_URL`` is set, else the memory store (``read_timeout``: the
    longest upstream's, else ``READ_TIMEOUT_S``)."""
    if config["REDIS_URL"]:
        from .redis_store import RedisStore  # only needed with Redis

        return RedisStore(config["REDIS_URL"], config["REDIS_PREFIX"], config["RESUME_TTL_S"],
                          # A silent running stream's keys outlive its longest possible run.
                          running_ttl=config["STREAM_MAX_DURATION_S"]
                          + (config["READ_TIMEOUT_S"] if read_timeout is None else read_timeout)
                          + config["RESUME_GRACE_S"] + 60,
                          lease=config["LEASE_S"], pool_size=config["REDIS_POOL_SIZE"],
                          blocking_pool_size=config["REDIS_BLOCKING_POOL_SIZE"],
                          commit_window=config["REDIS_COMMIT_MS"] / 1000,
                          recent_max=config["INSPECT_MAX_STREAMS"])
    return MemoryStore(config["RESUME_TTL_S"], lease=config["LEASE_S"])


def init_app(app: Flask) -> None:
    """Create this app's stream manager (``app.extensions['streams']``) and the lifecycle every
    front door uses over it (``app.extensions['lifecycle']``)."""
    config = app.config
    tick = min(config["HEARTBEAT_S"] / 3, config["LEASE_S"] / 3, 2.0)
    connect, read = upstream_timeouts(config, app.extensions.get("upstreams"))
    manager = StreamManager(
        make_store(config, read), config["RESUME_GRACE_S"], tick, max_events=config["STREAM_MAX_EVENTS"],
        max_bytes=config["STREAM_MAX_BYTES"], max_duration=config["STREAM_MAX_DURATION_S"],
        stall=config["STALL_TIMEOUT_S"])
    app.extensions["streams"] = manager
    timing = Timing(header_wait=config["HEADER_WAIT_S"],
                    # a failover may try several upstreams, each up to its timeouts (an
                    # upstreams file's own, when longer than the settings')
                    first_limit=config["START_BUDGET_S"] + connect + read + 5,
                    heartbeat=config["HEARTBEAT_S"])
    app.extensions["lifecycle"] = Lifecycle(manager, timing)
    app.extensions["inspector"] = Inspector(manager, config["INSPECT_MAX_STREAMS"])


def short_client(app: Flask) -> Any:
    """The Redis client of the app's store for short commands (its pool of ``REDIS_POOL_SIZE``),
    which the slots, circuits and ledger share so that a worker's connections do not grow with
    each part; ``None`` with the memory store (or before :func:`init_app`)."""
    manager = app.extensions.get("streams")
    return getattr(manager.store, "redis", None) if manager is not None else None


def get_manager() -> StreamManager:
    """The current app's stream manager."""
    return current_app.extensions["streams"]


def get_inspector() -> Inspector:
    """The current app's stream inspector."""
    return current_app.extensions["inspector"]


def get_lifecycle() -> Lifecycle:
    """The current app's stream lifecycle."""
    return current_app.extensions["lifecycle"]
