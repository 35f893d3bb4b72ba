"""Providers and real models' features: tool calls, reasoning, usage details, request pass-through.

Against the fake upstream's ``tools``, ``reasoning`` and ``nousage`` modes in both wire
formats, plus pure tests of the Ollama request translation and of the decoders.
"""

from __future__ import annotations

import json
import re

import pytest

from streamapp.events import Delta, Done, Opened, Reasoning, ToolCall
from streamapp.providers import ChatRequest
from streamapp.providers.demo import DemoProvider
from streamapp.providers.ollama import OllamaProvider, ollama_messages, ollama_params
from streamapp.providers.openai import OpenAIProvider
from streamapp.sse import ServerSentEvent
from tests.fake_upstream import REASONING, REASONING_USAGE, TOOL_CALLS, TOOL_FRAGMENTS, token_list
from tests.helpers import SSEClient, q, upstream_log

MESSAGES = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
# Every OpenAI request field a provider passes on, as a client sends it.
PARAMS = {
    "temperature": 0.2, "top_p": 0.9, "max_tokens": 100, "max_completion_tokens": 50,
    "stop": ["\n\n", "END"], "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
    "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {"type": "json_schema",
                        "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}},
    "reasoning_effort": "high", "user": "user-123",
}
# A conversation with every message shape an OpenAI client sends.
CONVERSATION = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in Zürich"},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                 {"type": "text", "text": "and a search?"}]},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"city\": \"Zürich\"}"}},
        {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{not json"}},
        {"id": "call_3", "type": "function", "function": {"name": "now", "arguments": ""}}]},
    {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": "22°C"},
    {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "no results"}]},
    {"role": "tool", "tool_call_id": "call_unknown", "content": "?"},
    {"role": "user", "name": "ann", "content": "thanks"},
]
OLLAMA_CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Zürich\nand a search?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}},
        {"id": "call_2", "function": {"name": "search", "arguments": "{not json"}},
        {"id": "call_3", "function": {"name": "now", "arguments": {}}}]},
    {"role": "tool", "content": "22°C", "tool_name": "get_weather", "tool_call_id": "call_1"},
    {"role": "tool", "content": "no results", "tool_name": "search", "tool_call_id": "call_2"},
    {"role": "tool", "content": "?", "tool_call_id": "call_unknown"},
    {"role": "user", "content": "thanks"},
]


@pytest.fixture(params=["openai", "ollama"])
def provider(request, fake_upstream):
    if request.param == "openai":
        return OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "normal", (2, 2))
    return OllamaProvider(fake_upstream, "normal", (2, 2))


def run(provider, model: str, messages: list | None = None, params: dict | None = None) -> list:
    return list(provider.stream(ChatRequest(messages or MESSAGES, model=model, params=params or {})))


def calls_of(events: list) -> dict[int, list[ToolCall]]:
    """ToolCall fragments by index, in order."""
    calls: dict[int, list[ToolCall]] = {}
    for event in events:
        if isinstance(event, ToolCall):
            calls.setdefault(event.index, []).append(event)
    return calls


# -- tool calls ---------------------------------------------------------------------------------

def test_tool_calls_stream_as_fragments_of_distinct_calls(provider) -> None:
    events = run(provider, "tools")
    assert isinstance(events[0], Opened) and not any(isinstance(e, Delta) for e in events)
    calls = calls_of(events)
    assert sorted(calls) == [0, 1]
    ids = set()
    for index, sent in enumerate(TOOL_CALLS):
        first, *rest = calls[index]
        assert first.name == sent["name"] and first.id
        assert all(f.id is None and f.name is None for f in rest)  # id and name come once per call
        assert json.loads("".join(f.arguments for f in calls[index])) == sent["arguments"]
        ids.add(first.id)
    assert len(ids) == 2
    done = events[-1]
    assert isinstance(done, Done) and done.finish_reason == "tool_calls"
    assert done.usage == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}


def test_openai_tool_calls_are_passed_on_fragment_by_fragment(fake_upstream) -> None:
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "m", (2, 2))
    calls = calls_of(run(provider, "tools"))
    for index, sent in enumerate(TOOL_CALLS):
        assert calls[index][0].id == sent["id"]
        assert [f.arguments for f in calls[index]][0] == ""
        assert len(calls[index]) == 1 + TOOL_FRAGMENTS


def test_ollama_tool_calls_get_an_index_and_an_id_each(fake_upstream) -> None:
    provider = OllamaProvider(fake_upstream, "m", (2, 2))
    first = calls_of(run(provider, "tools"))
    second = calls_of(run(provider, "tools"))
    for calls in (first, second):
        assert [len(calls[i]) for i in (0, 1)] == [1, 1]  # whole calls: one fragment each
        for fragments in calls.values():
            assert re.fullmatch(r"call_[0-9a-f]{24}", fragments[0].id)
    assert {c[0].id for c in first.values()}.isdisjoint(c[0].id for c in second.values())
    # A newer Ollama sends ids of its own: they are kept, so a tool result can name its call.
    with_ids = calls_of(run(provider, "tools?ids=1"))
    assert [with_ids[i][0].id for i in (0, 1)] == [c["id"] for c in TOOL_CALLS]


def test_ollama_tool_calls_across_lines_count_on() -> None:
    provider = OllamaProvider("http://127.0.0.1:9", "m", (1, 1))
    call = {"function": {"name": "f", "arguments": {"n": 1}}}
    lines = [json.dumps({"message": {"role": "assistant", "content": "", "tool_calls": [call]},
                         "done": False})] * 3
    lines.append(json.dumps({"message": {"role": "assistant", "content": ""}, "done": True,
                             "done_reason": "length"}))
    events = list(provider._events(iter(lines)))
    assert [e.index for e in events if isinstance(e, ToolCall)] == [0, 1, 2]
    assert [e.arguments for e in events if isinstance(e, ToolCall)] == ['{"n":1}'] * 3
    assert events[-1] == Done("length", None)  # as Ollama's own OpenAI layer: only "stop" becomes tool_calls


# -- reasoning ----------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_reasoning_arrives_apart_from_the_answer(provider, field) -> None:
    events = run(provider, f"reasoning?tokens=4&field={field}")
    kinds = [e.kind for e in events if isinstance(e, (Reasoning, Delta))]
    assert kinds == ["reasoning"] * len(REASONING) + ["delta"] * 4
    assert [e.text for e in events if isinstance(e, Reasoning)] == REASONING
    assert [(e.index, e.text) for e in events if isinstance(e, Delta)] == list(enumerate(token_list(4)))
    assert events[-1].finish_reason == "stop"


@pytest.fixture(scope="module")
def one_event(start_server):
    """A server whose streams may carry one event of content (STREAM_MAX_EVENTS=1)."""
    return start_server(STREAM_MAX_EVENTS=1, HEADER_WAIT_S=0.2, RESUME_GRACE_S=0, HEARTBEAT_S=0.5)


@pytest.mark.parametrize("route", ["/ai-stream", "/local-ai"])
@pytest.mark.parametrize("mode, kind", [("reasoning?tokens=0", "reasoning"), ("tools", "tool_call")])
def test_reasoning_and_tool_calls_count_toward_the_stream_limits(one_event, route, mode, kind) -> None:
    with SSEClient(f"{one_event.url}{route}?prompt=hi&model={q(mode)}") as client:
        events = client.read_all()
    assert [e.event for e in events] == ["stream", kind, "end"]
    assert json.loads(events[-1].data)["finish_reason"] == "length"


def test_openai_reasoning_is_taken_once_when_both_fields_come() -> None:
    provider = OpenAIProvider("http://127.0.0.1:9/v1", "k", "m", (1, 1))
    chunk = {"choices": [{"index": 0, "delta": {"reasoning_content": "a", "reasoning": "a", "content": "b"},
                          "finish_reason": None}]}
    events = list(provider._events(iter([ServerSentEvent(json.dumps(chunk)), ServerSentEvent("[DONE]")])))
    assert events == [Reasoning("a"), Delta("b", 0), Done("stop", None)]


# -- usage --------------------------------------------------------------------------------------

def test_openai_usage_keeps_cached_and_reasoning_tokens(fake_upstream) -> None:
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "m", (2, 2))
    assert run(provider, "reasoning")[-1].usage == REASONING_USAGE


def test_openai_usage_details_keep_only_counts() -> None:
    provider = OpenAIProvider("http://127.0.0.1:9/v1", "k", "m", (1, 1))
    usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": 0.1,
             "prompt_tokens_details": {"cached_tokens": 1, "audio_tokens": None},
             "completion_tokens_details": None}
    chunk = ServerSentEvent(json.dumps({"choices": [], "usage": usage}))
    (done,) = provider._events(iter([chunk, ServerSentEvent("[DONE]")]))
    assert done.usage == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5,
                          "prompt_tokens_details": {"cached_tokens": 1}}


def test_no_usage_from_the_upstream_is_unknown_not_zero(provider) -> None:
    events = run(provider, "nousage?tokens=3")
    assert "".join(e.text for e in events if isinstance(e, Delta)) == "".join(token_list(3))
    assert events[-1] == Done("stop", None)


# -- requests -----------------------------------------------------------------------------------

def test_openai_gets_params_and_messages_unchanged(fake_upstream, tag) -> None:
    provider = OpenAIProvider(f"{fake_upstream}/v1", "sk-test", "m", (2, 2))
    run(provider, f"normal?tag={tag}", CONVERSATION, PARAMS)
    (record,) = upstream_log(fake_upstream, tag)
    assert record["body"] == {**PARAMS, "model": f"normal?tag={tag}", "messages": CONVERSATION,
                              "stream": True, "stream_options": {"include_usage": True}}


def test_ollama_gets_params_and_messages_translated(fake_upstream, tag) -> None:
    provider = OllamaProvider(fake_upstream, "m", (2, 2))
    run(provider, f"normal?tag={tag}", CONVERSATION, PARAMS)
    (record,) = upstream_log(fake_upstream, tag)
    assert record["body"] == {
        "model": f"normal?tag={tag}", "messages": OLLAMA_CONVERSATION, "stream": True,
        "options": {"temperature": 0.2, "top_p": 0.9, "seed": 42, "presence_penalty": 0.5,
                    "frequency_penalty": -0.5, "stop": ["\n\n", "END"], "num_predict": 50},
        "format": SCHEMA, "tools": TOOLS, "think": "high"}  # tool_choice and user: no equivalent


def test_simple_requests_stay_simple_for_ollama(fake_upstream, tag) -> None:
    run(OllamaProvider(fake_upstream, "m", (2, 2)), f"normal?tag={tag}")
    (record,) = upstream_log(fake_upstream, tag)
    assert record["body"] == {"model": f"normal?tag={tag}", "messages": MESSAGES, "stream": True}


@pytest.mark.parametrize("params, expected", [
    ({"max_tokens": 10}, {"options": {"num_predict": 10}}),
    ({"stop": "END"}, {"options": {"stop": ["END"]}}),
    ({"temperature": 0}, {"options": {"temperature": 0}}),
    ({"top_k": 40}, {"options": {"top_k": 40}}),
    ({"response_format": {"type": "json_object"}}, {"format": "json"}),
    ({"response_format": {"type": "text"}}, {}),
    ({"reasoning_effort": "minimal"}, {"think": "low"}),
    ({"reasoning_effort": "medium"}, {"think": "medium"}),
    ({"reasoning_effort": "none"}, {"think": False}),
    ({"tool_choice": "auto", "user": "u"}, {}),
])
def test_ollama_params(params, expected) -> None:
    assert ollama_params(params) == expected


def test_ollama_messages_keep_simple_ones_as_they_are() -> None:
    simple = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
              {"role": "assistant", "content": "a"}]
    assert ollama_messages(simple) == simple


@pytest.mark.parametrize("content, said", [
    ([{"type": "text", "text": "one"}, {"type": "image_url", "image_url": {"url": "x"}},
      {"type": "text", "text": "two"}], "one\ntwo"),
    (None, ""),
])
def test_demo_reads_the_text_of_any_content(content, said) -> None:
    events = list(DemoProvider(delay_ms=0).stream(ChatRequest([{"role": "user", "content": content}])))
    text = "".join(e.text for e in events if isinstance(e, Delta))
    assert text.startswith(f"You said: \u201c{said}\u201d")
    assert isinstance(events[-1], Done)
