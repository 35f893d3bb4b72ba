"""streamapp behind real nginx running conf/nginx.conf (which includes conf/nginx-site.conf).

nginx is started on a free loopback port with the repository's files, rewritten only in
their listen and upstream addresses and their paths, in front of two gunicorn instances
sharing Redis (or, for the header checks, a small recording backend). Every wait has a
deadline; the fake upstream's clock (``time.monotonic()``) is the same as this process's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ROOT, Process, Server, answers, require_binary
from tests.fake_upstream import token_list
from tests.helpers import (
    SSEClient,
    data_events,
    first_deltas,
    free_port,
    poll_until,
    q,
    recv_json,
    recv_until,
    upstream_closed_after,
    upstream_log,
)

KEYS = ("sk-test-a", "sk-test-b")  # one upstream key per instance: the fake upstream's log names the producer


@pytest.fixture(scope="module")
def start_nginx(tmp_path_factory) -> Iterator[Callable[[int, int], str]]:
    """Factory: ``start_nginx(port_a, port_b)`` runs nginx in front of those two upstream
    ports and returns its base URL."""
    binary = require_binary("nginx", "apt-get install -y nginx-light")
    started: list[Process] = []

    def start(port_a: int, port_b: int) -> str:
        port = free_port()
        work = tmp_path_factory.mktemp("nginx")
        rewrites = {
            "nginx.conf": [("/run/nginx-streamapp.pid", str(work / "nginx.pid")),
                           ("/var/log/nginx/streamapp-error.log", str(work / "error.log")),
                           ("/tmp/nginx-streamapp-", str(work / "tmp-"))],
            "nginx-site.conf": [("listen 127.0.0.1:8080;", f"listen 127.0.0.1:{port};"),
                                ("server 127.0.0.1:8000 ", f"server 127.0.0.1:{port_a} "),
                                ("server 127.0.0.1:8001 ", f"server 127.0.0.1:{port_b} ")],
        }
        for name, pairs in rewrites.items():
            conf = (ROOT / "conf" / name).read_text()
            for old, new in pairs:
                assert old in conf, f"{old!r} is no longer in conf/{name}: update this fixture"
                conf = conf.replace(old, new)
            (work / name).write_text(conf)  # side by side: nginx.conf includes nginx-site.conf
        proc = Process([binary, "-g", "daemon off; error_log stderr notice;", "-p", str(work),
                        "-c", str(work / "nginx.conf")], dict(os.environ), work / "stdout.log")
        started.append(proc)
        proc.wait_for("start worker process", 10, "nginx")  # listening by then
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.stop(signal.SIGQUIT)  # nginx's graceful stop


@pytest.fixture(scope="module")
def pair(start_server, redis_url) -> dict[str, Server]:
    """Two gunicorn instances (think: two hosts) sharing Redis, by their upstream key."""
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{uuid.uuid4().hex[:10]}",
                    RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
    return {key: start_server(OPENAI_API_KEY=key, **settings) for key in KEYS}


@pytest.fixture(scope="module")
def behind_nginx(start_nginx, pair) -> str:
    a, b = pair.values()
    url = start_nginx(a.port, b.port)
    answers(f"{url}/healthz", a.process, "nginx")
    return url


def producer(pair: dict[str, Server], upstream: str, tag: str) -> Server:
    """The instance that made the upstream request tagged ``tag``."""
    (record,) = upstream_log(upstream, tag)
    return pair[record["authorization"].removeprefix("Bearer ")]


# -- events pass one by one ---------------------------------------------------------------------

def test_events_pass_nginx_one_by_one(behind_nginx, fake_upstream, tag):
    """Every event the upstream sent is through nginx while the upstream sends nothing more: no
    buffer or compression holds one back until more comes."""
    before = 20
    model = q(f"silence?at={before}&silence_s=30&tokens=40&tag={tag}")  # 20 tokens, then silent
    with SSEClient(f"{behind_nginx}/ai-stream?prompt=hi&model={model}",
                   headers={"Accept-Encoding": "gzip, deflate"}) as client:
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert "Content-Encoding" not in client.headers  # asked for gzip, got none
        got = first_deltas(client, before)
        (record,) = upstream_log(fake_upstream, tag)
    assert "".join(e.data for e in got) == "".join(token_list(before))
    assert record["sent"] == before and record["finished"] is None, record  # all while it is silent


# -- what each request carries to gunicorn -----------------------------------------------------

class _Recorder(BaseHTTPRequestHandler):
    """Answers every request with the headers it got and the client port it came from."""

    protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps({"headers": {k.lower(): v for k, v in self.headers.items()},
                           "port": self.client_address[1]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def recording_nginx(start_nginx) -> Iterator[str]:
    """nginx whose first upstream records requests and whose second is down (nothing listens)."""
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    backend.daemon_threads = True
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    url = start_nginx(backend.server_address[1], free_port())
    yield url
    backend.shutdown()
    backend.server_close()


def test_headers_reach_the_app(recording_nginx):
    port = recording_nginx.rsplit(":", 1)[1]
    got = requests.get(f"{recording_nginx}/stream", headers={"X-Request-ID": "req-abc-123"},
                       timeout=10).json()["headers"]
    assert got["host"] == f"127.0.0.1:{port}"  # with the port: a browser's Origin matches it
    assert got["x-forwarded-for"] == "127.0.0.1"
    assert got["x-forwarded-proto"] == "http"
    assert got["x-request-id"] == "req-abc-123"  # the client's own is passed through
    assert got.get("connection", "").lower() != "close"
    assert "upgrade" not in got  # plain routes are never upgraded
    made = requests.get(f"{recording_nginx}/stream", timeout=10).json()["headers"]["x-request-id"]
    assert len(made) == 32 and int(made, 16) >= 0  # none sent: nginx's $request_id


def test_requests_reuse_upstream_connections_and_skip_a_down_instance(recording_nginx):
    # The second upstream refuses every connect: each request must still be answered (passed on
    # to the first), and the first's connections are kept alive and reused.
    workers = os.cpu_count() or 1  # worker_processes auto
    resps = [requests.get(f"{recording_nginx}/healthz", timeout=10) for _ in range(3 * workers)]
    assert [r.status_code for r in resps] == [200] * len(resps)
    ports = [r.json()["port"] for r in resps]
    assert len(set(ports)) <= workers, ports  # one idle connection per nginx worker, reused


def test_websocket_handshake_carries_the_upgrade_only_on_ws(recording_nginx):
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade"}
    ws = requests.get(f"{recording_nginx}/ws", headers=upgrade, timeout=10).json()["headers"]
    assert ws["upgrade"] == "websocket" and ws["connection"].lower() == "upgrade"
    plain = requests.get(f"{recording_nginx}/stream", headers=upgrade, timeout=10).json()["headers"]
    assert "upgrade" not in plain and plain.get("connection", "").lower() != "upgrade"


# -- streams through nginx ---------------------------------------------------------------------

def test_client_leaving_nginx_closes_the_upstream(behind_nginx, fake_upstream, tag) -> None:
    model = q(f"silence?at=1&silence_s=10&tag={tag}")
    client = SSEClient(f"{behind_nginx}/ai-stream?prompt=hi&model={model}")
    first_deltas(client, 1)
    left = time.monotonic()
    client.close()

    assert upstream_closed_after(fake_upstream, tag, left)["sent"] == 1  # in its silence


def test_chat_post_through_nginx(behind_nginx) -> None:
    with SSEClient(f"{behind_nginx}/api/chat", "POST", {"uid": 1, "message": "hi"},
                   headers={"X-Request-ID": "req-nginx-42"}) as client:
        assert client.headers["X-Request-ID"] == "req-nginx-42"  # the client's id reached the app
        events = client.read_all()
    assert len(data_events(events)) > 5
    assert json.loads(events[-1].data)["finish_reason"] == "stop"


def ws_connect(url: str) -> ClientConnection:
    """A WebSocket to nginx's ``/ws``, with the ``Origin`` a page of this site would send."""
    return connect(f"ws{url.removeprefix('http')}/ws", origin=url, open_timeout=10, close_timeout=2,
                   proxy=None, ping_interval=None)


def test_websocket_chat_and_stop_through_nginx(behind_nginx, fake_upstream, tag):
    with ws_connect(behind_nginx) as ws:
        slow = f"slow?tokens=200&delay_ms=50&tag={tag}"
        ws.send(json.dumps({"type": "chat", "uid": 7, "message": "hi", "provider": "openai", "model": slow}))
        start = recv_json(ws)
        assert start["type"] == "start" and start["uid"] == 7, start
        deltas = [recv_json(ws) for _ in range(3)]
        assert [m["type"] for m in deltas] == ["delta"] * 3, deltas
        assert [m["content"] for m in deltas] == token_list(3)
        asked = time.monotonic()
        ws.send(json.dumps({"type": "stop"}))
        rest = recv_until(ws, lambda m: m["type"] in ("end", "error"), timeout=5)
        assert rest[-1]["type"] == "end" and rest[-1]["finish_reason"] == "cancelled", rest
        assert upstream_closed_after(fake_upstream, tag, asked)["sent"] < 200  # before the answer's end

        # The same socket carries the next chat to its end.
        ws.send(json.dumps({"type": "chat", "uid": 8, "message": "again", "provider": "openai",
                            "model": f"normal?tokens=12&tag={tag}-2"}))
        second = recv_until(ws, lambda m: m["type"] in ("end", "error"))
        assert second[0]["type"] == "start" and second[0]["uid"] == 8
        assert "".join(m["content"] for m in second if m["type"] == "delta") == "".join(token_list(12))
        assert second[-1]["type"] == "end" and second[-1]["finish_reason"] == "stop", second[-1]


# -- SIGTERM on the producing instance: the stream resumes on the other one ---------------------

def refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def seq(event) -> int:
    return int(event.id.rpartition("-")[2])


def test_sigterm_resume_through_nginx_on_the_other_instance(start_server, start_nginx, redis_url,
                                                            redis_prefix, fake_upstream, tag):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, RESUME_GRACE_S=5,
                    HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, GRACEFUL_TIMEOUT=20)
    servers = {key: start_server(OPENAI_API_KEY=key, **settings) for key in KEYS}
    url = start_nginx(*(s.port for s in servers.values()))
    path = f"/ai-stream?prompt=hi&model={q(f'slow?tokens=40&delay_ms=100&tag={tag}')}"
    deadline = time.monotonic() + 40

    client = SSEClient(f"{url}{path}", timeout=20)
    sid = client.headers["X-Stream-Id"]
    first_deltas(client, 3)
    owner = producer(servers, fake_upstream, tag)
    other = next(s for s in servers.values() if s is not owner)
    owner.process.proc.send_signal(signal.SIGTERM)
    client.read_all()  # the owner's reader hands over: a normal end of body, no end event
    client.close()
    events = [e for _, e in client.events]
    assert events[-1].event == "message", events[-1]
    # The owner stops accepting (within a second) and goes on generating; nginx can only
    # reach the other instance now, which serves the live tail from Redis.
    poll_until(lambda: refuses(owner.port), 5, "the stopped instance to refuse connections")
    assert owner.process.proc.poll() is None  # still draining its producer

    reconnects = 0
    while events[-1].event != "end":
        assert time.monotonic() < deadline and reconnects < 10, (reconnects, events[-3:])
        reconnects += 1
        with SSEClient(f"{url}{path}", headers={"Last-Event-ID": events[-1].id}, timeout=20) as again:
            assert again.status == 200 and again.headers["X-Stream-Id"] == sid
            events += again.read_all()
    assert [seq(e) for e in events] == list(range(1, len(events) + 1))  # contiguous, each once
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(40))
    assert json.loads(events[-1].data)["finish_reason"] == "stop"
    assert len(upstream_log(fake_upstream, tag)) == 1  # no second generation
    assert upstream_log(fake_upstream, tag)[0]["closed_by_peer"] is None

    # Once the owner has exited, the whole stream is still there, from the other instance.
    assert owner.process.proc.wait(max(1, deadline - time.monotonic())) == 0
    with SSEClient(f"{url}/api/streams/{sid}", headers={"Last-Event-ID": events[0].id}) as replay:
        again = replay.read_all()
    assert [e.id for e in again] == [e.id for e in events[1:]]
    assert [r.status_code for r in (requests.get(f"{url}/healthz", timeout=5) for _ in range(6))] == [200] * 6
    assert other.process.proc.poll() is None
