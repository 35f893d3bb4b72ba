"""``item_reference`` input items (what the AI SDK's ``openai(model)`` sends for an earlier
assistant part with its default ``store: true``), driven by the official ``openai`` SDK."""

from __future__ import annotations

import json

import openai
import pytest

from tests.fake_upstream import TOOL_CALLS
from tests.helpers import poll_until, upstream_log

TOOL = {"type": "function", "name": "get_weather", "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(RESUME_GRACE_S=0, HEADER_WAIT_S=0.2, DEMO_DELAY_MS=0, READ_TIMEOUT_S=3)


@pytest.fixture
def client(srv):
    with openai.OpenAI(base_url=f"{srv.url}/v1", api_key="sk-anything", max_retries=0, timeout=20) as c:
        yield c


def ref(item_id: str) -> dict:
    return {"type": "item_reference", "id": item_id}


def test_a_second_turn_refers_to_the_first_turns_items(client, fake_upstream, tag) -> None:
    """Turn two names turn one's reasoning and message by id; the upstream sees the message's text."""
    model = f"openai/reasoning?tokens=2&tag={tag}"
    first = client.responses.create(model=model, input="first question", reasoning={"effort": "low"})
    assert [item.type for item in first.output] == ["reasoning", "message"]
    items = [{"role": "user", "content": "first question"}, *(ref(item.id) for item in first.output),
             {"role": "user", "content": "second question"}]
    second = client.responses.create(model=model, input=items)
    assert second.status == "completed"
    sent = upstream_log(fake_upstream, tag)[-1]["messages"]
    assert sent == [{"role": "user", "content": "first question"},
                    {"role": "assistant", "content": first.output_text},
                    {"role": "user", "content": "second question"}]


def test_referenced_function_calls_are_the_assistants_tool_calls(client, fake_upstream, tag) -> None:
    first = client.responses.create(model=f"openai/tools?tag={tag}", input="weather?", tools=[TOOL])
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 2
    items = [{"role": "user", "content": "weather?"}, *(ref(c.id) for c in calls),
             *({"type": "function_call_output", "call_id": c.call_id, "output": "sunny"} for c in calls)]
    with client.responses.create(model=f"openai/normal?tokens=2&tag={tag}", input=items, tools=[TOOL],
                                 stream=True) as stream:
        events = list(stream)
    assert events[-1].type == "response.completed"
    sent = upstream_log(fake_upstream, tag)[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in sent[1]["tool_calls"]] == \
        [(c.call_id, t["name"], t["arguments"]) for c, t in zip(calls, TOOL_CALLS, strict=True)]


def test_a_reference_to_nothing_we_keep_is_a_404_naming_it(client) -> None:
    kept = client.responses.create(model="demo", input="hi")
    sid = kept.id.removeprefix("resp_")
    deleted = client.responses.create(model="demo", input="hi")
    client.responses.delete(deleted.id)
    for missing in ("msg_nosuchstream_0", f"msg_{sid}_7", f"fc_{sid}_0", "msg_abc", "item_1",
                    deleted.output[0].id):
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model="demo", input=[{"role": "user", "content": "hi"}, ref(missing)])
        assert caught.value.body["param"] == "input.1.id", missing
        assert missing in caught.value.message


def test_a_store_false_response_cannot_be_referenced(client) -> None:
    unkept = client.responses.create(model="demo", input="hi", store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="demo", input=[ref(unkept.output[0].id)])
    assert caught.value.body["param"] == "input.0.id"


def test_a_reference_expires_with_its_response(start_server) -> None:
    server = start_server(RESUME_TTL_S=1, DEMO_DELAY_MS=0, RESUME_GRACE_S=0)
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=20) as client:
        first = client.responses.create(model="demo", input="hi")
        item = ref(first.output[0].id)
        assert client.responses.create(model="demo", input=[item]).status == "completed"

        def expired() -> bool:
            try:
                client.responses.create(model="demo", input=[item])
            except openai.NotFoundError as exc:
                return exc.body["param"] == "input.0.id"
            return False
        poll_until(expired, 10, "the reference expired with its response")
