"""Rate limits, concurrent-stream caps and input limits (streamapp.limits), on real servers.

Two gunicorn instances sharing one Redis prefix stand for two hosts: the rate-limit count
and the stream slots must be shared between them.
"""

from __future__ import annotations

import hashlib
import os
import signal
from types import SimpleNamespace

import pytest
import redis
import requests
from flask import g, request

from streamapp import create_app
from streamapp.limits import StreamSlots, TooManyStreams, parse_allowed_models
from tests.helpers import SSEClient, first_deltas, poll_until, q

LONG_TEXT = "w " * 250  # 250 tokens: at delay_ms=100, 25 s, far longer than any test here


def long_stream(server, **headers: str) -> SSEClient:
    """A running stream, its first delta read (so its slot is taken)."""
    client = SSEClient(f"{server.url}/stream?text={q(LONG_TEXT)}&delay_ms=100", headers=headers)
    assert client.status == 200, client.resp.read()
    first_deltas(client, 1)
    return client


def short_stream(server, **headers: str) -> requests.Response:
    return requests.get(f"{server.url}/stream", params={"text": "a b", "delay_ms": 0}, headers=headers,
                        timeout=10)


def live_leases(url: str, prefix: str, identity: str = "ip:127.0.0.1") -> int:
    """Slots of ``identity`` whose lease has not run out (by Redis's clock, as the script counts)."""
    r = redis.Redis.from_url(url)
    secs, micros = r.time()
    key = f"{prefix}:slots:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
    return r.zcount(key, f"({secs * 1000 + micros // 1000}", "+inf")


# -- rate limits -------------------------------------------------------------------------------

def test_rate_limit_is_shared_by_two_instances_through_redis(start_server, redis_url, redis_prefix):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, RATE_LIMIT="5/minute", DEMO_DELAY_MS=0)
    a, b = start_server(**settings), start_server(**settings)
    for server in (a, b):  # HEAD starts nothing: not counted
        assert requests.head(f"{server.url}/stream", timeout=10).status_code == 200
    answers = [short_stream(server) for _ in range(6) for server in (a, b)]
    ok = [r for r in answers if r.status_code == 200]
    refused = [r for r in answers if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 7, [r.status_code for r in answers]
    assert [r.headers["X-RateLimit-Remaining"] for r in ok] == ["4", "3", "2", "1", "0"]
    for r in refused:
        assert r.headers["X-RateLimit-Limit"] == "5"
        assert r.headers["X-RateLimit-Remaining"] == "0"
        assert 1 <= int(r.headers["Retry-After"]) <= 60
        error = r.json()["error"]
        assert error["code"] == "rate_limited" and "5/minute" in error["message"]
    # One count for every route that starts a stream; OpenAI's error shape under /v1.
    r = requests.post(f"{b.url}/v1/chat/completions", timeout=10,
                      json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and r.headers["Retry-After"]
    assert r.json()["error"]["type"] == "rate_limit_error"
    r = requests.post(f"{a.url}/api/chat", json={"uid": 1, "message": "hi"}, timeout=10)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_client_address_comes_through_trusted_proxy_hops_only(start_server):
    behind = start_server(RATE_LIMIT="2/minute", TRUSTED_PROXIES=1, DEMO_DELAY_MS=0)
    one, other = {"X-Forwarded-For": "10.0.0.1"}, {"X-Forwarded-For": "10.0.0.2"}
    assert [short_stream(behind, **one).status_code for _ in range(3)] == [200, 200, 429]
    assert short_stream(behind, **other).status_code == 200  # another client, its own count
    # No trusted hop (the default): a client cannot pick its own address.
    open_ = start_server(RATE_LIMIT="2/minute", DEMO_DELAY_MS=0)
    spoofed = [short_stream(open_, **{"X-Forwarded-For": f"10.0.1.{i}"}).status_code for i in range(3)]
    assert spoofed == [200, 200, 429]


class _Client(SimpleNamespace):
    name: str
    rate_limit: str | None
    max_streams: int | None
    models: frozenset[str] | None


@pytest.fixture
def keyed_app():
    """An app whose requests name their API key in ``X-Test-Client`` (as the auth module's
    ``g.client`` will): per-key limits without the key module."""
    app = create_app({"RATE_LIMIT": "120/minute", "DEMO_DELAY_MS": 0, "OPENAI_API_KEY": "sk-test"})
    clients = {"alpha": _Client(name="alpha", rate_limit="2/minute", max_streams=None, models=None),
               "beta": _Client(name="beta", rate_limit=None, max_streams=None, models=frozenset({"demo"}))}

    @app.before_request
    def _client():
        g.client = clients.get(request.headers.get("X-Test-Client", ""))
    return app


def test_rate_limit_per_key_and_its_own_override(keyed_app):
    client = keyed_app.test_client()
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}

    def post(name: str):
        return client.post("/v1/chat/completions", json=body, headers={"X-Test-Client": name})
    assert [post("alpha").status_code for _ in range(3)] == [200, 200, 429]
    message = post("alpha").get_json()["error"]["message"]
    assert "2/minute" in message and "API key" in message
    assert post("beta").status_code == 200  # the same address, another key: its own count (120/minute)
    assert post("beta").headers["X-RateLimit-Limit"] == "120"


def test_no_rate_limit_anywhere_means_no_limiter_at_all():
    app = create_app({"RATE_LIMIT": "", "DEMO_DELAY_MS": 0})
    assert "streamapp.limiter" not in app.extensions  # no hook runs on any request
    client = app.test_client()
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    answers = [client.post("/v1/chat/completions", json=body) for _ in range(3)]
    assert [a.status_code for a in answers] == [200] * 3
    assert "X-RateLimit-Limit" not in answers[0].headers


def test_a_key_with_its_own_rate_limit_is_limited_without_a_default(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("alpha:sk-alpha-0123456789 rpm=2\n")
    app = create_app({"RATE_LIMIT": "", "API_KEYS_FILE": str(keys), "SECRET_KEY": "x" * 32,
                      "DEMO_DELAY_MS": 0})
    client = app.test_client()
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    answers = [client.post("/v1/chat/completions", json=body,
                           headers={"Authorization": "Bearer sk-alpha-0123456789"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]


def test_model_allow_list_of_a_key(keyed_app):
    client = keyed_app.test_client()
    r = client.post("/v1/chat/completions", headers={"X-Test-Client": "beta"},
                    json={"model": "openai/gpt-4o", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403
    assert r.get_json()["error"]["param"] == "model" and "gpt-4o" in r.get_json()["error"]["message"]


# -- concurrent-stream caps --------------------------------------------------------------------

def test_stream_cap_holds_across_two_instances(start_server, redis_url, redis_prefix):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, MAX_STREAMS_PER_KEY=2, RATE_LIMIT="",
                    RESUME_GRACE_S=0)
    a, b = start_server(**settings), start_server(**settings)
    first, second = long_stream(a), long_stream(b)
    try:
        for server in (a, b):
            r = short_stream(server)
            assert r.status_code == 429, r.text
            error = r.json()["error"]
            assert error["code"] == "too_many_streams"
            assert "at most 2" in error["message"] and "STREAMAPP_MAX_STREAMS_PER_KEY" in error["message"]
            assert r.headers["Retry-After"]
        r = requests.post(f"{a.url}/v1/chat/completions", timeout=10, json={
            "model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
        assert live_leases(redis_url, redis_prefix) == 2
    finally:
        first.close()
    poll_until(lambda: live_leases(redis_url, redis_prefix) == 1, 10, "the closed stream's slot")
    assert short_stream(b).status_code == 200
    second.close()


def _cancel(server, client: SSEClient) -> None:
    sid = client.headers["X-Stream-Id"]
    assert requests.post(f"{server.url}/api/streams/{sid}/cancel", timeout=10).status_code == 202
    client.read_all()


def _complete(server, client: SSEClient) -> None:
    client.close()  # give the cap's one slot back first, then a whole stream
    poll_until(lambda: live_leases(server.redis_url, server.redis_prefix) == 0, 10, "the slot")
    assert short_stream(server).status_code == 200


def _upstream_error(server, client: SSEClient) -> None:
    client.close()
    poll_until(lambda: live_leases(server.redis_url, server.redis_prefix) == 0, 10, "the slot")
    failed = SSEClient(f"{server.url}/ai-stream?prompt=x&model={q('drop?at=2&delay_ms=10')}")
    events = failed.read_all()
    assert events[-1].event == "error", events


@pytest.mark.parametrize("end", ["complete", "error", "cancel", "client_gone"])
def test_slot_comes_back_however_the_stream_ends(start_server, redis_url, redis_prefix, end):
    server = start_server(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, MAX_STREAMS_PER_KEY=1,
                          RATE_LIMIT="", RESUME_GRACE_S=0, DEMO_DELAY_MS=0)
    server.redis_url, server.redis_prefix = redis_url, redis_prefix
    client = long_stream(server)
    assert short_stream(server).status_code == 429
    {"complete": _complete, "error": _upstream_error, "cancel": _cancel,
     "client_gone": lambda _s, c: c.close()}[end](server, client)
    poll_until(lambda: live_leases(redis_url, redis_prefix) == 0, 10, f"the slot back after {end}")
    again = long_stream(server)  # the cap's one slot is free again
    again.close()


def test_slot_of_a_killed_worker_expires_while_a_live_stream_keeps_its_own(start_server, redis_url,
                                                                          redis_prefix):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, MAX_STREAMS_PER_KEY=1, RATE_LIMIT="",
                    SLOT_LEASE_S=1, RESUME_GRACE_S=0)
    a, b = start_server(**settings), start_server(**settings)
    client = long_stream(a)
    first_deltas(client, 25)  # 2.5 s: the lease (1 s) was renewed while the stream lives
    assert short_stream(b).status_code == 429
    sid = client.headers["X-Stream-Id"]
    pid = requests.get(f"{a.url}/api/streams/{sid}/info", timeout=10).json()["pid"]
    os.kill(pid, signal.SIGKILL)  # no exit path runs: only the lease can give the slot back
    client.close()
    poll_until(lambda: live_leases(redis_url, redis_prefix) == 0, 10, "the dead worker's lease to expire")
    assert short_stream(b).status_code == 200


def test_per_process_cap(start_server):
    # No resume grace: the slot comes back as soon as the departed stream stops
    # (with the default 10 s grace, the wait below would race the grace itself).
    server = start_server(MAX_STREAMS_PER_PROCESS=1, RATE_LIMIT="", RESUME_GRACE_S=0)
    client = long_stream(server)
    r = short_stream(server, **{"X-Forwarded-For": "10.9.9.9"})
    assert r.status_code == 429
    assert "STREAMAPP_MAX_STREAMS_PER_PROCESS" in r.json()["error"]["message"]
    client.close()
    poll_until(lambda: short_stream(server).status_code == 200, 10, "the process's slot back")


def test_memory_slots_take_a_per_client_cap():
    slots = StreamSlots(per_key=3, per_process=0, lease_s=15)
    held = [slots.acquire("key:a", cap=1)]
    with pytest.raises(TooManyStreams, match="at most 1 per API key"):
        slots.acquire("key:a", cap=1)
    held.append(slots.acquire("key:b"))
    held[0].release()
    held[0].release()  # idempotent
    slots.acquire("key:a", cap=1)
    assert len(slots.running) == 2


def test_a_renewal_never_brings_back_a_released_slot(redis_url, redis_prefix):
    slots = StreamSlots(per_key=1, per_process=0, lease_s=15, redis_url=redis_url, prefix=redis_prefix)
    slot = slots.acquire("key:a")
    due = slots.leases()  # a renewal starts: the leases it is about to renew
    slot.release()  # meanwhile the stream ends and gives its slot back
    slots.renew(due)  # then the renewal reaches Redis
    assert live_leases(redis_url, redis_prefix, "key:a") == 0
    slots.acquire("key:a").release()  # the cap's one slot is free
    assert slots.leases() == []


# -- detached streams (on_disconnect=finish) ---------------------------------------------------

def detached_leases(url: str, prefix: str, identity: str = "ip:127.0.0.1") -> int:
    r = redis.Redis.from_url(url)
    secs, micros = r.time()
    key = f"{prefix}:detached:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
    return r.zcount(key, f"({secs * 1000 + micros // 1000}", "+inf")


def test_detached_streams_are_capped_by_default_across_instances(start_server, redis_url, redis_prefix):
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, RATE_LIMIT="", RESUME_GRACE_S=0)
    a, b = start_server(**settings), start_server(**settings)  # STREAMAPP_MAX_DETACHED_PER_CLIENT: default
    url = f"/stream?text={q(LONG_TEXT)}&delay_ms=100&on_disconnect=finish"
    running = []
    for server in (a, b, a, b):
        client = SSEClient(server.url + url)
        assert client.status == 200, client.resp.read()
        running.append((server, client.headers["X-Stream-Id"]))
        client.close()  # detached: it goes on generating
    for server in (a, b):
        with requests.get(server.url + url, stream=True, timeout=10) as r:
            assert r.status_code == 429, r.headers
            error = r.json()["error"]
            assert r.headers["Retry-After"]
        assert error["code"] == "too_many_detached_streams"
        assert "at most 4" in error["message"] and "STREAMAPP_MAX_DETACHED_PER_CLIENT" in error["message"]
    assert detached_leases(redis_url, redis_prefix) == 4
    assert short_stream(b).status_code == 200  # a stream that ends with its reader is not detached
    server, sid = running.pop()
    assert requests.post(f"{server.url}/api/streams/{sid}/cancel", timeout=10).status_code == 202
    poll_until(lambda: detached_leases(redis_url, redis_prefix) == 3, 10, "the ended stream's lease")
    again = SSEClient(a.url + url)
    assert again.status == 200
    running.append((a, again.headers["X-Stream-Id"]))
    again.close()
    for server, sid in running:
        requests.post(f"{server.url}/api/streams/{sid}/cancel", timeout=10)
    poll_until(lambda: detached_leases(redis_url, redis_prefix) == 0, 10, "every detached lease back")


def test_memory_slots_cap_detached_streams_per_client():
    slots = StreamSlots(per_key=0, per_process=0, lease_s=15, per_detached=2)
    held = [slots.acquire("ip:10.0.0.1", detached=True) for _ in range(2)]
    refused = "at most 2 .*per client address.*STREAMAPP_MAX_DETACHED_PER_CLIENT"
    with pytest.raises(TooManyStreams, match=refused) as err:
        slots.acquire("ip:10.0.0.1", detached=True)
    assert err.value.code == "too_many_detached_streams"
    slots.acquire("ip:10.0.0.1")  # not detached: not counted
    slots.acquire("ip:10.0.0.2", detached=True)  # another client
    held[0].release()
    slots.acquire("ip:10.0.0.1", detached=True)
    off = StreamSlots(per_key=0, per_process=0, lease_s=15, per_detached=0)
    assert [off.acquire("ip:10.0.0.1", detached=True) for _ in range(10)]


# -- input limits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_limits(start_server):
    return start_server(RATE_LIMIT="", MAX_MESSAGE_CHARS=50, MAX_MESSAGES=3, MAX_INPUT_CHARS=100,
                        MAX_TOKENS_CEILING=100, ALLOWED_MODELS="openai:gpt-4o-mini;ollama:llama3.2",
                        MAX_BODY_BYTES=4096, DEMO_DELAY_MS=0)


def _chat(history: list[str], message: str, **extra) -> dict:
    return {"uid": 1, "message": message, "history": [{"role": "user", "content": c} for c in history],
            **extra}


def _v1(contents: list[str], **extra) -> dict:
    return {"model": "demo", "messages": [{"role": "user", "content": c} for c in contents], **extra}


CASES = [
    ("/api/chat", _chat([], "x" * 51), "message", "50"),
    ("/api/chat", _chat(["x" * 51], "hi"), "history.0.content", "50"),
    ("/v1/chat/completions", _v1(["hi", "x" * 51]), "messages.1.content", "50"),
    ("/api/chat", _chat(["a", "b", "c"], "d"), "history", "3"),
    ("/v1/chat/completions", _v1(["a", "b", "c", "d"]), "messages", "3"),
    ("/api/chat", _chat(["x" * 40, "x" * 40], "x" * 40), "history", "100"),
    ("/v1/chat/completions", _v1(["x" * 40] * 3), "messages", "100"),
    ("/v1/chat/completions", _v1(["hi"], max_tokens=101), "max_tokens", "100"),
    ("/v1/chat/completions", _v1(["hi"], max_completion_tokens=101), "max_completion_tokens", "100"),
    ("/api/chat", _chat([], "hi", provider="openai", model="gpt-4o"), "model", "gpt-4o-mini"),
    ("/api/chat", _chat([], "hi", provider="ollama", model="mistral"), "model", "llama3.2"),
    ("/v1/chat/completions", _v1(["hi"], model="openai/gpt-4o"), "model", "gpt-4o-mini"),
]


@pytest.mark.parametrize(("path", "body", "field", "limit"), CASES)
def test_input_limit(small_limits, path, body, field, limit):
    r = requests.post(f"{small_limits.url}{path}", json=body, timeout=10)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error.get("field", error.get("param")) == field
    assert limit in error["message"] and "STREAMAPP_" in error["message"]


@pytest.mark.parametrize("path", ["/api/chat", "/v1/chat/completions"])
def test_body_size_limit(small_limits, path):
    r = requests.post(f"{small_limits.url}{path}", data=b'{"x": "' + b"x" * 5000 + b'"}',
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413


@pytest.mark.parametrize(("path", "body"), [
    ("/api/chat", _chat(["x" * 30, "x" * 30], "x" * 40, provider="openai", model="gpt-4o-mini")),
    ("/v1/chat/completions", _v1(["x" * 50, "x" * 50], max_tokens=100)),
    ("/v1/chat/completions", _v1(["hi"], model="ollama/llama3.2")),
])
def test_within_the_limits(small_limits, path, body):
    r = requests.post(f"{small_limits.url}{path}", json=body, timeout=10)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("path", "status", "allowed"), [
    ("/ai-stream?prompt=hi&model=gpt-4o", 400, "gpt-4o-mini"),
    ("/local-ai?prompt=hi&model=mistral", 400, "llama3.2"),
    ("/ai-stream?prompt=hi", 200, None),  # the default model, allowed
    ("/local-ai?prompt=hi&model=llama3.2", 200, None),
])
def test_allowed_models_hold_on_the_get_streams(small_limits, path, status, allowed):
    r = requests.get(f"{small_limits.url}{path}", timeout=10)
    assert r.status_code == status, r.text
    if allowed is not None:
        error = r.json()["error"]
        assert error["code"] == "model_not_allowed" and error["field"] == "model"
        assert allowed in error["message"] and "STREAMAPP_ALLOWED_MODELS" in error["message"]


def test_allowed_models_setting_is_checked():
    assert parse_allowed_models("openai:gpt-4o-mini, gpt-4o; ollama:llama3.2") == {
        "openai": frozenset({"gpt-4o-mini", "gpt-4o"}), "ollama": frozenset({"llama3.2"})}
    with pytest.raises(ValueError, match="STREAMAPP_ALLOWED_MODELS"):
        parse_allowed_models("gpt-4o")
