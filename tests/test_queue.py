"""The fair queue at a full stream cap (streamapp.queue), on real servers.

Each test uses its own API key, capped at one stream (``MAX_STREAMS_PER_KEY=1``), and
``QUEUE_WAIT_S=5``. An SSE waiter is answered 200 after a second of waiting with a
``: queued`` comment, so its arrival in the queue is announced; the one stream running
ends when the test closes it, and each waiter is shown to start by its first delta.
"""

from __future__ import annotations

import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from websockets.sync.client import connect

from tests.helpers import SSEClient, first_deltas, poll_until, q, recv_json, recv_until, upstream_log

KEYS = {name: f"sk-{name}-{uuid.uuid4().hex[:8]}" for name in ("order", "leave", "late", "ws", "fleet")}
SETTINGS = dict(API_KEYS=",".join(f"{name}:{key}" for name, key in KEYS.items()), MAX_STREAMS_PER_KEY=1,
                QUEUE_WAIT_S=5, RATE_LIMIT="", RESUME_GRACE_S=0, DEMO_DELAY_MS=0, HEADER_WAIT_S=0.3)
LONG_TEXT = "w " * 250  # at delay_ms=100, 25 s: runs until the test closes it
QUEUED = b": queued"


@pytest.fixture(scope="module")
def server(start_server):
    return start_server(**SETTINGS)


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def long_stream(server, name: str) -> SSEClient:
    """A running stream of key ``name``, its first delta read (its slot is taken)."""
    client = SSEClient(f"{server.url}/stream?text={q(LONG_TEXT)}&delay_ms=100", headers=auth(name))
    assert client.status == 200, client.resp.read()
    first_deltas(client, 1)
    return client


def waiter(server, name: str, path: str | None = None) -> SSEClient:
    """An SSE stream of key ``name`` that waits in its queue (its ``: queued`` comment read)."""
    path = path or f"/stream?text={q(LONG_TEXT)}&delay_ms=100"
    client = SSEClient(f"{server.url}{path}", headers=auth(name))
    assert client.status == 200
    first = next(client.iter_chunks())
    assert first.startswith(QUEUED), first
    return client


def waits_ended(server, outcome: str) -> int:
    """``streamapp_queue_wait_seconds_count`` of ``outcome`` on ``server``."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf'^streamapp_queue_wait_seconds_count{{outcome="{outcome}"}} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else 0


def starts_in_order(running: SSEClient, waiters: list[SSEClient]) -> None:
    """Each waiter starts once the stream before it ends, in the order they queued."""
    for client in waiters:
        running.close()
        first_deltas(client, 1)
        running = client
    running.close()


def test_waiters_start_in_arrival_order_as_the_slot_frees(server) -> None:
    first = long_stream(server, "order")
    waiters = [waiter(server, "order") for _ in range(3)]
    starts_in_order(first, waiters)
    assert waits_ended(server, "started") >= 3


def test_a_waiter_that_leaves_is_out_of_the_queue_before_any_upstream_request(server, fake_upstream,
                                                                              tag) -> None:
    left = waits_ended(server, "left")
    first = long_stream(server, "leave")
    gone = waiter(server, "leave", f"/ai-stream?prompt=x&model={q(f'normal?tag={tag}')}")
    after = waiter(server, "leave")
    gone.close()
    poll_until(lambda: waits_ended(server, "left") > left, 10, "the departed waiter's wait to end")
    first.close()
    first_deltas(after, 1)  # the next waiter took the slot
    after.close()
    assert upstream_log(fake_upstream, tag) == []  # the departed waiter's stream never started


def test_past_the_wait_a_429_or_for_sse_an_error_event(server) -> None:
    timeouts = waits_ended(server, "timeout")
    first = long_stream(server, "late")

    def held() -> requests.Response:  # no SSE: the headers wait, then the 429
        return requests.post(f"{server.url}/v1/chat/completions", headers=auth("late"), timeout=20, json={
            "model": "demo", "messages": [{"role": "user", "content": "hi"}]})

    with ThreadPoolExecutor(1) as pool:
        plain = pool.submit(held)
        sse = SSEClient(f"{server.url}/stream?text=a+b&delay_ms=0", headers=auth("late"), timeout=20)
        assert sse.status == 200
        events = sse.read_all()
        r = plain.result()
    first.close()
    assert r.status_code == 429, r.text
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert "STREAMAPP_MAX_STREAMS_PER_KEY" in r.json()["error"]["message"]
    body = b"".join(chunk for _, chunk in sse.chunks)
    assert body.count(QUEUED) >= 3  # a comment a second over the 5 s wait
    assert b"data: a" not in body
    assert [e.event for e in events] == ["error"], events
    assert json.loads(events[0].data)["code"] == "too_many_streams"
    assert events[0].retry == 2000  # the SSE form of Retry-After: the client's reconnection delay
    poll_until(lambda: waits_ended(server, "timeout") >= timeouts + 2, 10, "both waits counted as timeouts")


def test_a_websocket_chat_waits_and_its_stop_leaves_the_queue(server, fake_upstream, tag) -> None:
    first = long_stream(server, "ws")
    with connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=auth("ws"), open_timeout=5,
                 close_timeout=2, proxy=None, ping_interval=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "openai",
                            "model": f"normal?tag={tag}"}))
        assert recv_json(ws)["type"] == "queued"
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "again"}))
        assert recv_json(ws)["code"] == "busy"  # one stream per socket, queued ones too
        ws.send(json.dumps({"type": "stop"}))
        stopped = recv_json(ws)
        assert stopped["type"] == "error" and stopped["code"] == "cancelled", stopped
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "demo"}))
        assert recv_json(ws)["type"] == "queued"
        first.close()
        got = recv_until(ws, lambda m: m["type"] in ("end", "error"))
        assert got[0]["type"] == "start" and got[-1]["type"] == "end", got
    assert upstream_log(fake_upstream, tag) == []


def test_fifo_holds_across_two_instances_sharing_redis(start_server, redis_url, redis_prefix) -> None:
    settings = dict(SETTINGS, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix)
    a, b = start_server(**settings), start_server(**settings)
    first = long_stream(a, "fleet")
    waiters = [waiter(b, "fleet"), waiter(a, "fleet"), waiter(b, "fleet")]
    starts_in_order(first, waiters)


def test_a_stream_its_budget_cannot_cover_is_refused_before_it_queues(start_server) -> None:
    """The token budget is reserved before a stream takes a slot or waits for one: at a full
    cap, a stream the budget cannot cover gets its 429 ``budget_exceeded`` at once (SSE: not a
    200 with ``: queued``; WebSocket: an ``error``, not ``queued``)."""
    wait = 10
    server = start_server(MAX_STREAMS_PER_PROCESS=1, QUEUE_WAIT_S=wait, TOKEN_BUDGET="2000/day",
                          BUDGET_DEFAULT_MAX_TOKENS=1200, RATE_LIMIT="", RESUME_GRACE_S=0,
                          HEADER_WAIT_S=0.3)
    running = SSEClient(f"{server.url}/stream?text={q(LONG_TEXT)}&delay_ms=100")
    assert running.status == 200
    first_deltas(running, 1)  # the only slot taken, over 1200 of the 2000 tokens reserved
    refused = SSEClient(f"{server.url}/stream?text=hi", timeout=wait * 2)
    body = json.loads(refused.resp.read())
    assert refused.status == 429 and body["error"]["code"] == "budget_exceeded", body
    assert int(refused.headers["Retry-After"]) >= 1
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "demo"}))
        message = recv_json(ws, wait * 2)
    assert message["type"] == "error" and message["code"] == "budget_exceeded", message
    assert waits_ended(server, "timeout") == waits_ended(server, "left") == 0  # nobody queued
    running.close()
