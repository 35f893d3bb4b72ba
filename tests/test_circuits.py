"""Circuit breakers (streamapp/circuits.py): an upstream that fails its starts N times in a row
is skipped, at once and on every door, for a cool-down; then one start probes it.

Real servers over loopback, the fake upstream (``status`` mode, a closed port) and real Redis.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import requests
from websockets.sync.client import connect

from streamapp.circuits import MemoryCircuits, verdict
from streamapp.events import Delta, Done, Failed
from tests.helpers import free_port, poll_until, upstream_log


def chat(server, model: str | None, provider: str = "openai") -> requests.Response:
    """A stream start on ``/api/chat`` (its status tells the start's outcome)."""
    return requests.post(f"{server.url}/api/chat", timeout=10,
                         json={"uid": 1, "message": "hi", "provider": provider, "model": model})


def fail(server, tag: str, times: int, status: int = 503) -> None:
    """``times`` starts the fake upstream answers ``status``: each a 502 to the client."""
    for i in range(times):
        resp = chat(server, f"status?status={status}&tag={tag}-f{i}")
        assert resp.status_code == 502, resp.text


def refused_at_once(resp: requests.Response, cooldown: float) -> None:
    """A 503 ``upstream_unavailable`` with a ``Retry-After`` within the cool-down."""
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"]["code"] == "upstream_unavailable", resp.text
    assert 1 <= int(resp.headers["Retry-After"]) <= max(1, round(cooldown) + 1)


def state(server, name: str = "openai") -> str:
    """The circuit's state as ``/readyz`` shows it (the same in ``/metrics``)."""
    return requests.get(f"{server.url}/readyz", timeout=10).json()["upstreams"][name]["state"]


def metric(server, name: str) -> dict[str, float]:
    """Samples of the metric ``name``: its labels (``a="x",b="y"``, in name order) -> value."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    return {",".join(sorted(m[1].split(","))): float(m[2])
            for m in re.finditer(rf"^{name}\{{(.*)\}} (\S+)$", text, re.M)}


# -- the state machine, on its own clock --------------------------------------------------------

def test_the_state_machine() -> None:
    now = [0.0]
    c = MemoryCircuits(failures=2, cooldown=10, clock=lambda: now[0])
    c.record("a", "failure")
    c.record("a", "success")  # a success sets the count back: failures must be in a row
    c.record("a", "failure")
    c.record("a", "none")  # no verdict: the count stays
    assert c.allow("a") == 0 and c.state("a")[0] == "closed"
    c.record("a", "failure")
    assert c.state("a") == ("open", 10) and c.allow("a") == 10 and c.allow("b") == 0
    now[0] = 10
    assert c.state("a")[0] == "half_open"
    assert c.allow("a") == 0  # the probe
    assert c.allow("a") == 10  # the others wait for its outcome
    c.record("a", "none")  # a probe without a verdict lets the next start probe
    assert c.allow("a") == 0
    c.record("a", "failure")  # a failed probe reopens
    assert c.state("a") == ("open", 10)
    now[0] = 20
    assert c.allow("a") == 0
    c.record("a", "success")  # a good probe closes
    assert c.state("a")[0] == "closed" and c.allow("a") == 0 and c.allow("a") == 0


@pytest.mark.parametrize(("event", "outcome"), [
    (Delta("hi"), "success"), (Done("stop"), "success"), (Done("client_gone"), "none"),
    (Failed("upstream_unreachable", "x"), "failure"), (Failed("upstream_timeout", "x", 504), "failure"),
    (Failed("upstream_bad_response", "x"), "failure"), (Failed("upstream_cut", "x"), "failure"),
    (Failed("upstream_stalled", "x"), "failure"),
    (Failed("upstream_http_error", "x", 502, 503), "failure"),
    (Failed("upstream_http_error", "x", 502, 429), "failure"),
    (Failed("upstream_http_error", "x", 502, 408), "failure"),
    (Failed("upstream_http_error", "x", 502, 404), "none"), (Failed("upstream_auth", "x", 502, 401), "none"),
    (Failed("upstream_http_error", "x", 502, 400), "none"), (Failed("internal_error", "x", 500), "none"),
])
def test_what_counts(event, outcome) -> None:
    assert verdict(event) == outcome


# -- a server ------------------------------------------------------------------------------------

def test_a_refusing_upstream_is_skipped_on_every_door(start_server) -> None:
    closed = free_port()  # nothing listens: every connection is refused
    server = start_server(OPENAI_BASE_URL=f"http://127.0.0.1:{closed}/v1", CIRCUIT_FAILURES=2,
                          CIRCUIT_COOLDOWN_S=60, HEADER_WAIT_S=0.2)
    for _ in range(2):
        resp = chat(server, "gpt-4o-mini")
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unreachable", resp.text
    assert state(server) == "open" and state(server, "ollama") == "closed"
    refused_at_once(chat(server, "gpt-4o-mini"), 60)

    body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = requests.post(f"{server.url}/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
    assert resp.json()["error"]["code"] == "upstream_unavailable"  # OpenAI's shape
    resp = requests.post(f"{server.url}/v1/messages", timeout=10, json={
        "model": "openai/gpt-4o-mini", "max_tokens": 10, "stream": True,
        "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
    assert resp.json()["type"] == "error"  # Anthropic's shape
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "openai"}))
        message = json.loads(ws.recv(timeout=5))
    assert message["type"] == "error" and message["code"] == "upstream_unavailable", message

    assert chat(server, None, provider="demo").status_code == 200  # the demo has no circuit
    assert metric(server, "streamapp_upstream_circuit_state") == {
        'upstream="openai"': 2.0, 'upstream="ollama"': 0.0}
    attempts = metric(server, "streamapp_upstream_attempts_total")  # each start's attempt, by outcome
    assert attempts['outcome="upstream_unreachable",upstream="openai"'] == 2
    assert attempts['outcome="circuit_open",upstream="openai"'] == 4
    assert attempts['outcome="success",upstream="openai"'] == 0


def test_open_then_half_open_then_closed(start_server, fake_upstream, tag) -> None:
    cooldown = 3  # the refusals and checks below take four round trips within it, on a busy machine too
    server = start_server(CIRCUIT_FAILURES=3, CIRCUIT_COOLDOWN_S=cooldown, HEADER_WAIT_S=0.2)
    fail(server, tag, 3)
    resp = chat(server, f"normal?tag={tag}-refused")
    refused_at_once(resp, cooldown)
    assert upstream_log(fake_upstream, f"{tag}-refused") == []  # no request went upstream
    assert state(server) == "open"

    # After the cool-down one start probes; it fails: open again at once.
    poll_until(lambda: chat(server, f"status?status=503&tag={tag}-probe").status_code == 502,
               10, "a probe after the cool-down")
    refused_at_once(chat(server, f"normal?tag={tag}-refused2"), cooldown)
    assert upstream_log(fake_upstream, f"{tag}-refused2") == []

    # The next probe succeeds: closed.
    poll_until(lambda: chat(server, f"normal?tag={tag}-ok").status_code == 200, 10, "a good probe")
    poll_until(lambda: state(server) == "closed", 5, "the circuit closed")
    assert metric(server, "streamapp_upstream_circuit_state")['upstream="openai"'] == 0.0
    assert chat(server, f"normal?tag={tag}-after").status_code == 200


def test_the_clients_faults_do_not_count(start_server, tag) -> None:
    server = start_server(CIRCUIT_FAILURES=2, CIRCUIT_COOLDOWN_S=60, HEADER_WAIT_S=0.2)
    for status in (404, 400, 401, 404):
        assert chat(server, f"status?status={status}&tag={tag}").status_code == 502
    fail(server, tag, 1)  # one that counts: still one short
    assert state(server) == "closed"
    assert chat(server, f"normal?tag={tag}").status_code == 200


def test_shared_over_redis(start_server, fake_upstream, redis_url, redis_prefix, tag) -> None:
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=redis_prefix, CIRCUIT_FAILURES=2,
                    CIRCUIT_COOLDOWN_S=60, HEADER_WAIT_S=0.2)
    a, b = start_server(**settings), start_server(**settings)
    fail(a, tag, 1)
    fail(b, tag, 1)  # failures in a row, wherever they happened
    assert state(a) == state(b) == "open"
    refused_at_once(chat(b, f"normal?tag={tag}-b"), 60)
    refused_at_once(chat(a, f"normal?tag={tag}-a"), 60)
    assert upstream_log(fake_upstream, f"{tag}-a") == upstream_log(fake_upstream, f"{tag}-b") == []
    assert metric(b, "streamapp_upstream_circuit_state")['upstream="openai"'] == 2.0


def test_a_stream_queued_when_its_circuit_opens_ends_with_an_error_event(start_server, fake_upstream,
                                                                         tag) -> None:
    """A stream that waited in the queue (its 200 and comments already sent) and whose
    upstream's circuit opened meanwhile ends with the ``upstream_unavailable`` error event,
    and the upstream never sees its request."""
    from tests.helpers import SSEClient, first_deltas, q

    waiting, failing = "sk-circuit-queue-1f2e", "sk-circuit-fail-8a0c"
    server = start_server(API_KEYS=f"w:{waiting},f:{failing}", MAX_STREAMS_PER_KEY=1, QUEUE_WAIT_S=10,
                          RATE_LIMIT="", RESUME_GRACE_S=0, CIRCUIT_FAILURES=1, CIRCUIT_COOLDOWN_S=30,
                          HEADER_WAIT_S=0.3)
    auth = {"Authorization": f"Bearer {waiting}"}
    running = SSEClient(f"{server.url}/stream?text={q('w ' * 250)}&delay_ms=100", headers=auth)
    assert running.status == 200
    first_deltas(running, 1)  # the key's one slot is taken
    queued = SSEClient(f"{server.url}/ai-stream?prompt=hi&model={q(f'normal?tag={tag}-q')}", headers=auth)
    assert queued.status == 200 and next(queued.iter_chunks()).startswith(b": queued")
    failed = requests.post(f"{server.url}/api/chat", headers={"Authorization": f"Bearer {failing}"},
                           timeout=10, json={"uid": 1, "message": "hi", "provider": "openai",
                                             "model": f"status?status=503&tag={tag}-f"})
    assert failed.status_code == 502  # one failure opens the circuit (CIRCUIT_FAILURES=1)
    assert state(server) == "open"
    running.conn.close()  # the slot frees: the queued stream's turn comes, its circuit open
    errors = [e for e in queued.iter_events() if e.event == "error"]
    assert errors and json.loads(errors[-1].data)["code"] == "upstream_unavailable", errors
    assert not upstream_log(fake_upstream, f"{tag}-q")
    again = SSEClient(f"{server.url}/stream?text=hi", headers=auth)  # the refused stream's slot is free
    assert again.status == 200 and not next(again.iter_chunks()).startswith(b": queued")


def test_a_clear_circuit_is_trusted_a_moment_then_checked_again(redis_url, redis_prefix) -> None:
    """A circuit with no record in Redis is trusted clear for CLEAR_TRUST_S (no Redis call per
    start); one opened by another process is seen once that time has passed."""
    from streamapp.circuits import CLEAR_TRUST_S, RedisCircuits

    now = [100.0]
    here = RedisCircuits(redis_url, redis_prefix, failures=1, cooldown=30, clock=lambda: now[0])
    there = RedisCircuits(redis_url, redis_prefix, failures=1, cooldown=30)
    assert here.allow("openai") == 0.0  # no record: trusted clear from now on
    there.record("openai", "failure")  # another process opens it
    assert there.allow("openai") > 0
    assert here.allow("openai") == 0.0  # still trusted, without asking Redis
    now[0] += CLEAR_TRUST_S
    assert here.allow("openai") > 0  # asked again: open


# -- a probe's turn, given back by a stream that never starts -------------------------------------

@pytest.mark.parametrize("shared", [False, True])
def test_a_probe_not_started_is_given_back(shared, redis_url, redis_prefix) -> None:
    """The door admits a stream (its half-open circuit's probe) once however often it asks; a
    stream refused after that (no slot) gives the probe's turn back, so the next start probes."""
    from streamapp.circuits import Circuits, RedisCircuits
    from streamapp.errors import UpstreamUnavailable
    from streamapp.failover import Failover, Settings
    from streamapp.models import Target
    from streamapp.providers import ChatRequest

    # The probe's turn lasts the cool-down: the admits below must fit in it, on a busy machine too.
    backend = RedisCircuits(redis_url, redis_prefix, failures=1, cooldown=2) if shared \
        else MemoryCircuits(failures=1, cooldown=2)
    circuits = Circuits(backend, ["a"])
    circuits.record("a", "failure")
    poll_until(lambda: backend.state("a")[0] == "half_open", 5, "the cool-down over")

    def stream() -> Failover:
        return Failover((Target("a", "m", 1),), "fallback", {}, ChatRequest([], model="m"),
                        Settings(5, 10, 2), circuits=circuits)

    first = stream()
    first.admit()
    first.admit()  # the same admission: still the probe
    with pytest.raises(UpstreamUnavailable):
        stream().admit()  # the probe's turn is taken
    first.release()  # never started (no slot): the probe's turn back
    first.release()
    stream().admit()  # the next start probes


def test_a_probe_refused_a_slot_lets_the_next_start_probe(start_server, tag) -> None:
    """A start admitted as its circuit's probe and then refused a slot (429) does not hold
    the probe's turn: once a slot is free, the next start probes (not a 503 for a cool-down)."""
    from tests.helpers import SSEClient, first_deltas, q

    server = start_server(CIRCUIT_FAILURES=1, CIRCUIT_COOLDOWN_S=3, MAX_STREAMS_PER_PROCESS=1,
                          HEADER_WAIT_S=0.2, RESUME_GRACE_S=0)
    fail(server, tag, 1)
    assert state(server) == "open"
    poll_until(lambda: state(server) == "half_open", 10, "the cool-down over")
    holder = SSEClient(f"{server.url}/stream?text={q('w ' * 250)}&delay_ms=100")  # the demo: no circuit
    assert holder.status == 200
    first_deltas(holder, 1)  # the only slot is taken
    resp = requests.post(f"{server.url}/v1/chat/completions", timeout=10, json={
        "model": f"openai/normal?tag={tag}-v1", "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_streams", resp.text
    resp = chat(server, f"normal?tag={tag}-chat")
    assert resp.status_code == 429 and resp.json()["error"]["code"] == "too_many_streams", resp.text
    cancel = requests.post(f"{server.url}/api/streams/{holder.headers['X-Stream-Id']}/cancel", timeout=10)
    assert cancel.status_code in (200, 202), cancel.text  # the slot frees (within the probe's turn)
    holder.conn.close()
    got: list[requests.Response] = []
    poll_until(lambda: got.append(chat(server, f"normal?tag={tag}-probe")) or got[-1].status_code != 429,
               10, "the slot freed")
    assert got[-1].status_code == 200, got[-1].text  # the probe, not a 503 for the rest of its turn
    poll_until(lambda: state(server) == "closed", 5, "the circuit closed")


def test_every_target_open_is_a_503_at_once_even_at_a_full_cap(start_server, tag) -> None:
    """Circuits are checked before the stream takes a slot or waits for one: at a full cap with
    a queue, a model whose every target is open is refused at once (not after the wait)."""
    from tests.helpers import SSEClient, first_deltas, q

    wait = 10
    server = start_server(CIRCUIT_FAILURES=1, CIRCUIT_COOLDOWN_S=60, MAX_STREAMS_PER_PROCESS=1,
                          QUEUE_WAIT_S=wait, HEADER_WAIT_S=0.2, RESUME_GRACE_S=0)
    fail(server, tag, 1)
    assert state(server) == "open"
    holder = SSEClient(f"{server.url}/stream?text={q('w ' * 250)}&delay_ms=100")  # the demo: no circuit
    assert holder.status == 200
    first_deltas(holder, 1)  # the only slot is taken: a stream now would wait in the queue

    began = time.monotonic()
    refused_at_once(chat(server, f"normal?tag={tag}-sse"), 60)  # SSE
    resp = requests.post(f"{server.url}/v1/chat/completions", timeout=wait * 2, json={
        "model": f"openai/normal?tag={tag}-v1", "messages": [{"role": "user", "content": "hi"}],
        "stream": True})
    assert resp.status_code == 503 and resp.headers["Retry-After"], resp.text
    assert resp.json()["error"]["code"] == "upstream_unavailable"
    with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5, close_timeout=2, proxy=None) as ws:
        ws.send(json.dumps({"type": "chat", "uid": 1, "message": "hi", "provider": "openai",
                            "model": f"normal?tag={tag}-ws"}))
        message = json.loads(ws.recv(timeout=wait * 2))
    assert message["type"] == "error" and message["code"] == "upstream_unavailable", message  # not queued
    assert 1 <= message["retry_after"] <= 60
    assert time.monotonic() - began < wait / 2  # none of them waited in the queue
    holder.conn.close()
