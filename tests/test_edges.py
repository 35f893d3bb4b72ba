"""The edges under real gunicorn + gevent: text that is not Unicode, bad input,
bad upstreams, and HTTP's own edges (chunked bodies, bodies that never come,
the request line)."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from urllib.parse import quote

import pytest
import requests

from streamapp.config import DEFAULTS
from streamapp.providers.demo import answer_for
from tests.fake_upstream import BAD_TEXT, token_list
from tests.helpers import SSEClient, data_events

CHAT = {"uid": 1, "message": "hello"}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def edge_server(start_server):
    """Default body and text limits, and a short body timeout."""
    return start_server(BODY_TIMEOUT_S=1, HEADER_WAIT_S=0.3, READ_TIMEOUT_S=3, CONNECT_TIMEOUT_S=2,
                        DEMO_DELAY_MS=0, RESUME_GRACE_S=0)


@pytest.fixture(scope="module")
def redis_server(start_server, redis_url):
    return start_server(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{uuid.uuid4().hex[:10]}",
                        HEADER_WAIT_S=0.3, READ_TIMEOUT_S=3, CONNECT_TIMEOUT_S=2, RESUME_GRACE_S=0)


def post_raw(server, body: bytes, path: str = "/api/chat") -> SSEClient:
    return SSEClient(server.url + path, "POST", body, headers=JSON)


# --- A: text that is not valid Unicode --------------------------------------------------------

@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("path", ["/ai-stream", "/local-ai"])
def test_upstream_text_that_is_not_unicode_arrives_repaired(request, store, path) -> None:
    server = request.getfixturevalue("server" if store == "memory" else "redis_server")
    with SSEClient(f"{server.url}{path}?prompt=hi&model=badtext") as client:
        assert client.status == 200
        events = client.read_all()
    assert "".join(e.data for e in data_events(events)) == BAD_TEXT
    assert events[-1].event == "end"


def test_a_chat_body_with_lone_surrogates_is_repaired(server) -> None:
    body = b'{"uid": 1, "message": "hi \\ud83d there \\udc00", "history": [{"role": "user", ' \
           b'"content": "\\uDBFF"}]}'
    with post_raw(server, body) as client:
        assert client.status == 200
        events = client.read_all()
    payloads = [json.loads(e.data) for e in data_events(events)]
    text = "".join(p.get("delta", "") for p in payloads)
    assert text == answer_for([{"role": "user", "content": "\ufffd"},
                               {"role": "user", "content": "hi \ufffd there \ufffd"}])
    assert payloads[-1]["is_end"] is True


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_an_upstream_error_message_that_is_not_unicode_is_repaired(server, provider) -> None:
    resp = requests.post(f"{server.url}/api/chat", timeout=10, json={
        "uid": 1, "message": "hi", "provider": provider, "model": "status?status=429&message=bad"})
    assert resp.status_code == 429, resp.text  # the upstream's rate limit, passed on
    error = resp.json()["error"]
    assert error["code"] == "upstream_http_error" and "\ufffd" in error["message"]


# --- B: bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"[" * 3000, b'{"uid": 1, "message": "hi", "history": ' + b"[" * 3000])
def test_deeply_nested_json_is_a_400(server, body) -> None:
    resp = requests.post(f"{server.url}/api/chat", data=body, headers=JSON, timeout=5)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "malformed_json" and "nested too deeply" in error["message"]


@pytest.mark.parametrize("method, path, allowed", [("DELETE", "/api/chat", "POST"),
                                                   ("PUT", "/api/chat", "POST"),
                                                   ("POST", "/stream", "GET")])
def test_405_keeps_its_allow_header(server, method, path, allowed) -> None:
    resp = requests.request(method, server.url + path, timeout=5)
    assert resp.status_code == 405
    assert allowed in resp.headers.get("Allow", "").split(", ")
    assert resp.json()["error"]["code"] == "method_not_allowed"


def uid_error(server, uid: str) -> dict:
    body = b'{"uid": ' + uid.encode() + b', "message": "hi"}'
    resp = requests.post(f"{server.url}/api/chat", data=body, headers=JSON, timeout=5)
    assert resp.status_code == 400, resp.text
    return resp.json()["error"]


@pytest.mark.parametrize("uid", ["1" * 5000, "-" + "9" * 5000])
def test_a_uid_of_thousands_of_digits_is_a_400_naming_uid(edge_server, uid) -> None:
    error = uid_error(edge_server, uid)
    assert error["field"] == "uid", error
    assert error["message"] in ("uid must be at most 9223372036854775807", "uid must be a positive integer")


def test_uids_end_at_the_largest_64_bit_integer(edge_server) -> None:
    with post_raw(edge_server, b'{"uid": 9223372036854775807, "message": "hi"}') as client:
        assert client.status == 200
        assert json.loads(client.read_all()[-1].data)["is_end"] is True
    error = uid_error(edge_server, str(2 ** 63))
    assert error["field"] == "uid" and error["message"] == "uid must be at most 9223372036854775807"


@pytest.mark.parametrize("delay", ["1" * 5000, str(2 ** 31)])
def test_a_huge_delay_ms_is_a_400_naming_it(edge_server, delay) -> None:
    resp = requests.get(f"{edge_server.url}/stream?delay_ms={delay}", timeout=5)
    assert resp.status_code == 400, resp.text[:300]
    error = resp.json()["error"]
    assert error["field"] == "delay_ms" and error["message"] == "delay_ms must be at most 2147483647"


# --- C: bad upstreams --------------------------------------------------------------------------

SHAPES = [("openai", "usage"), ("openai", "choices"), ("openai", "delta"), ("openai", "content"),
          ("openai", "count_null"), ("ollama", "message"), ("ollama", "count_null"),
          ("ollama", "count_type")]


@pytest.mark.parametrize("provider, bad", SHAPES)
def test_wrong_shape_before_the_first_token_is_a_502(server, provider, bad) -> None:
    resp = requests.post(f"{server.url}/api/chat", timeout=10, json={
        "uid": 1, "message": "hi", "provider": provider, "model": f"shape?bad={bad}"})
    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == "upstream_bad_response"


@pytest.mark.parametrize("provider, bad", SHAPES)
def test_wrong_shape_after_the_first_token_is_an_error_event(server, provider, bad) -> None:
    body = {"uid": 1, "message": "hi", "provider": provider, "model": f"shape?bad={bad}&at=3"}
    with SSEClient(f"{server.url}/api/chat", "POST", body) as client:
        assert client.status == 200
        events = client.read_all()
    assert "".join(json.loads(e.data)["delta"] for e in data_events(events)) == "".join(token_list(3))
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "upstream_bad_response"


@pytest.mark.parametrize("path", ["/ai-stream", "/local-ai"])
def test_an_upstream_redirect_is_an_error_not_followed(server, path) -> None:
    resp = requests.get(f"{server.url}{path}?prompt=hi&model=redirect%3Fstatus%3D307", timeout=10)
    assert resp.status_code == 502, resp.text
    error = resp.json()["error"]
    assert error["code"] == "upstream_http_error" and "307" in error["message"]


@pytest.mark.parametrize("provider, what", [("openai", "OpenAI upstream"), ("ollama", "Ollama upstream")])
@pytest.mark.parametrize("model, status, words", [("hang?silence_s=10", 504, "timed out"),
                                                  ("reset", 502, "is unreachable")])
def test_error_messages_name_the_upstream_and_no_address(server, fake_upstream, provider, what, model,
                                                         status, words) -> None:
    resp = requests.post(f"{server.url}/api/chat", timeout=15, json={
        "uid": 1, "message": "hi", "provider": provider, "model": model})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["message"] == f"{what} {words}"


# --- D: the edges of HTTP ----------------------------------------------------------------------

def post_chunked(server, body: bytes, piece: int = 1000) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    chunks = (body[i:i + piece] for i in range(0, len(body), piece))
    conn.request("POST", "/api/chat", body=chunks, encode_chunked=True,
                 headers={**JSON, "Transfer-Encoding": "chunked"})
    return conn.getresponse()


def test_a_chunked_body_over_the_limit_is_a_413(server) -> None:
    big = json.dumps({"uid": 1, "message": "x" * 5000}).encode()  # the server allows 4096 bytes
    resp = post_chunked(server, big)
    assert resp.status == 413, resp.read()[:300]
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(resp.read())["error"]["code"] == "request_entity_too_large"
    small = post_chunked(server, json.dumps({"uid": 1, "message": "x" * 3000}).encode())
    assert small.status == 200 and b'"is_end"' in small.read()


def test_a_body_that_never_comes_is_a_408_and_the_connection_closes(edge_server) -> None:
    sock = socket.create_connection(("127.0.0.1", edge_server.port), timeout=8)
    try:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n" + b'{"uid": 1, ')
        started = time.monotonic()
        data = b""
        while True:  # until the server closes (or the 8 s socket timeout fails the test)
            more = sock.recv(65536)
            if not more:
                break
            data += more
        took = time.monotonic() - started
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), data[:300]
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert took > 0.9, took  # it waited out BODY_TIMEOUT_S (1 s); the socket's 8 s bounds the wait


@pytest.mark.parametrize("char", ["a", "\U0001f600"])
def test_the_stream_text_limit_is_reachable_and_true(edge_server, char) -> None:
    limit = DEFAULTS["STREAM_MAX_TEXT"]
    ok = requests.get(f"{edge_server.url}/stream?delay_ms=0&text={quote(char * limit)}", timeout=10)
    assert ok.status_code == 200, ok.text[:300]
    over = requests.get(f"{edge_server.url}/stream?delay_ms=0&text={quote(char * (limit + 1))}", timeout=10)
    assert over.status_code == 400, over.text[:300]
    assert over.json()["error"]["field"] == "text"
