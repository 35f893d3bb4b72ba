"""Stream lifecycle: disconnect, grace, resume, cancel, heartbeats, shutdown, slow clients.

Everything runs against real gunicorn + gevent servers, the fake upstream
(which records when its connection was closed) and real Redis.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import time

import pytest
import requests

from streamapp.config import DEFAULTS
from tests.fake_upstream import token_list
from tests.helpers import (
    SSEClient,
    data_events,
    first_deltas,
    poll_until,
    q,
    upstream_closed_after,
    upstream_log,
)


@pytest.fixture(scope="module")
def zero_grace(start_server):
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)


@pytest.fixture(scope="module")
def with_grace(start_server):
    return start_server(RESUME_GRACE_S=2, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)


@pytest.fixture(scope="module")
def redis_pair(start_server, redis_url, tmp_path_factory):
    """Two gunicorn instances (think: two hosts) sharing one Redis."""
    import uuid

    prefix = f"streamapp-test-{uuid.uuid4().hex[:8]}"
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=prefix, RESUME_GRACE_S=5,
                    HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
    return start_server(**settings), start_server(**settings)


def read_then_leave(server, path: str, n: int) -> tuple[str, list]:
    """Start a stream at ``path``, read ``n`` deltas, drop the connection."""
    client = SSEClient(f"{server.url}{path}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, n)
    client.close()
    return sid, got


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_disconnect_with_zero_grace_closes_a_silent_upstream(
        store, zero_grace, start_server, redis_url, fake_upstream, tag):
    server = zero_grace
    if store == "redis":
        server = _cached_server(start_server, "redis-zero-grace", dict(
            REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{tag}", RESUME_GRACE_S=0))
    for attempt in range(5):  # a race would show in some tries, not all
        model = q(f"silence?at=1&silence_s=10&tag={tag}-{attempt}")
        client = SSEClient(f"{server.url}/ai-stream?prompt=hi&model={model}")
        first_deltas(client, 1)
        left = time.monotonic()
        client.close()
        # Closed in its silence (one token sent): the client's leaving is the only cause.
        assert upstream_closed_after(fake_upstream, f"{tag}-{attempt}", left)["sent"] == 1


def test_reconnect_inside_grace_completes_and_keeps_the_upstream(with_grace, fake_upstream, tag):
    model = q(f"slow?tokens=12&delay_ms=150&tag={tag}")
    client = SSEClient(f"{with_grace.url}/local-ai?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 3)
    client.close()
    with SSEClient(f"{with_grace.url}/local-ai?prompt=hi&model={model}",
                   headers={"Last-Event-ID": got[-1].id}) as again:
        assert again.headers["X-Stream-Id"] == sid
        rest = again.read_all()
    text = "".join(e.data for e in got + data_events(rest))
    assert text == "".join(token_list(12))
    assert rest[-1].event == "end" and json.loads(rest[-1].data)["finish_reason"] == "stop"
    (record,) = upstream_log(fake_upstream, tag)
    assert record["closed_by_peer"] is None  # the upstream finished on its own
    assert len(upstream_log(fake_upstream, tag)) == 1  # the reconnect started no new generation


def test_no_reconnect_closes_the_upstream_after_the_grace(with_grace, fake_upstream, tag):
    model = q(f"silence?at=1&silence_s=10&tag={tag}")
    client = SSEClient(f"{with_grace.url}/ai-stream?prompt=hi&model={model}")
    first_deltas(client, 1)
    left = time.monotonic()
    client.close()
    record = upstream_closed_after(fake_upstream, tag, left, timeout=10)
    assert record["sent"] == 1  # closed in its silence: the grace's end is the only cause
    assert record["closed_by_peer"] - left > 1.8  # not before the grace (2 s) was over


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_resume_property_random_drops(store, start_server, redis_url, fake_upstream, tag):
    settings = dict(RESUME_GRACE_S=5, HEARTBEAT_S=0.5)
    if store == "redis":
        settings.update(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{tag}")
    server = _cached_server(start_server, store, settings)
    rng = random.Random(20261121)
    for attempt in range(3):
        model = f"slow?tokens=40&delay_ms=15&tag={tag}-{attempt}"
        client = SSEClient(f"{server.url}/api/chat", "POST",
                           {"uid": 1, "message": "x", "provider": "openai", "model": model})
        sid = client.headers["X-Stream-Id"]
        seen_ids, text, last_id, reconnects = [], "", None, 0
        ended = False
        while not ended and reconnects < 40:
            keep = rng.randint(1, 7)
            for event in client.iter_events():
                seen_ids.append(event.id)
                last_id = event.id
                payload = json.loads(event.data)
                if event.event == "message" and "delta" in payload:
                    text += payload["delta"]
                if payload.get("is_end"):
                    ended = True
                    break
                keep -= 1
                if keep == 0:
                    break
            client.close()
            if not ended:
                reconnects += 1
                client = SSEClient(f"{server.url}/api/streams/{sid}", headers={"Last-Event-ID": last_id})
        client.close()
        assert ended and reconnects >= 3
        assert text == "".join(token_list(40))
        assert len(seen_ids) == len(set(seen_ids))  # no duplicate
        seqs = [int(i.rpartition("-")[2]) for i in seen_ids]
        assert seqs == list(range(1, len(seqs) + 1))  # no gap
        assert len(upstream_log(fake_upstream, f"{tag}-{attempt}")) == 1


_SERVERS: dict = {}


def _cached_server(start_server, key, settings):
    if key not in _SERVERS:
        _SERVERS[key] = start_server(**settings)
    return _SERVERS[key]


def test_resume_with_query_parameter_for_fetch_clients(server):
    with SSEClient(f"{server.url}/stream?delay_ms=0") as client:
        events = client.read_all()
    sid = client.headers["X-Stream-Id"]
    middle = events[5]
    with SSEClient(f"{server.url}/api/streams/{sid}?last_event_id={middle.id}") as again:
        rest = again.read_all()
    assert [e.id for e in rest] == [e.id for e in events[6:]]
    assert rest[0].retry is not None  # every stream starts with retry:


def test_cross_worker_resume_and_cancel(redis_pair, fake_upstream, tag):
    a, b = redis_pair
    model = q(f"silence?at=6&silence_s=10&tokens=200&tag={tag}")  # six tokens, then silent
    sid, got = read_then_leave(a, f"/ai-stream?prompt=hi&model={model}", 3)
    with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id}) as other:
        more = first_deltas(other, 3)
        assert "".join(e.data for e in got + more) == "".join(token_list(6))
        asked = time.monotonic()
        resp = requests.post(f"{b.url}/api/streams/{sid}/cancel", timeout=5)
        assert resp.status_code == 202 and resp.json()["status"] == "cancelling"
        rest = other.read_all()
    assert rest[-1].event == "end" and json.loads(rest[-1].data)["finish_reason"] == "cancelled"
    assert data_events(rest) == more  # read_all gives the whole body: no token after the cancel
    assert upstream_closed_after(fake_upstream, tag, asked)["sent"] == 6  # before its next token
    assert requests.post(f"{a.url}/api/streams/{sid}/cancel", timeout=5).json()["status"] == "finished"


def test_cancel_ends_the_stream_and_closes_the_upstream_before_its_next_token(zero_grace, fake_upstream, tag):
    model = q(f"silence?at=2&silence_s=10&tag={tag}")
    with SSEClient(f"{zero_grace.url}/ai-stream?prompt=hi&model={model}") as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 2)
        asked = time.monotonic()
        assert requests.post(f"{zero_grace.url}/api/streams/{sid}/cancel", timeout=5).status_code == 202
        rest = client.read_all()
    assert json.loads(rest[-1].data)["finish_reason"] == "cancelled"
    assert upstream_closed_after(fake_upstream, tag, asked)["sent"] == 2  # in its silence


def test_cancel_unknown_stream_is_404(server):
    resp = requests.post(f"{server.url}/api/streams/nope/cancel", timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["field"] == "stream_id"


def test_heartbeats_on_a_silent_upstream_and_before_the_first_token(zero_grace, tag):
    model = q(f"silence?at=0&silence_s=2&tokens=2&tag={tag}")
    with SSEClient(f"{zero_grace.url}/ai-stream?prompt=hi&model={model}") as client:
        assert client.status == 200
        events = client.read_all()
    beats = [t for t, chunk in client.chunks if b": keep-alive" in chunk]
    first_token = next(t for t, e in client.events if e.event == "message")
    assert len([t for t in beats if t < first_token]) >= 2
    assert client.chunks[0][1].startswith(b": stream ")
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(2))


@pytest.mark.parametrize("path, headers", [
    ("/api/streams/nope", {}),
    ("/api/streams/nope", {"Last-Event-ID": "nope-4"}),
    ("/stream", {"Last-Event-ID": "nope-4"}),
    ("/ai-stream?prompt=x", {"Last-Event-ID": "garbage"}),
    ("/local-ai?prompt=x", {"Last-Event-ID": "gone-1"}),
])
def test_unknown_stream_is_204(server, path, headers):
    resp = requests.get(f"{server.url}{path}", headers=headers, timeout=5)
    assert resp.status_code == 204 and resp.content == b""


def test_sigterm_during_a_stream_resumes_elsewhere_without_loss(start_server, redis_url, tag):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{tag}", RESUME_GRACE_S=5,
                    HEARTBEAT_S=0.5, GRACEFUL_TIMEOUT=20)
    a, b = start_server(**settings), start_server(**settings)
    model = q(f"slow?tokens=30&delay_ms=100&tag={tag}")
    client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 3)
    a.process.proc.send_signal(signal.SIGTERM)
    before = [e for _, e in client.events]
    tail = client.read_all()[len(before):]  # ends cleanly: a normal end of body
    client.close()
    assert all(e.event == "message" for e in tail)  # no error, no end: the stream goes on
    last = (tail or got)[-1]
    with SSEClient(f"{b.url}/ai-stream?prompt=hi&model={model}", headers={"Last-Event-ID": last.id}) as c2:
        assert c2.headers["X-Stream-Id"] == sid
        rest = c2.read_all()
    text = "".join(e.data for e in got + tail + data_events(rest))
    assert text == "".join(token_list(30))
    assert rest[-1].event == "end" and json.loads(rest[-1].data)["finish_reason"] == "stop"
    a.process.proc.wait(25)


def test_a_client_that_stops_reading_is_dropped(start_server, tag):
    server = start_server(WRITE_TIMEOUT_S=1, RESUME_GRACE_S=30, HEARTBEAT_S=0.5)
    model = q(f"normal?tokens=300&repeat=3000&tag={tag}")  # about 9 MB of SSE
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /ai-stream?prompt=hi&model={model} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:  # the headers, however the reads split them (bounded: the timeout)
        more = sock.recv(2048 - len(head))
        assert more, "closed before the headers"
        head += more
    head = head.decode("latin-1")
    sid = head.split("X-Stream-Id: ")[1].split("\r\n")[0]
    # The worker keeps serving others while this client reads nothing.
    assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200

    def dropped():
        info = requests.get(f"{server.url}/api/streams/{sid}/info", timeout=2).json()
        return info["readers"] == 0 and info
    poll_until(dropped, 10, "the frozen client to be dropped")
    sock.close()
    assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200
    # The producer was not affected: the whole answer can still be read (live, to its end).
    with SSEClient(f"{server.url}/api/streams/{sid}", timeout=20) as again:
        events = again.read_all()
    assert "".join(e.data for e in data_events(events)) == "".join(t * 3000 for t in token_list(300))
    assert json.loads(events[-1].data)["finish_reason"] == "stop"  # not cut as client_gone


def test_every_redis_key_has_a_ttl(start_server, redis_url, tag):
    import redis

    prefix = f"streamapp-test-{tag}"
    server = start_server(REDIS_URL=redis_url, REDIS_PREFIX=prefix, RESUME_TTL_S=60, RESUME_GRACE_S=0)
    with SSEClient(f"{server.url}/stream?delay_ms=0") as client:
        sid = client.headers["X-Stream-Id"]
        done = client.read_all()
    with SSEClient(f"{server.url}/stream?delay_ms=200") as client:  # one left running, then cancelled
        live = client.headers["X-Stream-Id"]
        first_deltas(client, 1)
        requests.post(f"{server.url}/api/streams/{live}/cancel", timeout=5)
        cancelled = client.read_all()
    r = redis.Redis.from_url(redis_url)
    for stream, events in ((sid, done), (live, cancelled)):
        # Redis is written just behind the local readers: block until it has the last
        # event (written in one transaction with the stream's finished state and TTLs).
        last = int(events[-1].id.rpartition("-")[2])
        assert r.xread({f"{prefix}:log:{stream}": f"0-{last - 1}"}, block=5000), stream
        assert r.hget(f"{prefix}:meta:{stream}", "state") == b'"finished"'
    keys = list(r.scan_iter(f"{prefix}:*"))
    assert any(sid.encode() in k for k in keys) and any(live.encode() in k for k in keys)
    # The inspector's list of recent streams lasts as long as a running stream may (it lists them).
    running_ttl = DEFAULTS["STREAM_MAX_DURATION_S"] + DEFAULTS["READ_TIMEOUT_S"] + 0 + 60 + 60
    assert 0 < r.ttl(f"{prefix}:recent") <= running_ttl
    assert {m.decode() for m in r.zrange(f"{prefix}:recent", 0, -1)} == {sid, live}
    for key in keys:  # the usage ledger's keys live USAGE_RETENTION_DAYS (400), the streams' RESUME_TTL_S
        if key != f"{prefix}:recent".encode():
            assert 0 < r.ttl(key) <= (400 * 86400 if b":usage:" in key else 60), key


def test_resume_at_the_end_of_a_finished_stream_is_204(start_server):
    server = start_server(RESUME_TTL_S=2, HEARTBEAT_S=0.5)
    with SSEClient(f"{server.url}/stream?delay_ms=0") as client:
        events = client.read_all()
    sid, last = client.headers["X-Stream-Id"], events[-1].id
    resp = requests.get(f"{server.url}/stream", headers={"Last-Event-ID": last}, timeout=5)
    assert resp.status_code == 204  # an EventSource that reconnects after the end stops here
    poll_until(lambda: requests.get(f"{server.url}/api/streams/{sid}", timeout=5).status_code == 204,
               10, "the finished stream to expire")
    with SSEClient(f"{server.url}/api/streams/{sid}", headers={"Last-Event-ID": events[3].id}) as c:
        assert c.status == 204
    assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200


def test_reader_of_an_expiring_stream_ends_instead_of_spinning(start_server):
    server = start_server(RESUME_TTL_S=1, HEARTBEAT_S=0.3)
    with SSEClient(f"{server.url}/stream?delay_ms=0") as client:
        events = client.read_all()
    sid = client.headers["X-Stream-Id"]
    with SSEClient(f"{server.url}/api/streams/{sid}", headers={"Last-Event-ID": events[2].id},
                   timeout=10) as again:
        rest = again.read_all()  # ends: it does not wait forever at the end of the log
    assert [e.id for e in rest] == [e.id for e in events[3:]]
    assert requests.get(f"{server.url}/healthz", timeout=2).status_code == 200


def test_graceful_reload_with_the_memory_store_does_not_cut_a_stream(start_server):
    server = start_server(HEARTBEAT_S=0.5, GRACEFUL_TIMEOUT=20)
    with SSEClient(f"{server.url}/stream?delay_ms=100", timeout=20) as client:
        first_deltas(client, 2)
        server.process.proc.send_signal(signal.SIGHUP)  # reload: the old worker is retired
        events = client.read_all()
    assert events[-1].event == "end"
    assert json.loads(events[-1].data)["finish_reason"] == "stop"
    assert "你好" in "".join(e.data for e in data_events(events))


def test_client_leaving_before_the_first_token_closes_the_upstream(zero_grace, fake_upstream, tag):
    model = q(f"hang?silence_s=10&tag={tag}")
    sock = socket.create_connection(("127.0.0.1", zero_grace.port), timeout=5)
    sock.sendall(f"GET /ai-stream?prompt=hi&model={model} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert upstream_log(fake_upstream, tag, wait="opened"), "the upstream request never came"
    left = time.monotonic()
    sock.close()  # headers were still held: no stream id was ever sent
    assert upstream_closed_after(fake_upstream, tag, left)["sent"] == 0


def test_cancelled_text_answer_says_so(server):
    # The demo echoes the message: about 240 tokens, 5 s at 20 ms, so the cancel lands before the end.
    body = {"uid": 1, "message": "stop soon " + "word " * 200}
    with SSEClient(f"{server.url}/api/chat?format=text", "POST", body) as client:
        sid = client.headers["X-Stream-Id"]
        next(client.iter_chunks())
        requests.post(f"{server.url}/api/streams/{sid}/cancel", timeout=5)
        text = client.body().decode()
    assert text.endswith("\n[cancelled]\n")


def test_redis_stopped_and_restarted_mid_stream(start_server, tmp_path, tag):
    """A redis-server of this test's own stops mid-stream and comes back: local readers go
    on, streams that live only in Redis are 503 meanwhile, new streams are served by their
    own instance, and shared again once Redis is back."""

    from tests.conftest import start_redis
    from tests.helpers import free_port

    port = free_port()

    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        settings = dict(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PREFIX=f"streamapp-test-{tag}",
                        RESUME_GRACE_S=5, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
        a, b = start_server(**settings), start_server(**settings)
        local = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={q(f'slow?tokens=40&delay_ms=50&tag={tag}')}",
                          timeout=30)
        first_deltas(local, 2)
        model = q(f"slow?tokens=400&delay_ms=50&tag={tag}-remote")
        remote, _ = read_then_leave(a, f"/ai-stream?prompt=hi&model={model}", 1)
        assert requests.get(f"{b.url}/api/streams/{remote}/info", timeout=5).status_code == 200

        redis_proc.stop(signal.SIGKILL)
        for method, path in (("GET", f"/api/streams/{remote}"), ("GET", f"/api/streams/{remote}/info"),
                             ("POST", f"/api/streams/{remote}/cancel")):
            resp = requests.request(method, f"{b.url}{path}", headers={"Last-Event-ID": f"{remote}-1"},
                                    timeout=10)
            assert resp.status_code == 503, (path, resp.status_code, resp.text)
            assert resp.json()["error"]["code"] == "store_unavailable"
        with SSEClient(f"{a.url}/stream?delay_ms=0&text=served%20alone") as degraded:
            events = degraded.read_all()
        assert "".join(e.data for e in data_events(events)) == "served alone"
        assert events[-1].event == "end"
        events = local.read_all()  # the reader in the producing process goes on to the end
        local.close()
        assert "".join(e.data for e in data_events(events)) == "".join(token_list(40))
        assert events[-1].event == "end"

        redis_proc = start_redis(port, tmp_path / "redis-2.log")

        def shared_again() -> bool:
            with SSEClient(f"{a.url}/stream?delay_ms=0&text=shared") as client:
                sid = client.headers["X-Stream-Id"]
                client.read_all()
            return requests.get(f"{b.url}/api/streams/{sid}/info", timeout=5).status_code == 200
        poll_until(shared_again, 15, "new streams to be shared again", interval=0.2)
    finally:
        redis_proc.stop()


def test_reader_of_a_stream_whose_worker_died_gets_an_error(redis_pair, fake_upstream, tag):
    import os

    a, b = redis_pair
    model = q(f"slow?tokens=200&delay_ms=100&tag={tag}")
    sid, got = read_then_leave(a, f"/ai-stream?prompt=hi&model={model}", 2)
    worker = int(requests.get(f"{a.url}/api/streams/{sid}/info", timeout=5).json()["pid"])
    os.kill(worker, signal.SIGKILL)  # the producer dies with its process, writing no end
    with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id},
                   timeout=30) as other:
        events = other.read_all()
    assert events[-1].event == "error" and json.loads(events[-1].data)["code"] == "producer_lost"
    resp = requests.post(f"{b.url}/api/streams/{sid}/cancel", timeout=5)
    assert resp.json()["status"] == "finished"


def test_sigterm_with_the_memory_store_ends_a_long_stream_before_the_kill(start_server, tag):
    """No Redis: nowhere to resume, so the reader follows its stream; a stream longer than the
    graceful timeout ends with "shutdown" 3 s before gunicorn's SIGKILL, its client gets the
    end, and the worker exits by itself (found in review: the drain ran only after the wait
    for connections, so the kill came first and the client got a cut stream)."""
    server = start_server(GRACEFUL_TIMEOUT=6, HEARTBEAT_S=0.5, RESUME_GRACE_S=0)
    model = q(f"slow?tokens=400&delay_ms=100&tag={tag}")  # 40 s of answer
    client = SSEClient(f"{server.url}/ai-stream?prompt=hi&model={model}", timeout=15)
    first_deltas(client, 2)
    server.process.proc.send_signal(signal.SIGTERM)
    events = client.read_all()
    client.close()
    assert events[-1].event == "end", events[-3:]
    assert json.loads(events[-1].data)["finish_reason"] == "shutdown"
    server.process.proc.wait(10)
    assert "Worker exiting" in server.process.output()  # by itself: a killed worker says nothing
