"""The directory: which streams exist lately and their figures, for the inspector.

- ``P:recent``       a sorted set: stream id -> when its metadata reached Redis (unix time);
                     the publisher's batch adds to it and trims it (``scripts.PUBLISH``)
- ``P:live:<owner>`` the figures of a process's running streams (JSON, by stream id),
                     replaced once a second by that process while someone inspects, expiring
                     soon after it stops
- ``P:inspecting``   set for ``INSPECTED_S`` by every listing: someone inspects
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from .codec import Keys
from .health import Health
from .scripts import Scripts

LIVE_TTL_S = 5  # a process's published figures outlive its last publication this long
INSPECTED_S = 10  # after a listing, processes publish their figures this long


class Directory:
    """Lists recent streams and reads their metadata and live figures in few round trips; a
    Redis failure is a ``StoreError``, except in :meth:`publish_live` (logged by its caller
    through ``health``)."""

    def __init__(self, client: redis.Redis, keys: Keys, health: Health, scripts: Scripts) -> None:
        self.client, self.keys, self.health, self.scripts = client, keys, health, scripts
        self.recent_key = f"{keys.prefix}:recent"
        self.inspecting_key = f"{keys.prefix}:inspecting"
        self.owner = ""
        self._marked = -float(INSPECTED_S)  # monotonic time this process last set P:inspecting
        self._published = False  # the last publication held figures (an empty one deletes them)

    def recent(self, limit: int) -> list[str]:
        """The newest ``limit`` stream ids of the recent set."""
        with self.health.failing():
            return [sid.decode() for sid in self.client.zrevrange(self.recent_key, 0, max(0, limit - 1))]

    def metas(self, sids: list[str], fields: tuple[str, ...]) -> list[dict[str, Any] | None]:
        """The ``fields`` of each stream's meta hash (one pipeline); ``None`` for a stream without one."""
        if not sids:
            return []
        with self.health.failing(), self.client.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hmget(self.keys("meta", sid), fields)
            rows = pipe.execute()
        out: list[dict[str, Any] | None] = []
        for values in rows:
            meta = {}
            for name, raw in zip(fields, values, strict=True):
                if raw is not None:
                    try:
                        meta[name] = json.loads(raw)
                    except ValueError:
                        meta[name] = raw.decode(errors="replace")
            out.append(meta or None)
        return out

    def resumed(self, sid: str) -> None:
        """Count one more resume of ``sid``."""
        with self.health.failing():
            self.scripts.resumed(sid)

    def inspected(self) -> None:
        """Someone lists the streams: every process publishes its figures for a while (set
        at most every third of that while from one process)."""
        now = time.monotonic()
        if now - self._marked >= INSPECTED_S / 3:
            with self.health.failing():
                self.client.set(self.inspecting_key, 1, ex=INSPECTED_S)
            self._marked = now

    def publish_live(self, counters: dict[str, list[Any]], readers: Callable[[str], int]) -> None:
        """Replace this process's published figures while someone inspects, each with its
        ``readers(sid)`` here: one ``EXISTS`` a second while this process runs streams and
        nobody inspects (raises ``redis.RedisError``)."""
        key = self.keys("live", self.owner)
        if counters and self.client.exists(self.inspecting_key):
            shown = {sid: [*figures, readers(sid)] for sid, figures in counters.items()}
            self.client.set(key, json.dumps(shown, separators=(",", ":")), ex=LIVE_TTL_S)
            self._published = True
        elif self._published:
            self.client.delete(key)
            self._published = False

    def live(self, owners: list[str]) -> dict[str, list[Any]]:
        """The figures ``owners`` published, merged by stream id."""
        if not owners:
            return {}
        with self.health.failing():
            values = self.client.mget([self.keys("live", owner) for owner in owners])
        out: dict[str, list[Any]] = {}
        for raw in values:
            if raw is not None:
                out.update(json.loads(raw))
        return out
