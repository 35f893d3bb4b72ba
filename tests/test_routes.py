"""The HTTP routes under real gunicorn + gevent, over the demo and fake upstreams."""

from __future__ import annotations

import json

import pytest
import requests

from streamapp.providers.demo import answer_for
from tests.fake_upstream import token_list
from tests.helpers import SSEClient, data_events, first_deltas, q, upstream_log

CHAT = {"uid": 1, "message": "hello"}


def chat(server, body=None, **kw) -> SSEClient:
    return SSEClient(f"{server.url}/api/chat", "POST", body if body is not None else CHAT, **kw)


@pytest.mark.parametrize("path, method, body", [
    ("/stream?delay_ms=0", "GET", None),
    ("/api/chat", "POST", CHAT),
    ("/ai-stream?prompt=hi&model=normal", "GET", None),
    ("/local-ai?prompt=hi&model=normal", "GET", None),
])
def test_stream_headers(server, path, method, body) -> None:
    with SSEClient(server.url + path, method, body) as client:
        assert client.status == 200
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert client.headers["Cache-Control"] == "no-cache"
        assert client.headers["X-Accel-Buffering"] == "no"
        assert client.headers["Transfer-Encoding"] == "chunked"
        assert "Content-Encoding" not in client.headers
        sid = client.headers["X-Stream-Id"]
        events = client.read_all()
    first = events[0]
    assert first.event == "stream" and json.loads(first.data) == {"stream_id": sid}
    assert client.chunks[0][1].startswith(b": ")  # one byte right after the headers
    assert b"retry: " in client.chunks[1][1] or b"retry: " in client.chunks[0][1]


def test_stream_demo_tokens_ids_and_end(server) -> None:
    with SSEClient(f"{server.url}/stream?delay_ms=40") as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 1)
        # One by one: the first token is here while the rest is still being made.
        assert requests.get(f"{server.url}/api/streams/{sid}/info", timeout=5).json()["state"] == "running"
        events = client.read_all()
    tokens = data_events(events)
    text = "".join(e.data for e in tokens)
    assert "你好" in text and len(tokens) > 10
    seqs = [int(e.id.rpartition("-")[2]) for e in events]
    assert all(e.id.startswith(f"{sid}-") for e in events)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert events[-1].event == "end" and json.loads(events[-1].data)["finish_reason"] == "stop"


def test_stream_custom_text(server) -> None:
    with SSEClient(f"{server.url}/stream?delay_ms=0&text=one%20two%20%E4%B8%89") as client:
        assert "".join(e.data for e in data_events(client.read_all())) == "one two 三"


@pytest.mark.parametrize("query, field", [("delay_ms=-1", "delay_ms"), ("delay_ms=abc", "delay_ms"),
                                          ("text=", "text")])
def test_stream_bad_query(server, query, field) -> None:
    resp = requests.get(f"{server.url}/stream?{query}", timeout=5)
    assert resp.status_code == 400
    assert resp.json()["error"]["field"] == field


def test_chat_sse_json_deltas(server) -> None:
    with chat(server) as client:
        events = client.read_all()
    payloads = [json.loads(e.data) for e in data_events(events)]
    deltas = [p for p in payloads if "delta" in p]
    assert [p["index"] for p in deltas] == list(range(len(deltas)))
    assert "".join(p["delta"] for p in deltas) == answer_for([{"role": "user", "content": "hello"}])
    end = payloads[-1]
    assert end["is_end"] is True and end["finish_reason"] == "stop"
    assert end["usage"]["completion_tokens"] == len(deltas)


def test_chat_history_reaches_the_provider(server, fake_upstream, tag) -> None:
    from tests.helpers import upstream_log

    body = {"uid": 3, "message": "and now?", "provider": "ollama", "model": f"normal?tag={tag}",
            "history": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"}]}
    with chat(server, body) as client:
        client.read_all()
    (record,) = upstream_log(fake_upstream, tag)
    assert [m["content"] for m in record["messages"]] == ["first", "ok", "and now?"]


@pytest.mark.parametrize("how", [{"headers": {"Accept": "text/plain"}}, {"query": "?format=text"}])
def test_chat_plain_chunked_text(server, how) -> None:
    url = f"{server.url}/api/chat{how.get('query', '')}"
    with SSEClient(url, "POST", CHAT, headers=how.get("headers")) as client:
        assert client.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert client.headers["Transfer-Encoding"] == "chunked"
        body = client.body().decode()
    assert body == answer_for([{"role": "user", "content": "hello"}])
    assert len(client.chunks) > 5  # one chunk per delta, not one blob


@pytest.mark.parametrize("body, field, words", [
    ({"message": "hi"}, "uid", "uid is required"),
    ({"uid": 1}, "message", "message is required"),
    ({"uid": "1", "message": "hi"}, "uid", "integer"),
    ({"uid": True, "message": "hi"}, "uid", "integer"),
    ({"uid": 0, "message": "hi"}, "uid", "positive"),
    ({"uid": 1, "message": ""}, "message", "empty"),
    ({"uid": 1, "message": 5}, "message", "string"),
    ({"uid": 1, "message": "hi", "provider": "nope"}, "provider", "one of"),
    ({"uid": 1, "message": "hi", "history": [{"role": "x", "content": "y"}]}, "history.0.role", ""),
    ({"uid": 1, "message": "hi", "history": "no"}, "history", "list"),
    ([1, 2], None, "object"),
])
def test_chat_validation(server, body, field, words) -> None:
    resp = requests.post(f"{server.url}/api/chat", json=body, timeout=5)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["field"] == field and words in error["message"] and error["code"]


def test_chat_malformed_json(server) -> None:
    resp = requests.post(f"{server.url}/api/chat", data=b"{nope",
                         headers={"Content-Type": "application/json"}, timeout=5)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "malformed_json"


def test_chat_wrong_content_type(server) -> None:
    resp = requests.post(f"{server.url}/api/chat", data=b"uid=1", timeout=5,
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status_code == 415 and "application/json" in resp.json()["error"]["message"]


def test_chat_body_too_large(server) -> None:
    resp = requests.post(f"{server.url}/api/chat", json={"uid": 1, "message": "x" * 10000}, timeout=5)
    assert resp.status_code == 413 and resp.json()["error"]["code"]


@pytest.mark.parametrize("path", ["/ai-stream", "/local-ai"])
def test_upstream_relay_streams_one_by_one(server, fake_upstream, tag, path) -> None:
    model = q(f"silence?at=1&silence_s=10&tokens=4&tag={tag}")
    with SSEClient(f"{server.url}{path}?prompt=hi&model={model}") as client:
        first = first_deltas(client, 1)
        (record,) = upstream_log(fake_upstream, tag)
    assert [e.data for e in first] == token_list(1)
    assert record["sent"] == 1 and record["finished"] is None  # relayed while the upstream is silent


@pytest.mark.parametrize("path", ["/ai-stream", "/local-ai"])
def test_upstream_split_multibyte_arrives_intact(server, path) -> None:
    with SSEClient(f"{server.url}{path}?prompt=hi&model=split") as client:
        text = "".join(e.data for e in data_events(client.read_all()))
    assert text == "h\u00e9llo \u4f60\u597d w\u00f6rld"


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("model, status, code", [
    ("status?status=429", 429, "upstream_http_error"),  # the upstream's rate limit, passed on
    ("status?status=401", 502, "upstream_auth"),
    ("reset", 502, "upstream_unreachable"),
    ("hang?silence_s=10", 504, "upstream_timeout"),
    ("inband?at=0", 502, "upstream_error"),
    ("malformed?at=0", 502, "upstream_bad_response"),
])
def test_failure_before_first_token_is_an_http_error(server, provider, model, status, code) -> None:
    resp = requests.post(f"{server.url}/api/chat", timeout=15,
                         json={"uid": 1, "message": "hi", "provider": provider, "model": model})
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["message"]
    if "status=429" in model:
        assert "429" in error["message"]


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("model, code", [
    ("inband?at=3", "upstream_error"),
    ("drop?at=3", "upstream_cut"),
    ("malformed?at=3", "upstream_bad_response"),
])
def test_failure_after_first_token_ends_with_error_event(server, provider, model, code) -> None:
    body = {"uid": 1, "message": "hi", "provider": provider, "model": model}
    with chat(server, body) as client:
        assert client.status == 200
        events = client.read_all()
    deltas = [json.loads(e.data)["delta"] for e in data_events(events)]
    assert "".join(deltas) == "".join(token_list(3))
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == code


@pytest.mark.parametrize("fields", [{"provider": "demo", "model": "gpt-4o"}, {"model": "gpt-nope"},
                                    {"model": "demo/x"}])
def test_a_model_nobody_serves_is_not_found(server, fields) -> None:
    """The demo has one model, ``demo``: another name is a mistake, not a cue to answer anyway."""
    resp = requests.post(f"{server.url}/api/chat", json={**CHAT, **fields}, timeout=10)
    assert resp.status_code == 404, resp.text
    error = resp.json()["error"]
    assert error["code"] == "model_not_found" and error["field"] == "model"
    assert fields["model"] in error["message"]


@pytest.mark.parametrize("fields", [{"provider": "demo", "model": "demo"}, {"model": "demo"}])
def test_the_demo_model_by_name(server, fields) -> None:
    with chat(server, {**CHAT, **fields}) as client:
        assert client.status == 200
        assert json.loads(client.read_all()[-1].data)["finish_reason"] == "stop"


def test_unknown_route_is_json_404(server) -> None:
    resp = requests.get(f"{server.url}/nope", timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_demo_page_is_served_offline(server) -> None:
    page = requests.get(server.url, timeout=5)
    assert page.status_code == 200 and "src=\"/static/app.js\"" in page.text
    assert "http://" not in page.text and "https://" not in page.text
    assert requests.get(f"{server.url}/static/app.js", timeout=5).status_code == 200
