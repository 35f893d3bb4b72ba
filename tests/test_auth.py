"""API keys, session cookies, the Origin rule, CORS and stream ownership, against real gunicorn."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from pathlib import Path
from unittest import mock

import openai
import pytest
import redis
import requests

from streamapp.auth import Keys
from tests.conftest import start_redis
from tests.helpers import free_port, poll_until

ALICE, BOB, PLAIN = "sk-alice-3f9a7c1e", "sk-bob-88d0b2aa", "sk-plain-51c4e0d9"
SECRET = "test-secret-7d1c"
OTHER = "http://127.0.0.1:1"  # an origin CORS_ORIGINS allows (nothing listens there)

# Every protected route, as (method, path, JSON body or None).
PROTECTED = [
    ("POST", "/api/chat", {"uid": 1, "message": "hi"}),
    ("GET", "/stream?text=a%20b&delay_ms=0", None),
    ("GET", "/ai-stream?prompt=hi", None),
    ("GET", "/local-ai?prompt=hi", None),
    ("GET", "/api/streams/abc", None),
    ("GET", "/api/streams/abc/info", None),
    ("POST", "/api/streams/abc/cancel", None),
    ("POST", "/v1/chat/completions", {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/demo", None),
    ("POST", "/api/session", None),
    ("GET", "/no/such/route", None),
]
PUBLIC = ["/", "/healthz", "/api.json", "/swagger/", "/static/app.js", "/static/favicon.svg"]


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    digest = hashlib.sha256(BOB.encode()).hexdigest()
    keys.write_text(f"# test keys\nalice:{ALICE} rpm=60 streams=2 models=demo\nbob:sha256:{digest}\n")
    return start_server(API_KEYS_FILE=keys, API_KEYS=PLAIN, SECRET_KEY=SECRET, CORS_ORIGINS=OTHER,
                        ACCESS_LOG="-", DEMO_DELAY_MS=5, HEADER_WAIT_S=0.2, RESUME_GRACE_S=5)


def call(server, method, path, body=None, headers=None, **kw):
    return requests.request(method, server.url + path, json=body, headers=headers or {}, timeout=10, **kw)


def session_cookie(server, key=ALICE) -> dict[str, str]:
    resp = call(server, "POST", "/api/session", headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    return {"streamapp_session": resp.cookies["streamapp_session"]}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize("sent", [{}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                                  {"Authorization": "Basic " + ALICE}])
def test_protected_routes_need_a_key(keyed, method, path, body, sent) -> None:
    resp = call(keyed, method, path, body, sent)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    error = resp.json()["error"]
    assert error["code"] == "unauthorized" and "wrong-key" not in resp.text and ALICE not in resp.text
    if path.startswith("/v1/"):
        assert error["type"] == "authentication_error"  # OpenAI's shape


@pytest.mark.parametrize("path", PUBLIC)
def test_public_routes_stay_open(keyed, path) -> None:
    assert call(keyed, "GET", path).status_code == 200


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {ALICE}"}, {"X-API-Key": BOB},
                                     {"authorization": f"bearer {PLAIN}"}])
def test_each_kind_of_key_works(keyed, headers) -> None:
    resp = call(keyed, "GET", "/stream?text=one%20two&delay_ms=0", headers=headers)
    assert resp.status_code == 200 and "event: end" in resp.text
    assert call(keyed, "POST", "/api/chat", {"uid": 1, "message": "hi"}, headers).status_code == 200


def test_keys_never_reach_the_log(keyed) -> None:
    for key in (ALICE, "sk-wrong-0f3e"):
        call(keyed, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})
        call(keyed, "GET", "/stream?text=x&delay_ms=0", headers={"X-API-Key": key})
    call(keyed, "GET", "/api/streams/abc/info", cookies={"streamapp_session": "forged." + ALICE})
    log = keyed.process.output()
    assert "GET /v1/models" in log  # the access log is on
    assert "route stream, provider demo, client alice" in log  # the key's name stands for it
    for key in (ALICE, BOB, PLAIN, "sk-wrong-0f3e", SECRET):
        assert key not in log


def test_openai_sdk_authenticates_with_api_key(keyed) -> None:
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key=ALICE, max_retries=0)
    chunks = list(good.chat.completions.create(model="demo", stream=True,
                                               messages=[{"role": "user", "content": "Hi"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    bad = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_session_cookie_is_signed_expiring_httponly_strict(keyed) -> None:
    resp = call(keyed, "POST", "/api/session", headers={"X-API-Key": ALICE})
    assert resp.json() == {"client": "alice", "expires_in": 43200}
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Expires=" in cookie
    assert ALICE not in cookie
    # A cookie alone does not open a session: only a key does.
    only_cookie = call(keyed, "POST", "/api/session", cookies=session_cookie(keyed),
                       headers={"Sec-Fetch-Site": "same-origin"})
    assert only_cookie.status_code == 401


def test_session_cookie_works_only_from_this_site(keyed) -> None:
    jar = session_cookie(keyed)
    own = keyed.url
    ok = [{"Sec-Fetch-Site": "same-origin"}, {"Origin": own}, {"Origin": OTHER}]
    refused = [{}, {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
               {"Origin": "http://evil.example"}, {"Origin": "null"},
               {"Origin": "http://evil.example", "Sec-Fetch-Site": "same-origin"}]
    for path, body in (("/stream?text=a%20b&delay_ms=0", None), ("/api/chat", {"uid": 1, "message": "x"})):
        method = "POST" if body else "GET"
        for headers in ok:
            resp = call(keyed, method, path, body, headers, cookies=jar)
            assert resp.status_code == 200, (path, headers, resp.text)
        for headers in refused:
            resp = call(keyed, method, path, body, headers, cookies=jar)
            assert resp.status_code == 403, (path, headers)
            assert resp.json()["error"]["code"] == "origin_not_allowed"
            assert "X-Stream-Id" not in resp.headers  # nothing was started


def _forged(secret: str, client: str, age_s: float = 0) -> dict[str, str]:
    """A session cookie as Flask signs it, made ``age_s`` seconds ago."""
    from flask import Flask

    app = Flask("forge")
    app.secret_key = secret
    serializer = app.session_interface.get_signing_serializer(app)
    with mock.patch("time.time", return_value=time.time() - age_s):
        return {"streamapp_session": serializer.dumps({"client": client, "_permanent": True})}


@pytest.mark.parametrize(("cookie", "why"), [
    (lambda: _forged(SECRET, "alice", age_s=43200 + 60), "expired"),
    (lambda: _forged("another-secret", "alice"), "wrong signature"),
    (lambda: _forged(SECRET, "mallory"), "unknown client"),
])
def test_bad_session_cookies_are_refused(keyed, cookie, why) -> None:
    assert call(keyed, "GET", "/stream?text=a", headers={"Sec-Fetch-Site": "same-origin"},
                cookies=_forged(SECRET, "alice")).status_code == 200  # the forge itself is right
    resp = call(keyed, "GET", "/stream?text=a", headers={"Sec-Fetch-Site": "same-origin"}, cookies=cookie())
    assert resp.status_code == 401, why


def test_cors_preflight_for_an_allowed_origin_only(keyed) -> None:
    ask = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type,authorization,last-event-id"}
    resp = call(keyed, "OPTIONS", "/api/chat", headers={"Origin": OTHER, **ask})
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] == OTHER
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert {"content-type", "authorization", "last-event-id"} <= set(allowed.replace(" ", "").split(","))
    resp = call(keyed, "POST", "/api/chat", {"uid": 1, "message": "x"},
                {"Origin": OTHER, "Authorization": f"Bearer {ALICE}"})
    exposed = resp.headers["Access-Control-Expose-Headers"].lower()
    assert "x-stream-id" in exposed and "retry-after" in exposed
    denied = call(keyed, "OPTIONS", "/api/chat", headers={"Origin": "http://evil.example", **ask})
    assert "Access-Control-Allow-Origin" not in denied.headers


def _stream_of(server, key) -> str:
    with requests.post(f"{server.url}/api/chat", json={"uid": 1, "message": "a b c d e f",
                                                      "on_disconnect": "finish"},
                       headers={"X-API-Key": key}, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        return resp.headers["X-Stream-Id"]


def test_another_client_may_not_resume_inspect_or_cancel(keyed) -> None:
    sid = _stream_of(keyed, ALICE)
    bob = {"X-API-Key": BOB}
    for method, path in (("GET", f"/api/streams/{sid}"), ("GET", f"/api/streams/{sid}/info"),
                         ("POST", f"/api/streams/{sid}/cancel")):
        resp = call(keyed, method, path, headers=bob)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "not_stream_owner", path
    resumed = call(keyed, "POST", "/api/chat", headers={**bob, "Last-Event-ID": f"{sid}-1"})
    assert resumed.status_code == 403


def test_the_starting_client_may_resume_inspect_and_cancel(keyed) -> None:
    """Needs ``meta["client"] = g.client.name`` in start_stream (the lead's side of the contract)."""
    sid = _stream_of(keyed, ALICE)
    alice = {"X-API-Key": ALICE}
    assert call(keyed, "GET", f"/api/streams/{sid}/info", headers=alice).json()["route"] == "chat"
    assert call(keyed, "POST", f"/api/streams/{sid}/cancel", headers=alice).status_code in (200, 202)


@pytest.mark.parametrize("path", ["/ai-stream?prompt=hi&model=normal", "/local-ai?prompt=hi",
                                  "/local-ai?prompt=hi&model=normal"])
def test_a_key_limited_to_demo_runs_no_upstream_model_on_the_get_streams(keyed, path) -> None:
    """alice's ``models=demo`` holds on the GET streams as on /api/chat and /v1 (found in review)."""
    resp = call(keyed, "GET", path, headers={"X-API-Key": ALICE})
    assert resp.status_code == 403, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_not_allowed" and error["field"] == "model"
    assert call(keyed, "GET", path, headers={"X-API-Key": BOB}).status_code == 200  # no models= for bob


def test_open_server_warns_when_exposed(start_server) -> None:
    from tests.helpers import free_port

    port = free_port()
    exposed = start_server(port=port, BIND=f"0.0.0.0:{port}")
    assert "no API key configured" in exposed.process.output()
    assert call(exposed, "POST", "/api/chat", {"uid": 1, "message": "x"}).status_code == 200  # open
    assert call(exposed, "POST", "/api/session").json() == {"client": None, "expires_in": None}
    loopback = start_server()
    assert "no API key configured" not in loopback.process.output()


def test_wildcard_cors_is_refused_with_keys() -> None:
    from streamapp import create_app

    with pytest.raises(ValueError, match="CORS_ORIGINS"):
        create_app({"API_KEYS": ALICE, "CORS_ORIGINS": "*"})
    create_app({"CORS_ORIGINS": "*"})  # open: allowed (raises otherwise)


# -- one session secret for every worker and instance -----------------------------------------

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


def _answering_worker(server, jar: dict[str, str], sid: str) -> int | None:
    """The pid of the worker that answered a cookie-authenticated ``info`` on ``sid`` (``None``:
    that worker does not hold the stream, a 404); a 401 fails the test."""
    resp = call(server, "GET", f"/api/streams/{sid}/info", headers=SAME_SITE, cookies=jar)
    assert resp.status_code in (200, 404), (resp.status_code, resp.text)
    return resp.json()["pid"] if resp.status_code == 200 else None


def test_workers_of_one_instance_share_the_session_secret(start_server) -> None:
    """No STREAMAPP_SECRET_KEY, no Redis: gunicorn's master makes one secret for its workers."""
    server = start_server(WORKERS=2, API_KEYS=f"alice:{ALICE}", DEMO_DELAY_MS=0)
    jar = session_cookie(server)  # signed by one of the two workers
    pids: set[int] = set()

    def both_answered() -> bool:
        # A stream started with the cookie on whichever worker takes it (memory store: the stream
        # lives there), then its info, by the same worker or (a 404) the other one. Until a deadline,
        # not a count of tries: the second worker may still be booting.
        started = call(server, "GET", "/stream?text=a&delay_ms=0", headers=SAME_SITE, cookies=jar)
        assert started.status_code == 200, started.text
        pid = _answering_worker(server, jar, started.headers["X-Stream-Id"])
        if pid is not None:
            pids.add(pid)
        return len(pids) == 2
    poll_until(both_answered, 20, "both workers to answer", interval=0.01)


@pytest.fixture
def shared_secret(redis_url, redis_prefix):
    """The Redis key of the shared session secret (it has no expiry: removed after the test)."""
    key = f"{redis_prefix}:session-secret"
    yield key
    redis.Redis.from_url(redis_url).delete(key)


def test_workers_and_instances_sharing_redis_share_the_session_secret(start_server, redis_url,
                                                                     redis_prefix, shared_secret) -> None:
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, API_KEYS=f"alice:{ALICE}",
                    DEMO_DELAY_MS=0)
    a, b = start_server(WORKERS=2, **settings), start_server(**settings)
    assert redis.Redis.from_url(redis_url).exists(shared_secret)
    jar = session_cookie(a)
    sid = _stream_of(a, ALICE)  # in Redis: any worker of either instance answers its info
    pids: set[int | None] = set()
    poll_until(lambda: pids.add(_answering_worker(a, jar, sid)) or len(pids) == 2, 20,
               "both of a's workers to answer")
    assert _answering_worker(b, jar, sid) not in (None, *pids)  # another instance
    assert call(b, "GET", "/v1/models", cookies=session_cookie(b), headers=SAME_SITE).status_code == 200
    assert call(a, "GET", "/v1/models", cookies=session_cookie(b), headers=SAME_SITE).status_code == 200


def test_the_configured_secret_wins_over_the_shared_one(start_server, redis_url, redis_prefix,
                                                        shared_secret) -> None:
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, API_KEYS=f"alice:{ALICE}")
    shared, configured = start_server(**settings), start_server(SECRET_KEY=SECRET, **settings)
    cookie = session_cookie(shared)
    assert call(configured, "GET", "/v1/models", cookies=cookie, headers=SAME_SITE).status_code == 401
    assert call(configured, "GET", "/v1/models", cookies=_forged(SECRET, "alice"),
                headers=SAME_SITE).status_code == 200


def _workers(server) -> set[int]:
    """The pids of ``server``'s workers: its gunicorn master's children."""
    master, pids = server.process.proc.pid, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a process that ended meanwhile
        if ppid == master:
            pids.add(int(stat.parent.name))
    return pids


def _every_worker_accepts(servers, jar: dict[str, str], sid: str, what: str) -> None:
    """Poll until each worker of ``servers`` has answered a cookie-authenticated request (a 401
    from any fails at once)."""
    for server in servers:
        answered: set[int | None] = set()

        def all_answered(server=server, answered=answered) -> bool:
            answered.add(_answering_worker(server, jar, sid))
            return _workers(server) <= answered
        poll_until(all_answered, 20, f"every worker of {server.url} to answer {what}")


def _shared_stream(a, b) -> str:
    """A stream started on ``a`` that ``b`` sees: in Redis (a worker that has not yet seen Redis
    come back keeps the streams it starts to itself), so any worker of either answers its info."""
    def started() -> str | None:
        sid = _stream_of(a, ALICE)
        return sid if call(b, "GET", f"/api/streams/{sid}/info", headers={"X-API-Key": ALICE}).ok else None
    return poll_until(started, 10, "a stream in Redis")


def test_the_shared_secret_survives_a_redis_that_restarts_empty(start_server, tmp_path,
                                                               redis_prefix) -> None:
    """Every process puts the secret it holds back into an emptied Redis, so a worker started
    afterwards (one more by SIGTTIN, a replaced one) on either instance reads the same."""
    port = free_port()
    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        settings = dict(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PREFIX=redis_prefix,
                        API_KEYS=f"alice:{ALICE}", DEMO_DELAY_MS=0)
        a, b = start_server(WORKERS=2, **settings), start_server(**settings)
        jar = session_cookie(a)
        key = f"{redis_prefix}:session-secret"
        shared = redis.Redis(port=port).get(key)

        redis_proc.stop(signal.SIGKILL)
        redis_proc = start_redis(port, tmp_path / "redis-2.log")  # empty: no persistence
        poll_until(lambda: redis.Redis(port=port).get(key) == shared, 10, "the secret back in Redis")
        os.kill(b.process.proc.pid, signal.SIGTTIN)  # b (not the instance that made it) adds a worker
        poll_until(lambda: len(_workers(b)) == 2, 20, "b's second worker")
        _every_worker_accepts([a, b], jar, _shared_stream(a, b), "after b added a worker")

        redis_proc.stop(signal.SIGKILL)
        redis_proc = start_redis(port, tmp_path / "redis-3.log")
        replaced = min(_workers(a))
        os.kill(replaced, signal.SIGKILL)  # at once: gunicorn starts another worker
        poll_until(lambda: len(_workers(a) - {replaced}) == 2, 20, "a's replacement worker")
        _every_worker_accepts([a, b], jar, _shared_stream(a, b), "after a worker was replaced")
    finally:
        redis_proc.stop()


def test_a_worker_started_without_redis_adopts_the_shared_secret_later(start_server, tmp_path,
                                                                       redis_prefix) -> None:
    """A worker that could not read Redis at start signs with its instance's secret until it
    can, then uses the shared one: another instance's cookie works on it."""
    port = free_port()
    settings = dict(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PREFIX=redis_prefix,
                    API_KEYS=f"alice:{ALICE}", DEMO_DELAY_MS=0)
    early = start_server(**settings)  # nothing listens on the port yet
    redis_proc = start_redis(port, tmp_path / "redis.log")
    try:
        later = start_server(**settings)
        jar = session_cookie(later)

        def accepted() -> bool:
            return call(early, "GET", "/v1/models", cookies=jar, headers=SAME_SITE).status_code == 200
        poll_until(accepted, 10, "the early instance to accept the later one's cookie")
    finally:
        redis_proc.stop()


def test_a_secret_set_in_redis_reaches_every_worker(start_server, redis_url, redis_prefix,
                                                    shared_secret) -> None:
    """The documented rotation: a new value SET in Redis signs cookies everywhere; old ones fail."""
    server = start_server(WORKERS=2, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix,
                          API_KEYS=f"alice:{ALICE}")
    old = session_cookie(server)
    sid = _stream_of(server, ALICE)  # in Redis: either worker answers its info, with its pid
    redis.Redis.from_url(redis_url).set(shared_secret, "rotated-secret-0c4e")
    new, adopted = _forged("rotated-secret-0c4e", "alice"), set()

    def everywhere() -> bool:
        resp = call(server, "GET", f"/api/streams/{sid}/info", headers=SAME_SITE, cookies=new)
        if resp.status_code == 200:  # a 401: that worker has not synced yet
            adopted.add(resp.json()["pid"])
        return _workers(server) <= adopted
    poll_until(everywhere, 10, "every worker to sign with the new secret")
    for _ in range(4):
        assert call(server, "GET", "/v1/models", cookies=old, headers=SAME_SITE).status_code == 401


def test_admin_keys_by_word_and_by_setting(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("root:sk-root admin\nalice:sk-alice rpm=5\nbob:sk-bob\n")
    keys = Keys.from_config({"API_KEYS_FILE": str(keys_file), "ADMIN_KEYS": "bob"})
    assert {name: c.admin for name, c in keys.by_name.items()} == {"root": True, "alice": False, "bob": True}
    with pytest.raises(ValueError, match="STREAMAPP_ADMIN_KEYS names no configured key: carol"):
        Keys.from_config({"API_KEYS_FILE": str(keys_file), "ADMIN_KEYS": "carol"})
    keys_file.write_text("root:sk-root admin=yes\n")
    with pytest.raises(ValueError, match="line 1: bad option 'admin'"):
        Keys.from_config({"API_KEYS_FILE": str(keys_file)})
