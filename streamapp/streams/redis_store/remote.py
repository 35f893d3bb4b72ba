"""Streams that live only in Redis: produced by another process, or by this one and over."""

from __future__ import annotations

import time
from typing import Any

import gevent.event
import redis

from ...events import Event
from .codec import Keys, decode, decode_meta
from .control import ControlChannel
from .dispatcher import Dispatchers
from .health import Health
from .scripts import Scripts


class Remote:
    """The per-stream operations of the store on a log held in Redis; a Redis failure is a
    ``StoreError`` (a 503, the reader's ``store_unavailable``)."""

    def __init__(self, client: redis.Redis, keys: Keys, health: Health, control: ControlChannel,
                 dispatchers: Dispatchers, scripts: Scripts, lease: float) -> None:
        self.client, self.keys, self.health, self.scripts = client, keys, health, scripts
        self.control, self.dispatchers = control, dispatchers
        self.lease = lease
        self.lease_ttl = int(lease) + 1  # a readers key outlives every lease in it

    def meta(self, sid: str) -> dict[str, Any] | None:
        with self.health.failing():
            raw = self.client.hgetall(self.keys("meta", sid))
        return decode_meta(raw) if raw else None

    def read(self, sid: str, after: int, limit: int | None = None) -> list[tuple[int, Event]]:
        with self.health.failing():
            entries = self.client.xrange(self.keys("log", sid), min=f"(0-{after}", count=limit)
        return [(int(eid.split(b"-")[1]), decode(fields[b"e"])) for eid, fields in entries]

    def count(self, sid: str) -> int:
        with self.health.failing():
            return self.client.xlen(self.keys("log", sid))

    def watch(self, sid: str, wake: gevent.event.Event) -> None:
        self.dispatchers.watch(self.keys("log", sid), wake)

    def unwatch(self, sid: str, wake: gevent.event.Event) -> None:
        self.dispatchers.unwatch(self.keys("log", sid), wake)

    def wait(self, sid: str, after: int, timeout: float | None, wake: gevent.event.Event) -> None:
        if not wake.is_set():
            self.dispatchers.wait(self.keys("log", sid), after, timeout, wake)

    def attach(self, sid: str, reader: str) -> None:
        with self.health.failing():
            self.scripts.attach(self.keys("readers", sid), reader, time.time(), self.lease, self.lease_ttl)

    def _leave(self, pipe: redis.client.Pipeline, sid: str, reader: str, now: float) -> None:
        """Queue ``reader``'s departure: kept with a negative score (no live lease), so that
        a renewal still on its way does not bring it back (see ``scripts.ATTACH``)."""
        key = self.keys("readers", sid)
        pipe.zadd(key, {reader: -now})
        pipe.expire(key, self.lease_ttl, nx=True)  # a key made here expires too

    def detach(self, sid: str, reader: str) -> int:
        key, now = self.keys("readers", sid), time.time()
        with self.health.failing():
            with self.client.pipeline() as pipe:
                pipe.zscore(key, reader)
                self._leave(pipe, sid, reader, now)
                pipe.zcount(key, now, "+inf")
                score, _, _, left = pipe.execute()
            if score is not None and score > 0 and not left:
                self.control.tell_owner(sid, "idle")
        return left

    def detach_quietly(self, sid: str, reader: str) -> None:
        with self.health.failing(), self.client.pipeline() as pipe:
            self._leave(pipe, sid, reader, time.time())
            pipe.execute()

    def request_cancel(self, sid: str) -> None:
        with self.health.failing():
            self.control.flag_cancel(sid)
            self.control.tell_owner(sid, "cancel")

    def cancel_requested(self, sid: str) -> bool:
        with self.health.failing():
            return self.control.cancel_flagged(sid)

    def forget(self, sid: str) -> None:
        """Delete ``sid``'s keys, first telling the process that produced it to drop its
        mirror (its metadata names that process)."""
        with self.health.failing():
            self.control.tell_owner(sid, "forget")
            self.client.delete(*(self.keys(kind, sid) for kind in ("log", "meta", "readers", "cancel")))
