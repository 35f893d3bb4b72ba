"""The store's Redis clients: one per kind of use, so no use starves another."""

from __future__ import annotations

import os
import re

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

BLOCK_MS = 5000  # a dispatcher's XREAD returns at least this often (its doorbell interrupts it)


class Clients:
    """Builds the clients of one store; each connection is named ``<prefix>-<pid>-<role>``
    (``CLIENT LIST`` shows who is who)."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.name = re.sub(r"[^\w:.-]", "_", f"{prefix}-{os.getpid()}")

    def short(self, size: int) -> redis.Redis:
        """Short commands, from a pool: fail fast (one retry, for a connection Redis closed
        when it restarted); the callers retry where it matters."""
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            self.url, max_connections=max(1, size), timeout=5, socket_timeout=5,
            socket_connect_timeout=2, health_check_interval=30, client_name=f"{self.name}-short",
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1)))

    def blocking(self, size: int) -> redis.Redis:
        """Blocking reads: one connection per dispatcher, never shared with short commands;
        one immediate retry, so a connection dropped under it does not end its readers."""
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            self.url, max_connections=max(1, size), timeout=5,
            socket_timeout=BLOCK_MS / 1000 + 10, socket_connect_timeout=2,
            health_check_interval=30, client_name=f"{self.name}-block", retry=Retry(NoBackoff(), 1)))

    def subscriber(self) -> redis.Redis:
        """The control channel's: no socket timeout, so an idle subscriber never dies
        (flask-sse #6); keepalive finds a dead peer."""
        return redis.Redis.from_url(
            self.url, socket_timeout=None, socket_connect_timeout=2, socket_keepalive=True,
            health_check_interval=30, client_name=f"{self.name}-ctl", retry=Retry(NoBackoff(), 0))

    def own(self, role: str) -> redis.Redis:
        """A client that keeps one connection for a greenlet sending one command at a time
        (the writer's, the publisher's): no checkout from a pool (which polls the socket)
        per command. It connects now (the caller's failure if Redis is down), and again
        after a connection it lost."""
        return redis.Redis.from_url(
            self.url, single_connection_client=True, socket_timeout=5, socket_connect_timeout=2,
            health_check_interval=30, client_name=f"{self.name}-{role}",
            retry=Retry(ExponentialBackoff(cap=0.1, base=0.02), 1))
