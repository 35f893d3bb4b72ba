"""Providers against the fake upstream: wire formats, errors, prompt delivery."""

from __future__ import annotations

import json
import time

import pytest
import requests
from websockets.sync.client import connect

from streamapp.errors import UpstreamError
from streamapp.events import Delta, Done, Opened
from streamapp.providers import ChatRequest
from streamapp.providers.demo import DemoProvider, tokenize
from streamapp.providers.ollama import OllamaProvider
from streamapp.providers.openai import OpenAIProvider
from streamapp.sse import MAX_LINE_BYTES
from tests.fake_upstream import BAD_SHAPES, BAD_TEXT, ERROR_PAGE_MARKER, LONG_MESSAGE_CHARS, token_list
from tests.helpers import (
    SSEClient,
    data_events,
    free_port,
    poll_until,
    q,
    recv_until,
    upstream_closed_at,
    upstream_log,
)

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["openai", "ollama"])
def provider(request, fake_upstream):
    if request.param == "openai":
        return OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "normal", (2, 2))
    return OllamaProvider(fake_upstream, "normal", (2, 2))


def run(provider, model: str) -> list:
    return list(provider.stream(ChatRequest(MESSAGES, model=model)))


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def test_normal_stream(provider, fake_upstream, tag) -> None:
    events = run(provider, f"normal?tokens=6&tag={tag}")
    assert isinstance(events[0], Opened)
    assert text_of(events) == "".join(token_list(6))
    assert [e.index for e in events if isinstance(e, Delta)] == list(range(6))
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "stop"
    assert done.usage["prompt_tokens"] == 7
    (record,) = upstream_log(fake_upstream, tag)
    assert record["messages"] == MESSAGES and record["stream"] is True


def test_openai_asks_for_usage_and_sends_the_key(fake_upstream, tag) -> None:
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "normal", (2, 2))
    run(provider, f"normal?tag={tag}")
    (record,) = upstream_log(fake_upstream, tag)
    assert record["stream_options"] == {"include_usage": True}
    assert record["authorization"] == "Bearer sk-test"


def test_split_multibyte_characters_and_crlf(provider) -> None:
    assert text_of(run(provider, "split")) == "h\u00e9llo \u4f60\u597d w\u00f6rld"


def test_tokens_are_handed_over_as_they_arrive(provider, fake_upstream, tag) -> None:
    stream = provider.stream(ChatRequest(MESSAGES, model=f"silence?at=2&silence_s=10&tag={tag}"))
    got = []
    for event in stream:
        if isinstance(event, Delta):
            got.append(event.text)
            if len(got) == 2:
                break
    (record,) = upstream_log(fake_upstream, tag)  # read while the provider holds the stream
    stream.close()
    assert got == token_list(2)
    assert record["sent"] == 2 and record["finished"] is None  # both handed over in its silence


@pytest.mark.parametrize("model, code, words", [
    ("status?status=429", "upstream_http_error", "429"),
    ("status?status=401", "upstream_auth", "401"),
    ("inband?at=0", "upstream_error", "error"),
    ("inband?at=2", "upstream_error", "error"),
    ("malformed", "upstream_bad_response", "not JSON"),
    ("drop?at=2", "upstream_cut", ""),
    ("reset", "upstream_unreachable", ""),
    ("hang?silence_s=5", "upstream_timeout", "timed out"),
])
def test_failures_raise_one_error_type(provider, model, code, words) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, model)
    assert info.value.code == code, info.value.message
    assert words in info.value.message
    assert info.value.status == (504 if code == "upstream_timeout" else 429 if "429" in model else 502)


def test_status_error_carries_the_upstreams_message(provider) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, "status?status=404")
    assert info.value.upstream_status == 404
    assert ("Rate limit reached" in info.value.message) or ("not found" in info.value.message)


def test_unreachable_upstream() -> None:
    provider = OllamaProvider(f"http://127.0.0.1:{free_port()}", "m", (1, 1))
    with pytest.raises(UpstreamError) as info:
        run(provider, "m")
    assert info.value.code == "upstream_unreachable"


def test_openai_without_key_on_the_public_api_says_so() -> None:
    provider = OpenAIProvider("https://api.openai.com/v1", "", "m", (1, 1))
    with pytest.raises(UpstreamError, match="OPENAI_API_KEY"):
        run(provider, "m")


def test_closing_the_iterator_closes_the_upstream(provider, fake_upstream, tag) -> None:
    stream = provider.stream(ChatRequest(MESSAGES, model=f"silence?at=1&silence_s=5&tag={tag}"))
    assert isinstance(next(stream), Opened)
    assert isinstance(next(stream), Delta)
    closed_at = time.monotonic()
    stream.close()
    assert upstream_closed_at(fake_upstream, tag, timeout=3) >= closed_at


def test_demo_is_deterministic_and_tokens_rebuild_the_text() -> None:
    demo = DemoProvider(delay_ms=0)
    a = list(demo.stream(ChatRequest(MESSAGES)))
    b = list(demo.stream(ChatRequest(MESSAGES)))
    assert a == b and isinstance(a[-1], Done)
    text = "Hello! 你好，世界！  spaces\nnew line"
    assert "".join(tokenize(text)) == text


@pytest.mark.parametrize("params", [{"max_tokens": 3}, {"max_completion_tokens": 3, "max_tokens": 50}])
def test_demo_stops_at_the_requested_token_limit_with_length(params) -> None:
    events = list(DemoProvider(delay_ms=0).stream(ChatRequest(MESSAGES, params=params)))
    deltas = [e for e in events if isinstance(e, Delta)]
    assert len(deltas) == 3
    assert events[-1].finish_reason == "length" and events[-1].usage["completion_tokens"] == 3


def test_text_that_is_not_unicode_is_repaired(provider) -> None:
    events = run(provider, "badtext")
    text = text_of(events)
    assert text == BAD_TEXT
    text.encode("utf-8")  # what every store and encoder does with it
    assert isinstance(events[-1], Done)


def test_an_error_body_that_is_not_unicode_is_repaired(provider) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, "status?status=429&message=bad")
    message = info.value.message
    assert "\ufffd" in message and ("not found" in message or "fake-model" in message), message
    message.encode("utf-8")


def _shape_cases() -> list:
    return [pytest.param(api, bad, id=f"{api}-{bad}") for api in ("openai", "ollama")
            for bad in BAD_SHAPES[api]]


@pytest.mark.parametrize("api, bad", _shape_cases())
@pytest.mark.parametrize("at", [0, 2])
def test_json_of_the_wrong_shape_is_a_bad_response(fake_upstream, api, bad, at) -> None:
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "m", (2, 2)) if api == "openai" \
        else OllamaProvider(fake_upstream, "m", (2, 2))
    events = []
    with pytest.raises(UpstreamError) as info:
        for event in provider.stream(ChatRequest(MESSAGES, model=f"shape?bad={bad}&at={at}")):
            events.append(event)
    assert info.value.code == "upstream_bad_response", info.value.message
    assert info.value.status == 502
    assert text_of(events) == "".join(token_list(at))


@pytest.mark.parametrize("status", [302, 307])
def test_redirects_are_not_followed(provider, fake_upstream, tag, status) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, f"redirect?status={status}&tag={tag}")
    assert info.value.code == "upstream_http_error"
    assert info.value.upstream_status == status
    assert "?followed" not in info.value.message
    assert [r["followed"] for r in upstream_log(fake_upstream, tag)] == [False]


@pytest.mark.parametrize("mode", ["gzip", "unchunked"])
def test_a_compressed_or_unchunked_body_streams_like_a_chunked_one(provider, mode) -> None:
    """A gzip body goes through urllib3's decoder, one without chunked encoding through read1:
    the same events as the usual chunked body (read by ``_chunked.dechunk``)."""
    events = run(provider, f"{mode}?tokens=6")
    assert text_of(events) == "".join(token_list(6))
    assert isinstance(events[-1], Done) and events[-1].finish_reason == "stop"
    assert run(provider, "normal?tokens=6")[1:] == events[1:]


def test_a_body_that_cannot_be_decoded_is_a_bad_response(provider) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, "gzipbad")
    assert info.value.code == "upstream_bad_response"


@pytest.mark.parametrize("model, code", [("hang?silence_s=5", "upstream_timeout"),
                                         ("reset", "upstream_unreachable"),
                                         ("malformed?at=1", "upstream_bad_response")])
def test_messages_name_the_upstream_by_role_and_keep_details_for_the_log(provider, fake_upstream,
                                                                         model, code) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, model)
    exc = info.value
    port = fake_upstream.rpartition(":")[2]
    assert exc.code == code
    assert exc.message.startswith(provider.what)
    for secret in ("127.0.0.1", port, "(", "{", "Error", "Pool"):
        assert secret not in exc.message, exc.message
    assert exc.detail.startswith(exc.message) and len(exc.detail) > len(exc.message)


def test_an_unreachable_upstream_does_not_reveal_its_address() -> None:
    port = free_port()
    provider = OpenAIProvider(f"http://127.0.0.1:{port}/v1", "k", "m", (1, 1))
    with pytest.raises(UpstreamError) as info:
        run(provider, "m")
    assert info.value.message == "OpenAI upstream is unreachable"
    assert str(port) in info.value.detail


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_complete_streams_reuse_one_upstream_connection(fake_upstream, kind) -> None:
    """A stream read to its end gives its connection back to the pool: three streams, one
    TCP connection (a new connection per stream would cost a handshake, TLS with real ones)."""
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "m", (2, 5)) if kind == "openai" \
        else OllamaProvider(fake_upstream, "m", (2, 5))
    for _ in range(3):
        events = list(provider.stream(ChatRequest([{"role": "user", "content": "hi"}],
                                                  model="normal?tokens=20")))
        assert isinstance(events[-1], Done) and len([e for e in events if isinstance(e, Delta)]) == 20
    manager = provider.session.get_adapter(provider.url).poolmanager
    pools = [manager.pools[key] for key in manager.pools.keys()]
    assert [(p.num_connections, p.num_requests) for p in pools] == [(1, 3)]


# -- what an upstream's failure shows a client ----------------------------------------------------

@pytest.mark.parametrize("body, says", [("html", "answered 502 with a non-JSON body"),
                                        ("json", "answered 502 without an error message")])
def test_an_error_body_that_is_not_the_upstreams_error_stays_in_the_log(provider, body, says) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, f"errorpage?body={body}")
    exc = info.value
    assert exc.code == "upstream_http_error" and exc.upstream_status == 502
    assert exc.message == f"{provider.what} {says}"
    assert ERROR_PAGE_MARKER in exc.detail  # the raw excerpt is for the log


def test_the_upstreams_own_error_message_is_bounded(provider) -> None:
    with pytest.raises(UpstreamError) as info:
        run(provider, "errorpage?body=long")
    message = info.value.message
    assert "answered 502: overloaded ..." in message
    assert len(message) < 600 < LONG_MESSAGE_CHARS and ERROR_PAGE_MARKER not in message


@pytest.mark.parametrize("at", [0, 2])
def test_an_endless_line_is_a_bad_response_and_closes_the_upstream(provider, fake_upstream, tag, at) -> None:
    events = []
    with pytest.raises(UpstreamError) as info:
        for event in provider.stream(ChatRequest(MESSAGES, model=f"endless?at={at}&tag={tag}")):
            events.append(event)
    assert info.value.code == "upstream_bad_response"
    assert info.value.message == f"{provider.what} sent a line longer than {MAX_LINE_BYTES} bytes"
    assert text_of(events) == "".join(token_list(at))
    upstream_closed_at(fake_upstream, tag)  # before the upstream had sent all it would


@pytest.fixture(scope="module")
def patient(start_server):
    """A server that holds its headers long enough for any failure before the first token."""
    return start_server(HEADER_WAIT_S=10, RESUME_GRACE_S=0, HEARTBEAT_S=0.5, READ_TIMEOUT_S=5)


ROUTES = {"openai": "/ai-stream", "ollama": "/local-ai"}


@pytest.mark.parametrize("name", ROUTES)
def test_an_endless_line_before_the_first_token_is_a_502(patient, fake_upstream, tag, name) -> None:
    resp = requests.get(f"{patient.url}{ROUTES[name]}", timeout=20,
                        params={"prompt": "hi", "model": f"endless?tag={tag}"})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "upstream_bad_response"
    upstream_closed_at(fake_upstream, tag)


@pytest.mark.parametrize("name", ROUTES)
def test_an_endless_line_after_the_first_token_ends_with_an_error_event(patient, fake_upstream, tag,
                                                                         name) -> None:
    model = q(f"endless?at=2&tag={tag}")
    with SSEClient(f"{patient.url}{ROUTES[name]}?prompt=hi&model={model}", timeout=20) as client:
        assert client.status == 200
        events = client.read_all()
    assert [e.data for e in data_events(events)] == token_list(2)
    assert events[-1].event == "error"
    assert json.loads(events[-1].data)["code"] == "upstream_bad_response"
    upstream_closed_at(fake_upstream, tag)


def _ws_chat(server, provider: str, model: str) -> str:
    """Every message a WebSocket chat with ``provider`` got up to its error, as text."""
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None,
                 ping_interval=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": provider,
                            "model": model}))
        messages = recv_until(ws, lambda m: m["type"] == "error")
    assert messages[-1]["code"] == "upstream_http_error", messages
    return json.dumps(messages)


@pytest.mark.parametrize("name", ROUTES)
def test_an_error_page_reaches_no_client_and_goes_to_the_log(patient, tag, name) -> None:
    model = f"errorpage?tag={tag}"
    logged = patient.process.output().count(ERROR_PAGE_MARKER)
    sse = requests.get(f"{patient.url}{ROUTES[name]}", params={"prompt": "hi", "model": model}, timeout=10)
    v1 = [requests.post(f"{patient.url}/v1/chat/completions", timeout=10, json={
        "model": f"{name}/{model}", "stream": stream, "messages": MESSAGES}) for stream in (True, False)]
    said = [sse.text, *(r.text for r in v1), _ws_chat(patient, name, model)]
    assert [r.status_code for r in (sse, *v1)] == [502, 502, 502]
    assert sse.json()["error"]["code"] == "upstream_http_error"
    assert all("with a non-JSON body" in text for text in said), said
    assert not [text for text in said if ERROR_PAGE_MARKER in text or "nginx" in text]
    poll_until(lambda: patient.process.output().count(ERROR_PAGE_MARKER) >= logged + 4, 10,
               "the error page's excerpt in the server's log, once for each of the four streams")
