"""``GET /api.json`` and ``GET /swagger/`` on a real gunicorn server.

The document validates and has exactly the app's routes (each view's ``@describe``); the
encoders' events match the document's event schemas (the configured limits:
``test_openapi_limits.py``); schemathesis fuzzes a live server from it (no 5xx, every answer
conforms); hand-picked requests reach the answers random data cannot (live stream ids,
upstream failures, tool calls) and are checked against it too; Swagger UI works in Chromium
with every other origin blocked; the route table is logged at start-up and
``flask --app wsgi routes`` works.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from streamapp import create_app, openapi, wire
from streamapp.events import Delta, Done, Failed, Opened, Reasoning, ToolCall
from streamapp.sse import ServerSentEvent, iter_events
from tests.conftest import ROOT, require_binary

# Quick settings: every stream schemathesis can start ends within a few seconds.
QUICK = {"HEARTBEAT_S": 0.5, "RESUME_GRACE_S": 0, "HEADER_WAIT_S": 0.3, "READ_TIMEOUT_S": 2,
         "CONNECT_TIMEOUT_S": 1, "MAX_BODY_BYTES": 4096, "BODY_TIMEOUT_S": 2, "DEMO_DELAY_MS": 0,
         "STREAM_DEFAULT_DELAY_MS": 1, "STREAM_MAX_DELAY_MS": 5, "STREAM_MAX_DURATION_S": 3,
         "INSPECT_LIVE_S": 0.5}  # the inspector's live table ends within schemathesis' request timeout
SCHEMATHESIS_CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
                       "response_headers_conformance,response_schema_conformance,unsupported_method,"
                       "allow_header_conformance")


@pytest.fixture(scope="module")
def quick(start_server):
    return start_server(**QUICK)


@pytest.fixture(scope="module")
def doc(quick) -> dict[str, Any]:
    resp = requests.get(f"{quick.url}/api.json", timeout=10)
    assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/json"
    return resp.json()


def flask_routes() -> list[tuple[str, str, str]]:
    """``(endpoint, METHOD, rule)`` rows of ``flask --app wsgi routes`` (the app's url_map)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "REDIS_URL"))}
    proc = subprocess.run([str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "routes"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = []
    for line in proc.stdout.splitlines()[2:]:  # a header and a rule
        endpoint, methods, rule = re.match(r"(\S+)\s+(\S+(?:, \S+)*)\s+(\S+)", line).groups()
        rows += [(endpoint, method, rule) for method in methods.split(", ")]
    return rows


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


# -- The document ----------------------------------------------------------------------------


def test_document_validates(doc) -> None:
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_has_an_entry_and_every_entry_a_route(doc) -> None:
    served = {(method, openapi.openapi_path(rule)) for _, method, rule in flask_routes()}
    assert ("POST", "/v1/chat/completions") in served and ("GET", "/api.json") in served
    assert operations(doc) == served


def test_a_route_without_a_description_is_reported_and_left_out() -> None:
    app = create_app({"RATE_LIMIT": ""})
    assert openapi.undocumented(app) == set()
    app.add_url_rule("/undescribed/<int:n>", "undescribed", lambda n: "", methods=["GET", "PUT"])
    assert openapi.undocumented(app) == {("GET", "/undescribed/{n}"), ("PUT", "/undescribed/{n}")}
    assert "/undescribed/{n}" not in openapi.build(app)["paths"]


def test_request_schemas_are_the_validating_models(doc) -> None:
    """One source of truth: bodies and queries are the models of schemas.py, bounds included."""
    schemas = doc["components"]["schemas"]
    chat = doc["paths"]["/api/chat"]["post"]["requestBody"]["content"]["application/json"]
    assert chat["schema"] == {"$ref": "#/components/schemas/ChatBody"}
    assert schemas["ChatBody"]["properties"]["uid"]["maximum"] == 2**63 - 1
    v1 = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]
    assert v1["schema"] == {"$ref": "#/components/schemas/V1ChatRequest"}
    query = {p["name"]: p for p in doc["paths"]["/stream"]["get"]["parameters"]}
    assert query["delay_ms"]["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**31 - 1,
                                           "default": QUICK["STREAM_DEFAULT_DELAY_MS"]}
    assert {p["name"] for p in doc["paths"]["/ai-stream"]["get"]["parameters"]} >= {"prompt", "model"}
    assert "$defs" not in json.dumps(doc) and '"ge"' not in json.dumps(doc)


def test_streams_are_described_event_by_event(doc) -> None:
    chat = doc["paths"]["/api/chat"]["post"]["responses"]["200"]
    assert set(chat["content"]) == {"text/event-stream", "text/plain"}
    assert "describes **one event**" in chat["description"]
    events = doc["components"]["schemas"]["ChatStreamEvent"]["oneOf"]
    message = next(e for e in events if e["properties"]["event"] == {"const": "message"})
    assert message["properties"]["data"]["contentMediaType"] == "application/json"
    resume = doc["paths"]["/api/streams/{sid}"]["get"]
    assert {p["name"] for p in resume["parameters"]} >= {"sid", "Last-Event-ID", "last_event_id"}
    assert resume["responses"]["204"] == {"$ref": "#/components/responses/NothingToResume"}
    unavailable = doc["components"]["responses"]["Error503"]
    assert unavailable["headers"]["Retry-After"]["required"] is True


def event_checker(doc: dict[str, Any], component: str):
    """A check of one decoded SSE event against the document's schema ``component``, its JSON
    ``data`` against the ``contentSchema`` of the branch it matched (jsonschema only annotates it)."""
    root = {"$ref": f"#/components/schemas/{component}", "components": doc["components"]}
    validator = Draft202012Validator(root)

    def check(event: ServerSentEvent) -> None:
        item = {"event": event.event, "data": event.data, "id": event.id}
        if event.retry is not None:
            item["retry"] = event.retry
        validator.validate(item)
        schema = doc["components"]["schemas"][component]
        branches = schema.get("oneOf") or [schema.get("else", {})]
        data_schemas = [b["properties"]["data"] for b in branches
                        if b.get("properties", {}).get("event", {}).get("const", event.event) == event.event]
        for data in data_schemas:
            if "contentSchema" in data and event.data != "[DONE]":
                Draft202012Validator({**data["contentSchema"], "components": doc["components"]}).validate(
                    json.loads(event.data))
    return check


@pytest.mark.parametrize("fmt", ["chat", "plain", "openai"])
def test_the_encoders_write_what_the_document_describes(doc, fmt) -> None:
    """Every kind of event through each SSE encoder of wire.py, decoded, matches the event schema
    its routes' answers name (retry: the server's RETRY_MS)."""
    media = {"chat": doc["paths"]["/api/chat"]["post"], "plain": doc["paths"]["/stream"]["get"],
             "openai": doc["paths"]["/v1/chat/completions"]["post"]}[fmt]["responses"]["200"]["content"]
    component = media["text/event-stream"]["schema"]["$ref"].rsplit("/", 1)[1]
    check = event_checker(doc, component)
    enc = wire.encoder(fmt, 2000, {"model": "demo", "created": 1, "include_usage": True})
    kinds = [Opened(), Delta("hi", 0), Reasoning("hmm"), ToolCall(0, "call_1", "f", '{"a"'),
             ToolCall(0, None, None, "}"),
             Failed("x", "it broke", usage={"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6,
                                            "source": "partial", "method": "completion: 1 per chunk"}),
             Done("tool_calls", {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                                 "source": "reported"})]
    raw = enc.open("s1") + b"".join(enc.event("s1", seq, event, seq == 0) for seq, event in enumerate(kinds))
    decoded = list(iter_events([raw]))
    assert len(decoded) >= len(kinds) - 1  # OpenAI's stream has no opening event, and [DONE] ends it
    for event in decoded:
        check(event)


# -- A live server against the document --------------------------------------------------------


def test_schemathesis_finds_nothing(quick, tmp_path) -> None:
    """Every phase (examples, coverage, fuzzing, stateful), positive and negative data,
    bounded: 25 examples per operation, 20 s per request, 5 minutes in all (about 15 s here),
    loopback only (the server's address, no redirects followed)."""
    binary = require_binary("schemathesis", "make test (pip install -r requirements-dev.txt)")
    config = tmp_path / "schemathesis.toml"
    config.write_text("[phases.stateful]\nmax-steps = 20\n")
    args = [binary, "--no-color", "--config-file", str(config), "run", f"{quick.url}/api.json",
            "--checks", SCHEMATHESIS_CHECKS, "--max-examples", "25", "--request-timeout", "20",
            # One worker: hypothesis is not thread-safe under Python 3.11 (seen here: "AST constructor
            # recursion depth mismatch", shrinker IndexErrors with --workers 2). A fixed seed makes a
            # failure reproducible; change it to explore.
            "--max-redirects", "0", "--seed", "20261130", "--workers", "1"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    summary = re.search(r"(\d+) generated, (\d+) passed\s*$", out, re.M)
    print(summary.group(0) if summary else out[-3000:])
    assert proc.returncode == 0, out[-20000:]
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(1)) > 500, out[-5000:]
    assert "Tested: 32" in out  # every operation but the document itself (schemathesis leaves it out)


@pytest.fixture(scope="module")
def api(doc):
    import schemathesis

    return schemathesis.openapi.from_dict(doc)


def conforms(api, doc: dict[str, Any], method: str, path: str, resp: requests.Response) -> None:
    """``resp`` has a status, a content type, headers and a body the document gives ``method path``."""
    responses = doc["paths"][path][method.lower()]["responses"]
    assert str(resp.status_code) in responses, (method, path, resp.status_code, resp.text[:300])
    entry = responses[str(resp.status_code)]
    if "$ref" in entry:
        entry = doc["components"]["responses"][entry["$ref"].rsplit("/", 1)[1]]
    media = resp.headers.get("Content-Type", "").split(";")[0]
    assert media in entry.get("content", {}) or "*/*" in entry.get("content", {}), (path, media, entry)
    for name, header in entry.get("headers", {}).items():
        assert not header["required"] or name in resp.headers, (path, name)
    api[path][method].validate_response(resp)


def test_answers_random_data_cannot_reach_match_the_document(quick, api, doc) -> None:
    url = quick.url

    def call(method: str, path: str, route: str | None = None, **kwargs: Any) -> requests.Response:
        resp = requests.request(method, url + path, timeout=20, **kwargs)
        conforms(api, doc, method, route or path, resp)
        return resp

    # New streams in every format, with reasoning and tool calls (the fake upstream's modes).
    chat = call("POST", "/api/chat", json={"uid": 1, "message": "hi"})
    assert chat.status_code == 200 and "is_end" in chat.text
    sid = chat.headers["X-Stream-Id"]
    for model in ("tools", "reasoning"):
        body = {"uid": 1, "message": "hi", "provider": "openai", "model": model}
        resp = call("POST", "/api/chat", json=body)
        assert ('"tool_call"' if model == "tools" else '"reasoning"') in resp.text
        resp = call("GET", f"/ai-stream?prompt=hi&model={model}", "/ai-stream")
        assert f"event: {'tool_call' if model == 'tools' else 'reasoning'}" in resp.text
    text = call("POST", "/api/chat?format=text", "/api/chat", json={"uid": 1, "message": "hi"})
    assert text.headers["Content-Type"].startswith("text/plain")
    plain = call("GET", "/stream?text=hello%20world&delay_ms=0", "/stream")
    v1 = {"model": "openai/tools", "messages": [{"role": "user", "content": "hi"}], "stream": True,
          "stream_options": {"include_usage": True}}
    chunks = call("POST", "/v1/chat/completions", json=v1)
    assert chunks.text.rstrip().endswith("data: [DONE]") and "tool_calls" in chunks.text
    whole = call("POST", "/v1/chat/completions", json={**v1, "stream": False, "model": "openai/reasoning"})
    assert whole.json()["object"] == "chat.completion"
    call("POST", "/v1/chat/completions", json={**v1, "model": "demo", "stream": False})

    # The stream API with live ids: resume in each format, info, cancel (running and finished).
    for resp in (chat, text, plain, chunks):
        sid_ = resp.headers["X-Stream-Id"]
        call("GET", f"/api/streams/{sid_}", "/api/streams/{sid}", headers={"Last-Event-ID": f"{sid_}-1"})
        call("GET", f"/api/streams/{sid_}/info", "/api/streams/{sid}/info")
    call("POST", f"/api/streams/{sid}/cancel", "/api/streams/{sid}/cancel")
    slow = {"text": "流" * 300, "delay_ms": 5}  # 300 tokens 5 ms apart: running for 1.5 s
    with requests.get(f"{url}/stream", params=slow, stream=True, timeout=20) as running:
        running_sid = running.headers["X-Stream-Id"]
        cancelled = call("POST", f"/api/streams/{running_sid}/cancel", "/api/streams/{sid}/cancel")
    assert cancelled.status_code == 202
    assert call("GET", f"/stream?last_event_id={sid}-1", "/stream").status_code == 204  # chat's, not ours
    assert call("GET", "/api/streams/nosuch/info", "/api/streams/{sid}/info").status_code == 404

    # Errors before the first byte, ours and OpenAI's shape.
    assert call("POST", "/api/chat", data="hi", headers={"Content-Type": "text/plain"}).status_code == 415
    assert call("POST", "/api/chat", json={"uid": 1, "message": "x" * 5000}).status_code == 413
    assert call("POST", "/api/chat", json={"uid": 0, "message": "hi"}).json()["error"]["field"] == "uid"
    failed = call("GET", "/ai-stream?prompt=hi&model=status%3Fstatus%3D503", "/ai-stream")
    assert failed.status_code == 502 and "X-Stream-Id" in failed.headers
    limited = call("GET", "/ai-stream?prompt=hi&model=status", "/ai-stream")  # the upstream's 429
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "1"
    assert call("GET", "/local-ai?prompt=hi&model=hang", "/local-ai").status_code == 504
    assert call("POST", "/v1/chat/completions", json={"model": "demo"}).json()["error"]["param"] == "messages"
    busy = {**v1, "model": "openai/status?status=503"}
    assert call("POST", "/v1/chat/completions", json=busy).status_code == 502
    assert call("GET", "/v1/models/nosuch", "/v1/models/{model}").json()["error"]["type"]
    for model in call("GET", "/v1/models").json()["data"]:
        call("GET", f"/v1/models/{model['id']}", "/v1/models/{model}")
    for path, route in (("/static/app.js", "/static/{filename}"), ("/swagger/swagger-ui-bundle.js",
                                                                    "/swagger/{filename}")):
        call("GET", path, route)


def test_a_refused_method_is_a_405_with_allow(quick, doc) -> None:
    resp = requests.delete(f"{quick.url}/api/chat", timeout=10)
    assert resp.status_code == 405 and resp.headers["Allow"]
    assert set(resp.json()["error"]) == {"code", "message", "field"}
    assert "Error405" in doc["components"]["responses"]


# -- Swagger UI in Chromium ------------------------------------------------------------------




def operation(page, path: str):
    """Swagger UI's block of the operation on ``path``."""
    return page.locator(".opblock").filter(has=page.locator(f'.opblock-summary-path[data-path="{path}"]'))


def test_swagger_ui_works_offline_and_tries_requests(quick, doc, browser) -> None:
    origin = quick.url
    blocked: list[str] = []
    page = browser.new_page()

    def only_our_origin(route) -> None:
        parts = urlsplit(route.request.url)
        if f"{parts.scheme}://{parts.netloc}" == origin:
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    try:
        page.route("**/*", only_our_origin)
        page.goto(f"{origin}/swagger/")
        page.wait_for_selector(".opblock-summary-path", timeout=15000)
        shown = {(el.get_attribute("data-path") or el.inner_text()).replace("\u200b", "")
                 for el in page.query_selector_all(".opblock-summary-path")}
        assert {"/api/chat", "/v1/chat/completions", "/api/streams/{sid}", "/healthz"} <= shown
        assert shown == set(doc["paths"])

        # "Try it out" (on by default here) sends a real request to this origin.
        block = operation(page, "/healthz")
        block.locator(".opblock-summary").click()
        block.locator("button.execute").click()
        status = block.locator(".live-responses-table .response .response-col_status").first
        status.wait_for(timeout=10000)
        assert status.inner_text().strip() == "200"
        assert '"ok"' in block.locator(".live-responses-table .microlight").first.inner_text()

        chat = operation(page, "/api/chat")
        chat.locator(".opblock-summary").click()
        chat.locator("button.execute").click()  # the example body: {"uid": 1, "message": "Hi there"}
        body = chat.locator(".live-responses-table .microlight").first
        body.wait_for(timeout=15000)
        assert "is_end" in body.inner_text()
    finally:
        page.close()
    assert blocked == []


# -- The route table -------------------------------------------------------------------------


def test_route_table_is_logged_once_per_worker_and_matches_flask_routes(quick) -> None:
    output = quick.process.output()
    tables = re.findall(r"route table \(pid (\d+)\):\n((?:  .*\n)+)", output)
    assert len(tables) == 1, output[-3000:]  # one worker, one table
    logged = {tuple(line.split()) for line in tables[0][1].splitlines()[1:]}
    assert logged == {(method, rule, endpoint) for endpoint, method, rule in flask_routes()}
    assert "routes without a description" not in output
