"""The stream core's guarantees against real gunicorn + gevent, Redis and the fake upstream:
nobody reading means nothing generating, no silent gap, bounded memory and writes,
shutdown never answers an empty 200, one resume rule, and what a disconnect means.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid

import pytest
import redis
import requests
from websockets.sync.client import connect

from tests.fake_upstream import token_list
from tests.helpers import (
    SSEClient,
    data_events,
    first_deltas,
    free_port,
    poll_until,
    q,
    recv_json,
    upstream_closed_after,
    upstream_closed_at,
    upstream_log,
)


def seq_of(event) -> int:
    return int(event.id.rpartition("-")[2])


@pytest.fixture(scope="module")
def quick(start_server):
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, STREAM_MAX_EVENTS=5)


@pytest.fixture(scope="module")
def pair(start_server, redis_url):
    """Two instances sharing Redis, with short leases so a dead reader is noticed in seconds."""
    prefix = f"streamapp-test-{uuid.uuid4().hex[:8]}"
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=prefix, RESUME_GRACE_S=1, LEASE_S=1.5,
                    WRITE_TIMEOUT_S=0.75, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
    a, b = start_server(**settings), start_server(**settings)
    a.prefix = b.prefix = prefix
    return a, b


# -- 1. nobody reading means nothing generating ----------------------------------------

@pytest.mark.parametrize("path", ["/ai-stream", "/local-ai"])
def test_head_on_a_stream_route_starts_no_generation(quick, fake_upstream, tag, path):
    resp = requests.head(f"{quick.url}{path}?prompt=hi&model={q(f'normal?tag={tag}')}", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    # The same request as a GET reaches the upstream (so the HEAD would have been seen too).
    with SSEClient(f"{quick.url}{path}?prompt=hi&model={q(f'normal?tag={tag}')}") as client:
        client.read_all()
    assert len(upstream_log(fake_upstream, tag, wait="finished")) == 1


def test_a_reader_whose_worker_was_killed_stops_the_generation(pair, fake_upstream, tag):
    a, b = pair
    model = q(f"silence?at=1&silence_s=20&tag={tag}")
    client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 1)
    other = SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id})
    assert other.status == 200
    poll_until(lambda: requests.get(f"{a.url}/api/streams/{sid}/info", timeout=2).json()["readers"] == 2,
               5, "the reader on the other instance to attach")
    client.close()  # one reader is left, on b: no "idle" message is sent
    worker = requests.get(f"{b.url}/api/streams/{sid}/info", timeout=5).json()["pid"]
    os.kill(worker, signal.SIGKILL)  # b's reader dies without detaching: only its lease says so
    killed = time.monotonic()
    # Closed after the kill, in the upstream's silence: the dead reader's lease is the only cause
    # (the wait is bounded by 10 s, far inside the 20 s silence).
    closed = upstream_closed_after(fake_upstream, tag, killed, timeout=10)
    other.close()
    assert closed["sent"] == 1


# -- 2. exactly once, or an explicit error ------------------------------------------------

def wait_for_entry(r: redis.Redis, key: str, seq: int) -> None:
    assert r.xread({key: f"0-{seq - 1}"}, block=10_000), f"{key} never got entry {seq}"


def test_a_hole_in_the_log_ends_a_remote_reader_with_stream_gap(pair, tag, redis_url):
    a, b = pair
    r = redis.Redis.from_url(redis_url)
    model = q(f"slow?tokens=40&delay_ms=30&tag={tag}")
    client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 3)  # events 1 (stream), 2, 3, 4
    log = f"{a.prefix}:log:{sid}"
    wait_for_entry(r, log, 10)
    r.xdel(log, "0-7")  # as if the batch holding event 7 never reached Redis
    with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id}) as other:
        events = other.read_all()
    client.close()
    assert [seq_of(e) for e in events[:-1]] == [5, 6]
    assert events[-1].event == "error" and json.loads(events[-1].data)["code"] == "stream_gap"


def test_a_stream_whose_end_was_lost_ends_a_remote_reader_with_stream_gap(pair, tag, redis_url):
    a, b = pair
    r = redis.Redis.from_url(redis_url)
    with SSEClient(f"{a.url}/ai-stream?prompt=hi&model={q(f'normal?tokens=5&tag={tag}')}") as client:
        events = client.read_all()
    sid, last = client.headers["X-Stream-Id"], seq_of(events[-1])
    log = f"{a.prefix}:log:{sid}"
    wait_for_entry(r, log, last)
    r.xdel(log, f"0-{last}")  # the end is recorded in the stream's state, its event is gone
    with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": f"{sid}-{last - 2}"},
                   timeout=10) as other:
        rest = other.read_all()
    assert [seq_of(e) for e in rest] == [last - 1, last - 1]
    assert rest[-1].event == "error" and json.loads(rest[-1].data)["code"] == "stream_gap"


# -- 4. bounded memory ---------------------------------------------------------------------------

def test_a_stream_past_its_limit_ends_with_length_and_closes_the_upstream(quick, fake_upstream, tag):
    model = q(f"slow?tokens=50&delay_ms=20&tag={tag}")
    with SSEClient(f"{quick.url}/ai-stream?prompt=hi&model={model}") as client:
        events = client.read_all()
    assert len(data_events(events)) == 5
    assert events[-1].event == "end" and json.loads(events[-1].data)["finish_reason"] == "length"
    upstream_closed_at(fake_upstream, tag)  # fails unless streamapp closed the upstream early


def test_a_slow_but_healthy_client_catches_up_on_a_long_log(start_server, tag):
    server = start_server(WRITE_TIMEOUT_S=2, HEARTBEAT_S=0.5)
    model = q(f"normal?tokens=300&repeat=9000&tag={tag}")  # cut at STREAM_MAX_BYTES (8 MiB) of text
    with SSEClient(f"{server.url}/ai-stream?prompt=hi&model={model}", timeout=20) as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    # Read it all again, from the start, at about 1.3 MB/s: 7 s in all, never 2 s without progress.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    # The request id is echoed in the last header: one ending in "0" makes the header block end
    # in "0\r\n\r\n", which must not pass for the body's last chunk (1 run in 16 did).
    sock.sendall(f"GET /api/streams/{sid} HTTP/1.1\r\nHost: x\r\nX-Request-ID: slow-reader-0\r\n\r\n"
                 .encode())
    pace = threading.Event()  # never set: its timed wait paces a slow reader
    received = bytearray()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
        # The last chunk, after the headers (a data chunk ends in CRLF, a header line is never "0").
        if received.endswith(b"\r\n0\r\n\r\n") and received.find(b"\r\n\r\n") < len(received) - 4:
            break
        pace.wait(0.05)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"X-Request-ID: slow-reader-0" in head
    assert b"event: end" in body, f"dropped after {len(body)} bytes of body"


# -- 5. shutdown never answers an empty 200 ------------------------------------------------------

def test_a_resume_reaching_a_worker_that_is_shutting_down_still_gets_events(start_server, redis_url, tag):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{tag}", RESUME_GRACE_S=5,
                    HEARTBEAT_S=0.5, GRACEFUL_TIMEOUT=20)
    a = start_server(**settings)
    model = q(f"slow?tokens=30&delay_ms=100&tag={tag}")
    client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    first_deltas(client, 2)
    kept = SSEClient(f"{a.url}/healthz")  # a kept-alive connection, as a proxy would hold
    kept.resp.read()
    a.process.proc.send_signal(signal.SIGTERM)
    client.read_all()  # the reader leaves between events: the worker is now shutting down
    last = client.events[-1][1].id
    client.close()
    kept.conn.request("GET", f"/api/streams/{sid}", headers={"Last-Event-ID": last})
    resp = kept.conn.getresponse()
    assert resp.status == 200
    body = resp.read()  # ends when that reader leaves again
    kept.close()
    assert b"\nid: " in b"\n" + body, f"a 200 with no event: {body!r}"
    a.process.proc.wait(25)


# -- 7. one resume rule -------------------------------------------------------------------------------

def test_an_id_of_another_routes_stream_is_an_unknown_id(quick):
    resp = requests.post(f"{quick.url}/api/chat", json={"uid": 1, "message": "hi"}, timeout=10)
    chat_sid = resp.headers["X-Stream-Id"]
    with SSEClient(f"{quick.url}/stream?delay_ms=0") as client:
        plain = client.read_all()
    plain_sid = client.headers["X-Stream-Id"]
    for path, method, sid in (("/stream", "GET", chat_sid), ("/ai-stream?prompt=x", "GET", plain_sid),
                              ("/local-ai?prompt=x", "GET", plain_sid), ("/api/chat", "POST", plain_sid)):
        resp = requests.request(method, f"{quick.url}{path}", headers={"Last-Event-ID": f"{sid}-2"},
                                json={"uid": 1, "message": "hi"}, timeout=5)
        assert resp.status_code == 204, (path, resp.status_code)
        assert resp.headers["Content-Type"].startswith("text/event-stream"), path
        assert resp.content == b""
    # The route that made the stream still resumes it.
    resp = requests.get(f"{quick.url}/stream", headers={"Last-Event-ID": plain[2].id}, timeout=5)
    assert resp.status_code == 200 and plain[3].data in resp.text


# -- 9. what a disconnect means ---------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["post", "get"])
def test_on_disconnect_finish_keeps_generating_for_a_later_fetch(quick, fake_upstream, tag, how):
    model = f"slow?tokens=5&delay_ms=50&tag={tag}"
    if how == "post":
        client = SSEClient(f"{quick.url}/api/chat", "POST", {"uid": 1, "message": "hi", "provider": "openai",
                                                             "model": model, "on_disconnect": "finish"})
    else:
        client = SSEClient(f"{quick.url}/ai-stream?prompt=hi&on_disconnect=finish&model={q(model)}")
    sid = client.headers["X-Stream-Id"]
    first_deltas(client, 1)
    client.close()  # zero grace: with "cancel" the upstream would close now
    (record,) = upstream_log(fake_upstream, tag, wait="finished", timeout=10)
    assert record["closed_by_peer"] is None and record["sent"] == 5
    with SSEClient(f"{quick.url}/api/streams/{sid}") as again:
        events = again.read_all()
    text = [json.loads(e.data).get("delta", "") for e in events] if how == "post" else \
        [e.data for e in data_events(events)]
    assert "".join(text) == "".join(token_list(5))


def test_on_disconnect_is_validated(quick):
    resp = requests.post(f"{quick.url}/api/chat", json={"uid": 1, "message": "hi", "on_disconnect": "later"},
                         timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "on_disconnect"


# -- 10. nothing internal in what clients see; settings that cannot work are refused -----------

def test_a_store_outage_shows_clients_no_internal_address(start_server, tag):
    port = free_port()  # nothing listens there: every Redis call fails with its address
    server = start_server(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PREFIX=f"streamapp-test-{tag}")
    sid = "abcdefghijklmnopabcdefghijklmnop"  # no digits: the port cannot turn up in it by chance
    probe = "store-outage-probe"
    resp = requests.get(f"{server.url}/api/streams/{sid}/info", headers={"X-Request-ID": probe}, timeout=10)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "store_unavailable"
    seen = resp.text + "".join(f"{name}: {value}\n" for name, value in resp.headers.items())
    assert "127.0.0.1" not in seen and str(port) not in seen, seen
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None,
                 ping_interval=None, additional_headers={"X-Request-ID": probe + "-ws"}) as ws:
        ws.send(json.dumps({"type": "resume", "stream_id": sid, "last_seq": 0}))
        message = recv_json(ws)
    assert message["type"] == "error" and message["code"] == "store_unavailable", message
    assert "127.0.0.1" not in json.dumps(message) and str(port) not in json.dumps(message)
    # The detail is in the log, on a line with the request's id.
    for request_id in (probe, probe + "-ws"):  # the HTTP answer's and the WebSocket message's
        poll_until(lambda rid=request_id: any(rid in line and f"127.0.0.1:{port}" in line
                                              for line in server.process.output().splitlines()),
                   5, f"the log line of {request_id}")


@pytest.mark.parametrize(("lease", "write"), [(30, 30), (59, 30), (1.4, 0.75), (60, 0)])
def test_a_readers_lease_must_outlast_a_blocked_write(lease, write):
    from streamapp import create_app

    with pytest.raises(ValueError, match="STREAMAPP_LEASE_S.*STREAMAPP_WRITE_TIMEOUT_S|"
                                         "STREAMAPP_WRITE_TIMEOUT_S must be > 0"):
        create_app({"LEASE_S": lease, "WRITE_TIMEOUT_S": write})


def test_the_default_lease_outlasts_the_default_write_timeout():
    from streamapp import create_app

    create_app({})
    create_app({"LEASE_S": 1.5, "WRITE_TIMEOUT_S": 0.75})
