"""The upstreams file (streamapp.upstreams): the example loads, each mistake is refused naming
its table and key, public names resolve to routes, and one provider serves each upstream."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
import requests
from websockets.sync.client import connect

from streamapp import config as settings
from streamapp import create_app
from streamapp.errors import ApiError
from streamapp.models import FleetModels, Resolved, build_models
from streamapp.providers import build_providers
from streamapp.providers.ollama import OllamaProvider
from streamapp.providers.openai import OpenAIProvider
from streamapp.ready import providers_to_check
from streamapp.upstreams import Fleet, Target, load, parse
from tests.conftest import Process, require_binary
from tests.helpers import SSEClient, data_events, free_port, recv_until, upstream_log

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "upstreams.example.toml"
ENV = {"OPENAI_API_KEY": "sk-example"}

FILE = """
default_route = "gpt-4o-mini"

[upstreams.primary]
kind = "openai"
base_url = "https://api.openai.com/v1/"
api_key_env = "OPENAI_API_KEY"
read_timeout_s = 30

[upstreams.local]
kind = "ollama"
base_url = "http://127.0.0.1:11434"
default_model = "llama3.2"

[routes."gpt-4o-mini"]
targets = ["primary/gpt-4o-mini", "local/llama3.2"]

[routes."meta-llama/llama-3"]
targets = ["primary/meta-llama/llama-3"]

[routes.cheap]
strategy = "weighted"
targets = [{ target = "local", weight = 3 }, "primary/gpt-4o-mini"]

[routes.private]
targets = ["local/qwen3"]
"""


def fleet(text: str = FILE, environ: dict[str, str] | None = None) -> Fleet:
    return parse(text, "upstreams.toml", ENV if environ is None else environ)


def refused(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ValueError) as caught:
        fleet(text, environ)
    message = str(caught.value)
    assert message.startswith("upstreams.toml: "), message
    return message


# -- the file, read ---------------------------------------------------------------------------

def test_the_example_in_conf_loads() -> None:
    read = load(str(EXAMPLE), ENV)
    assert set(read.upstreams) == {"primary", "local"}
    assert read.upstreams["primary"].api_key == "sk-example"
    assert read.routes["gpt-4o-mini"].targets == \
        (Target("primary", "gpt-4o-mini"), Target("local", "llama3.2"))
    assert read.routes["cheap"].strategy == "weighted"
    assert read.routes["cheap"].targets[0] == Target("local", "llama3.2", 3.0)
    assert read.default_route == "gpt-4o-mini"


def test_the_readme_shows_the_example_in_conf() -> None:
    readme = (EXAMPLE.parent.parent / "README.md").read_text(encoding="utf-8")
    start = readme.index("### Named upstreams and routes")
    shown = re.search(r"^```toml\n(.*?)^```", readme[start:], flags=re.M | re.S)
    assert shown is not None and shown.group(1) == EXAMPLE.read_text(encoding="utf-8")


def test_a_file_reads_into_upstreams_and_routes() -> None:
    read = fleet()
    primary = read.upstreams["primary"]
    assert (primary.kind, primary.base_url, primary.read_timeout_s, primary.connect_timeout_s) == \
        ("openai", "https://api.openai.com/v1", 30.0, None)
    assert "sk-example" not in repr(primary)  # the key is never shown
    assert read.upstreams["local"].api_key == ""
    assert list(read.routes) == ["gpt-4o-mini", "meta-llama/llama-3", "cheap", "private"]
    assert read.routes["gpt-4o-mini"].strategy == "fallback"
    assert read.routes["meta-llama/llama-3"].targets == (Target("primary", "meta-llama/llama-3"),)
    assert read.routes["cheap"].targets == \
        (Target("local", "llama3.2", 3.0), Target("primary", "gpt-4o-mini"))


UPSTREAM = '[upstreams.local]\nkind = "ollama"\nbase_url = "http://127.0.0.1:11434"\n'
ROUTE = '[routes.r]\ntargets = ["local/llama3.2"]\n'


@pytest.mark.parametrize(("text", "expected"), [
    # TOML itself, with its line
    ("oops =\n" + UPSTREAM + ROUTE, "not valid TOML: Invalid value (at line 1, column 7)"),
    # top level
    ("colour = 1\n" + UPSTREAM + ROUTE,
     "colour: unknown key (known: upstreams, routes, default_route, prices)"),
    (UPSTREAM, "routes: no route"),
    ("upstreams = 3\n" + ROUTE, "upstreams: must be a table, got int 3"),
    ('default_route = "nope"\n' + UPSTREAM + ROUTE,
     'default_route: "nope" names no route (known: demo, r)'),
    # an upstream
    (UPSTREAM + 'colour = "red"\n' + ROUTE, "[upstreams.local] colour: unknown key (known: kind, base_url"),
    ('[upstreams.local]\nbase_url = "http://x"\n' + ROUTE, "[upstreams.local] kind: missing (required)"),
    ('[upstreams.local]\nkind = "ollama"\n' + ROUTE, "[upstreams.local] base_url: missing (required)"),
    (UPSTREAM.replace('"ollama"', '"grpc"') + ROUTE,
     '[upstreams.local] kind: "grpc" is not one of "openai", "ollama"'),
    (UPSTREAM.replace('"ollama"', "1") + ROUTE, "[upstreams.local] kind: must be a string, got int 1"),
    (UPSTREAM.replace("http://127.0.0.1:11434", "127.0.0.1:11434") + ROUTE,
     '[upstreams.local] base_url: "127.0.0.1:11434" is not an http:// or https:// URL with a host'),
    (UPSTREAM.replace("http://127.0.0.1:11434", "ftp://h") + ROUTE, "[upstreams.local] base_url: "),
    (UPSTREAM.replace("11434", "99999") + ROUTE, "[upstreams.local] base_url: "),
    (UPSTREAM + 'api_key_env = "NO_SUCH_KEY"\n' + ROUTE,
     "[upstreams.local] api_key_env: the environment variable NO_SUCH_KEY is not set"),
    (UPSTREAM + "read_timeout_s = 0\n" + ROUTE,
     "[upstreams.local] read_timeout_s: must be a number > 0, got 0"),
    (UPSTREAM + 'connect_timeout_s = "5"\n' + ROUTE, "[upstreams.local] connect_timeout_s: must be a number"),
    (UPSTREAM + "connect_timeout_s = true\n" + ROUTE,
     "[upstreams.local] connect_timeout_s: must be a number, got true"),
    (UPSTREAM.replace("[upstreams.local]", '[upstreams."a/b"]') + ROUTE, '[upstreams] "a/b": '),
    (UPSTREAM.replace("local", "demo") + ROUTE, "[upstreams] demo: "),
    # a route
    (UPSTREAM + ROUTE.replace("local/llama3.2", "nowhere/llama3.2"),
     '[routes.r] targets[0]: "nowhere/llama3.2" names no upstream (known: local)'),
    (UPSTREAM + ROUTE.replace('"local/llama3.2"', '"local/llama3.2", "local/"'),
     '[routes.r] targets[1]: "local/" names no model after the \'/\''),
    (UPSTREAM + ROUTE.replace('"local/llama3.2"', '"local"'),
     '[routes.r] targets[0]: "local" names no model, and [upstreams.local] has no default_model'),
    (UPSTREAM + ROUTE.replace('"local/llama3.2"', '"local/a", "local/a"'),
     '[routes.r] targets[1]: "local/a" is listed twice'),
    (UPSTREAM + "[routes.r]\ntargets = []\n", "[routes.r] targets: is empty"),
    (UPSTREAM + "[routes.r]\n", "[routes.r] targets: missing (required)"),
    (UPSTREAM + '[routes.r]\ntargets = "local/x"\n', "[routes.r] targets: must be a list, got str"),
    (UPSTREAM + "[routes.r]\ntargets = [3]\n", "[routes.r] targets[0]: must be a string"),
    (UPSTREAM + ROUTE + 'strategy = "random"\n',
     '[routes.r] strategy: "random" is not one of "fallback", "weighted"'),
    (UPSTREAM + ROUTE + "retries = 2\n", "[routes.r] retries: unknown key (known: targets, strategy)"),
    (UPSTREAM + '[routes."gpt-4o"]\ntargets = [{ target = "local/x", weight = -1 }]\n',
     '[routes."gpt-4o"] targets[0].weight: must be a number > 0, got -1'),
    (UPSTREAM + "[routes.r]\ntargets = [{ weight = 2 }]\n",
     "[routes.r] targets[0].target: missing (required)"),
    (UPSTREAM + '[routes.r]\ntargets = [{ target = "local/x", colour = 1 }]\n',
     "[routes.r] targets[0].colour: unknown key (known: target, weight)"),
    (UPSTREAM + '[routes.demo]\ntargets = ["local/x"]\n', "[routes] demo: a route's name must"),
])
def test_each_mistake_is_refused_naming_its_table_and_key(text, expected) -> None:
    assert expected in refused(text)


def test_the_issues_example_message() -> None:
    text = FILE.replace('"local/llama3.2"]', '"nowhere/llama3.2"]')
    assert refused(text) == ('upstreams.toml: [routes."gpt-4o-mini"] targets[1]: "nowhere/llama3.2" names no '
                             "upstream (known: local, primary)")


def test_an_empty_key_variable_is_refused_like_an_unset_one() -> None:
    assert "OPENAI_API_KEY is not set (or empty)" in refused(FILE, {"OPENAI_API_KEY": ""})


def test_a_file_that_cannot_be_read_names_the_setting(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"STREAMAPP_UPSTREAMS_FILE: cannot read .*nope\.toml"):
        load(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"bad\.toml: not UTF-8"):
        load(str(bad))


def test_create_app_refuses_a_bad_file(tmp_path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(UPSTREAM + ROUTE.replace("local/", "elsewhere/"))
    with pytest.raises(ValueError, match=r"upstreams\.toml: \[routes\.r\] targets\[0\]: "):
        create_app({"UPSTREAMS_FILE": str(path)})


# -- resolution -------------------------------------------------------------------------------

def models(text: str = FILE, **overrides: Any) -> FleetModels:
    config = {**settings.DEFAULTS, **settings.from_environ({}), **overrides}
    settings.validate(config)
    read = fleet(text)
    resolver = build_models(config, build_providers(config, read), read)
    assert isinstance(resolver, FleetModels)
    return resolver


def refusal(call) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert caught.value.field == "model"
    return caught.value


GPT = (Target("primary", "gpt-4o-mini"), Target("local", "llama3.2"))


@pytest.mark.parametrize(("name", "provider", "expected"), [
    ("gpt-4o-mini", None, Resolved("primary", "gpt-4o-mini", "gpt-4o-mini", GPT)),
    (None, None, Resolved("primary", "gpt-4o-mini", "gpt-4o-mini", GPT)),  # default_route
    ("meta-llama/llama-3", None, Resolved("primary", "meta-llama/llama-3", "meta-llama/llama-3")),
    ("cheap", None, Resolved("local", "llama3.2", "cheap",
                             (Target("local", "llama3.2", 3.0), Target("primary", "gpt-4o-mini")),
                             "weighted")),
    ("demo", None, Resolved("demo", "demo", "demo")),
    (None, "demo", Resolved("demo", "demo", "demo")),
    # a route naming a provider: that kind's targets of the route
    ("gpt-4o-mini", "ollama", Resolved("local", "llama3.2", "gpt-4o-mini", (Target("local", "llama3.2"),))),
    (None, "openai", Resolved("primary", "gpt-4o-mini", "gpt-4o-mini", (GPT[0],))),
    (None, "ollama", Resolved("local", "llama3.2", "gpt-4o-mini", (GPT[1],))),
])
def test_public_names_resolve_to_routes(name, provider, expected) -> None:
    assert models().resolve(name, provider) == expected


@pytest.mark.parametrize(("name", "provider", "why"), [
    ("primary/gpt-4o-mini", None, "name one of GET /v1/models: demo, gpt-4o-mini, meta-llama/llama-3, cheap"),
    ("openai/gpt-4o-mini", None, "name one of GET /v1/models"),
    ("gpt-4o", None, "name one of GET /v1/models"),
    ("meta-llama/llama-3", "ollama", "the route 'meta-llama/llama-3' has a target of kind ollama"),
    ("gpt-4o", "demo", "the demo provider serves only 'demo'"),
])
def test_other_names_are_not_found(name, provider, why) -> None:
    resolver = models(ALLOWED_MODELS="gpt-4o-mini,meta-llama/llama-3,cheap")
    error = refusal(lambda: resolver.resolve(name, provider))
    assert (error.status, error.code) == (404, "model_not_found")
    assert name in error.message and why in error.message


def test_without_a_default_route_no_model_is_the_demo() -> None:
    text = FILE.replace('default_route = "gpt-4o-mini"', "")
    assert models(text).resolve(None) == Resolved("demo", "demo", "demo")
    assert models(text).resolve(None, "ollama") == Resolved("local", "llama3.2", "gpt-4o-mini", (GPT[1],))
    assert models(text.replace('"local/llama3.2"]', "]")).resolve(None, "ollama").public_name == "cheap"
    with pytest.raises(ValueError, match="STREAMAPP_DEFAULT_PROVIDER=openai: .* set it in upstreams.toml"):
        models(text, DEFAULT_PROVIDER="openai")


def test_models_lists_the_public_names_in_the_files_order() -> None:
    assert [m.public_name for m in models().servable()] == \
        ["demo", "gpt-4o-mini", "meta-llama/llama-3", "cheap", "private"]
    assert [m.public_name for m in models(ALLOWED_MODELS="cheap,gpt-4o-mini").servable()] == \
        ["demo", "gpt-4o-mini", "cheap"]


def test_allowed_models_and_keys_apply_to_public_names() -> None:
    resolver = models(ALLOWED_MODELS="gpt-4o-mini, cheap")
    resolver.check(resolver.resolve("cheap"), None)
    resolver.check(resolver.resolve("demo"), frozenset({"gpt-4o-mini"}))  # the demo spends nothing
    error = refusal(lambda: resolver.check(resolver.resolve("private"), None))
    assert (error.status, error.code) == (400, "model_not_allowed")
    assert "STREAMAPP_ALLOWED_MODELS" in error.message
    key = frozenset({"cheap"})
    resolver.check(resolver.resolve("cheap"), key)
    error = refusal(lambda: resolver.check(resolver.resolve("gpt-4o-mini"), key))
    assert (error.status, error.code) == (403, "model_not_allowed")
    # a key's models= names public names only: an upstream's model is not one
    upstream_names = frozenset({"llama3.2", "local/llama3.2"})
    error = refusal(lambda: models().check(models().resolve("cheap"), upstream_names))
    assert error.status == 403


def test_allowed_models_must_name_routes() -> None:
    with pytest.raises(ValueError, match=r"STREAMAPP_ALLOWED_MODELS: 'openai:gpt-4o' is not a route of "
                                         r"upstreams\.toml .*: gpt-4o-mini, meta-llama/llama-3, cheap"):
        models(ALLOWED_MODELS="openai:gpt-4o")
    with pytest.raises(ValueError, match="STREAMAPP_ALLOWED_MODELS leaves out default_route 'gpt-4o-mini'"):
        models(ALLOWED_MODELS="cheap")


# -- providers and readiness ------------------------------------------------------------------

def test_one_provider_per_upstream_with_its_own_settings() -> None:
    config = {**settings.DEFAULTS, **settings.from_environ({})}
    providers = build_providers(config, fleet())
    assert set(providers) == {"demo", "primary", "local"}
    primary, local = providers["primary"], providers["local"]
    assert isinstance(primary, OpenAIProvider) and isinstance(local, OllamaProvider)
    assert primary.url == "https://api.openai.com/v1/chat/completions" and primary.api_key == "sk-example"
    assert primary.timeouts == (config["CONNECT_TIMEOUT_S"], 30.0)
    assert local.url == "http://127.0.0.1:11434/api/chat" and local.default_model == "llama3.2"


def test_ready_providers_name_upstreams_and_none_by_default() -> None:
    read = fleet()
    assert providers_to_check({"READY_PROVIDERS": ""}, read) == []
    assert providers_to_check({"READY_PROVIDERS": "local, demo"}, read) == ["local", "demo"]
    with pytest.raises(ValueError, match="STREAMAPP_READY_PROVIDERS: openai names no upstream of "):
        providers_to_check({"READY_PROVIDERS": "openai"}, read)


def test_the_app_keys_providers_and_circuits_on_upstream_names(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    path = tmp_path / "upstreams.toml"
    path.write_text(FILE)
    app = create_app({"UPSTREAMS_FILE": str(path), "CIRCUIT_FAILURES": 3})
    assert set(app.extensions["providers"]) == {"demo", "primary", "local"}
    assert set(app.extensions["circuits"].names) == {"primary", "local"}
    assert app.extensions["upstreams"].routes["cheap"].strategy == "weighted"


def test_the_wait_for_a_first_event_allows_for_the_slowest_upstreams_own_timeouts(tmp_path,
                                                                                   monkeypatch) -> None:
    """An upstream of the file with longer timeouts than the settings' keeps its stream's
    first-event limit (and a stream's Redis keys) at least that long: the longest over the fleet."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-example")
    path = tmp_path / "upstreams.toml"
    path.write_text(FILE.replace("read_timeout_s = 30", "read_timeout_s = 300\nconnect_timeout_s = 20"))
    app = create_app({"UPSTREAMS_FILE": str(path), "START_BUDGET_S": 10.0, "CONNECT_TIMEOUT_S": 5.0,
                      "READ_TIMEOUT_S": 120.0})
    assert app.extensions["lifecycle"].timing.first_limit == 10 + 20 + 300 + 5
    path.write_text(FILE)  # read_timeout_s = 30 only: the settings' own are longer
    app = create_app({"UPSTREAMS_FILE": str(path), "START_BUDGET_S": 10.0, "CONNECT_TIMEOUT_S": 5.0,
                      "READ_TIMEOUT_S": 120.0})
    assert app.extensions["lifecycle"].timing.first_limit == 10 + 5 + 120 + 5


# -- a real server with the file: two upstreams, each a fake upstream of its own ----------------

ALICE = "sk-routes-alice-51c9e0"  # models=local-only
BOB = "sk-routes-bob-2f7a4d"  # any model
MAIN, MAIN_LOCAL, LOCAL, EMBED = "routes-main", "routes-main-local", "routes-local-only", "routes-embed"
ANSWER = "Hello, world!"  # the fake upstream's first four tokens
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def fleet_urls(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """Two fake upstreams on their own ports: the OpenAI-compatible one and the Ollama one."""
    procs = []
    for name in ("primary", "local"):
        port = free_port()
        proc = Process([sys.executable, "tests/fake_upstream.py", "--port", str(port)], dict(os.environ),
                       tmp_path_factory.mktemp(name) / "upstream.log")
        proc.wait_for("listening", 15, f"fake upstream {name} on {port}")
        procs.append((proc, f"http://127.0.0.1:{port}"))
    yield procs[0][1], procs[1][1]
    for proc, _ in procs:
        proc.stop()


@pytest.fixture(scope="module")
def routed(start_server, fleet_urls, tmp_path_factory):
    primary, local = fleet_urls
    folder = tmp_path_factory.mktemp("routes")
    (folder / "upstreams.toml").write_text(f'''
default_route = "main"

[upstreams.primary]
kind = "openai"
base_url = "{primary}/v1"
api_key_env = "OPENAI_API_KEY"

[upstreams.local]
kind = "ollama"
base_url = "{local}"

[routes.main]
targets = ["primary/normal?tokens=4&tag={MAIN}", "local/normal?tokens=4&tag={MAIN_LOCAL}"]

[routes."local-only"]
targets = ["local/normal?tokens=4&tag={LOCAL}"]

[routes.vectors]
targets = ["local/normal?tag={EMBED}"]
''')
    (folder / "keys.txt").write_text(f"alice:{ALICE} models=local-only\nbob:{BOB}\n")
    return start_server(UPSTREAMS_FILE=folder / "upstreams.toml", API_KEYS_FILE=folder / "keys.txt",
                        OPENAI_API_KEY="sk-routes-upstream", READY_PROVIDERS="local", CIRCUIT_FAILURES=5,
                        HEADER_WAIT_S=0.2, RESUME_GRACE_S=0)


def chat_text(server, key: str, model: str) -> str:
    with SSEClient(f"{server.url}/api/chat", "POST", {"uid": 1, "message": "hi", "model": model},
                   headers={"X-API-Key": key}) as client:
        assert client.status == 200, client.body()
        return "".join(json.loads(e.data).get("delta", "") for e in data_events(client.read_all()))


def v1_text(server, key: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    chunks = client.chat.completions.create(model=model, stream=True, messages=HI)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def ws_text(server, key: str, model: str) -> str:
    with connect(f"ws://127.0.0.1:{server.port}/ws", additional_headers={"X-API-Key": key}, open_timeout=5,
                 close_timeout=2, proxy=None, ping_interval=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "model": model}))
        got = recv_until(ws, lambda m: m["type"] in ("end", "error"), 10)
    assert got[-1]["type"] == "end", got
    return "".join(m["content"] for m in got if m["type"] == "delta")


def responses_text(server, key: str, model: str) -> str:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0)
    events = client.responses.create(model=model, input="hi", stream=True)
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def messages_text(server, key: str, model: str) -> str:
    client = anthropic.Anthropic(base_url=server.url, api_key=key, max_retries=0)
    with client.messages.stream(model=model, max_tokens=50, messages=HI) as s:
        return "".join(s.text_stream)


DOORS = {"chat": chat_text, "v1": v1_text, "ws": ws_text, "responses": responses_text,
         "messages": messages_text}


def asked(upstream: str, tag: str) -> list[dict]:
    return upstream_log(upstream, tag)


@pytest.mark.parametrize("door", list(DOORS))
def test_a_routes_public_name_streams_from_its_first_target_on_every_door(routed, fleet_urls, door) -> None:
    primary, local = fleet_urls
    before = len(asked(primary, MAIN)), len(asked(local, MAIN_LOCAL))
    assert DOORS[door](routed, BOB, "main") == ANSWER
    records = asked(primary, MAIN)
    assert len(records) == before[0] + 1  # the route's first target, on its own upstream
    assert records[-1]["body"]["model"] == f"normal?tokens=4&tag={MAIN}"
    assert records[-1]["authorization"] == "Bearer sk-routes-upstream"  # its key, from api_key_env
    assert len(asked(local, MAIN_LOCAL)) == before[1]  # the second target is not asked


@pytest.mark.parametrize("door", list(DOORS))
def test_a_route_on_the_other_upstream_streams_from_it(routed, fleet_urls, door) -> None:
    primary, local = fleet_urls
    before = len(asked(local, LOCAL))
    assert DOORS[door](routed, ALICE, "local-only") == ANSWER
    records = asked(local, LOCAL)
    assert len(records) == before + 1 and records[-1]["authorization"] is None
    assert asked(primary, LOCAL) == []


def test_no_model_is_the_default_route(routed, fleet_urls) -> None:
    before = len(asked(fleet_urls[0], MAIN))
    with SSEClient(f"{routed.url}/api/chat", "POST", {"uid": 1, "message": "hi"},
                   headers={"X-API-Key": BOB}) as client:
        assert client.status == 200
        client.read_all()
    assert len(asked(fleet_urls[0], MAIN)) == before + 1


def test_models_lists_the_public_names(routed) -> None:
    client = openai.OpenAI(base_url=f"{routed.url}/v1", api_key=BOB, max_retries=0)
    assert [m.id for m in client.models.list()] == ["demo", "main", "local-only", "vectors"]
    assert client.models.retrieve("local-only").id == "local-only"


@pytest.mark.parametrize("name", ["primary/normal?tokens=4", "openai/gpt-4o-mini", "gpt-4o-mini"])
def test_a_name_that_is_no_route_is_not_found(routed, name) -> None:
    resp = requests.post(f"{routed.url}/v1/chat/completions", headers={"Authorization": f"Bearer {BOB}"},
                         json={"model": name, "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "demo, main, local-only" in error["message"]


@pytest.mark.parametrize("door", ["v1", "responses", "messages"])
def test_a_keys_models_restrict_by_public_name(routed, door) -> None:
    # alice may use local-only; main is refused though its second target is the same upstream
    refused = {"v1": openai.PermissionDeniedError, "responses": openai.PermissionDeniedError,
               "messages": anthropic.PermissionDeniedError}[door]
    with pytest.raises(refused) as caught:
        DOORS[door](routed, ALICE, "main")
    assert caught.value.status_code == 403
    assert DOORS[door](routed, ALICE, "demo") != ""


def test_the_routes_that_name_a_provider_take_that_kind_of_target(routed, fleet_urls) -> None:
    primary, local = fleet_urls
    before = len(asked(primary, MAIN)), len(asked(local, MAIN_LOCAL))
    for path in ("/ai-stream", "/local-ai"):
        with SSEClient(f"{routed.url}{path}?prompt=hi&model=main", headers={"X-API-Key": BOB}) as client:
            assert client.status == 200
            assert "".join(e.data for e in data_events(client.read_all())) == ANSWER
    assert (len(asked(primary, MAIN)), len(asked(local, MAIN_LOCAL))) == (before[0] + 1, before[1] + 1)
    resp = requests.get(f"{routed.url}/ai-stream", params={"prompt": "hi", "model": "local-only"},
                        headers={"X-API-Key": BOB}, timeout=10)
    assert resp.status_code == 404 and "has a target of kind openai" in resp.json()["error"]["message"]


def test_readyz_keys_on_the_upstreams_names(routed) -> None:
    body = requests.get(f"{routed.url}/readyz", timeout=10).json()
    assert set(body["upstreams"]) == {"primary", "local"}
    assert body["checks"]["providers"] == {"local": {"ok": True}}


def test_embeddings_resolve_a_route_too(routed, fleet_urls) -> None:
    before = len(asked(fleet_urls[1], EMBED))
    client = openai.OpenAI(base_url=f"{routed.url}/v1", api_key=BOB, max_retries=0)
    assert len(client.embeddings.create(model="vectors", input=["one", "two"]).data) == 2
    records = asked(fleet_urls[1], EMBED)  # the route's target, on the Ollama upstream
    assert len(records) == before + 1 and records[-1]["body"]["input"] == ["one", "two"]


def test_gunicorn_stops_at_a_bad_file(tmp_path) -> None:
    path = tmp_path / "upstreams.toml"
    path.write_text(UPSTREAM + ROUTE.replace("local/", "nowhere/"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMAPP_")}
    env.update(STREAMAPP_BIND=f"127.0.0.1:{free_port()}", STREAMAPP_UPSTREAMS_FILE=str(path))
    gunicorn = require_binary("gunicorn", "pip install -r requirements-dev.txt")
    done = subprocess.run([gunicorn, "-c", "conf/gunicorn.conf.py", "wsgi:app"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0  # 3: "Worker failed to boot", and the master stops
    says = f'{path}: [routes.r] targets[0]: "nowhere/llama3.2" names no upstream (known: local)'
    assert says in done.stderr


def test_the_start_up_log_describes_the_file_without_its_keys(routed) -> None:
    log = routed.process.output()
    targets = f"primary/normal?tokens=4&tag={MAIN}, local/normal?tokens=4&tag={MAIN_LOCAL}"
    assert f"route main (fallback): {targets}" in log
    assert "upstream primary: openai" in log and "(key from OPENAI_API_KEY)" in log
    assert "sk-routes-upstream" not in log


def test_an_upstream_in_no_route_is_named() -> None:
    assert fleet().unrouted() == []
    assert fleet(FILE + '[upstreams.spare]\nkind = "ollama"\nbase_url = "http://h"\n').unrouted() == ["spare"]
