"""What the stream inspector shows: one row per recent stream, from every process sharing the store.

Where each figure comes from, none of it written per event:

- who, where, what: the stream's metadata (``process``: host and pid, ``client``, ``route``,
  ``format``, ``provider``, ``model``, ``upstream`` and ``attempts`` where routing recorded
  them, ``on_disconnect``, ``started``), read in one round trip for all the rows;
- a running stream's events, content events (``tokens``: text, reasoning and tool-call
  fragments, one upstream chunk each, usually one token), first token and last event: its
  producer's own figures, sampled once a second (``streams.live``), read here from the
  producer for this process's streams and from the figures its process published for the
  others' (so "the last event" is late by at most a second; with Redis, processes publish
  them only while an admin inspects: for a second after the first admin listing, and in a
  listing of a key that is not admin unless an admin inspects too, the others' running
  streams show without them);
- an ended stream's figures: what its producer added to its metadata once, at its end
  (``ended``, ``outcome``, ``finish_reason``, ``error``, ``ttft_s``, ``tokens``, and
  ``usage``: its usage record, ``streamapp.usage.record``);
- readers attached: the stream's live leases: those in the shared store, and those its own
  process keeps (published with its figures); the inspector's own reader holds none;
- resumes: a count in the metadata, one write per resume.

A running stream whose process is gone (no figures published, its liveness key expired)
shows as ``lost``: the liveness of every such owner is read in one round trip.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .manager import StreamManager

FIELDS = ("process", "client", "route", "format", "provider", "model", "upstream", "attempts", "state",
          "owner", "on_disconnect", "started", "ended", "outcome", "finish_reason", "error", "ttft_s",
          "tokens", "resumes", "usage", "last")
SNAPSHOT_REUSE_S = 0.5  # the live tables of one process share a snapshot this young


@dataclass(frozen=True)
class Filters:
    """Which rows: ``state`` (running, finished, lost), ``key`` (a key's name), ``model``."""

    state: str | None = None
    key: str | None = None
    model: str | None = None

    def keep(self, row: dict[str, Any]) -> bool:
        return (self.state is None or row["state"] == self.state) and self.early(row)

    def early(self, meta: dict[str, Any]) -> bool:
        """Whether a stream's metadata (or row) passes the filters known before its row is made
        (``state`` needs its liveness: :meth:`keep`)."""
        return (self.key is None or meta.get("client") == self.key) and \
            (self.model is None or meta.get("model") == self.model) and \
            (self.state != "finished" or meta.get("state") == "finished") and \
            (self.state not in ("running", "lost") or meta.get("state") != "finished")


class Inspector:
    """Rows of the recent streams (at most ``max_streams``), over this process's manager."""

    def __init__(self, manager: StreamManager, max_streams: int) -> None:
        self.manager, self.max_streams = manager, max_streams
        self._snapshot: tuple[float, list[dict[str, Any]]] | None = None

    def rows(self, filters: Filters | None = None, limit: int | None = None,
             reuse: float = 0.0, *, publish: bool = True) -> list[dict[str, Any]]:
        """The rows that pass ``filters``, newest first, at most ``limit``: from a snapshot at
        most ``reuse`` seconds old when ``reuse``, else read now (only the streams that pass
        the metadata's filters get their readers and figures). ``publish``: every process
        publishes its running streams' figures for a while (an admin inspects), which a
        listing of a key that is not admin does not ask for."""
        if reuse > 0:
            kept = [row for row in self.snapshot(reuse) if filters is None or filters.keep(row)]
        else:
            kept = [row for row in self._read(filters, publish) if filters is None or filters.keep(row)]
        return kept if limit is None else kept[:limit]

    def snapshot(self, reuse: float = 0.0) -> list[dict[str, Any]]:
        """Every recent stream's row, newest first (raises ``StoreError``), or the last snapshot
        taken if it is at most ``reuse`` seconds old."""
        now = time.monotonic()
        if self._snapshot is not None and now - self._snapshot[0] <= reuse:
            return self._snapshot[1]
        rows = self._read()
        self._snapshot = (now, rows)
        return rows

    def _read(self, filters: Filters | None = None, publish: bool = True) -> list[dict[str, Any]]:
        store, manager = self.manager.store, self.manager
        if publish:
            store.inspected()
        sids = store.recent(self.max_streams)
        found = [(sid, meta) for sid, meta in zip(sids, store.metas(sids, FIELDS), strict=True)
                 if meta is not None and meta.get("state") is not None
                 and (filters is None or filters.early(meta))]
        if not found:
            return []
        readers = store.reader_counts([sid for sid, _ in found])
        figures = dict(manager.pulse.figures)
        others = {meta.get("owner") for _, meta in found
                  if meta.get("state") != "finished" and meta.get("owner") not in (None, manager.owner)}
        if others:
            figures = {**store.live(sorted(others)), **figures}
        unseen = {meta.get("owner") for sid, meta in found
                  if meta.get("state") != "finished" and sid not in figures}
        alive = store.owners_alive(unseen)
        rows = []
        for (sid, meta), count in zip(found, readers, strict=True):
            live = figures.get(sid)
            if live is not None and meta.get("owner") not in (None, manager.owner):
                count += live[4]  # its readers in its own process, which keeps their leases
            running = meta.get("state") != "finished"
            rows.append(row(sid, meta, count, live, live is not None or not running
                            or meta.get("owner") in alive))
        rows.sort(key=lambda r: r["started"] or 0, reverse=True)
        return rows


def row(sid: str, meta: dict[str, Any], readers: int, live: list[Any] | None, alive: bool) -> dict[str, Any]:
    """One stream's row: its metadata's figures, and ``live`` (``streams.live``) while it runs."""
    finished = meta.get("state") == "finished"
    state = "finished" if finished else ("running" if live is not None or alive else "lost")
    started = _number(meta.get("started"))
    out = {"stream_id": sid, "state": state, "process": meta.get("process"), "client": meta.get("client"),
           "route": meta.get("route"), "format": meta.get("format"), "provider": meta.get("provider"),
           "model": meta.get("model"), "upstream": meta.get("upstream"), "attempts": meta.get("attempts"),
           "on_disconnect": meta.get("on_disconnect"), "started": started, "ended": None,
           "ttft_s": None, "tokens": None, "tokens_per_s": None, "last_event_at": None,
           "events": None, "readers": readers, "resumes": int(meta.get("resumes") or 0),
           "outcome": meta.get("outcome"), "finish_reason": meta.get("finish_reason"),
           "error": meta.get("error"), "usage": meta.get("usage")}
    if finished:
        ended = _number(meta.get("ended"))
        ttft, tokens = _number(meta.get("ttft_s")), meta.get("tokens")
        out.update(ended=ended, ttft_s=ttft, tokens=tokens, last_event_at=ended,
                   events=meta.get("last"))
        if started is not None and ended is not None and ttft is not None and tokens:
            out["tokens_per_s"] = _rate(tokens, ended - started - ttft)
    elif live is not None:
        events, tokens, first, last = live[:4]
        out.update(events=events, tokens=tokens, last_event_at=last)
        if first is not None and started is not None:
            out["ttft_s"] = round(first - started, 4)
            out["tokens_per_s"] = _rate(tokens, time.time() - first)
    return out


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _rate(tokens: int, seconds: float) -> float | None:
    return round(tokens / seconds, 2) if seconds > 0 else None
