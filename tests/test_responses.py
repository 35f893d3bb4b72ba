"""POST /v1/responses driven by the official ``openai`` SDK, unmodified, against real gunicorn +
gevent over the demo provider and the fake upstream speaking OpenAI's and Ollama's formats."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.fake_upstream import REASONING, TOOL_CALLS, token_list
from tests.helpers import SSEClient, poll_until, upstream_log

PROVIDERS = ["openai/{}", "ollama/{}"]
TOOL = {"type": "function", "name": "get_weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
END_TYPES = {"response.completed", "response.incomplete", "response.failed"}


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0,
                        READ_TIMEOUT_S=3, MAX_MESSAGE_CHARS=1000)


@pytest.fixture
def client(srv):
    with openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-anything", max_retries=0, timeout=20) as c:
        yield c


def check_sequence(events: list) -> None:
    """Sequence numbers 0, 1, 2 ...; one end event, last; ids stable."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created" and events[1].type == "response.in_progress"
    assert [e.type for e in events if e.type in END_TYPES] == [events[-1].type]
    rid = events[0].response.id
    assert all(e.response.id == rid for e in events if hasattr(e, "response"))


def text_of(events: list) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


@pytest.mark.parametrize("model", ["demo", "openai/normal?tokens=4", "ollama/normal?tokens=4"])
def test_a_text_stream_has_the_events_the_sdk_parses(client, model) -> None:
    with client.responses.create(model=model, input="hello there", stream=True) as stream:
        events = list(stream)
    check_sequence(events)
    types = [e.type for e in events]
    assert types[2:5] == ["response.output_item.added", "response.content_part.added",
                          "response.output_text.delta"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.completed"]
    text = text_of(events)
    if model != "demo":
        assert text == "".join(token_list(4))
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text
    item = done.output[0]
    assert item.type == "message" and item.id == events[2].item.id
    assert all(e.item_id == item.id for e in events if e.type == "response.output_text.delta")
    if model.startswith("openai"):
        assert (done.usage.input_tokens, done.usage.output_tokens, done.usage.total_tokens) == (7, 4, 11)


def test_the_wire_has_event_names_and_no_sse_ids(srv) -> None:
    with SSEClient(f"{srv.url}/v1/responses", "POST", {"model": "demo", "input": "hi", "stream": True}) as c:
        events = c.read_all()
    assert events and all(not e.id for e in events)
    assert all(e.event == json.loads(e.data)["type"] for e in events)


@pytest.mark.parametrize("fmt", PROVIDERS)
def test_the_stream_helper_gives_the_final_response(client, fmt) -> None:
    with client.responses.stream(model=fmt.format("normal?tokens=3"), input="hi",
                                 instructions="be brief") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) == "".join(token_list(3))


def test_absent_upstream_usage_is_an_estimate_that_says_so(client) -> None:
    with client.responses.create(model="openai/nousage?tokens=2", input="hi", stream=True) as stream:
        events = list(stream)
    usage = events[-1].response.usage  # never zeros: counted (2 chunks) and estimated (the input), and marked
    assert events[-1].type == "response.completed" and usage.model_extra["source"] == "estimated"
    assert usage.output_tokens == 2 and usage.input_tokens > 0


@pytest.mark.parametrize("fmt", PROVIDERS)
def test_reasoning_is_its_own_item_before_the_message(client, fmt) -> None:
    with client.responses.create(model=fmt.format("reasoning?tokens=2"), input="think",
                                 reasoning={"effort": "low"}, stream=True) as stream:
        events = list(stream)
    check_sequence(events)
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    assert reasoning == "".join(REASONING)
    done = events[-1].response
    assert [item.type for item in done.output] == ["reasoning", "message"]
    assert done.output[0].content[0].text == reasoning
    assert [e.output_index for e in events if e.type == "response.output_text.delta"] == [1, 1]
    if fmt.startswith("openai"):
        assert done.usage.output_tokens_details.reasoning_tokens == 3
        assert done.usage.input_tokens_details.cached_tokens == 4


@pytest.mark.parametrize("fmt", PROVIDERS)
def test_a_two_turn_function_call_round_trip(client, srv, fake_upstream, fmt, tag) -> None:
    model = fmt.format(f"tools?tag={tag}")
    with client.responses.stream(model=model, input="weather?", tools=[TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == \
        [(t["name"], t["arguments"]) for t in TOOL_CALLS]
    assert len({c.call_id for c in calls}) == 2 and [c.status for c in calls] == ["completed"] * 2
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert {e.item_id for e in deltas} == {c.id for c in calls}
    if fmt.startswith("openai"):
        assert final.usage.total_tokens == 42
    # Turn two: the calls and their outputs go back; the upstream sees them as chat messages.
    outputs = [{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls]
    items = [*calls, *outputs]
    second_model = fmt.format(f"normal?tokens=2&tag={tag}")
    with client.responses.create(model=second_model, input=items, tools=[TOOL], stream=True) as stream:
        second = list(stream)
    assert second[-1].type == "response.completed"
    sent = upstream_log(fake_upstream, tag)[-1]["messages"]
    assert [m["role"] for m in sent] == ["assistant", "tool", "tool"]
    assert [c["function"]["name"] for c in sent[0]["tool_calls"]] == [t["name"] for t in TOOL_CALLS]


def test_not_streaming_answers_the_response_object(client) -> None:
    resp = client.responses.create(model="openai/tools", input="weather?", tools=[TOOL])
    assert resp.status == "completed" and resp.id.startswith("resp_")
    assert [item.type for item in resp.output] == ["function_call", "function_call"]
    assert resp.usage.input_tokens == 12 and resp.usage.output_tokens == 30
    got = client.responses.retrieve(resp.id)
    assert got.model_dump() == resp.model_dump()


def test_a_length_limit_is_incomplete_with_its_reason(start_server) -> None:
    short = start_server(STREAM_MAX_EVENTS=3, RESUME_GRACE_S=0, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0)
    with openai.OpenAI(base_url=f"{short.url}/v1", api_key="x", max_retries=0, timeout=20) as c, \
            c.responses.create(model="demo", input="hi", stream=True) as stream:
        events = list(stream)
    end = events[-1]
    assert end.type == "response.incomplete" and end.response.status == "incomplete"
    assert end.response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].type == "response.output_item.done" and events[-2].item.status == "incomplete"


@pytest.mark.parametrize(("body", "field"), [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.content.0.type"),
    ({"conversation": "conv_1"}, "conversation"),
])
def test_a_field_we_cannot_honour_is_a_400_naming_it(client, body, field) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(**{"model": "demo", "input": "hi", **body})
    assert exc.value.body["param"] == field


@pytest.mark.parametrize("stream", [True, False])
def test_errors_before_the_stream_are_openai_shaped(client, srv, stream) -> None:
    for model in ("gpt-nope", "openai/status?status=404"):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=model, input="hi", stream=stream)
        assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
    with pytest.raises(openai.RateLimitError) as failed:
        client.responses.create(model="openai/status?status=429", input="hi", stream=stream)
    assert failed.value.status_code == 429 and "Rate limit reached" in failed.value.message
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nosuchstream")
    resp = requests.post(f"{srv.url}/v1/responses", json={"model": "demo", "input": "x" * 1001}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input.0"
    assert "STREAMAPP_MAX_MESSAGE_CHARS" in resp.json()["error"]["message"]


def test_a_failure_mid_stream_is_response_failed_with_the_error(client) -> None:
    with client.responses.create(model="openai/drop?at=2", input="hi", stream=True) as stream:
        events = list(stream)
    check_sequence(events)
    end = events[-1]
    assert end.type == "response.failed" and end.response.status == "failed"
    # OpenAI's closed list of codes; ours leads the message.
    assert end.response.error.code == "server_error"
    assert end.response.error.message.startswith("upstream_cut: ")
    assert [item.status for item in end.response.output] == ["incomplete"]
    assert end.response.output[0].content[0].text == "".join(token_list(2))


def test_a_response_failed_event_is_the_sdks_own_type() -> None:
    """Pure: the event validates as openai's ``ResponseFailedEvent``; an upstream 429 is
    ``rate_limit_exceeded``, any other failure ``server_error``, our code in the message."""
    from openai.types.responses import ResponseFailedEvent

    from streamapp.events import Delta, Failed, Opened
    from streamapp.responses.objects import ResponseBuilder

    cases = [(Failed("upstream_timeout", "the upstream did not answer in time", 504), "server_error"),
             (Failed("upstream_http_error", "Rate limit reached", 502, upstream_status=429),
              "rate_limit_exceeded")]
    for failed, code in cases:
        builder = ResponseBuilder("s1", {"model": "m", "created": 1})
        events = [e for event in (Opened(), Delta("a"), failed) for e in builder.feed(event)]
        end = ResponseFailedEvent.model_validate(events[-1])
        assert end.response.status == "failed" and end.response.error.code == code
        assert end.response.error.message == f"{failed.code}: {failed.message}"


def test_a_background_response_the_upstream_rate_limits_fails_with_rate_limit_exceeded(client) -> None:
    resp = client.responses.create(model="openai/status?status=429", input="hi", background=True)
    done = poll_until(lambda: (r := client.responses.retrieve(resp.id)).status == "failed" and r, 20,
                      "the response failed")
    assert done.error.code == "rate_limit_exceeded"
    assert done.error.message.startswith("upstream_http_error: ")


def test_interleaved_tool_call_fragments_stay_apart() -> None:
    """Pure: fragments of two calls arriving interleaved are two items, arguments never merged."""
    from streamapp.events import Done, Opened, ToolCall
    from streamapp.responses.objects import ResponseBuilder

    builder = ResponseBuilder("s1", {"model": "m"})
    log = [Opened(), ToolCall(0, "c0", "f", '{"a"'), ToolCall(1, "c1", "g", '{"b"'),
           ToolCall(0, None, None, ":1}"), ToolCall(1, None, None, ":2}"), Done("tool_calls")]
    events = [e for event in log for e in builder.feed(event)]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    output = builder.response()["output"]
    assert [(i["call_id"], i["name"], i["arguments"], i["id"]) for i in output] == \
        [("c0", "f", '{"a":1}', "fc_s1_0"), ("c1", "g", '{"b":2}', "fc_s1_1")]
    assert events[-1]["type"] == "response.completed"


def test_the_stream_api_replays_a_responses_stream_in_its_format(client, srv) -> None:
    with client.responses.create(model="demo", input="hi", stream=True) as stream:
        events = list(stream)
    sid = events[0].response.id.removeprefix("resp_")
    with SSEClient(f"{srv.url}/api/streams/{sid}") as again:
        replayed = [json.loads(e.data) for e in again.read_all()]
    assert replayed == [e.model_dump(exclude_unset=True) for e in events]


def test_creates_share_the_rate_limit_and_retrieves_are_not_counted(start_server) -> None:
    limited = start_server(RATE_LIMIT="2/minute", DEMO_DELAY_MS=0, RESUME_GRACE_S=0)
    with openai.OpenAI(base_url=f"{limited.url}/v1", api_key="x", max_retries=0, timeout=20) as c:
        first = c.responses.create(model="demo", input="hi")
        for _ in range(3):
            assert c.responses.retrieve(first.id).status == "completed"
        c.responses.create(model="demo", input="hi")
        with pytest.raises(openai.RateLimitError):
            c.responses.create(model="demo", input="hi", stream=True)


@pytest.mark.parametrize("background", [False, True])
def test_a_dropped_stream_stops_unless_it_runs_in_the_background(client, background) -> None:
    """RESUME_GRACE_S=0: a client that leaves stops its response; a background one generates on."""
    with client.responses.create(model="openai/slow?tokens=10&delay_ms=50", input="hi", stream=True,
                                 background=background) as stream:
        first = [event for _, event in zip(range(4), stream, strict=False)]
    rid = first[0].response.id
    done = poll_until(lambda: (r := client.responses.retrieve(rid)).status != "in_progress" and r, 20,
                      "the response ended")
    if background:
        assert done.status == "completed" and done.output_text == "".join(token_list(10))
    else:
        assert done.status == "incomplete" and len(done.output_text) < len("".join(token_list(10)))


def test_a_create_with_last_event_id_never_starts_a_generation(srv, fake_upstream, tag) -> None:
    """Rate limits do not count a request carrying Last-Event-ID (the resume rule): such a create
    resumes or answers 204, and starts nothing."""
    body = {"model": f"openai/normal?tokens=2&tag={tag}", "input": "hi", "stream": True}
    for headers, params in (({"Last-Event-ID": "nosuchstream-3"}, {}), ({}, {"last_event_id": "x"})):
        resp = requests.post(f"{srv.url}/v1/responses", params=params, headers=headers, timeout=10, json=body)
        assert resp.status_code == 204, resp.text[:200]
    assert upstream_log(fake_upstream, tag) == []


def test_request_fields_reach_the_upstream_under_chat_names(client, fake_upstream, tag) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    resp = client.responses.create(
        model=f"openai/normal?tokens=2&tag={tag}", input="x", instructions="be brief", max_output_tokens=50,
        temperature=0.5, top_p=0.9, reasoning={"effort": "low"}, parallel_tool_calls=False, user="u1",
        metadata={"k": "v"}, tools=[TOOL], tool_choice={"type": "function", "name": "get_weather"},
        text={"format": {"type": "json_schema", "name": "out", "schema": schema, "strict": True}})
    body = upstream_log(fake_upstream, tag)[-1]["body"]
    assert body["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "x"}]
    expected = {"max_tokens": 50, "temperature": 0.5, "top_p": 0.9, "reasoning_effort": "low",
                "parallel_tool_calls": False, "user": "u1"}
    assert {k: body[k] for k in expected} == expected
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "out", "schema": schema, "strict": True}}
    function = {k: TOOL[k] for k in ("name", "description", "parameters")}
    assert body["tools"] == [{"type": "function", "function": function}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert resp.metadata == {"k": "v"} and resp.instructions == "be brief" and resp.max_output_tokens == 50
    assert resp.text.format.type == "json_schema" and resp.parallel_tool_calls is False


def split_call_log() -> list:
    """A call whose fragments have text and reasoning between them."""
    from streamapp.events import Delta, Done, Opened, Reasoning, ToolCall

    return [Opened(), Delta("a"), ToolCall(0, "c0", "f", '{"a"'), Delta("b"), Reasoning("r"),
            ToolCall(0, None, None, ":1}"), Done("tool_calls")]


def test_a_call_split_by_text_and_reasoning_stays_one_item() -> None:
    """Pure: the call stays open (several items are in progress at once) until the end."""
    from streamapp.responses.objects import ResponseBuilder

    builder = ResponseBuilder("s1", {"model": "m"})
    events = [e for event in split_call_log() for e in builder.feed(event)]
    output = builder.response()["output"]
    assert [(i["type"], i["id"], i["status"]) for i in output] == [
        ("message", "msg_s1_0", "completed"), ("function_call", "fc_s1_1", "completed"),
        ("message", "msg_s1_2", "completed"), ("reasoning", "rs_s1_3", "completed")]
    assert (output[1]["call_id"], output[1]["name"], output[1]["arguments"]) == ("c0", "f", '{"a":1}')
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    finished = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
    assert added == [i["id"] for i in output] and sorted(finished) == sorted(added)
    assert events[-1]["response"]["output"] == output


def test_a_split_call_through_the_encoder_is_one_item_the_sdk_parses() -> None:
    from openai.types.responses import ResponseStreamEvent
    from pydantic import TypeAdapter

    from streamapp.responses.encoder import ResponsesSSE

    encoder = ResponsesSSE(meta={"model": "m", "created": 1})
    body = b"".join(encoder.event("s1", seq, event, seq == 1) for seq, event in enumerate(split_call_log()))
    frames = [frame for frame in body.decode().split("\n\n") if frame]
    adapter = TypeAdapter(ResponseStreamEvent)
    events = [adapter.validate_python(json.loads(frame.split("data: ", 1)[1])) for frame in frames]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added.count("function_call") == 1
    args = [e for e in events if e.type == "response.function_call_arguments.delta"]
    assert [(e.item_id, e.output_index, e.delta) for e in args] == \
        [("fc_s1_1", 1, '{"a"'), ("fc_s1_1", 1, ":1}")]
    end = events[-1]
    assert end.type == "response.completed"
    assert [(i.type, getattr(i, "arguments", None)) for i in end.response.output] == [
        ("message", None), ("function_call", '{"a":1}'), ("message", None), ("reasoning", None)]


@pytest.mark.parametrize(("path", "method"),
                         [("/v1/responses", "post"), ("/v1/responses/{response_id}", "get")])
def test_the_document_describes_each_event_the_builder_writes(srv, path, method) -> None:
    """/api.json: one branch per Responses event (its ``event`` name, its ``data`` schema); every
    event the encoder writes (text, reasoning, calls, each end) matches exactly one, data included."""
    from jsonschema import Draft202012Validator

    from streamapp.events import Delta, Done, Failed, Opened, Reasoning, ToolCall
    from streamapp.responses.encoder import ResponsesSSE

    doc = requests.get(f"{srv.url}/api.json", timeout=10).json()
    schema = doc["paths"][path][method]["responses"]["200"]["content"]["text/event-stream"]["schema"]
    branches = {b["properties"]["event"]["const"]: b for b in schema["oneOf"]}
    body = [Opened(), Reasoning("r"), Delta("a"), ToolCall(0, "c0", "f", '{"a"'), Delta("b"),
            ToolCall(0, None, None, ":1}")]
    ends = [Done("stop", {"prompt_tokens": 1, "completion_tokens": 2}), Done("length"), Done("cancelled"),
            Failed("upstream_timeout", "the upstream did not answer in time", 504)]
    seen = set()
    for end in ends:
        encoder = ResponsesSSE(meta={"model": "m", "created": 1})
        raw = b"".join(encoder.event("s1", seq, event, seq == 1) for seq, event in enumerate([*body, end]))
        for frame in filter(None, raw.decode().split("\n\n")):
            name, data = (line.split(": ", 1)[1] for line in frame.split("\n"))
            event = {"event": name, "data": data}
            Draft202012Validator({**schema, "components": doc["components"]}).validate(event)
            content = branches[name]["properties"]["data"]["contentSchema"]
            Draft202012Validator({**content, "components": doc["components"]}).validate(json.loads(data))
            seen.add(name)
    assert seen == set(branches)


def test_a_resume_past_where_the_log_stops_still_gets_the_failure() -> None:
    """The log lost its tail (its producer died): a client resuming after sequence number 20
    gets the reader's made-up failure as response.failed, numbered after its resume point,
    instead of a clean end with nothing."""
    from streamapp.events import Delta, Failed, Opened
    from streamapp.responses.encoder import ResponsesSSE

    encoder = ResponsesSSE(meta={"model": "m", "created": 1}, starting_after=20)
    log = [Opened(), Delta("a", 0), Delta("b", 1), Failed("producer_lost", "gone", 502)]
    body = b"".join(encoder.event("s1", seq, event, seq == 1) for seq, event in enumerate(log, 1))
    frames = [json.loads(f.split("data: ", 1)[1]) for f in body.decode().split("\n\n") if f]
    assert [(f["type"], f["sequence_number"]) for f in frames] == [("response.failed", 21)]
