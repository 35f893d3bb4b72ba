"""The OpenAI-compatible /v1 driven by the official ``openai`` SDK, unmodified, against real
gunicorn + gevent and the fake upstream speaking OpenAI's and Ollama's formats."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from tests.fake_upstream import REASONING, TOOL_CALLS, token_list
from tests.helpers import SSEClient, q, upstream_log


@pytest.fixture(scope="module")
def v1(start_server):
    return start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0,
                        READ_TIMEOUT_S=3)


@pytest.fixture
def client(v1):
    with openai.OpenAI(base_url=f"{v1.url}/v1", api_key="sk-anything", max_retries=0, timeout=20) as c:
        yield c


MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]
PROVIDERS = [("openai", "openai/{}"), ("ollama", "ollama/{}")]


def stream_all(client, **kwargs) -> list:
    with client.chat.completions.create(stream=True, **kwargs) as stream:
        return list(stream)


def text_of(chunks) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# -- streaming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", [("demo", "demo"), *PROVIDERS])
def test_the_sdk_streams_a_chat_through_every_provider(client, fake_upstream, provider, model, tag):
    model = model.format(f"normal?tokens=6&tag={tag}")
    chunks = stream_all(client, model=model, messages=MESSAGES, stream_options={"include_usage": True})
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1 and chunks[0].created > 0
    assert {c.model for c in chunks} == {model}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    choice_chunks = [c for c in chunks if c.choices]
    assert [c.choices[0].finish_reason for c in choice_chunks][-1] == "stop"
    assert all(c.choices[0].finish_reason is None for c in choice_chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    if provider == "demo":
        assert "hello there" in text_of(chunks)
    else:
        assert text_of(chunks) == "".join(token_list(6))
        (record,) = upstream_log(fake_upstream, tag)
        assert record["messages"][-1]["content"] == "hello there"


def test_without_include_usage_there_is_no_usage_chunk(client):
    chunks = stream_all(client, model="demo", messages=MESSAGES)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_the_wire_has_only_data_lines_comments_and_ids(v1):
    body = {"model": "demo", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    with SSEClient(f"{v1.url}/v1/chat/completions", "POST", body) as raw:
        assert raw.status == 200 and raw.headers["X-Stream-Id"]
        text = raw.body().decode()
    lines = [line for line in text.split("\n") if line]
    assert all(line.startswith(("data: ", "id: ", ":")) for line in lines), lines
    blocks = [b for b in text.split("\n\n") if b.strip() and not b.startswith(":")]
    assert all("\ndata: " in "\n" + b and "id: " in b for b in blocks)  # every chunk has an SSE id
    assert blocks[-1].endswith("data: [DONE]")


# -- non-streaming -------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, model", [("demo", "demo"), *PROVIDERS])
def test_the_sdk_gets_a_whole_completion(client, provider, model, tag):
    model = model.format(f"normal?tokens=4&tag={tag}")
    resp = client.chat.completions.create(model=model, messages=MESSAGES)
    assert resp.object == "chat.completion" and resp.id.startswith("chatcmpl-")
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens > 0
    if provider != "demo":
        assert resp.choices[0].message.content == "".join(token_list(4))


# -- errors --------------------------------------------------------------------------------------

def test_a_bad_request_is_a_bad_request_error_naming_the_param(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="demo", messages=[])
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == "messages" and caught.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize("model", ["ollama/status?status=404", "openai/status?status=404", "ollama/",
                                   "gpt-nope", "demo/gpt-nope"])
@pytest.mark.parametrize("stream", [True, False])
def test_an_unknown_model_is_not_found(client, model, stream):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=model, messages=MESSAGES, stream=stream)
    assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"


@pytest.mark.parametrize("stream", [True, False])
def test_an_upstream_failure_before_the_first_token_is_a_502(client, stream):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="openai/status?status=503", messages=MESSAGES, stream=stream)
    assert caught.value.status_code == 502
    assert "Rate limit reached" in caught.value.message


@pytest.mark.parametrize("stream", [True, False])
def test_an_upstream_rate_limit_is_a_429_with_its_retry_after(client, stream):
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="openai/status?status=429&retry_after=7", messages=MESSAGES,
                                       stream=stream)
    assert caught.value.status_code == 429 and caught.value.response.headers["Retry-After"] == "7"
    assert "Rate limit reached" in caught.value.message


def test_an_upstream_failure_mid_stream_raises_in_the_sdk(client):
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model="openai/inband?at=2&tokens=5", messages=MESSAGES,
                                                    stream=True):
            got.append(chunk)
    assert text_of(got) == "".join(token_list(2))
    assert "server had an error" in str(caught.value.message)


def test_errors_have_openais_shape(v1):
    resp = requests.post(f"{v1.url}/v1/chat/completions", json={"model": "demo"}, timeout=5)
    assert resp.status_code == 400
    assert set(resp.json()["error"]) == {"message", "type", "code", "param"}
    resp = requests.get(f"{v1.url}/v1/nothing-here", timeout=5)
    assert resp.status_code == 404 and set(resp.json()["error"]) == {"message", "type", "code", "param"}


# -- resume --------------------------------------------------------------------------------------

def test_a_v1_stream_resumes_with_last_event_id_in_the_same_chunk_format(v1, fake_upstream, tag):
    body = {"model": f"openai/slow?tokens=12&delay_ms=30&tag={tag}", "messages": MESSAGES, "stream": True,
            "on_disconnect": "finish"}
    first = SSEClient(f"{v1.url}/v1/chat/completions", "POST", body)
    sid = first.headers["X-Stream-Id"]
    seen = []
    for event in first.iter_events():
        seen.append(event)
        if len(seen) == 4:
            break
    first.close()
    with SSEClient(f"{v1.url}/v1/chat/completions", "POST", body,
                   headers={"Last-Event-ID": seen[-1].id}) as again:
        assert again.headers["X-Stream-Id"] == sid
        rest = again.read_all()
    assert rest[-1].data == "[DONE]"
    chunks = [json.loads(e.data) for e in seen + rest[:-1]]
    assert {c["id"] for c in chunks} == {f"chatcmpl-{sid}"}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "".join(token_list(12))
    seqs = [int(e.id.rpartition("-")[2]) for e in seen + rest[:-1]]
    assert seqs == sorted(set(seqs))  # nothing twice
    assert len(upstream_log(fake_upstream, tag)) == 1


# -- models --------------------------------------------------------------------------------------

def test_models_lists_what_is_configured(client):
    ids = [m.id for m in client.models.list()]
    assert "demo" in ids
    assert any(i.startswith("openai/") for i in ids) and any(i.startswith("ollama/") for i in ids)
    assert client.models.retrieve("demo").id == "demo"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_each_listed_model_is_found_and_answers(client, v1):
    for entry in client.models.list():
        assert client.models.retrieve(entry.id) == entry
        # the fake upstream answers any model name: every listed id starts a chat
        assert client.chat.completions.create(model=entry.id, messages=MESSAGES).choices[0].message.content
    for unlisted in ("gpt-nope", "demo/x", "openai/", "anthropic/claude"):
        resp = requests.get(f"{v1.url}/v1/models/{unlisted}", timeout=5)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"


@pytest.fixture(scope="module")
def unconfigured(start_server):
    """No key for api.openai.com and no OLLAMA_HOST: only the demo can answer."""
    return start_server(OPENAI_API_KEY="", OPENAI_BASE_URL="https://api.openai.com/v1", OLLAMA_HOST="",
                        DEMO_DELAY_MS=0)


def test_models_lists_only_what_can_be_served(unconfigured):
    with openai.OpenAI(base_url=f"{unconfigured.url}/v1", api_key="sk-anything", max_retries=0,
                       timeout=20) as client:
        assert [m.id for m in client.models.list()] == ["demo"]
        for model in ("openai/gpt-4o-mini", "ollama/llama3.2"):
            with pytest.raises(openai.NotFoundError):
                client.models.retrieve(model)
            with pytest.raises(openai.NotFoundError) as caught:
                client.chat.completions.create(model=model, messages=MESSAGES)
            assert caught.value.body["code"] == "model_not_found" and caught.value.body["param"] == "model"
            assert "not configured" in caught.value.body["message"]
        assert client.chat.completions.create(model="demo", messages=MESSAGES).choices[0].message.content
    for path in ("/ai-stream?prompt=hi", "/local-ai?prompt=hi"):
        resp = requests.get(f"{unconfigured.url}{path}", timeout=5)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found", path


# -- tool calls, reasoning, usage ---------------------------------------------------------------

@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_the_sdk_receives_streamed_tool_calls(client, provider, model, tag):
    chunks = stream_all(client, model=model.format(f"tools?tag={tag}"), messages=MESSAGES,
                        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {}}}])
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            seen = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
            seen["id"] = call.id or seen["id"]
            if call.function:
                seen["name"] = call.function.name or seen["name"]
                seen["arguments"] += call.function.arguments or ""
    assert sorted(calls) == [0, 1]
    assert [calls[i]["name"] for i in (0, 1)] == [c["name"] for c in TOOL_CALLS]
    assert [json.loads(calls[i]["arguments"]) for i in (0, 1)] == [c["arguments"] for c in TOOL_CALLS]
    assert all(calls[i]["id"] for i in (0, 1))
    assert [c for c in chunks if c.choices][-1].choices[0].finish_reason == "tool_calls"

    whole = client.chat.completions.create(model=model.format(f"tools?tag={tag}-whole"), messages=MESSAGES)
    assert whole.choices[0].finish_reason == "tool_calls"
    got = [(c.function.name, json.loads(c.function.arguments)) for c in whole.choices[0].message.tool_calls]
    assert got == [(c["name"], c["arguments"]) for c in TOOL_CALLS]


@pytest.mark.parametrize("provider, model", [*PROVIDERS, ("openai", "openai/{}&field=reasoning")])
def test_the_sdk_receives_reasoning_apart_from_the_answer(client, provider, model, tag):
    name = model.format(f"reasoning?tokens=3&tag={tag}")
    chunks = stream_all(client, model=name, messages=MESSAGES, stream_options={"include_usage": True})
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert reasoning == "".join(REASONING)
    assert text_of(chunks) == "".join(token_list(3))
    if provider == "openai":
        usage = chunks[-1].usage
        assert usage.prompt_tokens_details.cached_tokens == 4
        assert usage.completion_tokens_details.reasoning_tokens == 3
    whole = client.chat.completions.create(model=name, messages=MESSAGES)
    assert whole.choices[0].message.model_extra["reasoning_content"] == "".join(REASONING)
    assert whole.choices[0].message.content == "".join(token_list(3))


@pytest.mark.parametrize("provider, model", PROVIDERS)
def test_unknown_usage_is_null_never_zeros(client, provider, model, tag):
    chunks = stream_all(client, model=model.format(f"nousage?tokens=2&tag={tag}"), messages=MESSAGES,
                        stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage is None
    assert client.chat.completions.create(model=model.format("nousage?tokens=2"),
                                          messages=MESSAGES).usage is None


def test_request_fields_reach_the_upstream(client, fake_upstream, tag):
    fields = dict(temperature=0.3, top_p=0.9, max_tokens=50, stop=["\n\n"], seed=7, presence_penalty=0.5,
                  frequency_penalty=0.25, tool_choice="auto", response_format={"type": "json_object"},
                  user="u-1", tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    client.chat.completions.create(model=f"openai/normal?tokens=2&tag={tag}", messages=MESSAGES, **fields)
    (record,) = upstream_log(fake_upstream, tag)
    assert {k: record["body"][k] for k in fields} == fields
    client.chat.completions.create(model=f"ollama/normal?tokens=2&tag={tag}-o", messages=MESSAGES, **fields)
    (record,) = upstream_log(fake_upstream, f"{tag}-o")
    assert record["body"]["options"] == {"temperature": 0.3, "top_p": 0.9, "num_predict": 50,
                                         "stop": ["\n\n"], "seed": 7, "presence_penalty": 0.5,
                                         "frequency_penalty": 0.25}
    assert record["body"]["format"] == "json" and record["body"]["tools"] == fields["tools"]


@pytest.mark.parametrize("path, fmt", [("/api/chat", "chat"), ("/ai-stream", "plain")])
def test_our_own_sse_formats_carry_reasoning_and_tool_calls(v1, path, fmt, tag):
    def events_for(mode: str) -> list:
        if fmt == "chat":
            body = {"uid": 1, "message": "hi", "provider": "openai", "model": f"{mode}?tag={tag}"}
            client = SSEClient(f"{v1.url}{path}", "POST", body)
        else:
            client = SSEClient(f"{v1.url}{path}?prompt=hi&model={q(f'{mode}?tag={tag}')}")
        with client:
            return client.read_all()

    events = events_for("reasoning")
    if fmt == "chat":
        payloads = [json.loads(e.data) for e in events]
        assert "".join(p.get("reasoning", "") for p in payloads) == "".join(REASONING)
        assert "".join(p.get("delta", "") for p in payloads) == "".join(token_list(5))
    else:
        assert "".join(e.data for e in events if e.event == "reasoning") == "".join(REASONING)
        assert "".join(e.data for e in events if e.event == "message") == "".join(token_list(5))
    events = events_for("tools")
    if fmt == "chat":
        calls = [json.loads(e.data)["tool_call"] for e in events if "tool_call" in json.loads(e.data)]
    else:
        calls = [json.loads(e.data) for e in events if e.event == "tool_call"]
    args = {i: "".join(c["function"]["arguments"] for c in calls if c["index"] == i) for i in (0, 1)}
    assert [json.loads(args[i]) for i in (0, 1)] == [c["arguments"] for c in TOOL_CALLS]
    assert json.loads(events[-1].data)["finish_reason"] == "tool_calls"
