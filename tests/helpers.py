"""Test helpers: free ports, bounded waits, a recording SSE client, WebSocket messages."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import requests

from streamapp.sse import EventParser, LineSplitter, ServerSentEvent


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def poll_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """For server state that announces no event (a reader count, a TTL running
    out): ask ``check`` every ``interval`` until it returns something truthy, or
    fail after ``timeout``. Waits that have an event use it instead."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()  # never set: its timed wait paces the poll
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        tick.wait(min(interval, max(0.0, deadline - time.monotonic())))


class SSEClient:
    """An HTTP request whose streamed body is read chunk by chunk, with arrival times."""

    def __init__(self, url: str, method: str = "GET", body: Any = None,
                 headers: dict[str, str] | None = None, timeout: float = 10) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        data = None
        headers = dict(headers or {})
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        self.started = time.monotonic()
        self.conn.request(method, path, body=data, headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = self.resp.headers
        self.chunks: list[tuple[float, bytes]] = []
        self.events: list[tuple[float, ServerSentEvent]] = []
        self._splitter = LineSplitter()
        self._parser = EventParser()

    def json(self) -> Any:
        return json.loads(self.resp.read())

    def iter_chunks(self) -> Iterator[bytes]:
        while True:
            chunk = self.resp.read1(65536)
            if not chunk:
                return
            self.chunks.append((time.monotonic(), chunk))
            yield chunk

    def iter_events(self) -> Iterator[ServerSentEvent]:
        """Events as they arrive (also kept in ``self.events``)."""
        for chunk in self.iter_chunks():
            for line in self._splitter.feed(chunk):
                event = self._parser.feed_line(line)
                if event is not None:
                    self.events.append((time.monotonic(), event))
                    yield event

    def read_all(self) -> list[ServerSentEvent]:
        for _ in self.iter_events():
            pass
        return [e for _, e in self.events]

    def body(self) -> bytes:
        for _ in self.iter_chunks():
            pass
        return b"".join(c for _, c in self.chunks)

    def close(self) -> None:
        """Drop the connection (a client going away)."""
        sock = self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conn.close()

    def __enter__(self) -> SSEClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def upstream_log(upstream: str, tag: str, wait: str | None = None, timeout: float = 5) -> list[dict]:
    """The fake upstream's records of connections tagged ``tag``; with ``wait``,
    once one of them has that field set (its long-poll), or after ``timeout``."""
    params = {"tag": tag}
    if wait:
        params.update(wait=wait, timeout=str(timeout))
    return requests.get(f"{upstream}/_log", params=params, timeout=timeout + 5).json()


def upstream_closed_at(upstream: str, tag: str, timeout: float = 5) -> float:
    """When the fake upstream saw streamapp close the connection tagged ``tag``."""
    records = upstream_log(upstream, tag, wait="closed_by_peer", timeout=timeout)
    closed = [r["closed_by_peer"] for r in records if r["closed_by_peer"] is not None]
    assert closed, f"the upstream connection {tag} stayed open for {timeout}s: {records}"
    return closed[0]


def upstream_closed_after(upstream: str, tag: str, after: float, timeout: float = 5) -> dict:
    """The fake upstream's record of the connection tagged ``tag`` once streamapp closed it,
    checked to be closed after ``after`` (``time.monotonic()`` here, the upstream's clock too)
    and before the upstream finished on its own; ``timeout`` only bounds the wait. Its ``sent``
    says how many tokens went out before the close."""
    records = upstream_log(upstream, tag, wait="closed_by_peer", timeout=timeout)
    closed = [r for r in records if r["closed_by_peer"] is not None]
    assert closed, f"the upstream connection {tag} stayed open for {timeout}s: {records}"
    assert closed[0]["closed_by_peer"] > after, f"closed before the test acted: {closed[0]}"
    return closed[0]


def data_events(events: list[ServerSentEvent]) -> list[ServerSentEvent]:
    """The token events (default ``message`` type)."""
    return [e for e in events if e.event == "message"]


def q(model: str) -> str:
    """A fake-upstream model string (``mode?param=...``) quoted for a query string."""
    return requests.utils.quote(model, safe="")


def first_deltas(client: SSEClient, n: int) -> list[ServerSentEvent]:
    """Read until ``n`` token events have arrived (fails if the stream ends first)."""
    got = []
    for event in client.iter_events():
        if event.event == "message":
            got.append(event)
            if len(got) == n:
                return got
    raise AssertionError(f"stream ended after {len(got)} deltas")


def recv_json(ws: Any, timeout: float = 5) -> dict:
    """The next WebSocket message (a JSON object in a text frame); ``TimeoutError`` after ``timeout``."""
    frame = ws.recv(timeout=timeout)
    assert isinstance(frame, str), f"a binary frame: {frame!r}"
    message = json.loads(frame)
    assert isinstance(message, dict) and isinstance(message.get("type"), str), message
    return message


def recv_until(ws: Any, done: Callable[[dict], bool], timeout: float = 10) -> list[dict]:
    """WebSocket messages up to and including the first for which ``done`` is true."""
    deadline = time.monotonic() + timeout
    got: list[dict] = []
    while not got or not done(got[-1]):
        left = deadline - time.monotonic()
        assert left > 0, f"nothing ended within {timeout}s; last messages: {got[-3:]}"
        got.append(recv_json(ws, left))
    return got
