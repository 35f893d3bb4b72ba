"""``/v1/messages`` driven by the official ``anthropic`` SDK, unmodified, against real gunicorn +
gevent and the fake upstream speaking OpenAI's and Ollama's formats; the encoder on its own."""

from __future__ import annotations

import json

import anthropic
import pytest
import requests

from streamapp import wire
from streamapp.events import Delta, Done, Failed, Opened, Reasoning, ToolCall
from streamapp.messages.encoder import MessagesSSE
from streamapp.sse import iter_events
from tests.fake_upstream import REASONING, TOOL_CALLS, token_list
from tests.helpers import SSEClient, upstream_log

KEY = "sk-messages-test-key"


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0,
                        READ_TIMEOUT_S=3, MAX_BODY_BYTES=65536)


@pytest.fixture
def client(srv):
    with anthropic.Anthropic(base_url=srv.url, api_key="sk-anything", max_retries=0, timeout=20) as c:
        yield c


MESSAGES = [{"role": "user", "content": "hello there"}]
PROVIDERS = [("openai", "openai/{}"), ("ollama", "ollama/{}")]
TOOLS = [{"name": c["name"], "description": "a tool", "input_schema": {"type": "object"}} for c in TOOL_CALLS]


def raw_events(client, **kwargs) -> list:
    with client.messages.create(stream=True, **kwargs) as stream:
        return list(stream)


def check_order(events: list) -> None:
    """One message_start first, blocks one after another (start, deltas, stop), then
    message_delta and message_stop."""
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("message_start") == 1
    open_block = None
    count = 0
    for event in events[1:-2]:
        if event.type == "content_block_start":
            assert open_block is None and event.index == count
            open_block, count = event.index, count + 1
        elif event.type == "content_block_delta":
            assert event.index == open_block
        else:
            assert event.type == "content_block_stop" and event.index == open_block
            open_block = None
    assert open_block is None


# -- streaming -----------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", [("demo", "demo"), *PROVIDERS])
def test_the_sdk_streams_text_through_every_provider(client, fake_upstream, provider, model, tag):
    model = model.format(f"normal?tokens=6&tag={tag}")
    with client.messages.stream(model=model, max_tokens=100, messages=MESSAGES, system="be brief") as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.id.startswith("msg_") and final.model == model and final.role == "assistant"
    assert [b.type for b in final.content] == ["text"] and final.content[0].text == text
    assert final.stop_reason == "end_turn"
    if provider == "demo":
        assert "hello there" in text and final.usage.input_tokens > 0 and final.usage.output_tokens > 0
        return
    assert text == "".join(token_list(6))
    counts = (final.usage.input_tokens, final.usage.output_tokens)
    assert counts == ((7, 6) if provider == "openai" else (7, 11))
    (record,) = upstream_log(fake_upstream, tag)
    assert record["messages"] == [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": "hello there"}]
    body = record["body"]
    assert (body["max_tokens"] if provider == "openai" else body["options"]["num_predict"]) == 100


def test_message_start_carries_unknown_usage_as_null_and_the_end_the_counts(client):
    events = raw_events(client, model="openai/normal?tokens=3", max_tokens=10, messages=MESSAGES)
    check_order(events)
    start = events[0].message
    assert start.content == [] and start.stop_reason is None
    assert start.usage.input_tokens is None and start.usage.output_tokens is None  # unknown, never 0/0
    assert events[-2].usage.input_tokens == 7 and events[-2].usage.output_tokens == 3


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_absent_usage_is_an_estimate_that_says_so(client, provider, model):
    name = model.format("nousage?tokens=2")
    with client.messages.stream(model=name, max_tokens=10, messages=MESSAGES) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.usage.output_tokens == 2 and final.usage.input_tokens > 0  # never zeros
    end = next(e for e in events if e.type == "message_delta")
    assert end.usage.model_extra["source"] == "estimated"  # the SDK's accumulator keeps only the counts


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_the_sdk_streams_thinking_in_its_own_block(client, fake_upstream, provider, model, tag):
    name = model.format(f"reasoning?tokens=3&tag={tag}")
    events = raw_events(client, model=name, max_tokens=3000, messages=MESSAGES,
                        thinking={"type": "enabled", "budget_tokens": 2048})
    check_order(events)
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == ["thinking", "text"]
    kinds = {e.index: e.delta.type for e in events if e.type == "content_block_delta"}
    assert kinds == {0: "thinking_delta", 1: "text_delta"}
    with client.messages.stream(model=name, max_tokens=3000, messages=MESSAGES,
                                thinking={"type": "enabled", "budget_tokens": 20000}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "".join(REASONING) and final.content[1].text == "".join(token_list(3))
    low, high = upstream_log(fake_upstream, tag)
    if provider == "openai":
        assert (low["body"]["reasoning_effort"], high["body"]["reasoning_effort"]) == ("low", "high")
        # prompt_tokens 7 of which 4 cached: Anthropic counts the uncached input apart
        assert (final.usage.input_tokens, final.usage.cache_read_input_tokens) == (3, 4)
        assert final.usage.output_tokens == 9 and final.usage.output_tokens_details.thinking_tokens == 3
    else:
        assert (low["body"]["think"], high["body"]["think"]) == ("low", "high")


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_a_tool_round_trip(client, fake_upstream, provider, model, tag):
    with client.messages.stream(model=model.format(f"tools?tag={tag}"), max_tokens=100, messages=MESSAGES,
                                tools=TOOLS, tool_choice={"type": "any"}) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert [(b.type, b.name, b.input) for b in final.content] == \
        [("tool_use", c["name"], c["arguments"]) for c in TOOL_CALLS]
    ids = [b.id for b in final.content]
    assert len(set(ids)) == 2 and all(ids)
    (record,) = upstream_log(fake_upstream, tag)
    sent = record["body"]
    function = {"name": "get_weather", "description": "a tool", "parameters": {"type": "object"}}
    assert sent["tools"][0] == {"type": "function", "function": function}
    if provider == "openai":
        assert sent["tool_choice"] == "required"

    results = [{"type": "tool_result", "tool_use_id": i, "content": f"result {n}"} for n, i in enumerate(ids)]
    turns = [*MESSAGES, {"role": "assistant", "content": final.content},
             {"role": "user", "content": [*results, {"type": "text", "text": "and now?"}]}]
    with client.messages.stream(model=model.format(f"normal?tokens=2&tag={tag}-2"), max_tokens=100,
                                messages=turns, tools=TOOLS) as stream:
        assert stream.get_final_message().content[0].text == "".join(token_list(2))
    (record,) = upstream_log(fake_upstream, f"{tag}-2")
    got = record["messages"]
    assert [m["role"] for m in got] == ["user", "assistant", "tool", "tool", "user"]
    if provider == "openai":
        calls = [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                 for c in got[1]["tool_calls"]]
        assert calls == [(i, c["name"], c["arguments"]) for i, c in zip(ids, TOOL_CALLS, strict=True)]
        assert [m["tool_call_id"] for m in got[2:4]] == ids
    else:  # Ollama's shape: arguments as objects, results named by their tool
        arguments = [c["function"]["arguments"] for c in got[1]["tool_calls"]]
        assert arguments == [c["arguments"] for c in TOOL_CALLS]
        assert [m["tool_name"] for m in got[2:4]] == [c["name"] for c in TOOL_CALLS]
    assert [m["content"] for m in got[2:]] == ["result 0", "result 1", "and now?"]


def test_ping_is_the_keepalive_and_the_sdk_skips_it(srv, client):
    body = {"model": "openai/silence?tokens=3&silence_s=1.2", "max_tokens": 10, "messages": MESSAGES,
            "stream": True}
    with SSEClient(f"{srv.url}/v1/messages", "POST", body) as raw:
        events = raw.read_all()
    assert "ping" in [e.event for e in events]
    assert all(json.loads(e.data)["type"] == e.event for e in events)
    with client.messages.stream(model=body["model"], max_tokens=10, messages=MESSAGES) as stream:
        assert "".join(stream.text_stream) == "".join(token_list(3))


def test_a_failure_after_the_start_is_an_error_event(client):
    got = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model="openai/inband?at=2&tokens=5", max_tokens=10,
                                    messages=MESSAGES) as stream:
            got.extend(stream.text_stream)
    assert "".join(got) == "".join(token_list(2))
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "api_error"
    assert "server had an error" in caught.value.body["error"]["message"]


# -- not streaming -------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", [("demo", "demo"), *PROVIDERS])
def test_the_sdk_gets_a_whole_message(client, provider, model, tag):
    resp = client.messages.create(model=model.format(f"normal?tokens=4&tag={tag}"), max_tokens=50,
                                  messages=MESSAGES)
    assert resp.type == "message" and resp.id.startswith("msg_") and resp.stop_reason == "end_turn"
    assert [b.type for b in resp.content] == ["text"] and resp.usage.output_tokens > 0
    if provider != "demo":
        assert resp.content[0].text == "".join(token_list(4))
        whole = client.messages.create(model=model.format("tools"), max_tokens=50, messages=MESSAGES,
                                       tools=TOOLS)
        assert whole.stop_reason == "tool_use"
        assert [(b.name, b.input) for b in whole.content] == [(c["name"], c["arguments"]) for c in TOOL_CALLS]


def test_count_tokens_is_the_demos_own_count_else_an_estimate(client):
    demo = client.messages.count_tokens(model="demo", messages=MESSAGES, system="be brief")
    answer = client.messages.create(model="demo", max_tokens=50, messages=MESSAGES, system="be brief")
    assert demo.input_tokens == answer.usage.input_tokens
    estimate = client.messages.count_tokens(model="openai/normal", messages=MESSAGES, tools=TOOLS)
    assert estimate.input_tokens == client.messages.count_tokens(model="ollama/x", messages=MESSAGES,
                                                                 tools=TOOLS).input_tokens > 0
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="gpt-nope", messages=MESSAGES)


# -- errors --------------------------------------------------------------------------------------

def test_a_bad_request_is_a_bad_request_error(client, srv):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="demo", max_tokens=10, messages=[])
    assert caught.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                            "message": caught.value.body["error"]["message"]}}
    assert "messages" in caught.value.body["error"]["message"]
    resp = requests.post(f"{srv.url}/v1/messages", json={"model": "demo", "messages": MESSAGES}, timeout=5)
    assert resp.status_code == 400 and "max_tokens is required" in resp.json()["error"]["message"]
    bad_block = [{"role": "user", "content": [{"type": "image", "source": {}}]}]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="demo", max_tokens=10, messages=bad_block)
    assert "'image' block is not supported" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(model="demo", max_tokens=10, messages=MESSAGES,
                               tools=[{"type": "web_search_20250305", "name": "web_search"}])


@pytest.mark.parametrize("model", ["gpt-nope", "demo/x", "openai/status?status=404",
                                   "ollama/status?status=404"])
@pytest.mark.parametrize("stream", [True, False])
def test_an_unknown_model_is_not_found(client, model, stream):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model=model, max_tokens=10, messages=MESSAGES, stream=stream)
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_an_upstream_failure_before_the_first_token_is_a_server_error(client):
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model="openai/status?status=503", max_tokens=10, messages=MESSAGES,
                               stream=True)
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"
    with pytest.raises(anthropic.RateLimitError) as limited:  # an upstream's 429 stays one
        client.messages.create(model="openai/status?status=429", max_tokens=10, messages=MESSAGES,
                               stream=True)
    assert limited.value.status_code == 429 and limited.value.body["error"]["type"] == "rate_limit_error"


def test_the_shared_hooks_answer_in_anthropics_shape(client, srv):
    with pytest.raises(anthropic.APIStatusError) as caught:  # the body limit (MAX_BODY_BYTES)
        client.messages.create(model="demo", max_tokens=10,
                               messages=[{"role": "user", "content": "x" * 70000}])
    assert caught.value.status_code == 413 and caught.value.body["error"]["type"] == "request_too_large"
    resp = requests.get(f"{srv.url}/v1/messages", timeout=5)  # Werkzeug's 405
    assert resp.status_code == 405 and resp.json()["type"] == "error"
    assert set(requests.get(f"{srv.url}/v1/models/nope", timeout=5).json()["error"]) == \
        {"message", "type", "code", "param"}  # the rest of /v1 keeps OpenAI's shape


@pytest.fixture(scope="module")
def keyed(start_server, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"alice:{KEY} rpm=3\n")
    return start_server(API_KEYS_FILE=keys, DEMO_DELAY_MS=0, RATE_LIMIT="")


def test_keys_rate_limits_and_auth_errors_are_the_sdks_classes(keyed):
    with anthropic.Anthropic(base_url=keyed.url, api_key="sk-wrong", max_retries=0, timeout=20) as bad:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(model="demo", max_tokens=10, messages=MESSAGES)
        assert caught.value.body["error"]["type"] == "authentication_error"
    headers = {"anthropic-version": "2023-06-01", "anthropic-beta": "some-beta-2025-01-01"}
    with anthropic.Anthropic(base_url=keyed.url, api_key=KEY, max_retries=0, timeout=20,
                             default_headers=headers) as good:  # the SDK sends the key as x-api-key
        assert good.messages.count_tokens(model="demo", messages=MESSAGES).input_tokens > 0  # not counted
        for _ in range(3):
            assert good.messages.create(model="demo", max_tokens=10, messages=MESSAGES).content[0].text
        with pytest.raises(anthropic.RateLimitError) as caught:
            good.messages.create(model="demo", max_tokens=10, messages=MESSAGES)
        assert caught.value.body["error"]["type"] == "rate_limit_error"
        assert caught.value.response.headers["Retry-After"]


# -- resume --------------------------------------------------------------------------------------

def assemble(events: list) -> tuple[list[str], str]:
    """The event names and the text of a raw Messages stream (``ServerSentEvent`` objects)."""
    names = [e.event for e in events if e.event != "ping"]
    text = "".join(json.loads(e.data)["delta"].get("text", "") for e in events
                   if e.event == "content_block_delta")
    return names, text


@pytest.mark.parametrize("how", ["last-event-id", "stream-api"])
def test_a_dropped_stream_resumes_with_every_event_once(srv, fake_upstream, tag, how):
    body = {"model": f"openai/reasoning?tokens=12&tag={tag}", "max_tokens": 100, "messages": MESSAGES,
            "stream": True, "on_disconnect": "finish"}
    first = SSEClient(f"{srv.url}/v1/messages", "POST", body)
    sid = first.headers["X-Stream-Id"]
    seen = []
    for event in first.iter_events():
        seen.append(event)
        if len(seen) >= 5 and event.event == "content_block_delta":  # inside the thinking block
            break
    first.close()
    last = seen[-1].id
    if how == "last-event-id":
        again = SSEClient(f"{srv.url}/v1/messages", "POST", body, headers={"Last-Event-ID": last})
    else:
        again = SSEClient(f"{srv.url}/api/streams/{sid}", headers={"Last-Event-ID": last})
    with again:
        assert again.headers["X-Stream-Id"] == sid and again.status == 200
        rest = again.read_all()
    names, text = assemble(seen + rest)
    uncut = {**body, "model": "openai/reasoning?tokens=12"}
    with SSEClient(f"{srv.url}/v1/messages", "POST", uncut) as whole:
        want_names, want_text = assemble(whole.read_all())
    assert names == want_names and text == want_text == "".join(token_list(12))
    assert names.count("message_start") == 1 and names[-1] == "message_stop"
    first_id = next(e.id for e in rest if e.id)  # the next group's id ends it
    assert int(first_id.rpartition("-")[2]) == int(last.rpartition("-")[2]) + 1
    assert len(upstream_log(fake_upstream, tag)) == 1


def test_a_resume_of_nothing_is_a_204(srv):
    resp = requests.post(f"{srv.url}/v1/messages", json={}, headers={"Last-Event-ID": "nosuch-3"}, timeout=5)
    assert resp.status_code == 204


# -- the encoder ---------------------------------------------------------------------------------

def encode(events: list) -> list:
    """The SSE events that ``events`` become; ``.id`` only where the event itself has an ``id:`` line
    (a decoder keeps the last id for the events after it)."""
    enc = wire.encoder("messages", 2000, {"model": "m"})
    raw = b"".join(enc.event("s1", seq, event, seq == 1) for seq, event in enumerate(events, 1))
    out = []
    for block in raw.decode().split("\n\n")[:-1]:
        (event,) = iter_events([block.encode() + b"\n\n"])
        out.append(event)
    return out


def test_the_encoder_keeps_thinking_text_and_each_tool_call_in_its_own_block():
    out = encode([Opened(), Reasoning("a"), Delta("b"), Reasoning("c"), Delta("d"), Delta("e"),
                  ToolCall(0, "call_0", "f", '{"x"'), ToolCall(1, "call_1", "g", ""),
                  ToolCall(0, None, None, ":1}"), ToolCall(1, None, None, "{}"), Done("tool_calls", None)])
    blocks = [json.loads(e.data)["content_block"]["type"] for e in out if e.event == "content_block_start"]
    assert blocks == ["thinking", "text", "thinking", "text", "tool_use", "tool_use"]
    deltas = [(json.loads(e.data)["index"], json.loads(e.data)["delta"]) for e in out
              if e.event == "content_block_delta"]
    assert all(d["type"] == "thinking_delta" for i, d in deltas if i in (0, 2))
    assert [d["text"] for i, d in deltas if i in (1, 3)] == ["b", "d", "e"]
    args = {i: "".join(d["partial_json"] for j, d in deltas if j == i) for i in (4, 5)}
    assert args == {4: '{"x":1}', 5: "{}"}  # a late fragment of call 0 still reaches its own block
    end = json.loads(next(e.data for e in out if e.event == "message_delta"))
    assert end["delta"]["stop_reason"] == "tool_use" and end["usage"] == {"input_tokens": None,
                                                                          "output_tokens": None}
    # the id is on the last SSE event of each of our events: eleven events, eleven ids
    assert [e.id for e in out if e.id] == [f"s1-{n}" for n in range(1, 12)]


def test_a_resumed_encoder_writes_what_follows_as_if_it_had_never_stopped():
    events = [Opened(), Delta("a"), Reasoning("b"), Delta("c"), Done("stop", {"prompt_tokens": 1,
                                                                              "completion_tokens": 2})]
    whole = MessagesSSE(0, {"model": "m"})
    expected = [whole.event("s", seq, e, False) for seq, e in enumerate(events, 1)]
    replayed = MessagesSSE(0, {"model": "m"})
    for seq, e in enumerate(events[:3], 1):
        replayed.event("s", seq, e, False)
    assert [replayed.event("s", seq, e, False) for seq, e in enumerate(events[3:], 4)] == expected[3:]


def test_a_failure_is_anthropics_error_event():
    (error,) = encode([Failed("upstream_timeout", "too slow", 504)])
    assert error.event == "error" and json.loads(error.data) == {
        "type": "error", "error": {"type": "timeout_error", "message": "upstream_timeout: too slow"}}


def test_the_encoder_and_the_message_match_the_document():
    """Every kind of event, as the encoder writes it, and a whole message match what
    ``/api.json`` says ``POST /v1/messages`` answers."""
    from jsonschema import Draft202012Validator

    from streamapp import create_app, openapi
    from streamapp.messages.objects import message

    doc = openapi.build(create_app({"RATE_LIMIT": ""}))
    content = doc["paths"]["/v1/messages"]["post"]["responses"]["200"]["content"]

    def validator(schema: dict) -> Draft202012Validator:
        return Draft202012Validator({**schema, "components": doc["components"]})

    event_schema = content["text/event-stream"]["schema"]
    data_schema = validator(event_schema["properties"]["data"]["contentSchema"])
    events = [Opened(), Reasoning("a"), Delta("b"), ToolCall(0, "c", "f", '{"x": 1}'),
              Done("tool_calls", {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
              Failed("x", "it broke")]
    out = encode(events) + list(iter_events([MessagesSSE().heartbeat()]))
    assert {e.event for e in out} == set(event_schema["properties"]["event"]["enum"])
    for event in out:
        validator(event_schema).validate({"event": event.event, "data": event.data,
                                          **({"id": event.id} if event.id else {})})
        data_schema.validate(json.loads(event.data))
    validator(content["application/json"]["schema"]).validate(message("s1", "m", events[:-1]))
