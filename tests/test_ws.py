"""The WebSocket protocol (``GET /ws``) against real gunicorn + gevent servers.

The client is the ``websockets`` library's synchronous one (independent of the server's
library); one test speaks raw TCP to be a peer that never answers pings. The fake upstream
records when streamapp closed each tagged connection, on the same monotonic clock as here.
Every wait has a deadline: ``recv(timeout=...)``, ``open_timeout``, ``poll_until``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import select
import socket
import time
import uuid
from urllib.parse import urlencode

import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from streamapp.providers.demo import answer_for
from streamapp.wire import is_stream_id
from tests.fake_upstream import REASONING, TOOL_CALLS, token_list
from tests.helpers import (
    SSEClient,
    first_deltas,
    poll_until,
    q,
    recv_json,
    recv_until,
    upstream_closed_after,
    upstream_log,
)

ALICE, BOB = "sk-ws-alice-5e1f0c", "sk-ws-bob-a27d44"
SECRET = "ws-test-secret-91b2"
OTHER = "http://127.0.0.1:1"  # an origin CORS_ORIGINS allows (nothing listens there)
EVIL = "http://evil.example"
LONG_MESSAGE = "please answer slowly " * 12  # the demo echoes it: an answer of about 2 s at 20 ms a token
LONG_TEXT = "w " * 250  # GET /stream at delay_ms=100: 25 s, longer than any test here


# -- servers -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ws_server(start_server):
    """No resume grace, small body and frame limits."""
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=20,
                        MAX_BODY_BYTES=4096, WS_MAX_FRAME_BYTES=65536)


@pytest.fixture(scope="module")
def grace_server(start_server):
    """A resume grace of a few seconds."""
    return start_server(RESUME_GRACE_S=5, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=20)


@pytest.fixture(scope="module")
def redis_pair(start_server, redis_url):
    """Two instances (think: two hosts) sharing one Redis, with a resume grace."""
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=f"streamapp-test-{uuid.uuid4().hex[:8]}",
                    RESUME_GRACE_S=5, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=20)
    return start_server(**settings), start_server(**settings)


@pytest.fixture(params=["memory", "redis"])
def two_places(request):
    """Where a stream starts and where it is resumed: one instance, or two sharing Redis."""
    if request.param == "memory":
        server = request.getfixturevalue("grace_server")
        return server, server
    return request.getfixturevalue("redis_pair")


@pytest.fixture(scope="module")
def ping_server(start_server):
    return start_server(WS_PING_S=0.5, RESUME_GRACE_S=0, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=20)


@pytest.fixture(scope="module")
def keyed(start_server):
    return start_server(API_KEYS=f"alice:{ALICE},bob:{BOB}", SECRET_KEY=SECRET, CORS_ORIGINS=OTHER,
                        DEMO_DELAY_MS=5, HEADER_WAIT_S=0.2, RESUME_GRACE_S=5)


# -- a small client ----------------------------------------------------------------------------

def ws_connect(server, headers: dict[str, str] | None = None, origin: str | None = None,
               **options) -> ClientConnection:
    """A WebSocket on ``server``'s ``/ws``: no proxy, no pings of ours, bounded open and close."""
    return connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=headers, origin=origin,
                   open_timeout=5, close_timeout=2, proxy=None, ping_interval=None,
                   **options)


def send(ws: ClientConnection, type_: str, **fields) -> None:
    ws.send(json.dumps({"type": type_, **fields}))


def ends_stream(message: dict) -> bool:
    """``end``, or an ``error`` that ends a stream (it has a ``seq``)."""
    return message["type"] == "end" or (message["type"] == "error" and "seq" in message)


def read_until_end(ws: ClientConnection, timeout: float = 10) -> list[dict]:
    """Messages up to and including the one that ends the stream."""
    return recv_until(ws, ends_stream, timeout)


def read_deltas(ws: ClientConnection, n: int, timeout: float = 10) -> list[dict]:
    """Messages until the ``n``-th delta (fails if the stream ends first)."""
    deadline = time.monotonic() + timeout
    got: list[dict] = []
    while sum(m["type"] == "delta" for m in got) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"not {n} deltas within {timeout}s: {got}"
        got.append(recv_json(ws, left))
        assert not ends_stream(got[-1]), f"the stream ended after {len(got) - 1} messages: {got}"
    return got


def start_chat(ws: ClientConnection, message: str = "hello", uid: int = 1, **fields) -> dict:
    """Send a chat and return its ``start``."""
    send(ws, "chat", uid=uid, message=message, **fields)
    start = recv_json(ws)
    assert start["type"] == "start", start
    assert start["uid"] == uid and is_stream_id(start["stream_id"]), start
    return start


def resume(ws: ClientConnection, sid: str, last_seq: int) -> dict:
    send(ws, "resume", stream_id=sid, last_seq=last_seq)
    start = recv_json(ws)
    assert start["type"] == "start" and start["stream_id"] == sid and start.get("resumed") is True, start
    assert "uid" not in start, start
    return start


def refused(ws: ClientConnection, code: str, timeout: float = 5) -> dict:
    """The next message is an ``error`` with ``code`` that ends nothing (no ``seq``)."""
    message = recv_json(ws, timeout)
    assert message["type"] == "error" and message["code"] == code, message
    assert "seq" not in message and isinstance(message["message"], str) and message["message"], message
    return message


def ping_pong(ws: ClientConnection) -> None:
    """The socket still works: a ``ping`` is answered by a ``pong`` next."""
    send(ws, "ping")
    assert recv_json(ws)["type"] == "pong"


def text_of(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages if m["type"] == "delta")


def seqs_of(messages: list[dict]) -> list[int]:
    return [m["seq"] for m in messages if "seq" in m]


def assert_contiguous(seqs: list[int], after: int | None = None) -> None:
    """``seqs`` count up by one (from ``after + 1`` when given): no gap, no duplicate."""
    assert seqs, "no numbered message"
    first = seqs[0] if after is None else after + 1
    assert seqs == list(range(first, first + len(seqs))), seqs


def fake(mode: str, tag: str, **params: object) -> str:
    """A fake-upstream model string: ``mode?params&tag=tag``."""
    return f"{mode}?{urlencode({**params, 'tag': tag})}"


def demo_answer(message: str) -> str:
    return answer_for([{"role": "user", "content": message}])


# Either of our SSE formats (``chat``: JSON data; ``plain``: the token text, ``event: end``).
def sse_seq(event) -> int:
    return int(event.id.rpartition("-")[2])


def sse_piece(event) -> tuple[str, object]:
    """``("delta", text)``, ``("end", payload)`` or ``(event name, data)`` of one SSE event."""
    if event.event == "end":
        return "end", json.loads(event.data)
    if event.event != "message":
        return event.event, event.data
    try:
        payload = json.loads(event.data)
    except ValueError:
        payload = None
    if isinstance(payload, dict) and payload.get("is_end"):
        return "end", payload
    if isinstance(payload, dict) and "delta" in payload:
        return "delta", payload["delta"]
    return "delta", event.data


def sse_text(events) -> str:
    return "".join(v for k, v in map(sse_piece, events) if k == "delta")


# -- chats -------------------------------------------------------------------------------------

def test_chat_over_the_demo_provider(ws_server):
    message = "Tell me about streams"
    with ws_connect(ws_server) as ws:
        start = start_chat(ws, message, uid=42)
        got = read_until_end(ws)
    deltas, end = got[:-1], got[-1]
    assert all(m["type"] == "delta" for m in deltas) and len(deltas) > 10
    assert text_of(deltas) == demo_answer(message)
    assert end["type"] == "end" and end["finish_reason"] == "stop", end
    assert end["stream_id"] == start["stream_id"]
    assert end["usage"]["completion_tokens"] == len(deltas)
    assert_contiguous(seqs_of(got))
    # seq is the number of the event's SSE id: the finished stream replayed over SSE agrees.
    with SSEClient(f"{ws_server.url}/api/streams/{start['stream_id']}") as replay:
        events = replay.read_all()
    over_sse = [(sse_seq(e), value) for e in events for kind, value in [sse_piece(e)] if kind == "delta"]
    assert over_sse == [(m["seq"], m["content"]) for m in deltas]
    assert sse_seq(events[-1]) == end["seq"] and sse_piece(events[-1])[0] == "end"


def test_several_chats_one_after_another_on_one_socket(ws_server):
    history = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "an answer"}]
    with ws_connect(ws_server) as ws:
        sids = []
        for uid, message in ((1, "one"), (2, "two 你好"), (3, "three")):
            sids.append(start_chat(ws, message, uid=uid)["stream_id"])
            got = read_until_end(ws)
            assert got[-1]["finish_reason"] == "stop" and got[-1]["stream_id"] == sids[-1]
            assert text_of(got) == demo_answer(message)
        # the fields of POST /api/chat: history and provider
        sids.append(start_chat(ws, "again", uid=4, history=history, provider="demo")["stream_id"])
        got = read_until_end(ws)
        assert text_of(got) == answer_for([*history, {"role": "user", "content": "again"}])
        assert "(turn 2)" in text_of(got)
        ping_pong(ws)
    assert len(set(sids)) == 4


def test_a_chat_or_resume_while_one_runs_is_busy_and_the_running_chat_completes(ws_server):
    with ws_connect(ws_server) as ws:
        start = start_chat(ws, LONG_MESSAGE)
        first = read_deltas(ws, 1)
        send(ws, "chat", uid=2, message="another")
        send(ws, "resume", stream_id=start["stream_id"], last_seq=0)
        rest = read_until_end(ws)
        errors = [m for m in rest if m["type"] == "error"]
        assert [e["code"] for e in errors] == ["busy", "busy"], errors
        assert all("seq" not in e for e in errors)
        stream = first + [m for m in rest if m["type"] != "error"]
        assert [m["type"] for m in stream if m["type"] != "delta"] == ["end"]  # no second start
        assert stream[-1]["finish_reason"] == "stop" and stream[-1]["stream_id"] == start["stream_id"]
        assert text_of(stream) == demo_answer(LONG_MESSAGE)
        assert_contiguous(seqs_of(stream))
        # once it ended, the next chat is accepted
        start_chat(ws, "after")
        assert read_until_end(ws)[-1]["finish_reason"] == "stop"


def test_reasoning_and_tool_calls_come_as_their_own_messages(ws_server, tag):
    with ws_connect(ws_server) as ws:
        start_chat(ws, "hi", provider="openai", model=fake("reasoning", tag, tokens=3))
        thought = read_until_end(ws)
        start_chat(ws, "hi", provider="openai", model=fake("tools", tag))
        called = read_until_end(ws)
    assert "".join(m["content"] for m in thought if m["type"] == "reasoning") == "".join(REASONING)
    assert text_of(thought) == "".join(token_list(3)) and thought[-1]["finish_reason"] == "stop"
    assert_contiguous(seqs_of(thought))
    fragments = [m["tool_call"] for m in called if m["type"] == "tool_call"]
    calls = []
    for fragment in fragments:  # OpenAI's delta.tool_calls[] shape: id and name in a call's first
        if fragment["index"] == len(calls):
            calls.append({"id": fragment["id"], "name": fragment["function"]["name"], "arguments": ""})
        calls[fragment["index"]]["arguments"] += fragment["function"]["arguments"]
    assert [{**c, "arguments": json.loads(c["arguments"])} for c in calls] == TOOL_CALLS
    assert called[-1]["finish_reason"] == "tool_calls"


# -- stop --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "params", "before_stop"), [
    ("slow", {"tokens": 50, "delay_ms": 100}, 3),      # tokens flowing
    ("silence", {"at": 2, "silence_s": 10}, 2),         # the upstream silent after two tokens
    ("hang", {"silence_s": 10}, 0),                     # the upstream never answered
])
def test_stop_ends_the_chat_and_closes_the_upstream(ws_server, fake_upstream, tag, mode, params,
                                                    before_stop):
    with ws_connect(ws_server) as ws:
        start = start_chat(ws, "hi", provider="openai", model=fake(mode, tag, **params))
        got = read_deltas(ws, before_stop)
        assert upstream_log(fake_upstream, tag, wait="opened"), "the upstream never got the request"
        asked = time.monotonic()
        send(ws, "stop")
        rest = read_until_end(ws, timeout=5)
        end = rest[-1]
        assert end["type"] == "end" and end["finish_reason"] == "cancelled", end
        assert end["stream_id"] == start["stream_id"]
        record = upstream_closed_after(fake_upstream, tag, asked)
        assert record["sent"] < params.get("tokens", 5)  # closed before the answer's end
        if mode != "slow":  # a silent upstream: closed before its next token, none relayed after
            assert record["sent"] == before_stop and [m for m in rest if m["type"] == "delta"] == []
        assert_contiguous(seqs_of(got + rest))
        send(ws, "stop")  # that chat is over
        refused(ws, "no_active_stream")
        ping_pong(ws)
    (record,) = upstream_log(fake_upstream, tag)
    assert record["sent"] < params.get("tokens", 5)


def test_stop_with_nothing_running(ws_server):
    with ws_connect(ws_server) as ws:
        send(ws, "stop")
        error = refused(ws, "no_active_stream")
        assert "stream_id" not in error
        start_chat(ws, "hi")
        assert read_until_end(ws)[-1]["finish_reason"] == "stop"
        send(ws, "stop")  # that chat is over
        refused(ws, "no_active_stream")
        ping_pong(ws)


# -- a closed socket is a disconnect -----------------------------------------------------------

def close_socket(ws: ClientConnection, how: str) -> None:
    if how == "close frame":
        ws.close()
    else:  # the TCP connection dropped, no closing handshake
        ws.socket.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            ws.close()


def stream_info(server, sid: str) -> dict:
    return requests.get(f"{server.url}/api/streams/{sid}/info", timeout=5).json()


@pytest.mark.parametrize("how", ["close frame", "dropped TCP"])
def test_a_closed_socket_with_zero_grace_closes_the_upstream_as_client_gone(ws_server, fake_upstream,
                                                                             tag, how):
    ws = ws_connect(ws_server)
    start = start_chat(ws, "hi", provider="openai", model=fake("silence", tag, at=1, silence_s=10))
    read_deltas(ws, 1)
    left = time.monotonic()
    close_socket(ws, how)
    assert upstream_closed_after(fake_upstream, tag, left)["sent"] == 1  # in its silence
    # Not a stop: the stream ended as a client that left, not "cancelled".
    sid = start["stream_id"]
    poll_until(lambda: stream_info(ws_server, sid)["state"] == "finished", 5, "the stream to finish")
    with SSEClient(f"{ws_server.url}/api/streams/{sid}") as replay:
        kind, end = sse_piece(replay.read_all()[-1])
    assert kind == "end" and end["finish_reason"] == "client_gone", end


def test_a_closed_socket_with_on_disconnect_finish_generates_to_the_end(ws_server, fake_upstream, tag):
    ws = ws_connect(ws_server)
    start = start_chat(ws, "hi", provider="openai", model=fake("slow", tag, tokens=10, delay_ms=60),
                       on_disconnect="finish")
    got = read_deltas(ws, 2)
    ws.close()
    records = upstream_log(fake_upstream, tag, wait="finished", timeout=10)
    assert records[0]["finished"] is not None and records[0]["closed_by_peer"] is None
    with ws_connect(ws_server) as again:
        resume(again, start["stream_id"], got[-1]["seq"])
        rest = read_until_end(again)
    assert rest[-1]["finish_reason"] == "stop"
    assert text_of(got + rest) == "".join(token_list(10))
    assert_contiguous(seqs_of(rest), after=got[-1]["seq"])


def test_a_closed_socket_can_be_resumed_within_the_grace(grace_server, fake_upstream, tag):
    ws = ws_connect(grace_server)
    start = start_chat(ws, "hi", provider="openai", model=fake("slow", tag, tokens=12, delay_ms=150))
    got = read_deltas(ws, 3)
    ws.close()
    with ws_connect(grace_server) as again:
        resume(again, start["stream_id"], got[-1]["seq"])
        rest = read_until_end(again)
        ping_pong(again)
    assert rest[-1]["finish_reason"] == "stop"
    assert text_of(got + rest) == "".join(token_list(12))
    assert_contiguous(seqs_of(got + rest))
    (record,) = upstream_log(fake_upstream, tag)  # the resume started no second generation
    assert record["closed_by_peer"] is None


# -- resume across transports ------------------------------------------------------------------

def test_a_chat_started_over_ws_resumes_over_sse(two_places, fake_upstream, tag):
    here, there = two_places
    ws = ws_connect(here)
    start = start_chat(ws, "hi", provider="openai", model=fake("slow", tag, tokens=20, delay_ms=50))
    sid = start["stream_id"]
    got = read_deltas(ws, 3)
    last = got[-1]["seq"]
    ws.close()
    with SSEClient(f"{there.url}/api/streams/{sid}", headers={"Last-Event-ID": f"{sid}-{last}"}) as sse:
        assert sse.status == 200 and sse.headers["X-Stream-Id"] == sid
        events = sse.read_all()
    assert [sse_seq(e) for e in events] == list(range(last + 1, last + 1 + len(events)))
    kind, end = sse_piece(events[-1])
    assert kind == "end" and end["finish_reason"] == "stop", events[-1]
    assert text_of(got) + sse_text(events) == "".join(token_list(20))
    assert len(upstream_log(fake_upstream, tag)) == 1


@pytest.mark.parametrize("route", ["POST /api/chat", "GET /stream"])
def test_a_stream_started_over_sse_resumes_over_ws(two_places, fake_upstream, tag, route):
    here, there = two_places
    if route == "POST /api/chat":
        model = fake("slow", tag, tokens=20, delay_ms=50)
        client = SSEClient(f"{here.url}/api/chat", "POST",
                           {"uid": 7, "message": "hi", "provider": "openai", "model": model})
        expected = "".join(token_list(20))
    else:
        expected = "".join(f"w{i} " for i in range(20))
        client = SSEClient(f"{here.url}/stream?text={q(expected)}&delay_ms=50")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 3)
    client.close()
    last = sse_seq(got[-1])
    with ws_connect(there) as ws:
        resume(ws, sid, last)
        rest = read_until_end(ws)
        ping_pong(ws)
    assert rest[-1]["type"] == "end" and rest[-1]["finish_reason"] == "stop" and rest[-1]["stream_id"] == sid
    assert_contiguous(seqs_of(rest), after=last)
    assert sse_text(got) + text_of(rest) == expected
    if route == "POST /api/chat":
        assert len(upstream_log(fake_upstream, tag)) == 1


def test_stop_of_a_followed_stream_cancels_it(grace_server, fake_upstream, tag):
    model = q(fake("slow", tag, tokens=50, delay_ms=100))
    client = SSEClient(f"{grace_server.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    last = sse_seq(first_deltas(client, 2)[-1])
    client.close()
    with ws_connect(grace_server) as ws:
        resume(ws, sid, last)
        got = read_deltas(ws, 1)
        asked = time.monotonic()
        send(ws, "stop")
        rest = read_until_end(ws, timeout=5)
        assert rest[-1]["type"] == "end" and rest[-1]["finish_reason"] == "cancelled", rest[-1]
        assert upstream_closed_after(fake_upstream, tag, asked)["sent"] < 50  # before the answer's end
        assert_contiguous(seqs_of(got + rest), after=last)
        ping_pong(ws)


def test_resume_of_an_unknown_or_finished_and_read_stream_is_not_found(ws_server):
    with ws_connect(ws_server) as ws:
        send(ws, "resume", stream_id="0123456789abcdef0123456789abcdef", last_seq=0)
        refused(ws, "not_found")
        start_chat(ws, "hi")
        end = read_until_end(ws)[-1]
        send(ws, "resume", stream_id=end["stream_id"], last_seq=end["seq"])
        refused(ws, "not_found")
        ping_pong(ws)


# -- refused messages --------------------------------------------------------------------------

BAD_MESSAGES = [
    ("not JSON", "this is not JSON", "invalid_json", None),
    ("a JSON array", "[1, 2]", "invalid_json", None),
    ("a JSON string", '"chat"', "invalid_json", None),
    ("no type", '{"uid": 1, "message": "hi"}', "unknown_type", "type"),
    ("an unknown type", '{"type": "dance"}', "unknown_type", "type"),
    ("a type that is not a string", '{"type": 5}', "unknown_type", "type"),
    ("a chat without message", '{"type": "chat", "uid": 1}', "missing_field", "message"),
    ("a uid that is not an integer", '{"type": "chat", "uid": "one", "message": "hi"}',
     "invalid_field", "uid"),
    ("a resume without stream_id", '{"type": "resume", "last_seq": 0}', "missing_field", "stream_id"),
    ("a frame over MAX_BODY_BYTES", json.dumps({"type": "chat", "uid": 1, "message": "x" * 5000}),
     "message_too_large", None),
    ("a model nobody serves", json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "demo",
                                          "model": "gpt-nope"}), "model_not_found", "model"),
]


@pytest.mark.parametrize(("frame", "code", "field"), [c[1:] for c in BAD_MESSAGES],
                         ids=[c[0] for c in BAD_MESSAGES])
def test_a_refused_message_leaves_the_socket_usable(ws_server, frame, code, field):
    with ws_connect(ws_server, compression=None) as ws:
        ws.send(frame)
        error = refused(ws, code)
        if field is not None:
            assert error["field"] == field, error
        ping_pong(ws)
        start_chat(ws, "still here")
        assert read_until_end(ws)[-1]["finish_reason"] == "stop"


def test_a_frame_over_the_hard_limit_closes_the_socket_with_1009(ws_server):
    with ws_connect(ws_server, compression=None) as ws:
        ping_pong(ws)
        ws.send("x" * 70_000)  # WS_MAX_FRAME_BYTES=65536
        with pytest.raises(ConnectionClosed) as closed:
            recv_json(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009, closed.value


# -- server pings ------------------------------------------------------------------------------

def raw_upgrade(server) -> socket.socket:
    """A WebSocket handshake by hand on a plain socket; returns it after the 101."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 .encode())
    head = b""
    while b"\r\n\r\n" not in head:
        more = sock.recv(1)  # byte by byte: leave whatever follows the head unread
        assert more, f"closed during the handshake: {head!r}"
        head += more
    status, *lines = head.decode("latin-1").strip().split("\r\n")
    assert status.startswith("HTTP/1.1 101"), head
    headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    accept = hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    assert headers["sec-websocket-accept"] == base64.b64encode(accept).decode(), head
    return sock


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the unmasked frames a server sent."""
    frames, i = [], 0
    while i + 2 <= len(data):
        opcode, length = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if length in (126, 127):
            size = 2 if length == 126 else 8
            length, i = int.from_bytes(data[i:i + size], "big"), i + size
        frames.append((opcode, data[i:i + length]))
        i += length
    return frames


def test_a_peer_that_never_answers_pings_is_dropped(ping_server):
    sock = raw_upgrade(ping_server)
    with sock:
        # Wait for the server's FIN (or a reset) without reading: POLLIN is not asked for.
        poller = select.poll()
        poller.register(sock, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
        assert poller.poll(5000), "still connected 5 s after the handshake (WS_PING_S=0.5)"
        sock.settimeout(2)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while more := sock.recv(65536):
                data += more
    frames = server_frames(data)
    opcodes = [op for op, _ in frames]
    assert Opcode.PING.value in opcodes, frames
    closes = [payload for op, payload in frames if op == Opcode.CLOSE.value]
    assert closes and int.from_bytes(closes[0][:2], "big") == 1008, frames
    # Dropped for the unanswered ping: the ping came first, then the close.
    assert opcodes.index(Opcode.PING.value) < opcodes.index(Opcode.CLOSE.value), frames


class FrameLog(logging.Handler):
    """The frames a websockets connection received (from its debug log)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.pings = 0

    def emit(self, record: logging.LogRecord) -> None:
        frame = record.args[0] if record.msg == "< %s" and record.args else None
        if isinstance(frame, Frame) and frame.opcode is Opcode.PING:
            self.pings += 1


def test_a_peer_that_answers_pings_stays_connected(ping_server, tag):
    frames = FrameLog()
    logger = logging.getLogger(f"test_ws.{tag}")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    logger.addHandler(frames)
    with ws_connect(ping_server, logger=logger) as ws:
        start_chat(ws, "hi", provider="openai", model=fake("slow", tag, tokens=30, delay_ms=100))
        got = read_until_end(ws)  # about 3 s: six ping intervals
        assert frames.pings >= 2, frames.pings  # pings during the chat, answered: still on
        assert got[-1]["finish_reason"] == "stop" and text_of(got) == "".join(token_list(30))
        ping_pong(ws)
    assert frames.pings >= 4, frames.pings  # the server did ping, and our answers kept us on


# -- authentication and the Origin rule --------------------------------------------------------

def handshake_refused(server, headers: dict[str, str] | None = None, origin: str | None = None) -> tuple:
    """The status and JSON error of a handshake the server must refuse."""
    with pytest.raises(InvalidStatus) as refusal:
        ws_connect(server, headers, origin).close()
    response = refusal.value.response
    return response.status_code, json.loads(response.body)["error"]["code"]


def chat_works(server, headers: dict[str, str] | None = None, origin: str | None = None) -> None:
    with ws_connect(server, headers, origin) as ws:
        start_chat(ws, "hi")
        got = read_until_end(ws)
    assert got[-1]["finish_reason"] == "stop" and text_of(got) == demo_answer("hi")


def session_cookie(server, key: str = ALICE) -> dict[str, str]:
    resp = requests.post(f"{server.url}/api/session", headers={"Authorization": f"Bearer {key}"}, timeout=5)
    assert resp.status_code == 200, resp.text
    return {"Cookie": f"streamapp_session={resp.cookies['streamapp_session']}"}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}, {"X-API-Key": "wrong-key"},
                                     {"Authorization": f"Basic {ALICE}"}])
def test_handshake_without_a_valid_key_is_401(keyed, headers):
    assert handshake_refused(keyed, headers) == (401, "unauthorized")


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {ALICE}"}, {"X-API-Key": BOB}])
def test_handshake_with_a_key_works(keyed, headers):
    chat_works(keyed, headers)


def test_session_cookie_works_only_with_an_allowed_origin(keyed):
    cookie = session_cookie(keyed)
    for origin in (EVIL, "null", None):
        assert handshake_refused(keyed, cookie, origin) == (403, "origin_not_allowed"), origin
    for origin in (keyed.url, OTHER):
        chat_works(keyed, cookie, origin)


def test_a_foreign_origin_is_refused_even_with_a_key(keyed):
    assert handshake_refused(keyed, {"X-API-Key": BOB}, EVIL) == (403, "origin_not_allowed")


def test_open_service_refuses_foreign_origins_only(ws_server):
    assert handshake_refused(ws_server, origin=EVIL) == (403, "origin_not_allowed")
    assert handshake_refused(ws_server, origin="null") == (403, "origin_not_allowed")
    chat_works(ws_server)  # no Origin: not a browser
    chat_works(ws_server, origin=ws_server.url)


def test_resume_of_another_keys_stream_is_not_stream_owner(keyed):
    alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
    with ws_connect(keyed, alice) as first:
        sid = start_chat(first, LONG_MESSAGE)["stream_id"]
        got = read_deltas(first, 1)
        with ws_connect(keyed, bob) as other:
            send(other, "resume", stream_id=sid, last_seq=0)
            refused(other, "not_stream_owner")
            ping_pong(other)
        with ws_connect(keyed, alice) as second:  # its own key may follow it, from the start
            resume(second, sid, 0)
            followed = read_until_end(second)
        got += read_until_end(first)
    assert text_of(followed) == text_of(got) == demo_answer(LONG_MESSAGE)
    assert followed[-1]["seq"] == got[-1]["seq"]


def test_resume_checks_the_owner_before_anything_else(keyed):
    """Another key's finished stream, resumed at its end, is not_stream_owner, not not_found:
    the answer tells nothing of another client's stream."""
    with ws_connect(keyed, {"X-API-Key": ALICE}) as first:
        sid = start_chat(first, "a b c")["stream_id"]
        last = read_until_end(first)[-1]["seq"]
    with ws_connect(keyed, {"X-API-Key": BOB}) as other:
        for after in (0, last):
            send(other, "resume", stream_id=sid, last_seq=after)
            refused(other, "not_stream_owner")


# -- limits ------------------------------------------------------------------------------------

def long_stream(server) -> SSEClient:
    client = SSEClient(f"{server.url}/stream?text={q(LONG_TEXT)}&delay_ms=100")
    assert client.status == 200, client.resp.read()
    first_deltas(client, 1)
    return client


def short_stream(server) -> int:
    return requests.get(f"{server.url}/stream", params={"text": "a b", "delay_ms": 0}, timeout=10).status_code


def test_a_ws_chat_counts_against_the_concurrent_stream_cap(start_server):
    server = start_server(MAX_STREAMS_PER_KEY=1, RESUME_GRACE_S=0, DEMO_DELAY_MS=20)
    http = long_stream(server)
    with ws_connect(server) as ws:
        try:
            send(ws, "chat", uid=1, message="hi")
            refused(ws, "too_many_streams")
            ping_pong(ws)
        finally:
            http.close()

        def accepted() -> dict | None:  # the HTTP stream's slot comes back once it stopped
            send(ws, "chat", uid=1, message=LONG_MESSAGE)
            message = recv_json(ws)
            if message["type"] == "error" and message["code"] == "too_many_streams":
                return None
            return message
        assert poll_until(accepted, 10, "the HTTP stream's slot")["type"] == "start"
        read_deltas(ws, 1)
        assert short_stream(server) == 429  # the WS chat holds the one slot
        assert read_until_end(ws)[-1]["finish_reason"] == "stop"


def test_ws_chats_count_against_the_rate_limit(start_server):
    server = start_server(RATE_LIMIT="2/minute", DEMO_DELAY_MS=0)
    with ws_connect(server) as ws:
        start_chat(ws, "one")
        assert read_until_end(ws)[-1]["finish_reason"] == "stop"
        assert short_stream(server) == 200  # the second start, over HTTP
        send(ws, "chat", uid=1, message="three")
        refused(ws, "rate_limited")
        ping_pong(ws)
    assert short_stream(server) == 429


@pytest.mark.parametrize("how", ["query", "header"])
def test_a_resume_id_on_the_handshake_exempts_no_chat_from_the_rate_limit(start_server, how):
    """HTTP resumes are not counted; a socket whose handshake looks like one still counts
    every chat (found in review: it made every chat on the socket free)."""
    server = start_server(RATE_LIMIT="2/minute", DEMO_DELAY_MS=0)
    url = f"ws://127.0.0.1:{server.port}/ws" + ("?last_event_id=x-1" if how == "query" else "")
    headers = {"Last-Event-ID": "x-1"} if how == "header" else None
    with connect(url, additional_headers=headers, open_timeout=5, close_timeout=2, proxy=None,
                 ping_interval=None) as ws:
        for n in range(2):
            start_chat(ws, f"chat {n}")
            assert read_until_end(ws)[-1]["finish_reason"] == "stop"
        send(ws, "chat", uid=1, message="over the limit")
        refused(ws, "rate_limited")


def test_a_resume_past_the_end_of_a_running_stream_says_so(ws_server):
    """A finished stream is refused before ``start``; a running one is followed, and when it
    ends short of the point asked for, the client hears so (not silence)."""
    with ws_connect(ws_server) as producing, ws_connect(ws_server) as follower:
        sid = start_chat(producing, "a short one")["stream_id"]
        resume(follower, sid, 10_000)
        assert read_until_end(producing)[-1]["finish_reason"] == "stop"
        error = recv_json(follower, timeout=10)
        assert error["type"] == "error" and error["code"] == "not_found" and error["stream_id"] == sid
        ping_pong(follower)


def test_behind_a_trusted_tls_proxy_the_https_origin_of_the_site_is_its_own(start_server):
    """nginx terminates TLS and says so in X-Forwarded-Proto: a page of https://host is this
    site (with TRUSTED_PROXIES); the same host over http is another origin."""
    server = start_server(TRUSTED_PROXIES=1)
    host = f"127.0.0.1:{server.port}"
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.1.2.3"}
    with ws_connect(server, headers=proxied, origin=f"https://{host}") as ws:
        ping_pong(ws)
    with pytest.raises(InvalidStatus) as refused_:
        ws_connect(server, headers=proxied, origin=f"http://{host}")
    assert refused_.value.response.status_code == 403
