"""``GET /metrics`` (streamapp.metrics): counts that match what a test did, on real gunicorn
servers, summed over two workers; the allow-list; a registry per app in one process.

Values are read with prometheus_client's own parser. A stream's summary lands when its
producer exits, which may be just after its client read the end, so every count is waited
for (``poll_until``, with a deadline), never slept for.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from websockets.sync.client import ClientConnection, connect

from streamapp import create_app
from streamapp.metrics import EXTENSION, OUTCOMES, StreamMetrics, count_rejection, parse_allow
from streamapp.streams.observe import StreamSummary
from tests.helpers import SSEClient, data_events, first_deltas, poll_until, q

LONG_TEXT = "w " * 250  # at delay_ms=100: 25 s, longer than any test here
Key = tuple[str, frozenset]


def key(name: str, **labels: str) -> Key:
    """A sample's name and labels, as :func:`samples` keys them."""
    return name, frozenset(labels.items())


def parse(text: str) -> dict[Key, float]:
    """Every sample of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def samples(server) -> dict[Key, float]:
    """``GET /metrics`` on a new connection (any worker), parsed."""
    resp = requests.get(f"{server.url}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text[:300]
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(resp.text)


def wait_for(server, expected: dict[Key, float], timeout: float = 15) -> dict[Key, float]:
    """Scrape until every sample of ``expected`` has its value (missing counts as 0)."""
    seen: dict[Key, float] = {}
    last: dict[Key, float] = {}

    def check() -> bool:
        last.clear()
        last.update(samples(server))
        seen.clear()
        seen.update({k: last.get(k, 0.0) for k in expected})
        return seen == expected
    try:
        poll_until(check, timeout, "the metrics")
    except AssertionError:
        wrong = {k: (seen.get(k), v) for k, v in expected.items() if seen.get(k) != v}
        counts = {k: v for k, v in last.items() if v and not k[0].endswith(("_bucket", "_sum"))}
        raise AssertionError(f"after {timeout}s, (seen, expected) of the wrong ones: {wrong}; "
                             f"every count: {counts}") from None
    return seen


def on_one_connection(server, paths: Iterable[str]) -> list[bytes]:
    """GET ``paths`` one after another on one keep-alive connection (so one worker answers
    them all); their bodies."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        bodies, sock = [], None
        for path in paths:
            conn.request("GET", path)
            resp = conn.getresponse()
            assert resp.status == 200, (path, resp.status)
            bodies.append(resp.read())
            assert sock is None or conn.sock is sock, "the server closed the keep-alive connection"
            sock = conn.sock
        return bodies
    finally:
        conn.close()


def completed_stream(server) -> tuple[int, str, int]:
    """A short /stream read whole on a new connection, then its info on the same one:
    ``(pid of the worker that ran it, stream id, token events)``."""
    client = SSEClient(f"{server.url}/stream?text={q('one two three')}&delay_ms=0")
    try:
        assert client.status == 200
        sid = client.headers["X-Stream-Id"]
        events = client.read_all()
        assert events[-1].event == "end", events[-3:]
        sock = client.conn.sock
        client.conn.request("GET", f"/api/streams/{sid}/info")
        info = json.loads(client.conn.getresponse().read())
        assert client.conn.sock is sock, "the info went on another connection (another worker?)"
        return info["pid"], sid, len(data_events(events))
    finally:
        client.close()


def long_stream(server) -> SSEClient:
    """A running stream, its first token read."""
    client = SSEClient(f"{server.url}/stream?text={q(LONG_TEXT)}&delay_ms=100")
    assert client.status == 200, client.resp.read()
    first_deltas(client, 1)
    return client


def ws_chat_refused(server, code: str) -> None:
    """A WebSocket chat that is refused with ``code`` (an error message; the socket lives on)."""
    ws: ClientConnection
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None,
                 ping_interval=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi"}))
        message = json.loads(ws.recv(timeout=5))
        assert message["type"] == "error" and message["code"] == code, message


# -- several workers ---------------------------------------------------------------------------

def test_counts_match_what_was_done_summed_over_two_workers(start_server, redis_url, redis_prefix):
    server = start_server(WORKERS=2, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, RESUME_GRACE_S=0,
                          HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, READ_TIMEOUT_S=3, CONNECT_TIMEOUT_S=2)
    url = server.url
    start = samples(server)
    assert start[key("streamapp_active_streams")] == 0
    assert {start[key("streamapp_streams_total", outcome=o)] for o in OUTCOMES} == {0}

    # Completed streams on new connections until both workers ran some.
    ran: dict[int, int] = {}
    sids: list[str] = []
    tokens = 0

    def both_workers_ran() -> bool:
        nonlocal tokens
        pid, sid, n = completed_stream(server)
        ran[pid] = ran.get(pid, 0) + 1
        sids.append(sid)
        tokens += n
        return len(ran) == 2 and len(sids) >= 6
    poll_until(both_workers_ran, 30, "completed streams run by both workers", interval=0)
    done = len(sids)
    assert tokens == 3 * done
    demo, openai = {"provider": "demo"}, {"provider": "openai"}

    def histograms(provider: dict[str, str], ttft: int, ended: int) -> dict[Key, float]:
        return {key("streamapp_time_to_first_token_seconds_count", **provider): ttft,
                key("streamapp_stream_duration_seconds_count", **provider): ended,
                key("streamapp_stream_duration_seconds_bucket", le="+Inf", **provider): ended}
    expected = {key("streamapp_streams_total", outcome="completed"): done,
                key("streamapp_active_streams"): 0, **histograms(demo, done, done)}
    wait_for(server, {**expected, key("streamapp_tokens_total", **demo): tokens})

    # Each worker's /metrics has every worker's counts (the scrape and an info on one connection
    # tell which worker answered).
    answered: set[int] = set()

    def each_worker_sums_all() -> bool:
        scrape, info = on_one_connection(server, ["/metrics", f"/api/streams/{sids[0]}/info"])
        assert parse(scrape.decode())[key("streamapp_streams_total", outcome="completed")] == done
        answered.add(json.loads(info)["pid"])
        return answered == set(ran)
    poll_until(each_worker_sums_all, 20, "a scrape answered by each worker", interval=0)

    # Active streams: up while one runs; cancelled (the cancel may reach the other worker).
    running = long_stream(server)
    wait_for(server, {key("streamapp_active_streams"): 1})
    sid = running.headers["X-Stream-Id"]
    assert requests.post(f"{url}/api/streams/{sid}/cancel", timeout=10).status_code == 202
    assert running.read_all()[-1].event == "end"
    running.close()
    tokens += len(data_events([e for _, e in running.events]))  # relayed: at least what it read
    expected.update({key("streamapp_streams_total", outcome="cancelled"): 1,
                     **histograms(demo, done + 1, done + 1)})
    wait_for(server, expected)

    # A client that leaves for good (no resume grace): client_gone, and the gauge back to 0.
    gone = long_stream(server)
    wait_for(server, {key("streamapp_active_streams"): 1})
    gone.close()
    tokens += len(data_events([e for _, e in gone.events]))
    expected.update({key("streamapp_streams_total", outcome="client_gone"): 1,
                     **histograms(demo, done + 2, done + 2)})
    wait_for(server, expected)

    # An upstream error before the first token: its code by provider, a duration but no TTFT.
    failed = requests.get(f"{url}/ai-stream", params={"prompt": "hi", "model": "status?status=503"},
                          timeout=10)
    assert failed.status_code == 502 and failed.json()["error"]["code"] == "upstream_http_error"
    expected.update({key("streamapp_streams_total", outcome="upstream_error"): 1,
                     key("streamapp_upstream_errors_total", code="upstream_http_error", **openai): 1,
                     **histograms(openai, 0, 1)})
    wait_for(server, expected)

    # A resume (Last-Event-ID) is counted apart: the outcomes do not move.
    resumed = requests.get(f"{url}/api/streams/{sids[0]}", headers={"Last-Event-ID": f"{sids[0]}-1"},
                           timeout=10)
    assert resumed.status_code == 200 and "event: end" in resumed.text
    expected[key("streamapp_stream_resumes_total")] = 1
    wait_for(server, expected)

    # Every stream has one outcome; TTFT buckets by provider; tokens of every stream.
    final = samples(server)
    assert {k: final.get(k, 0.0) for k in expected} == expected
    assert sum(final[key("streamapp_streams_total", outcome=o)] for o in OUTCOMES) == done + 3
    assert final[key("streamapp_time_to_first_token_seconds_bucket", le="30.0", **demo)] == done + 2
    assert final[key("streamapp_time_to_first_token_seconds_sum", **demo)] > 0
    assert final[key("streamapp_tokens_total", **demo)] >= tokens
    assert final[key("streamapp_tokens_total", **openai)] == 0
    # Low-cardinality labels only: no stream id, no model.
    labels = {(name, value) for (_, pairs) in final for name, value in pairs}
    assert {name for name, _ in labels} <= {"outcome", "provider", "code", "reason", "le", "upstream", "to"}
    assert {v for n, v in labels if n == "provider"} <= {"demo", "openai", "ollama"}
    assert {v for n, v in labels if n == "upstream"} <= {"demo", "openai", "ollama"}  # attempts: every start


# -- rejections --------------------------------------------------------------------------------

def short_stream(server) -> requests.Response:
    return requests.get(f"{server.url}/stream", params={"text": "a b", "delay_ms": 0}, timeout=10)


def test_rejections_over_http_and_websocket_are_counted(start_server):
    limited = start_server(RATE_LIMIT="2/minute")
    assert [short_stream(limited).status_code for _ in range(2)] == [200, 200]
    refused = short_stream(limited)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
    ws_chat_refused(limited, "rate_limited")
    wait_for(limited, {key("streamapp_rejections_total", reason="rate_limited"): 2,
                       key("streamapp_rejections_total", reason="too_many_streams"): 0,
                       key("streamapp_streams_total", outcome="completed"): 2})

    capped = start_server(MAX_STREAMS_PER_KEY=1, RESUME_GRACE_S=0)
    running = long_stream(capped)
    try:
        refused = short_stream(capped)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_streams"
        ws_chat_refused(capped, "too_many_streams")
    finally:
        running.close()
    wait_for(capped, {key("streamapp_rejections_total", reason="too_many_streams"): 2,
                      key("streamapp_rejections_total", reason="rate_limited"): 0,
                      key("streamapp_streams_total", outcome="client_gone"): 1,
                      key("streamapp_active_streams"): 0})


# -- who may scrape ----------------------------------------------------------------------------

KEY = "sk-metrics-test-3f9a1c"


def test_metrics_need_no_api_key_but_an_allowed_address(start_server):
    open_to_loopback = start_server(API_KEYS=f"ops:{KEY}")
    assert requests.get(f"{open_to_loopback.url}/api/streams/x/info", timeout=10).status_code == 401
    assert key("streamapp_active_streams") in samples(open_to_loopback)  # no key needed

    allowed = start_server(API_KEYS=f"ops:{KEY}", METRICS_ALLOW="10.0.0.0/8, 127.0.0.1")
    assert key("streamapp_active_streams") in samples(allowed)

    elsewhere = start_server(API_KEYS=f"ops:{KEY}", METRICS_ALLOW="10.1.2.3,2001:db8::/32")
    for headers in ({}, {"Authorization": f"Bearer {KEY}"}):  # a key does not help either
        resp = requests.get(f"{elsewhere.url}/metrics", headers=headers, timeout=10)
        assert resp.status_code == 403 and resp.headers["Content-Type"] == "application/json"
        assert resp.json()["error"]["code"] == "forbidden" and "streamapp_" not in resp.text


@pytest.mark.parametrize("setting, address, allowed", [
    ("127.0.0.1/8,::1", "127.0.0.1", True),
    ("127.0.0.1/8,::1", "127.3.2.1", True),
    ("127.0.0.1/8,::1", "::1", True),
    ("127.0.0.1/8,::1", "::ffff:127.0.0.1", True),  # IPv4 on a dual-stack socket
    ("127.0.0.1/8,::1", "10.0.0.1", False),
    ("10.0.0.0/8", "10.200.3.4", True),
    ("10.0.0.0/8", "11.0.0.1", False),
    ("192.0.2.7", "192.0.2.7", True),
    ("*", "203.0.113.9", True),
    ("", "127.0.0.1", False),  # empty: no one
    ("127.0.0.1", None, False),  # no peer address (a Unix socket)
    ("127.0.0.1", "not-an-address", False),
])
def test_allow_list(setting: str, address: str | None, allowed: bool) -> None:
    assert StreamMetrics([], parse_allow(setting)).allows(address) is allowed


def test_a_bad_allow_list_names_the_setting() -> None:
    with pytest.raises(ValueError, match="STREAMAPP_METRICS_ALLOW: 'localhost'"):
        parse_allow("127.0.0.1,localhost")
    with pytest.raises(ValueError, match="STREAMAPP_METRICS_ALLOW"):
        create_app({"METRICS_ALLOW": "10.0.0.0/33"})


# -- one process, many apps --------------------------------------------------------------------

def summary(**fields: Any) -> StreamSummary:
    base: dict[str, Any] = dict(sid="s1d", meta={"provider": "demo", "model": "a-client-model"},
                                outcome="completed", finish_reason="stop", error_code=None, ttft_s=0.2,
                                events=5, tokens=3, duration_s=1.5)
    return StreamSummary(**{**base, **fields})


def test_each_app_has_its_own_registry(monkeypatch) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR, create_app may run again and again in one process."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    one, two = create_app(), create_app()
    observer = one.extensions[EXTENSION]
    observer.stream_started("s1d", {"provider": "demo"})
    observer.stream_ended(summary())
    observer.stream_started("s2d", {"provider": "nosuch"})
    observer.stream_ended(summary(sid="s2d", meta={"provider": "nosuch"}, outcome="upstream_error",
                                  error_code="upstream_timeout", ttft_s=None, tokens=0))
    observer.stream_resumed("s1d", {})
    with one.test_request_context():
        count_rejection("too_many_streams")
        count_rejection("invalid_json")  # not a rejection: ignored

    first = parse(one.test_client().get("/metrics").get_data(as_text=True))
    assert first[key("streamapp_streams_total", outcome="completed")] == 1
    assert first[key("streamapp_tokens_total", provider="demo")] == 3
    assert first[key("streamapp_time_to_first_token_seconds_bucket", provider="demo", le="0.25")] == 1
    assert first[key("streamapp_time_to_first_token_seconds_bucket", provider="demo", le="0.1")] == 0
    assert first[key("streamapp_upstream_errors_total", provider="other", code="upstream_timeout")] == 1
    assert first[key("streamapp_stream_resumes_total")] == 1
    assert first[key("streamapp_rejections_total", reason="too_many_streams")] == 1
    assert first[key("streamapp_active_streams")] == 0
    assert "a-client-model" not in one.test_client().get("/metrics").get_data(as_text=True)

    second = parse(two.test_client().get("/metrics").get_data(as_text=True))
    assert second[key("streamapp_streams_total", outcome="completed")] == 0
