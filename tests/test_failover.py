"""Failover before the first token (streamapp/failover.py) over a fleet of fake upstreams.

Three fake upstream processes on their own ports (``a`` and ``c`` OpenAI-compatible, ``b``
Ollama) and a port nobody listens on (``down``), named in an upstreams file whose routes each
play one rule; real gunicorn servers, real Redis for the shared circuits. Latency is measured
in ``bench/failover.py``, not here.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import socket
import sys
import time
import uuid
from collections.abc import Iterator

import openai
import pytest
import requests
from websockets.sync.client import connect

from streamapp.failover import ordered
from streamapp.models import Target
from tests.conftest import Process
from tests.helpers import free_port, poll_until, recv_until, upstream_log

RUN = uuid.uuid4().hex[:8]  # tags of this run's upstream requests
ANSWER = "Hello, world!"  # the fake upstream's first four tokens
HI = [{"role": "user", "content": "hi"}]
CAP_S = 2  # RETRY_AFTER_CAP_S of the servers here


def tag(name: str) -> str:
    return f"{RUN}-{name}"


# route -> targets ("upstream/model"); a model's tag names its requests in its upstream's log
ROUTES = {
    "refused": ["down/normal", f"a/normal?tokens=4&tag={tag('refused')}"],
    "busy": [f"a/status?status=503&retry_after=1&tag={tag('busy-a')}",
             f"b/normal?tokens=4&tag={tag('busy-b')}"],
    "busy-alone": [f"a/status?status=503&retry_after=1&tag={tag('alone')}"],
    "busy-long": [f"a/status?status=503&retry_after=30&tag={tag('long')}"],
    "limited": ["down/normal", f"a/status?status=429&retry_after=7&tag={tag('limited')}"],
    "slow": [f"a/silence?at=0&silence_s=10&tag={tag('slow-a')}", f"b/normal?tokens=4&tag={tag('slow-b')}"],
    "malformed": [f"a/malformed?at=0&tag={tag('bad-a')}", f"b/normal?tokens=4&tag={tag('bad-b')}"],
    "clean": [f"b/normal?tokens=4&tag={tag('clean')}"],
    "missing": [f"a/status?status=404&tag={tag('missing-a')}", f"b/normal?tokens=4&tag={tag('missing-b')}"],
    "leaving": ["down/normal", f"a/hang?silence_s=20&tag={tag('leaving')}"],
    "waiting": [f"a/status?status=503&retry_after=2&tag={tag('waiting')}"],
    "cut-after": [f"a/drop?at=2&tag={tag('cut-a')}", f"b/normal?tokens=4&tag={tag('cut-b')}"],
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Base URLs of the fake upstreams ``a``, ``b``, ``c``, and ``down`` (a port nobody listens on)."""
    procs, urls = [], {"down": f"http://127.0.0.1:{free_port()}"}
    for name in ("a", "b", "c"):
        port = free_port()
        proc = Process([sys.executable, "tests/fake_upstream.py", "--port", str(port)], dict(os.environ),
                       tmp_path_factory.mktemp(name) / "upstream.log")
        proc.wait_for("listening", 15, f"fake upstream {name} on {port}")
        procs.append(proc)
        urls[name] = f"http://127.0.0.1:{port}"
    yield urls
    for proc in procs:
        proc.stop()


def upstreams_file(fleet: dict[str, str], folder, routes: dict[str, list[str]]) -> str:
    kinds = {"a": "openai", "b": "ollama", "c": "openai", "down": "openai"}
    text = "".join(f'[upstreams.{name}]\nkind = "{kind}"\nbase_url = "{fleet[name]}'
                   f'{"/v1" if kind == "openai" else ""}"\n\n' for name, kind in kinds.items())
    text += "".join(f"[routes.{json.dumps(name)}]\ntargets = {json.dumps(targets)}\n\n"
                    for name, targets in routes.items())
    path = folder / "upstreams.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def srv(start_server, fleet, tmp_path_factory):
    path = upstreams_file(fleet, tmp_path_factory.mktemp("failover"), ROUTES)
    return start_server(UPSTREAMS_FILE=path, FIRST_TOKEN_TIMEOUT_S=0.5, START_BUDGET_S=10,
                        RETRY_AFTER_CAP_S=CAP_S, HEADER_WAIT_S=0.2, READ_TIMEOUT_S=5, CONNECT_TIMEOUT_S=2,
                        RESUME_GRACE_S=0)


def chat(server, model: str) -> requests.Response:
    return requests.post(f"{server.url}/api/chat", timeout=20,
                         json={"uid": 1, "message": "hi", "model": model})


def text_of(resp: requests.Response) -> str:
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    return "".join(json.loads(e).get("delta", "") for e in events)


def info(server, sid: str) -> dict:
    return requests.get(f"{server.url}/api/streams/{sid}/info", timeout=10).json()


def outcomes(found: dict) -> list[tuple[str, str, int | None]]:
    return [(a["upstream"], a["outcome"], a["status"]) for a in found["attempts"]]


def asked(fleet, upstream: str, name: str) -> list[dict]:
    return upstream_log(fleet[upstream], tag(name))


# -- pure: the order ------------------------------------------------------------------------------

def test_weighted_picks_the_first_by_weight_and_keeps_the_rest_in_order() -> None:
    targets = (Target("a", "m", 1), Target("b", "m", 3), Target("c", "m", 0.001))
    assert ordered(targets, "fallback") == list(targets)
    rng = random.Random(7)
    firsts = [ordered(targets, "weighted", rng)[0].upstream for _ in range(2000)]
    assert 0.65 < firsts.count("b") / 2000 < 0.85 and firsts.count("c") < 20  # 3/4.001 of them: b
    order = ordered(targets, "weighted", random.Random(1))
    assert sorted(t.upstream for t in order) == ["a", "b", "c"]
    rest = [t.upstream for t in order[1:]]
    assert rest == [u for u in ("a", "b", "c") if u != order[0].upstream]  # the others, as listed


class Response:
    """An upstream response as a provider returns it: its events, and whether it was closed
    (explicitly: nothing here is closed by a finaliser)."""

    def __init__(self, events: list) -> None:
        self._events, self.closed = iter(events), False

    def __iter__(self) -> Response:
        return self

    def __next__(self):
        return next(self._events)

    def close(self) -> None:
        self.closed = True


class Upstream:
    """A provider whose every stream is a :class:`Response` of ``events`` (each kept)."""

    def __init__(self, events: list) -> None:
        self.events, self.responses = events, []

    def stream(self, chat) -> Response:
        self.responses.append(Response(self.events))
        return self.responses[-1]


@pytest.mark.parametrize("at", [0, 1, 2])  # the held Opened, the first token, a later event
def test_closing_the_events_at_any_yield_closes_the_upstream(at) -> None:
    from streamapp.events import Delta, Done, Opened
    from streamapp.failover import Failover, Settings
    from streamapp.providers import ChatRequest

    x, y = Upstream([Opened(), Delta("a"), Delta("b"), Done()]), Upstream([Opened(), Done()])
    failover = Failover((Target("x", "m", 1), Target("y", "m", 1)), "fallback", {"x": x, "y": y},
                        ChatRequest(HI, model="m"), Settings(5, 10, 2))
    events = failover.events
    got = [next(events) for _ in range(at + 1)]
    assert type(got[0]) is Opened and not x.responses[0].closed  # x was not the last: its Opened held
    events.close()  # the stream stopped at this yield
    assert x.responses[0].closed and not y.responses


# -- each rule ------------------------------------------------------------------------------------

def test_a_refused_connection_goes_to_the_next_target(srv, fleet) -> None:
    resp = chat(srv, "refused")
    assert resp.status_code == 200 and text_of(resp) == ANSWER
    found = info(srv, resp.headers["X-Stream-Id"])
    assert outcomes(found) == [("down", "upstream_unreachable", None), ("a", "success", None)]
    assert found["upstream"] == "a"
    assert [a["model"] for a in found["attempts"]] == ["normal", f"normal?tokens=4&tag={tag('refused')}"]
    assert found["attempts"][1]["start_ms"] >= found["attempts"][0]["start_ms"]


def test_a_503_goes_to_the_next_target(srv, fleet) -> None:
    resp = chat(srv, "busy")
    assert resp.status_code == 200 and text_of(resp) == ANSWER
    assert outcomes(info(srv, resp.headers["X-Stream-Id"])) == [
        ("a", "upstream_http_error", 503), ("b", "success", None)]
    assert len(asked(fleet, "a", "busy-a")) == 1  # b answered: a is not asked again


def test_a_short_retry_after_is_honoured_once_after_the_others(srv, fleet) -> None:
    """Alone on its route, a target that asked to wait 1 s (under the cap) is tried again after
    1 s; it fails again: the client gets its error, with its Retry-After."""
    resp = chat(srv, "busy-alone")
    assert resp.status_code == 502 and resp.headers["Retry-After"] == "1", resp.text
    found = info(srv, resp.headers["X-Stream-Id"])
    assert outcomes(found) == [("a", "upstream_http_error", 503)] * 2
    assert found["attempts"][1]["start_ms"] >= 1000  # not before the wait was over
    records = asked(fleet, "a", "alone")
    assert len(records) == 2 and records[1]["opened"] - records[0]["opened"] >= 1.0


def test_a_retry_after_over_the_cap_is_not_waited_for(srv, fleet) -> None:
    resp = chat(srv, "busy-long")
    assert resp.status_code == 502 and resp.headers["Retry-After"] == "30", resp.text
    assert outcomes(info(srv, resp.headers["X-Stream-Id"])) == [("a", "upstream_http_error", 503)]
    assert len(asked(fleet, "a", "long")) == 1


def test_the_last_attempts_429_reaches_the_client_as_a_429_with_retry_after(srv, fleet) -> None:
    resp = chat(srv, "limited")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "7", resp.text
    assert resp.json()["error"]["code"] == "upstream_http_error" and "429" in resp.json()["error"]["message"]
    with pytest.raises(openai.RateLimitError) as caught:  # on /v1 too, in OpenAI's shape
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="limited", messages=HI, stream=True)
    assert caught.value.response.headers["Retry-After"] == "7"


def test_no_first_token_in_time_goes_to_the_next_target_and_closes_the_first(srv, fleet) -> None:
    began = time.monotonic()
    resp = chat(srv, "slow")
    assert resp.status_code == 200 and text_of(resp) == ANSWER
    found = info(srv, resp.headers["X-Stream-Id"])
    assert outcomes(found) == [("a", "first_token_timeout", None), ("b", "success", None)]
    assert found["attempts"][0]["ms"] >= 500  # FIRST_TOKEN_TIMEOUT_S
    record = asked(fleet, "a", "slow-a")[0]
    assert record["closed_by_peer"] is not None and record["closed_by_peer"] > began and record["sent"] == 0


def test_an_attempt_is_the_last_when_nothing_left_could_start(start_server, fleet, tmp_path_factory) -> None:
    """A slow target followed only by targets that could not start (a circuit open, a
    Retry-After past the start budget) is the last attempt: no first-token deadline, its slow
    first token is the answer (not a 504 with nothing tried after it)."""
    routes = {"break-c": [f"c/status?status=503&tag={tag('break-c')}"],
              "slow-then-open": [f"a/silence?at=0&silence_s=1.2&tag={tag('slow-open')}",
                                 f"c/normal?tokens=4&tag={tag('open-c')}"],
              "retry-late": [f"b/status?status=503&retry_after=2&tag={tag('late-b')}",
                             f"a/silence?at=0&silence_s=1.2&tag={tag('late-a')}"]}
    path = upstreams_file(fleet, tmp_path_factory.mktemp("last"), routes)
    server = start_server(UPSTREAMS_FILE=path, CIRCUIT_FAILURES=2, CIRCUIT_COOLDOWN_S=60,
                          FIRST_TOKEN_TIMEOUT_S=0.5, START_BUDGET_S=1.5, RETRY_AFTER_CAP_S=CAP_S,
                          HEADER_WAIT_S=0.2, READ_TIMEOUT_S=5, CONNECT_TIMEOUT_S=2, RESUME_GRACE_S=0)

    # b's Retry-After (2 s) ends past the start budget (1.5 s): a is the last, however slow.
    resp = chat(server, "retry-late")
    assert resp.status_code == 200 and text_of(resp), resp.text
    assert outcomes(info(server, resp.headers["X-Stream-Id"])) == [
        ("b", "upstream_http_error", 503), ("a", "success", None)]
    assert len(asked(fleet, "b", "late-b")) == 1

    # c's circuit open (two failures): a is the last, however slow.
    for _ in range(2):
        assert chat(server, "break-c").status_code == 502
    resp = chat(server, "slow-then-open")
    assert resp.status_code == 200 and text_of(resp), resp.text
    found = info(server, resp.headers["X-Stream-Id"])
    assert outcomes(found) == [("a", "success", None)] and found["attempts"][0]["ms"] >= 1000
    assert not asked(fleet, "c", "open-c")


def test_a_malformed_first_event_goes_to_the_next_target(srv, fleet) -> None:
    resp = chat(srv, "malformed")
    assert resp.status_code == 200 and text_of(resp) == ANSWER
    assert outcomes(info(srv, resp.headers["X-Stream-Id"])) == [
        ("a", "upstream_bad_response", None), ("b", "success", None)]


def test_a_404_is_not_tried_elsewhere(srv, fleet) -> None:
    """The client's fault goes back to it in its door's shape; the next target is never asked."""
    resp = chat(srv, "missing")
    assert resp.status_code == 502  # in /api/chat's shape
    assert resp.json()["error"]["code"] == "upstream_http_error"
    assert outcomes(info(srv, resp.headers["X-Stream-Id"])) == [("a", "upstream_http_error", 404)]
    with pytest.raises(openai.NotFoundError) as caught:  # /v1: OpenAI's 404
        openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="missing", messages=HI)
    assert caught.value.body["code"] == "model_not_found"
    assert asked(fleet, "b", "missing-b") == []


def test_after_the_first_token_nothing_switches(srv, fleet) -> None:
    resp = chat(srv, "cut-after")
    assert resp.status_code == 200
    assert '"upstream_cut"' in resp.text and text_of(resp) == "Hello,"  # the error event, not b's answer
    assert asked(fleet, "b", "cut-b") == []


# -- what the client sees ---------------------------------------------------------------------

def v1_chunks(server, model: str) -> tuple[str, list[dict]]:
    """A /v1 stream's chunks without what differs between two streams (id, created)."""
    resp = requests.post(f"{server.url}/v1/chat/completions", timeout=20,
                         json={"model": model, "messages": HI, "stream": True})
    assert resp.status_code == 200, resp.text
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    for chunk in chunks:
        chunk.pop("id", None), chunk.pop("created", None), chunk.pop("model", None)
    return resp.headers["X-Stream-Id"], chunks


@pytest.mark.parametrize("route", ["malformed", "slow"])
def test_nothing_of_a_failed_attempt_reaches_the_client(srv, route) -> None:
    """The accepted-then-failed attempt's acceptance (the role chunk) is not in the stream: it is
    chunk for chunk a clean stream from the target that answered."""
    sid, got = v1_chunks(srv, route)
    _, clean = v1_chunks(srv, "clean")
    assert got == clean and sum(1 for c in got if c["choices"] and "role" in c["choices"][0]["delta"]) == 1
    assert [a["outcome"] for a in info(srv, sid)["attempts"]][-1] == "success"


@pytest.mark.parametrize("door", ["v1-whole", "ws", "messages", "responses"])
def test_every_door_fails_over(srv, door) -> None:
    if door == "v1-whole":
        answer = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="refused", messages=HI)
        assert answer.choices[0].message.content == ANSWER
    elif door == "ws":
        with connect(f"ws://127.0.0.1:{srv.port}/ws", open_timeout=5, close_timeout=2, proxy=None) as ws:
            ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "model": "busy"}))
            got = recv_until(ws, lambda m: m["type"] in ("end", "error"), 15)
        assert got[-1]["type"] == "end"
        assert "".join(m["content"] for m in got if m["type"] == "delta") == ANSWER
    elif door == "messages":
        resp = requests.post(f"{srv.url}/v1/messages", timeout=20, json={
            "model": "malformed", "max_tokens": 50, "messages": HI, "stream": True})
        assert resp.status_code == 200 and resp.text.count("event: message_start") == 1
        assert "Hello" in resp.text and "event: error" not in resp.text
    else:
        resp = requests.post(f"{srv.url}/v1/responses", json={"model": "refused", "input": "hi"}, timeout=20)
        assert resp.status_code == 200 and resp.json()["output"][0]["content"][0]["text"] == ANSWER


def test_a_client_leaving_during_failover_closes_the_upstream(srv, fleet) -> None:
    """The first target refused, the second hangs (no headers yet): the client leaves, and the
    second target's connection is closed at once."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    body = json.dumps({"uid": 1, "message": "hi", "model": "leaving"})
    conn.request("POST", "/api/chat", body=body, headers={"Content-Type": "application/json"})
    upstream_log(fleet["a"], tag("leaving"), wait="opened", timeout=10)  # the second attempt is under way
    left = time.monotonic()
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    records = upstream_log(fleet["a"], tag("leaving"), wait="closed_by_peer", timeout=10)
    assert records and records[0]["closed_by_peer"] is not None and records[0]["closed_by_peer"] > left


def test_a_client_leaving_during_a_retry_after_wait_ends_the_wait(srv, fleet) -> None:
    """The only target asked to wait 2 s: the client leaves meanwhile, and the stream ends
    without asking it again (its summary line: one attempt, the client gone)."""
    rid = f"{RUN}-waiting"
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    conn.request("POST", "/api/chat", body=json.dumps({"uid": 1, "message": "hi", "model": "waiting"}),
                 headers={"Content-Type": "application/json", "X-Request-ID": rid})
    upstream_log(fleet["a"], tag("waiting"), wait="finished", timeout=10)  # the first attempt failed
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    line = poll_until(lambda: next((x for x in srv.process.output().splitlines()
                                    if "ended" in x and f"request_id={rid}" in x), None),
                      10, "the stream's end")
    assert "outcome=client_gone" in line and "attempts=\"a/status" in line and "; " not in line, line
    assert len(asked(fleet, "a", "waiting")) == 1  # the stream ended: no retry can follow


def test_the_summary_line_and_the_metric_show_the_attempts(srv, fleet) -> None:
    resp = chat(srv, "refused")
    sid = resp.headers["X-Stream-Id"]
    line = poll_until(lambda: next((x for x in srv.process.output().splitlines()
                                    if f"stream {sid} ended" in x), None), 10, "the summary line")
    assert "upstream=a" in line and re.search(r"attempts=\"down/normal upstream_unreachable [\d.]+ms; "
                                              r"a/normal\?tokens=4&tag=\S+ success [\d.]+ms\"", line), line
    text = requests.get(f"{srv.url}/metrics", timeout=10).text
    assert re.search(r'streamapp_upstream_attempts_total\{outcome="upstream_unreachable",upstream="down"\} '
                     r'[1-9]', text)
    assert re.search(r'streamapp_upstream_attempts_total\{outcome="success",upstream="a"\} [1-9]', text)


# -- circuits, shared over Redis --------------------------------------------------------------

def test_circuits_open_and_close_again_across_two_instances(start_server, fleet, tmp_path_factory,
                                                            redis_url, redis_prefix) -> None:
    """A route's targets fail on one instance and on the other: both circuits open, for both;
    every target open is a 503 at once with Retry-After, with no upstream request; after the
    cool-down a good start closes the circuit again, for both."""
    routes = {"shaky": [f"c/status?status=503&tag={tag('shaky-c')}",
                        f"a/hang?silence_s=20&tag={tag('shaky-a')}"],
              "steady": [f"c/normal?tokens=4&tag={tag('steady')}"]}
    path = upstreams_file(fleet, tmp_path_factory.mktemp("circuits"), routes)
    settings = dict(UPSTREAMS_FILE=path, REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CIRCUIT_FAILURES=2,
                    CIRCUIT_COOLDOWN_S=4, FIRST_TOKEN_TIMEOUT_S=0.3, START_BUDGET_S=10, HEADER_WAIT_S=0.2,
                    READ_TIMEOUT_S=1, CONNECT_TIMEOUT_S=1, RESUME_GRACE_S=0)
    one, two = start_server(**settings), start_server(**settings)
    assert chat(one, "shaky").status_code == 504  # c: 503, then a: no answer (the last: its read timeout)
    assert chat(two, "shaky").status_code == 504  # the second failure of each, on the other instance

    def states(server) -> dict[str, str]:
        ups = requests.get(f"{server.url}/readyz", timeout=10).json()["upstreams"]
        return {name: ups[name]["state"] for name in ("a", "c")}

    assert states(one) == states(two) == {"a": "open", "c": "open"}
    asked_before = len(asked(fleet, "c", "shaky-c")), len(asked(fleet, "a", "shaky-a"))
    resp = chat(one, "shaky")
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    assert 1 <= int(resp.headers["Retry-After"]) <= 4  # the shortest cool-down left
    assert (len(asked(fleet, "c", "shaky-c")), len(asked(fleet, "a", "shaky-a"))) == asked_before
    assert "X-Stream-Id" not in resp.headers  # no stream was started

    # The cool-down over, a good start on c (its probe) closes its circuit, for both.
    poll_until(lambda: chat(two, "steady").status_code == 200, 10, "a probe after the cool-down")
    poll_until(lambda: states(one)["c"] == states(two)["c"] == "closed", 5, "c closed for both")
    assert chat(one, "steady").status_code == 200
