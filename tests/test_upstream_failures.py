"""After the first token a failing upstream is never a silent end: a cut, a stall (no event for
STALL_TIMEOUT_S, keep-alive bytes or not) or a malformed event ends the stream with an explicit
error event on every front door; and before the first token SSE clients get heartbeats."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
import requests

from tests.fake_upstream import REASONING, token_list
from tests.helpers import SSEClient, data_events, q, recv_until
from tests.test_ws import ends_stream, start_chat, ws_connect

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stalling(start_server):
    """A stall is 1 s without an event; the read timeout (20 s) alone would wait far longer."""
    return start_server(STALL_TIMEOUT_S=1, READ_TIMEOUT_S=20, HEADER_WAIT_S=0.2, HEARTBEAT_S=0.5,
                        RESUME_GRACE_S=0)


def sse_error(server, path: str, model: str) -> str:
    """``/ai-stream`` and ``/api/chat``: the ``error`` event's code, after the first two tokens."""
    if path == "/ai-stream":
        client = SSEClient(f"{server.url}/ai-stream?prompt=hi&model={q(model)}", timeout=20)
    else:
        client = SSEClient(f"{server.url}/api/chat", "POST",
                           {"uid": 1, "message": "hi", "provider": "ollama", "model": model}, timeout=20)
    with client:
        assert client.status == 200
        events = client.read_all()
    assert [json.loads(e.data)["delta"] if path != "/ai-stream" else e.data
            for e in data_events(events)] == token_list(2)
    assert events[-1].event == "error"
    return json.loads(events[-1].data)["code"]


def door_sse(server, model: str) -> str:
    return sse_error(server, "/ai-stream", model)


def door_chat(server, model: str) -> str:
    return sse_error(server, "/api/chat", model)


def door_text(server, model: str) -> str:
    resp = requests.post(f"{server.url}/api/chat?format=text", timeout=20,
                         json={"uid": 1, "message": "hi", "provider": "openai", "model": model})
    assert resp.status_code == 200 and resp.text.startswith("".join(token_list(2)))
    tail = resp.text.rstrip("\n").rsplit("\n", 1)[-1]  # "[error <code>: <message>]"
    assert tail.startswith("[error ") and tail.endswith("]"), resp.text
    return tail[len("[error "):].split(":", 1)[0]


def raw_events(server, path: str, body: dict) -> list:
    with SSEClient(f"{server.url}{path}", "POST", body, timeout=20) as client:
        assert client.status == 200
        return client.read_all()


def door_v1(server, model: str) -> str:
    events = raw_events(server, "/v1/chat/completions",
                        {"model": f"openai/{model}", "messages": HI, "stream": True})
    chunks = [json.loads(e.data) for e in events if e.data != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    assert text == "".join(token_list(2))
    return chunks[-1]["error"]["code"]


def door_responses(server, model: str) -> str:
    events = raw_events(server, "/v1/responses", {"model": f"openai/{model}", "input": "hi", "stream": True})
    assert events[-1].event == "response.failed"
    message = json.loads(events[-1].data)["response"]["error"]["message"]
    return message.split(":", 1)[0]


def door_messages(server, model: str) -> str:
    events = raw_events(server, "/v1/messages",
                        {"model": f"openai/{model}", "max_tokens": 50, "messages": HI, "stream": True})
    assert events[-1].event == "error"
    return json.loads(events[-1].data)["error"]["message"].split(":", 1)[0]


def door_ws(server, model: str) -> str:
    with ws_connect(server) as ws:
        start_chat(ws, "hi", provider="openai", model=model)
        got = recv_until(ws, ends_stream, 20)
    assert "".join(m["content"] for m in got if m["type"] == "delta") == "".join(token_list(2))
    assert got[-1]["type"] == "error"
    return got[-1]["code"]


DOORS = {"sse": door_sse, "chat": door_chat, "text": door_text, "v1": door_v1, "ws": door_ws,
         "responses": door_responses, "messages": door_messages}
FAILURES = {  # what the upstream does after two tokens -> the code every door shows
    "cut": ("drop?at=2", "upstream_cut"),
    "keep-alive without events": ("keepalive?at=2&silence_s=15&tokens=4", "upstream_stalled"),
    "malformed": ("malformed?at=2", "upstream_bad_response"),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
@pytest.mark.parametrize("door", sorted(DOORS))
def test_a_failure_after_the_first_token_is_an_error_event_on_every_door(stalling, door, failure) -> None:
    model, code = FAILURES[failure]
    assert DOORS[door](stalling, model) == code


@pytest.mark.parametrize("door", ["sse", "v1"])
def test_a_silent_stall_ends_at_the_stall_timeout_not_the_read_timeout(stalling, fake_upstream, tag,
                                                                       door) -> None:
    """The upstream sends nothing (the read timeout, 20 s, would end it much later)."""
    model = f"silence?at=2&silence_s=15&tokens=4&tag={tag}"
    assert DOORS[door](stalling, model) == "upstream_stalled"
    records = requests.get(f"{fake_upstream}/_log", params={"tag": tag}, timeout=5).json()
    assert records[0]["closed_by_peer"] is not None  # the upstream was closed before it went on


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_reasoning_events_are_events(stalling, provider) -> None:
    """A reasoning model whose events come slower than nothing, but each within the stall timeout,
    is not stalled: its reasoning counts (4 x 0.4 s of reasoning and text, past 1 s in all)."""
    model = q("reasoning?tokens=2&delay_ms=400")
    path = "/ai-stream" if provider == "openai" else "/local-ai"
    with SSEClient(f"{stalling.url}{path}?prompt=hi&model={model}", timeout=20) as client:
        events = client.read_all()
    assert "".join(e.data for e in events if e.event == "reasoning") == "".join(REASONING)
    assert events[-1].event == "end"


@pytest.fixture(scope="module")
def read_first(start_server):
    """The read timeout (1 s) shorter than the stall timeout: a silent upstream is still stalled."""
    return start_server(STALL_TIMEOUT_S=30, READ_TIMEOUT_S=1, HEADER_WAIT_S=0.2, HEARTBEAT_S=0.5,
                        RESUME_GRACE_S=0)


def test_a_read_timeout_after_the_first_token_is_a_stall(read_first) -> None:
    assert door_sse(read_first, "silence?at=2&silence_s=5&tokens=4") == "upstream_stalled"


@pytest.fixture(scope="module")
def beating(start_server):
    return start_server(HEADER_WAIT_S=0.2, HEARTBEAT_S=0.3, RESUME_GRACE_S=0, READ_TIMEOUT_S=20)


@pytest.mark.parametrize("path", ["/ai-stream?prompt=hi&model=", "/v1/messages"])
def test_heartbeats_reach_sse_clients_while_the_upstream_thinks(beating, path) -> None:
    """The upstream accepted at once and sends its first token after 2 s: comments come before it."""
    model = "silence?at=0&silence_s=2&tokens=2"
    if path.startswith("/ai-stream"):
        client = SSEClient(f"{beating.url}{path}{quote(model)}", timeout=20)
    else:
        client = SSEClient(f"{beating.url}{path}", "POST", {"model": f"openai/{model}", "max_tokens": 50,
                                                            "messages": HI, "stream": True}, timeout=20)
    with client:
        assert client.status == 200
        first = (b"data: " + token_list(1)[0].encode(), b'"text_delta"')
        before = []
        for chunk in client.iter_chunks():
            if any(token in chunk for token in first):
                break
            before.append(chunk)
        client.read_all()
    beats = sum(c.count(b": keep-alive") + c.count(b"event: ping") for c in before)
    assert beats >= 3, before
