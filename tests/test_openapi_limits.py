"""The document of a server started with non-default limits states each of them.

Each configured limit is in ``/api.json`` as this server has it (a schema keyword where one
can say it, else the description of the answer that enforces it), every limit-like setting
of ``config.DEFAULTS`` appears with its value, and for each limit a request at it is taken
and one just over it refused, the document's request schema agreeing with the server on
both sides.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from streamapp.config import DEFAULTS

LIMITED = {"MAX_BODY_BYTES": 3000, "WS_MAX_FRAME_BYTES": 5000, "BODY_TIMEOUT_S": 3, "STREAM_MAX_TEXT": 20,
           "STREAM_MAX_DELAY_MS": 7, "STREAM_DEFAULT_DELAY_MS": 3, "MAX_MESSAGE_CHARS": 50, "MAX_MESSAGES": 3,
           "MAX_INPUT_CHARS": 120, "MAX_TOKENS_CEILING": 100, "ALLOWED_MODELS": "openai:tools,gpt-4o-mini",
           "RATE_LIMIT": "1000/hour", "MAX_STREAMS_PER_KEY": 7, "MAX_STREAMS_PER_PROCESS": 9,
           "STREAM_MAX_EVENTS": 5000, "STREAM_MAX_BYTES": 60000, "STREAM_MAX_DURATION_S": 30,
           "RETRY_MS": 1500, "RESUME_TTL_S": 77, "DEMO_DELAY_MS": 0, "HEADER_WAIT_S": 0.3,
           "RESUME_GRACE_S": 0}
# Settings that limit what a client may send or spend; each must be in the document with its value.
LIMIT_SETTING = re.compile(r"^(MAX_|STREAM_MAX_|WS_MAX_)|_CEILING$|"
                           r"^(ALLOWED_MODELS|RATE_LIMIT|BODY_TIMEOUT_S)$")


@pytest.fixture(scope="module")
def limited(start_server):
    return start_server(**LIMITED)


@pytest.fixture(scope="module")
def doc(limited) -> dict[str, Any]:
    return requests.get(f"{limited.url}/api.json", timeout=10).json()


def schema_of(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return doc["components"]["schemas"][name]


def query_param(doc: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    return next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name)


def test_the_document_validates(doc) -> None:
    validate(doc)  # ALLOWED_MODELS's conditions included


def test_every_limit_setting_is_in_the_document_with_its_value(doc) -> None:
    text = json.dumps(doc)
    settings = sorted(name for name in DEFAULTS if LIMIT_SETTING.search(name))
    assert {"MAX_BODY_BYTES", "STREAM_MAX_TEXT", "MAX_TOKENS_CEILING", "ALLOWED_MODELS"} <= set(settings)
    for name in settings:
        value = LIMITED.get(name, DEFAULTS[name])
        shown = f"{value:g}" if isinstance(value, float) else str(value).split(",")[0].split(":")[-1]
        spots = [m.start() for m in re.finditer(rf"\b{name}\b", text)]
        assert spots, f"{name} is not in the document"
        assert any(shown in text[max(0, at - 120):at + 120] for at in spots), (name, shown)


def test_the_request_schemas_carry_the_configured_limits(doc) -> None:
    chat, message = schema_of(doc, "ChatBody")["properties"], schema_of(doc, "Message")["properties"]
    assert chat["message"]["maxLength"] == message["content"]["maxLength"] == LIMITED["MAX_MESSAGE_CHARS"]
    assert chat["history"]["maxItems"] == LIMITED["MAX_MESSAGES"] - 1  # the new message is one of them
    v1 = schema_of(doc, "V1ChatRequest")
    assert v1["properties"]["messages"]["maxItems"] == LIMITED["MAX_MESSAGES"]
    content = schema_of(doc, "V1Message")["properties"]["content"]["anyOf"]
    text = next(b for b in content if b["type"] == "string")
    assert text["maxLength"] == LIMITED["MAX_MESSAGE_CHARS"]
    for name in ("max_tokens", "max_completion_tokens"):
        number = v1["properties"][name]["anyOf"][0]
        assert number["maximum"] == LIMITED["MAX_TOKENS_CEILING"], name
    assert f"at most {LIMITED['MAX_INPUT_CHARS']} characters" in v1["description"]
    assert schema_of(doc, "ChatBody")["allOf"] == [{
        "if": {"required": ["provider"], "properties": {"provider": {"const": "openai"}}},
        "then": {"properties": {"model": {"enum": ["gpt-4o-mini", "tools", None]}}}}]
    assert v1["properties"]["model"]["allOf"] == [
        {"if": {"pattern": "^openai/"}, "then": {"enum": ["openai/gpt-4o-mini", "openai/tools"]}}]
    assert query_param(doc, "/stream", "text")["schema"]["maxLength"] == LIMITED["STREAM_MAX_TEXT"]
    delay = query_param(doc, "/stream", "delay_ms")
    assert delay["schema"]["default"] == LIMITED["STREAM_DEFAULT_DELAY_MS"]
    assert f"taken as {LIMITED['STREAM_MAX_DELAY_MS']}" in delay["description"]


def test_the_answers_state_the_configured_limits(doc) -> None:
    responses = doc["components"]["responses"]
    assert f"over {LIMITED['MAX_BODY_BYTES']} bytes" in responses["Error413"]["description"]
    assert f"within {LIMITED['BODY_TIMEOUT_S']} s" in responses["OpenAIError408"]["description"]
    limited = responses["Error429"]["description"]
    for name in ("RATE_LIMIT", "MAX_STREAMS_PER_KEY", "MAX_STREAMS_PER_PROCESS"):
        assert f"{name}: {LIMITED[name]}" in limited
    body = doc["paths"]["/api/chat"]["post"]["requestBody"]
    assert f"{LIMITED['MAX_BODY_BYTES']} bytes" in body["description"]
    answer = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["description"]
    assert f"after {LIMITED['STREAM_MAX_EVENTS']} events carrying content" in answer
    assert f"{LIMITED['STREAM_MAX_BYTES']} bytes of that content" in answer
    assert f"after {LIMITED['STREAM_MAX_DURATION_S']} s" in answer
    ws = doc["paths"]["/ws"]["get"]["description"]
    assert f"over {LIMITED['WS_MAX_FRAME_BYTES']} bytes (WS_MAX_FRAME_BYTES)" in ws
    retry = schema_of(doc, "ChatStreamEvent")["oneOf"][0]["properties"]["retry"]
    assert retry == {"const": LIMITED["RETRY_MS"]}
    assert f"after {LIMITED['RESUME_TTL_S']} s" in responses["NothingToResume"]["description"]


def conforms_to(doc: dict[str, Any], schema_name: str, body: Any) -> bool:
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    return Draft202012Validator(root).is_valid(body)


def chat(**fields: Any) -> dict[str, Any]:
    return {"uid": 1, "message": "hi", **fields}


def v1(**fields: Any) -> dict[str, Any]:
    return {"model": "demo", "messages": [{"role": "user", "content": "hi"}], **fields}


def turns(n: int, size: int = 1) -> list[dict[str, str]]:
    return [{"role": "user", "content": "x" * size} for _ in range(n)]


M, N, T = LIMITED["MAX_MESSAGE_CHARS"], LIMITED["MAX_MESSAGES"], LIMITED["MAX_TOKENS_CEILING"]
# (limit, path, schema, body at the limit, body just over it, the field the refusal names)
EDGES = [
    ("MAX_MESSAGE_CHARS", "/api/chat", "ChatBody", chat(message="x" * M), chat(message="x" * (M + 1)),
     "message"),
    ("MAX_MESSAGE_CHARS", "/api/chat", "ChatBody", chat(history=turns(1, M)), chat(history=turns(1, M + 1)),
     "history.0.content"),
    ("MAX_MESSAGES", "/api/chat", "ChatBody", chat(history=turns(N - 1)), chat(history=turns(N)), "history"),
    ("MAX_MESSAGES", "/v1/chat/completions", "V1ChatRequest", v1(messages=turns(N)),
     v1(messages=turns(N + 1)), "messages"),
    ("MAX_MESSAGE_CHARS", "/v1/chat/completions", "V1ChatRequest", v1(messages=turns(1, M)),
     v1(messages=turns(1, M + 1)), "messages.0.content"),
    ("MAX_TOKENS_CEILING", "/v1/chat/completions", "V1ChatRequest", v1(max_tokens=T), v1(max_tokens=T + 1),
     "max_tokens"),
    ("MAX_TOKENS_CEILING", "/v1/chat/completions", "V1ChatRequest", v1(max_completion_tokens=T),
     v1(max_completion_tokens=T + 1), "max_completion_tokens"),
    ("ALLOWED_MODELS", "/api/chat", "ChatBody", chat(provider="openai", model="tools"),
     chat(provider="openai", model="reasoning"), "model"),
    ("ALLOWED_MODELS", "/v1/chat/completions", "V1ChatRequest", v1(model="openai/tools"),
     v1(model="openai/reasoning"), "model"),
]


@pytest.mark.parametrize("limit, path, schema, at, over, field", EDGES,
                         ids=[f"{e[0]}-{e[1]}-{e[5]}" for e in EDGES])
def test_a_body_at_a_limit_is_taken_and_one_just_over_refused(limited, doc, limit, path, schema, at, over,
                                                               field) -> None:
    assert conforms_to(doc, schema, at) and not conforms_to(doc, schema, over), limit
    taken = requests.post(limited.url + path, json=at, timeout=20)
    assert taken.status_code == 200, (limit, taken.text[:300])
    refused = requests.post(limited.url + path, json=over, timeout=20)
    assert refused.status_code == 400, (limit, refused.status_code, refused.text[:300])
    error = refused.json()["error"]
    assert error.get("field", error.get("param")) == field and limit in error["message"], error


def test_the_limits_no_schema_keyword_states_are_enforced_as_described(limited, doc) -> None:
    # MAX_INPUT_CHARS: all the messages together (the schema takes each one).
    each = LIMITED["MAX_INPUT_CHARS"] // N + 1
    over = v1(messages=turns(N, each))
    assert each <= M and conforms_to(doc, "V1ChatRequest", over)
    refused = requests.post(f"{limited.url}/v1/chat/completions", json=over, timeout=20)
    assert refused.status_code == 400 and "MAX_INPUT_CHARS" in refused.json()["error"]["message"]
    # MAX_BODY_BYTES: a body of exactly the limit is read, one byte more is a 413.
    limit = LIMITED["MAX_BODY_BYTES"]
    for size, status in ((limit, 200), (limit + 1, 413)):
        body = json.dumps(chat(pad="")).encode()
        body = json.dumps(chat(pad="p" * (size - len(body)))).encode()
        assert len(body) == size
        resp = requests.post(f"{limited.url}/api/chat", data=body, timeout=20,
                             headers={"Content-Type": "application/json"})
        assert resp.status_code == status, (size, resp.text[:300])
    # STREAM_MAX_TEXT: a query value (its parameter's maxLength).
    most = LIMITED["STREAM_MAX_TEXT"]
    assert requests.get(f"{limited.url}/stream", params={"text": "t" * most}, timeout=20).status_code == 200
    refused = requests.get(f"{limited.url}/stream", params={"text": "t" * (most + 1)}, timeout=20)
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "text"
