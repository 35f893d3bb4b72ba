"""Token budgets on real gunicorn servers over the fake upstream: exactly the allowed number of
streams pass when many start at once across two instances on one Redis; a cancelled stream's
reservation comes back; a killed worker's reservation expires; the 429 ``budget_exceeded`` with
``Retry-After`` on every front door in its own shape."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from websockets.sync.client import connect

from streamapp.usage.record import estimate_input, usage_meta
from tests.helpers import SSEClient, first_deltas, poll_until, recv_until, upstream_log

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-0123456789"}
MESSAGE = "hi"
PROMPT = estimate_input([{"role": "user", "content": MESSAGE}])


def keys_file(tmp_path, alice: str, bob: str = "") -> str:
    path = tmp_path / "keys"
    path.write_text(f"alice:{KEYS['alice']} {alice}\nbob:{KEYS['bob']} {bob}\n")
    return str(path)


def auth(name: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def body(model: str, max_tokens: int) -> dict:
    return {"uid": 1, "message": MESSAGE, "provider": "openai", "model": model, "max_tokens": max_tokens}


def start(server, model: str, max_tokens: int, name: str = "alice") -> requests.Response:
    """A /api/chat start; its answer (the body left unread: the caller reads or closes it)."""
    return requests.post(f"{server.url}/api/chat", json=body(model, max_tokens), headers=auth(name),
                         stream=True, timeout=10)


def started(server, model: str, max_tokens: int) -> requests.Response | None:
    """A start that got 200 (its answer, to close), else ``None`` (the refusal closed)."""
    resp = start(server, model, max_tokens)
    if resp.status_code == 200:
        return resp
    assert resp.status_code == 429, resp.text
    resp.close()
    return None


def test_exactly_the_allowed_streams_pass_across_two_instances(start_server, redis_url, redis_prefix,
                                                               tmp_path, tag) -> None:
    # 1000 tokens a day; each stream reserves 200 + its input: four fit, a fifth does not.
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, HEADER_WAIT_S=0.2,
                    API_KEYS_FILE=keys_file(tmp_path, "tokens=1000/day tokens=5000/hour"))
    a, b = start_server(**settings), start_server(**settings)
    assert 4 * (200 + PROMPT) <= 1000 < 5 * (200 + PROMPT)
    model = f"slow?tokens=10&delay_ms=300&tag={tag}"  # each lasts 3 s: none ends before all started
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda i: start((a, b)[i % 2], model, 200), range(12)))
    try:
        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] * 4 + [429] * 8, statuses
        refused = next(r for r in answers if r.status_code == 429)
        assert refused.json()["error"]["code"] == "budget_exceeded"
        for resp in answers:
            if resp.status_code == 200:
                resp.content  # noqa: B018 - read each stream to its end
    finally:
        for resp in answers:
            resp.close()
    # Settled to what they used (7 + 10 each) as each ended, so another stream fits, on either instance.
    resp = poll_until(lambda: started(b, f"normal?tokens=2&tag={tag}", 200), 5, "the settlements",
                      interval=0.2)
    resp.close()


def _chat_end(server, model: str, provider: str = "openai", name: str = "alice",
              **extra) -> tuple[int, dict | None]:
    """A whole /api/chat stream of ``name``'s: its status and its last event's data."""
    with SSEClient(f"{server.url}/api/chat", "POST", {"uid": 1, "message": MESSAGE, "provider": provider,
                                                      "model": model, **extra}, headers=auth(name)) as client:
        if client.status != 200:
            return client.status, None
        return 200, json.loads(client.read_all()[-1].data)


def test_a_stream_without_max_tokens_spends_at_most_its_reservation(start_server, fake_upstream, tmp_path,
                                                                     tag) -> None:
    """The reviewer's repro: 100 tokens a day, 10 reserved for the output of a stream without
    max_tokens, five streams at once against an upstream that writes 60 tokens whatever it is
    asked (before: all five ran to 67 tokens each, 335 in the ledger). The upstream is asked for
    10 at most; past them (it ignores the limit) the stream ends with ``length``."""
    server = start_server(API_KEYS_FILE=keys_file(tmp_path, "tokens=100/day", "tokens=1000/day"),
                          BUDGET_DEFAULT_MAX_TOKENS=10, HEADER_WAIT_S=0.2)
    model = f"normal?tokens=60&tag={tag}"
    with ThreadPoolExecutor(5) as pool:
        ends = list(pool.map(lambda _: _chat_end(server, model), range(5)))
    assert [status for status, _ in ends] == [200] * 5
    for _, end in ends:
        assert end["finish_reason"] == "length" and end["usage"]["source"] == "partial"
        # the one chunk past the reservation that ended it was produced, so it is counted
        assert end["usage"]["completion_tokens"] == 11
    asked = [r["body"] for r in upstream_log(fake_upstream, tag)]
    assert len(asked) == 5 and all(b["max_tokens"] == 10 for b in asked)
    usage = poll_until(lambda: (a := requests.get(f"{server.url}/api/usage", headers=auth(), timeout=5)
                                .json())["total"]["streams"] == 5 and a, 5, "five streams in the ledger")
    assert usage["total"]["total_tokens"] == 5 * (PROMPT + 11) <= 100
    # (bob) Ollama is asked by its own name (num_predict); a stream's own max_tokens is its own
    _, end = _chat_end(server, f"normal?tokens=3&tag={tag}-ollama", "ollama", "bob")
    assert end["usage"]["source"] == "reported"
    assert upstream_log(fake_upstream, f"{tag}-ollama")[0]["body"]["options"] == {"num_predict": 10}
    _chat_end(server, f"normal?tokens=3&tag={tag}-own", name="bob", max_tokens=4)
    assert upstream_log(fake_upstream, f"{tag}-own")[0]["body"]["max_tokens"] == 4
    # the /v1 and Responses doors without a limit are capped the same way
    for door, payload in (("chat/completions", {"messages": [{"role": "user", "content": MESSAGE}],
                                                "stream": True}),
                          ("responses", {"input": MESSAGE, "stream": True})):
        model = f"openai/normal?tokens=3&tag={tag}-{door[:4]}"
        with requests.post(f"{server.url}/v1/{door}", json={"model": model, **payload}, headers=auth("bob"),
                           timeout=10) as resp:
            assert resp.status_code == 200, resp.text
        assert upstream_log(fake_upstream, f"{tag}-{door[:4]}")[0]["body"]["max_tokens"] == 10, door


def test_the_input_estimate_counts_the_tools() -> None:
    messages = [{"role": "user", "content": "what is the weather in Zürich?"}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "The weather now",
                                                "parameters": {"type": "object",
                                                               "properties": {"city": {"type": "string"}}}}}]
    size = len(messages[0]["content"].encode()) + len(json.dumps(tools, separators=(",", ":")).encode())
    assert usage_meta(messages, {"tools": tools})["prompt_estimate"] == -(-size // 4) + 4
    assert usage_meta(messages, {})["prompt_estimate"] == estimate_input(messages) < -(-size // 4) + 4


@pytest.fixture(scope="module")
def budgeted(start_server, tmp_path_factory):
    path = keys_file(tmp_path_factory.mktemp("keys"), "tokens=1000/day", "tokens=10/day")
    return start_server(API_KEYS_FILE=path, HEADER_WAIT_S=0.2, RESUME_GRACE_S=0, DEMO_DELAY_MS=0)


def test_a_cancelled_streams_reservation_comes_back(budgeted, tag) -> None:
    slow = f"slow?tokens=50&delay_ms=100&tag={tag}"
    with SSEClient(f"{budgeted.url}/api/chat", "POST", body(slow, 400), headers=auth()) as first:
        sid = first.headers["X-Stream-Id"]
        first_deltas(first, 1)
        second = start(budgeted, slow, 400)  # 2 x 405 reserved of 1000
        third = start(budgeted, slow, 400)
        assert (second.status_code, third.status_code) == (200, 429)
        third.close()
        cancel = requests.post(f"{budgeted.url}/api/streams/{sid}/cancel", headers=auth(), timeout=5)
        assert cancel.status_code == 202
        end = json.loads(first.read_all()[-1].data)
    second.close()  # its client leaves: the stream stops (client_gone), its reservation comes back too
    assert end["finish_reason"] == "cancelled" and end["usage"]["source"] == "partial"
    # Both settled to what they produced (a few tokens each): a stream reserving 900 fits again.
    resp = poll_until(lambda: started(budgeted, f"normal?tokens=2&tag={tag}", 900 - PROMPT - 60), 10,
                      "the reservations to come back", interval=0.2)
    resp.close()


def _ws_refusal(server) -> dict:
    with connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers=auth("bob")) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": MESSAGE}))
        return recv_until(ws, lambda m: m["type"] in ("error", "start"))[-1]


def test_the_429_on_every_front_door_in_its_own_shape(budgeted) -> None:
    """bob has 10 tokens a day: any stream (4096 reserved by default, plus its input) is refused."""
    url, headers = budgeted.url, auth("bob")
    doors = {
        "chat": requests.post(f"{url}/api/chat", json={"uid": 1, "message": MESSAGE}, headers=headers,
                              timeout=5),
        "stream": requests.get(f"{url}/stream?text=hi", headers=headers, timeout=5),
        "v1": requests.post(f"{url}/v1/chat/completions", headers=headers, timeout=5, json={
            "model": "demo", "messages": [{"role": "user", "content": MESSAGE}], "stream": True}),
        "responses": requests.post(f"{url}/v1/responses", json={"model": "demo", "input": MESSAGE},
                                   headers=headers, timeout=5),
        "messages": requests.post(f"{url}/v1/messages", headers=headers, timeout=5, json={
            "model": "demo", "max_tokens": 50, "messages": [{"role": "user", "content": MESSAGE}]}),
    }
    for door, resp in doors.items():
        assert resp.status_code == 429, door
        assert 1 <= int(resp.headers["Retry-After"]) <= 86400, door
    assert doors["chat"].json()["error"]["code"] == "budget_exceeded"
    assert doors["stream"].json()["error"]["code"] == "budget_exceeded"
    for door in ("v1", "responses"):
        error = doors[door].json()["error"]
        assert (error["code"], error["type"]) == ("budget_exceeded", "rate_limit_error")
    anthropic = doors["messages"].json()
    assert anthropic["type"] == "error" and anthropic["error"]["type"] == "rate_limit_error"
    assert "10 tokens a day" in anthropic["error"]["message"] and "resets at" in anthropic["error"]["message"]
    refusal = _ws_refusal(budgeted)
    assert refusal["code"] == "budget_exceeded" and 1 <= refusal["retry_after"] <= 86400
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'streamapp_rejections_total{reason="budget_exceeded"}' in metrics


def test_a_killed_workers_reservation_expires(start_server, redis_url, redis_prefix, tmp_path, tag) -> None:
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, HEADER_WAIT_S=0.2, BUDGET_LEASE_S=3,
                    API_KEYS_FILE=keys_file(tmp_path, "tokens=600/day"))
    a, b = start_server(**settings), start_server(**settings)
    with SSEClient(f"{a.url}/api/chat", "POST", body(f"slow?tokens=100&delay_ms=100&tag={tag}", 400),
                   headers=auth()) as held:
        sid = held.headers["X-Stream-Id"]
        first_deltas(held, 1)
        pid = requests.get(f"{a.url}/api/streams/{sid}/info", headers=auth(), timeout=5).json()["pid"]
        os.kill(pid, signal.SIGKILL)  # the worker dies holding its 405 tokens: nothing settles them
    refused = start(b, f"normal?tokens=2&tag={tag}", 400)
    assert refused.status_code == 429  # still held by the dead worker's lease
    refused.close()
    resp = poll_until(lambda: started(b, f"normal?tokens=2&tag={tag}", 400), 15,
                      "the dead worker's reservation to expire", interval=0.2)
    resp.close()
