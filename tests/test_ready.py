"""``GET /readyz`` and the service with its Redis gone and back (issue #11, points 3 and 6).

Redis down, on purpose, with a redis-server of the test's own: streams (SSE and WebSocket)
are still served, by their own process; rate limits go on counting in that process;
``/readyz`` names the store as failing; everything is shared again, and ``/readyz`` ready,
once Redis is back, with nothing restarted.
"""

from __future__ import annotations

import json

import redis
import requests
from websockets.sync.client import connect

from tests.conftest import start_redis
from tests.helpers import SSEClient, data_events, free_port, poll_until


def ready(server) -> tuple[int, dict]:
    resp = requests.get(f"{server.url}/readyz", timeout=10)
    assert resp.headers["Cache-Control"] == "no-store"
    return resp.status_code, resp.json()


def test_ready_checks_the_store_the_default_provider_and_openai_with_a_key(server) -> None:
    status, body = ready(server)  # the test servers have OPENAI_API_KEY set, to the fake upstream
    assert status == 200, body
    assert body == {"status": "ready", "failing": [],
                    "checks": {"store": {"kind": "memory", "ok": True},
                               "providers": {"demo": {"ok": True}, "openai": {"ok": True}}},
                    "upstreams": {}}  # the test servers run without circuit breakers (test_circuits)


def test_an_unreachable_provider_is_named_and_no_host_is_shown(start_server) -> None:
    closed = free_port()  # nothing listens there
    server = start_server(READY_PROVIDERS="demo,openai", OPENAI_BASE_URL=f"http://127.0.0.1:{closed}/v1",
                          API_KEYS="sk-ready-test-key")
    status, body = ready(server)  # public: no key needed, even with keys configured
    assert status == 503, body
    assert body["status"] == "not_ready" and body["failing"] == ["provider:openai"]
    assert body["checks"]["providers"]["openai"] == {"ok": False, "error": "unreachable"}
    assert body["checks"]["providers"]["demo"] == {"ok": True}
    text = json.dumps(body)
    assert str(closed) not in text and "127.0.0.1" not in text and "sk-" not in text


def test_the_configured_upstreams_are_checked(start_server) -> None:
    server = start_server(READY_PROVIDERS="openai,ollama")  # both pointed at the fake upstream
    status, body = ready(server)
    assert status == 200, body
    assert body["checks"]["providers"] == {"openai": {"ok": True}, "ollama": {"ok": True}}


def _stream_text(server, text: str) -> tuple[int, str, str | None]:
    with SSEClient(f"{server.url}/stream?delay_ms=0&text={text}") as client:
        if client.status != 200:
            return client.status, "", None
        events = client.read_all()
        return 200, "".join(e.data for e in data_events(events)), client.headers["X-Stream-Id"]


def _ws_chat(server) -> dict:
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10, close_timeout=2) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "still here?"}))
        for _ in range(500):
            message = json.loads(ws.recv(timeout=10))
            if message["type"] in ("end", "error"):
                return message
    raise AssertionError("no end in 500 messages")


def test_redis_down_then_back(start_server, tmp_path, tag) -> None:
    port = free_port()

    url, prefix = f"redis://127.0.0.1:{port}/0", f"streamapp-ready-{tag}"
    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        server = start_server(REDIS_URL=url, REDIS_PREFIX=prefix, RATE_LIMIT="4/minute", DEMO_DELAY_MS=0,
                              READY_CACHE_S=0.2)
        status, body = ready(server)
        assert status == 200 and body["checks"]["store"] == {"kind": "redis", "ok": True}, body

        redis_proc.stop()
        down = poll_until(lambda: (lambda r: r if r[0] == 503 else None)(ready(server)), 10,
                          "/readyz to report the store")
        assert down[1]["failing"] == ["store"]
        assert "Redis unreachable" in down[1]["checks"]["store"]["error"]
        # Streaming still works: served by this process alone.
        assert _stream_text(server, "served%20alone")[:2] == (200, "served alone")
        assert _ws_chat(server)["type"] == "end"
        # Rate limits go on counting, in this process: two starts above, two more, then refused.
        assert [_stream_text(server, "x")[0] for _ in range(3)] == [200, 200, 429]

        redis_proc = start_redis(port, tmp_path / "redis-2.log")
        poll_until(lambda: ready(server)[0] == 200, 15, "/readyz to be ready again")

        def shared_again() -> bool:
            status, _, sid = _stream_text(server, "shared")
            return status == 200 and redis.Redis.from_url(url).exists(f"{prefix}:meta:{sid}") == 1
        poll_until(shared_again, 15, "new streams to reach Redis again", interval=0.2)
    finally:
        redis_proc.stop()
