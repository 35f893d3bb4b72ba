"""A stream runs in its reader's greenlet while one local reader follows it (issue #21 part 1).

In the common case (one client, reading on the worker that produces) the reader pulls the
upstream's events itself (``Producer.pump``); anything else moves generation back to the
stream's own greenlet: a second reader, the reader leaving, a slow client, a reader on
another process, a cancel, shutdown. Each test checks that no event is lost, doubled or
reordered across the move, and reads the move from ``streamapp_stream_moves_total``.
Real gunicorn + gevent servers, the fake upstream, real Redis.
"""

from __future__ import annotations

import http.client
import json
import socket
import uuid

import pytest
import requests

from tests.fake_upstream import token_list
from tests.helpers import SSEClient, data_events, first_deltas, poll_until, q
from tests.test_metrics import samples


def moves(server) -> dict[tuple[str, str], float]:
    """``streamapp_stream_moves_total`` by (to, reason)."""
    out = {}
    for (name, labels), value in samples(server).items():
        if name == "streamapp_stream_moves_total":
            got = dict(labels)
            out[(got["to"], got["reason"])] = value
    return out


def moved(server, before: dict, key: tuple[str, str], n: int = 1, timeout: float = 10) -> dict:
    """Wait until the move ``key`` was counted ``n`` more times than in ``before``."""
    return poll_until(lambda: (now := moves(server))[key] - before.get(key, 0) >= n and now,
                      timeout, f"the move {key} to be counted")


@pytest.fixture(scope="module")
def inline_server(start_server):
    return start_server(HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2, RESUME_GRACE_S=5, WRITE_TIMEOUT_S=30)


def test_one_reader_drives_its_stream_and_gets_every_event(inline_server, tag):
    before = moves(inline_server)
    model = q(f"slow?tokens=20&delay_ms=20&tag={tag}")
    with SSEClient(f"{inline_server.url}/ai-stream?prompt=hi&model={model}") as client:
        events = client.read_all()
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(20))
    ids = [int(e.id.rsplit("-", 1)[1]) for e in events if e.id]
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # in order, none missing, none twice
    assert json.loads(events[-1].data)["finish_reason"] == "stop"
    after = moved(inline_server, before, ("reader", "alone"))
    # The common case: generation went to the reader once and never came back.
    assert {k: v - before.get(k, 0) for k, v in after.items() if k[0] == "greenlet"} == \
        {k: 0 for k in after if k[0] == "greenlet"}


@pytest.mark.parametrize("mode", ["silence", "keepalive"])
def test_heartbeats_while_the_reader_waits_for_a_silent_upstream(inline_server, tag, mode):
    """After the first tokens the reader drives; the upstream goes silent (or sends only its own
    keep-alives) for 2 s: the client still gets a heartbeat every 0.5 s, then the rest."""
    model = q(f"{mode}?at=2&silence_s=2&tokens=4&every_ms=100&tag={tag}-{mode}")
    with SSEClient(f"{inline_server.url}/ai-stream?prompt=hi&model={model}") as client:
        events = client.read_all()
    tokens = [t for t, e in client.events if e.event == "message"]
    beats = [t for t, chunk in client.chunks if b": keep-alive" in chunk and tokens[1] < t < tokens[2]]
    assert len(beats) >= 2, (beats, tokens)
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(4))


@pytest.mark.parametrize("mode", ["gzip", "unchunked"])
def test_a_body_without_pause_points_is_never_driven_and_keeps_its_pace(inline_server, tag, mode):
    """A body urllib3 reads (compressed, or not chunked) has no pause point: its reader never
    drives it (it could not step out to write or beat), so each event still comes as sent and
    heartbeats fill the upstream's silence (review finding: driven, they came 16 at a time)."""
    before = moves(inline_server)
    model = q(f"{mode}?tokens=8&delay_ms=50&at=3&silence_s=1.5&tag={tag}-{mode}")
    with SSEClient(f"{inline_server.url}/ai-stream?prompt=hi&model={model}") as client:
        events = client.read_all()
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(8))
    tokens = [t for t, e in client.events if e.event == "message"]
    assert tokens[2] - tokens[0] < 1.0, tokens  # before the silence: not held back behind it
    beats = [t for t, chunk in client.chunks if b": keep-alive" in chunk and tokens[2] < t < tokens[3]]
    assert len(beats) >= 2, (beats, tokens)
    assert moves(inline_server).get(("reader", "alone"), 0) == before.get(("reader", "alone"), 0)


def two_readers(first_server, second_server, model: str, reason: str) -> None:
    """A stream started on ``first_server`` and driven by its reader, resumed from its fourth
    token by a second reader on ``second_server`` while the first reads on: generation moves back
    for ``reason``, and both readers get everything after their point, once and in order."""
    before = moves(first_server)
    first = SSEClient(f"{first_server.url}/ai-stream?prompt=hi&model={model}")
    try:
        got = first_deltas(first, 4)
        moved(first_server, before, ("reader", "alone"))
        with SSEClient(f"{second_server.url}/ai-stream?prompt=hi&model={model}",
                       headers={"Last-Event-ID": got[-1].id}) as second:
            moved(first_server, before, ("greenlet", reason))
            rest = second.read_all()
        events = first.read_all()
    finally:
        first.close()
    everything = "".join(token_list(30))
    assert "".join(e.data for e in data_events(events)) == everything
    assert "".join(e.data for e in got + data_events(rest)) == everything


def test_a_second_reader_takes_generation_back_without_loss(inline_server, tag):
    two_readers(inline_server, inline_server, q(f"slow?tokens=30&delay_ms=40&tag={tag}"), "second_reader")


def test_a_slow_client_hands_generation_back_and_still_gets_everything(inline_server, tag):
    """A client that stops reading blocks its writes: generation moves to the stream's own
    greenlet (the upstream is read on), and once the client reads again it gets all of it."""
    before = moves(inline_server)
    # About 9 MB of SSE, paced so that the reader keeps up (and drives) until the buffers fill.
    model = q(f"normal?tokens=300&repeat=3000&delay_ms=3&tag={tag}")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", inline_server.port))
    conn = http.client.HTTPConnection("127.0.0.1", inline_server.port, timeout=20)
    conn.sock = sock
    try:
        conn.request("GET", f"/ai-stream?prompt=hi&model={model}")
        resp = conn.getresponse()
        assert resp.status == 200
        moved(inline_server, before, ("reader", "alone"))
        moved(inline_server, before, ("greenlet", "slow_client"))  # while this client reads nothing
        body = resp.read().decode()
    finally:
        conn.close()
    events = [json.loads(line[6:]) if line.startswith("data: {") else line[6:]
              for line in body.split("\n") if line.startswith("data: ")]
    text = "".join(e for e in events if isinstance(e, str))
    assert text == "".join(t * 3000 for t in token_list(300))
    assert events[-1]["finish_reason"] == "stop"


def test_a_reader_leaving_a_finish_stream_leaves_it_generating(inline_server, fake_upstream, tag):
    before = moves(inline_server)
    model = q(f"slow?tokens=12&delay_ms=60&tag={tag}")
    client = SSEClient(f"{inline_server.url}/ai-stream?prompt=hi&on_disconnect=finish&model={model}")
    sid = client.headers["X-Stream-Id"]
    first_deltas(client, 3)
    moved(inline_server, before, ("reader", "alone"))
    client.close()
    moved(inline_server, before, ("greenlet", "reader_left"))

    def finished():
        info = requests.get(f"{inline_server.url}/api/streams/{sid}/info", timeout=5).json()
        return info.get("state") == "finished" and info
    poll_until(finished, 10, "the stream to finish without its reader")
    with SSEClient(f"{inline_server.url}/api/streams/{sid}") as again:
        events = again.read_all()
    assert "".join(e.data for e in data_events(events)) == "".join(token_list(12))
    assert json.loads(events[-1].data)["finish_reason"] == "stop"  # not cut as client_gone


def test_a_reader_on_another_process_takes_generation_back(start_server, redis_url, tag):
    prefix = f"streamapp-test-{uuid.uuid4().hex[:8]}"
    settings = dict(REDIS_URL=redis_url, REDIS_PREFIX=prefix, RESUME_GRACE_S=5, HEARTBEAT_S=0.5,
                    HEADER_WAIT_S=0.2)
    model = q(f"slow?tokens=30&delay_ms=50&tag={tag}")
    two_readers(start_server(**settings), start_server(**settings), model, "read_elsewhere")
