"""The OpenAI Agents SDK (``openai-agents``), unmodified, against POST /v1/responses: our service
as its default OpenAI client and API (Responses), tracing off (nothing leaves loopback), one
function tool, ``Runner.run_streamed`` to a final answer, over real gunicorn + gevent and the
fake upstream in OpenAI's and Ollama's formats (``tools?calls=1&then=N``: the call, then text once
the tool's result comes back).

The SDK's default model provider strips an ``openai/`` prefix and refuses other prefixes: a name
without one goes to the server's ``STREAMAPP_DEFAULT_PROVIDER`` (here OpenAI's format), and the
SDK's ``MultiProvider(unknown_prefix_mode="model_id")`` sends ``ollama/...`` as written."""

from __future__ import annotations

import asyncio
import json

import pytest
from agents import (
    Agent,
    ItemHelpers,
    MultiProvider,
    RunConfig,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.items import MessageOutputItem, ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI

from tests.fake_upstream import TOOL_CALLS, token_list
from tests.helpers import upstream_log

CALL = TOOL_CALLS[0]  # get_weather(city="Zürich", unit="celsius")
ANSWER_TOKENS = 3
SECOND_OUTPUT = {"openai": ANSWER_TOKENS, "ollama": 11}  # the fake's counts for the answer turn
AS_WRITTEN = MultiProvider(openai_prefix_mode="model_id", unknown_prefix_mode="model_id")  # names as written
# (upstream format, the agent's model, its run config: the SDK's defaults, or names as written)
CASES = [("openai", "tools?calls=1&then={n}&tag={tag}", None),
         ("ollama", "ollama/tools?calls=1&then={n}&tag={tag}", RunConfig(model_provider=AS_WRITTEN))]


@pytest.fixture(scope="module")
def srv(start_server):
    return start_server(DEFAULT_PROVIDER="openai", RESUME_GRACE_S=0, HEADER_WAIT_S=0.2)


async def run_agent(url: str, model: str, config: RunConfig | None, calls: list[dict]) -> tuple[list, object]:
    """The agent's run over ``url``: every streamed event and the finished result."""

    @function_tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        calls.append({"city": city, "unit": unit})
        return f"sunny in {city}"

    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-agents", max_retries=0, timeout=20)
    set_default_openai_client(client, use_for_tracing=False)
    set_default_openai_api("responses")
    set_tracing_disabled(True)
    agent = Agent(name="weather", instructions="Answer with the weather.", model=model, tools=[get_weather])
    try:
        result = Runner.run_streamed(agent, "What is the weather in Zürich?", max_turns=3, run_config=config)
        events = [event async for event in result.stream_events()]
    finally:
        await client.close()
    return events, result


@pytest.mark.parametrize(("fmt", "model", "config"), CASES, ids=[c[0] for c in CASES])
def test_an_agent_calls_its_tool_and_answers(srv, fake_upstream, tag, fmt, model, config) -> None:
    calls: list[dict] = []
    events, result = asyncio.run(run_agent(srv.url, model.format(n=ANSWER_TOKENS, tag=tag), config, calls))
    assert calls == [CALL["arguments"]]
    items = [e.item for e in events if e.type == "run_item_stream_event"]
    assert [type(i) for i in items] == [ToolCallItem, ToolCallOutputItem, MessageOutputItem]
    called, output, message = items
    assert called.raw_item.name == CALL["name"] and json.loads(called.raw_item.arguments) == CALL["arguments"]
    assert output.output == "sunny in Zürich"
    answer = "".join(token_list(ANSWER_TOKENS))
    assert ItemHelpers.text_message_output(message) == answer == result.final_output
    deltas = [e.data.delta for e in events
              if e.type == "raw_response_event" and e.data.type == "response.output_text.delta"]
    assert "".join(deltas) == answer
    usage = result.context_wrapper.usage  # the upstream's counts of both turns, summed by the SDK
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 12 + 7, 30 + SECOND_OUTPUT[fmt])
    # Two requests upstream: the question, then the question, the call and its result as a tool message.
    records = upstream_log(fake_upstream, tag)
    assert [r["api"] for r in records] == [fmt, fmt]
    first, second = (record["messages"] for record in records)
    assert [m["role"] for m in first] == ["system", "user"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool"]
    assert second[-1]["content"] == "sunny in Zürich"
    sent_call = second[2]["tool_calls"][0]
    assert sent_call["function"]["name"] == CALL["name"]
    if fmt == "openai":  # Ollama's messages carry no call ids
        assert second[-1]["tool_call_id"] == sent_call["id"] == called.raw_item.call_id
