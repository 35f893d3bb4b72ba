"""Usage with its provenance (``streamapp.usage.record``) on a real gunicorn server, over the fake
upstream's OpenAI and Ollama formats: for each way a stream ends, the record on ``/api/chat``'s
end (or error) event, the WebSocket ``end``, the stream info, the summary log line and the
Responses and Messages doors; ``include_usage`` always asked of the upstream yet given on ``/v1``
only when the client asked."""

from __future__ import annotations

import json

import pytest
import requests
from anthropic import Anthropic
from openai import OpenAI
from websockets.sync.client import connect

from streamapp.usage.record import COMPLETION_METHOD, PROMPT_METHOD, estimate_input
from tests.helpers import SSEClient, first_deltas, poll_until, recv_until, upstream_log

MESSAGE = "hello there, how are you?"
PROMPT = estimate_input([{"role": "user", "content": MESSAGE}])  # what the server estimates
BOTH = f"{PROMPT_METHOD}; {COMPLETION_METHOD}"
# Ollama's fake answers count prompt 7, eval 11 whatever the tokens; OpenAI's 7 and n.
REPORTED = {"openai": lambda n: (7, n, 7 + n), "ollama": lambda n: (7, 11, 18)}


@pytest.fixture(scope="module")
def usage_server(start_server):
    return start_server(HEARTBEAT_S=0.5, RESUME_GRACE_S=0, HEADER_WAIT_S=0.3, READ_TIMEOUT_S=5,
                        CONNECT_TIMEOUT_S=2, STALL_TIMEOUT_S=1, STREAM_MAX_EVENTS=4, DEMO_DELAY_MS=0)


def chat(server, provider: str, model: str, **body) -> SSEClient:
    return SSEClient(f"{server.url}/api/chat", "POST",
                     {"uid": 1, "message": MESSAGE, "provider": provider, "model": model, **body})


def ended(client: SSEClient) -> tuple[str, dict]:
    """The last event's name and data of a whole stream."""
    events = client.read_all()
    return events[-1].event, json.loads(events[-1].data)


def info(server, sid: str) -> dict:
    return poll_until(lambda: (r := requests.get(f"{server.url}/api/streams/{sid}/info", timeout=5).json())
                      ["state"] == "finished" and r, 10, f"stream {sid} to finish")


def counts(usage: dict) -> tuple:
    return usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_complete_answer_with_usage_is_reported(usage_server, provider, tag) -> None:
    with chat(usage_server, provider, f"normal?tokens=3&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        name, end = ended(client)
    assert name == "message" and end["finish_reason"] == "stop"
    usage = end["usage"]
    assert counts(usage) == REPORTED[provider](3) and usage["source"] == "reported" and "method" not in usage
    assert info(usage_server, sid)["usage"] == usage
    line = poll_until(lambda: [ln for ln in usage_server.process.output().splitlines()
                               if f"stream {sid} ended" in ln], 5, "the summary line")[0]
    logged = json.loads(json.loads(line.split(" usage=", 1)[1]))
    assert logged == usage


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_no_usage_from_the_upstream_is_estimated_naming_the_method(usage_server, provider, tag) -> None:
    with chat(usage_server, provider, f"nousage?tokens=3&tag={tag}") as client:
        _, end = ended(client)
    assert end["usage"] == {"prompt_tokens": PROMPT, "completion_tokens": 3, "total_tokens": PROMPT + 3,
                            "source": "estimated", "method": BOTH}


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_an_explicit_zero_stays_a_reported_zero(usage_server, provider, tag) -> None:
    with chat(usage_server, provider, f"zerousage?tokens=3&tag={tag}") as client:
        _, end = ended(client)
    zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    assert end["usage"] == {**zero, "source": "reported"}


def test_a_count_ollama_left_out_stays_unknown_never_zero(usage_server, tag) -> None:
    # Ollama's done line without prompt_eval_count (a prompt it served from its cache)
    with chat(usage_server, "ollama", f"cachedprompt?tokens=3&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        _, end = ended(client)
    assert end["usage"] == {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": None,
                            "source": "reported"}
    assert info(usage_server, sid)["usage"] == end["usage"]


def test_a_cut_after_the_usage_chunk_keeps_the_upstreams_counts(usage_server, tag) -> None:
    # OpenAI's usage chunk came, then the connection closed before [DONE]
    with chat(usage_server, "openai", f"usagecut?tokens=3&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        name, error = ended(client)
    assert name == "error" and error["code"] == "upstream_cut"
    assert error["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10,
                              "source": "partial"}
    assert info(usage_server, sid)["usage"] == error["usage"]


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_cancelled_stream_counts_what_was_produced(usage_server, provider, tag) -> None:
    with chat(usage_server, provider, f"slow?tokens=50&delay_ms=100&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 2)
        assert requests.post(f"{usage_server.url}/api/streams/{sid}/cancel", timeout=5).status_code == 202
        events = client.read_all()
    end = json.loads(events[-1].data)
    deltas = [e for e in events if e.event == "message" and "delta" in json.loads(e.data)]
    assert end["finish_reason"] == "cancelled"
    assert end["usage"] == {"prompt_tokens": PROMPT, "completion_tokens": len(deltas),
                            "total_tokens": PROMPT + len(deltas), "source": "partial", "method": BOTH}
    assert 2 <= len(deltas) < 50


@pytest.mark.parametrize("provider", ["openai", "ollama"])
@pytest.mark.parametrize("mode, code, produced", [("drop?at=2", "upstream_cut", 2),
                                                   ("silence?at=1&silence_s=10", "upstream_stalled", 1),
                                                   ("inband?at=3", "upstream_error", 3)])
def test_a_failed_stream_ends_with_a_partial_record(usage_server, provider, mode, code, produced,
                                                     tag) -> None:
    with chat(usage_server, provider, f"{mode}&tokens=5&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        name, error = ended(client)
    assert name == "error" and error["code"] == code
    assert error["usage"] == {"prompt_tokens": PROMPT, "completion_tokens": produced,
                              "total_tokens": PROMPT + produced, "source": "partial", "method": BOTH}
    assert info(usage_server, sid)["usage"] == error["usage"]


def test_our_length_limit_is_partial(usage_server, tag) -> None:
    with chat(usage_server, "openai", f"normal?tokens=9&tag={tag}") as client:  # STREAM_MAX_EVENTS=4
        _, end = ended(client)
    # the fifth chunk came from the upstream (it was produced) and ended the stream unrelayed
    assert end["finish_reason"] == "length" and end["usage"]["source"] == "partial"
    assert end["usage"]["completion_tokens"] == 5


def test_a_client_that_leaves_gets_a_partial_record(usage_server, tag) -> None:
    with chat(usage_server, "openai", f"slow?tokens=50&delay_ms=100&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 1)
    usage = poll_until(lambda: info(usage_server, sid)["usage"], 10, "the record")
    assert usage["source"] == "partial" and 1 <= usage["completion_tokens"] < 50


@pytest.mark.parametrize("provider", ["openai", "ollama"])
def test_a_stream_the_upstream_never_accepted_is_unknown_never_zero(usage_server, provider, tag) -> None:
    resp = requests.post(f"{usage_server.url}/api/chat", json={
        "uid": 1, "message": MESSAGE, "provider": provider, "model": f"status?status=503&tag={tag}"},
        timeout=10)
    assert resp.status_code == 502
    assert info(usage_server, resp.headers["X-Stream-Id"])["usage"] == {
        "prompt_tokens": None, "completion_tokens": None, "total_tokens": None, "source": "unknown"}


def test_the_websocket_end_carries_the_record(usage_server, fake_upstream, tag) -> None:
    with connect(f"ws://127.0.0.1:{usage_server.port}/ws") as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": MESSAGE, "provider": "openai",
                            "model": f"nousage?tokens=2&tag={tag}", "max_tokens": 50}))
        end = recv_until(ws, lambda m: m["type"] in ("end", "error"))[-1]
    assert end["type"] == "end" and end["usage"]["source"] == "estimated"
    assert counts(end["usage"]) == (PROMPT, 2, PROMPT + 2)
    assert upstream_log(fake_upstream, tag)[0]["body"]["max_tokens"] == 50  # passed on


def test_include_usage_is_always_asked_and_given_only_when_asked(usage_server, fake_upstream, tag) -> None:
    client = OpenAI(base_url=f"{usage_server.url}/v1", api_key="unused")
    model = f"openai/normal?tokens=3&tag={tag}"
    messages = [{"role": "user", "content": MESSAGE}]
    plain = list(client.chat.completions.create(model=model, messages=messages, stream=True))
    asked = list(client.chat.completions.create(model=model, messages=messages, stream=True,
                                                stream_options={"include_usage": True}))
    records = upstream_log(fake_upstream, tag)
    assert [r["stream_options"] for r in records] == [{"include_usage": True}] * 2
    assert all(c.usage is None for c in plain) and plain[-1].choices  # no usage chunk
    last = asked[-1]
    assert last.choices == [] and last.usage.model_dump(exclude_none=True) == {
        "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}  # OpenAI's shape: no source
    assert "source" not in (last.usage.model_extra or {})


def test_the_responses_and_messages_doors_give_the_record_in_their_shapes(usage_server, tag) -> None:
    responses = OpenAI(base_url=f"{usage_server.url}/v1", api_key="unused").responses
    done = list(responses.create(model=f"openai/nousage?tokens=2&tag={tag}", input=MESSAGE, stream=True))[-1]
    usage = done.response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (PROMPT, 2, PROMPT + 2)
    assert usage.model_extra["source"] == "estimated" and usage.model_extra["method"] == BOTH
    anthropic = Anthropic(base_url=usage_server.url, api_key="unused")
    message = anthropic.messages.create(model=f"ollama/normal?tokens=2&tag={tag}", max_tokens=20,
                                        messages=[{"role": "user", "content": MESSAGE}])
    assert (message.usage.input_tokens, message.usage.output_tokens) == (7, 11)
    assert message.usage.model_extra["source"] == "reported"
