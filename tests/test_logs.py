"""Structured logs (issue #11, point 5): X-Request-ID in and out, one line per request, one
summary line per stream, JSON when asked, and nothing secret or private in them."""

from __future__ import annotations

import json

import pytest
import requests

from tests.helpers import SSEClient, poll_until, q

SECRET_PROMPT = "my-private-prompt-0x5eed"
KEY = "sk-logs-test-key-4d2c"


@pytest.fixture(scope="module")
def json_server(start_server):
    return start_server(LOG_FORMAT="json", API_KEYS=f"ops:{KEY}", DEMO_DELAY_MS=0)


def log_lines(server) -> list[dict]:
    out = []
    for line in server.process.output().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def find(server, **fields) -> list[dict]:
    return [r for r in log_lines(server) if all(r.get(k) == v for k, v in fields.items())]


def test_request_id_is_taken_echoed_and_on_every_line_of_the_stream(json_server, fake_upstream, tag) -> None:
    model = q(f"normal?tokens=5&tag={tag}")
    url = f"{json_server.url}/ai-stream?prompt={SECRET_PROMPT}&model={model}"
    with SSEClient(url, headers={"X-Request-ID": f"req-{tag}", "X-API-Key": KEY}) as client:
        assert client.headers["X-Request-ID"] == f"req-{tag}"
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    ended = poll_until(lambda: find(json_server, message=f"stream {sid} ended: completed"), 10, "the summary")
    summary = ended[0]
    assert summary["request_id"] == f"req-{tag}" and summary["stream_id"] == sid
    assert summary["route"] == "openai" and summary["provider"] == "openai" and summary["client"] == "ops"
    assert summary["model"].startswith("normal?tokens=5")  # the model in use, as asked
    assert summary["outcome"] == "completed" and summary["finish_reason"] == "stop"
    assert summary["tokens"] == 5 and summary["events"] == 7  # opened, 5 deltas, done
    assert 0 <= summary["ttft_ms"] <= summary["duration_ms"]
    assert summary["level"] == "INFO" and summary["logger"] == "streamapp.streams" and summary["time"]
    started = find(json_server, stream_id=sid, request_id=f"req-{tag}")
    assert any(r["message"].startswith(f"stream {sid} started") for r in started)
    request = poll_until(lambda: find(json_server, logger="streamapp.access", request_id=f"req-{tag}"), 10,
                         "the request line")[0]
    assert request["method"] == "GET" and request["path"] == "/ai-stream" and request["status"] == 200
    assert request["client"] == "ops" and request["remote_addr"] == "127.0.0.1"
    # Logged at the end of the body: the request's life holds the stream's (which starts after the
    # request and ends before its final event is written), so it is at least as long.
    assert request["duration_ms"] >= summary["duration_ms"]


def test_a_request_id_that_is_not_a_plain_token_is_replaced(json_server) -> None:
    for given in ("has spaces", "x" * 200, "semi;colon"):
        resp = requests.get(f"{json_server.url}/healthz", headers={"X-Request-ID": given}, timeout=5)
        made = resp.headers["X-Request-ID"]
        assert made != given and len(made) == 32 and made.isalnum()
    resp = requests.get(f"{json_server.url}/v1/models", timeout=5)  # refused (401): still an id
    assert resp.status_code == 401 and len(resp.headers["X-Request-ID"]) == 32
    line = poll_until(lambda: find(json_server, request_id=resp.headers["X-Request-ID"]), 10, "its line")[0]
    assert line["status"] == 401 and line["path"] == "/v1/models"


def test_no_key_prompt_or_cookie_in_the_log(json_server) -> None:
    with SSEClient(f"{json_server.url}/stream?text={SECRET_PROMPT}&delay_ms=0",
                   headers={"Authorization": f"Bearer {KEY}"}) as client:
        client.read_all()
    session = requests.post(f"{json_server.url}/api/session", headers={"X-API-Key": KEY}, timeout=5)
    cookie = session.cookies.get("streamapp_session")
    assert cookie
    requests.get(f"{json_server.url}/api/streams/nope/info", cookies={"streamapp_session": cookie},
                 headers={"Sec-Fetch-Site": "same-origin"}, timeout=5)
    poll_until(lambda: find(json_server, path="/api/streams/nope/info"), 10, "the last request's line")
    text = json_server.process.output()
    assert KEY not in text and SECRET_PROMPT not in text and cookie not in text


def test_text_lines_carry_the_same_fields(start_server) -> None:
    server = start_server(DEMO_DELAY_MS=0)  # LOG_FORMAT=text, the default
    resp = requests.get(f"{server.url}/stream?text=a%20b&delay_ms=0", headers={"X-Request-ID": "txt-1"},
                        timeout=10)
    sid = resp.headers["X-Stream-Id"]
    line = poll_until(lambda: [x for x in server.process.output().splitlines()
                               if f"stream {sid} ended" in x], 10, "the summary")[0]
    assert "streamapp.streams:" in line and " outcome=completed " in line and " request_id=txt-1 " in line
    assert " tokens=2 " in line and " provider=demo " in line


def test_a_client_cannot_forge_a_text_line(start_server) -> None:
    """A path or a model holding a newline stays on its own line, escaped (found in review)."""
    server = start_server(DEFAULT_PROVIDER="openai")  # a bare model name goes to the (fake) upstream
    forged = "2026-01-01 00:00:00,000 INFO streamapp.access: GET /admin 200 client=alice"
    requests.get(f"{server.url}/nope%0A{q(forged)}", timeout=5)
    requests.post(f"{server.url}/api/chat", json={"uid": 1, "message": "hi", "model": f"m\n{forged}"},
                  timeout=10)
    poll_until(lambda: "streamapp.streams: stream" in server.process.output()
               and "ended" in server.process.output(), 10, "the chat's summary line")
    lines = server.process.output().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], lines[-5:]
    assert any("/nope\\n2026-01-01" in line for line in lines)  # the path, escaped
    assert any('model="m\\n2026-01-01' in line for line in lines)  # the model, escaped
