"""The stream inspector: ``/inspect`` in headless Chromium, ``GET /api/streams`` and its live SSE,
a stream watched as it is produced, cancel, and admin-only access.

Two real gunicorn instances share one real Redis (think: two hosts); the fake upstream records
when streamapp closed each connection.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
import requests

from streamapp.streams.live import Pulse
from streamapp.streams.store import MemoryStore
from tests.fake_upstream import TOOL_CALLS, token_list
from tests.helpers import SSEClient, first_deltas, poll_until, q, upstream_closed_after, upstream_log
from tests.redis_helpers import run_patched

ROOT_KEY, ALICE_KEY = "sk-root-inspect-77", "sk-alice-inspect-42"
ROOT = {"Authorization": f"Bearer {ROOT_KEY}"}
ALICE = {"Authorization": f"Bearer {ALICE_KEY}"}
KEYED = dict(API_KEYS=f"root:{ROOT_KEY},alice:{ALICE_KEY}", ADMIN_KEYS="root", SECRET_KEY="inspect-secret",
             HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)


@pytest.fixture(scope="module")
def shared(redis_url) -> dict:
    """The settings of instances sharing one Redis, with an admin key (root) and another (alice)."""
    prefix = f"streamapp-test-{uuid.uuid4().hex[:8]}"
    return dict(KEYED, REDIS_URL=redis_url, REDIS_PREFIX=prefix, RESUME_GRACE_S=0)


@pytest.fixture(scope="module")
def pair(start_server, shared):
    """Two instances sharing one Redis."""
    return start_server(**shared), start_server(**shared)


@pytest.fixture(scope="module")
def memory(start_server):
    """One instance with the memory store."""
    return start_server(**KEYED, RESUME_GRACE_S=0)


def start(server, model: str, key: dict[str, str] = ROOT, prompt: str = "hi") -> SSEClient:
    """A stream of the fake upstream's ``model`` on ``server``, its client attached."""
    client = SSEClient(f"{server.url}/ai-stream?prompt={prompt}&model={q(model)}", headers=key)
    assert client.status == 200, client.resp.read()
    return client


def listing(server, auth: dict[str, str] = ROOT, **query) -> dict:
    resp = requests.get(f"{server.url}/api/streams", params=query, headers=auth, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def row_of(server, sid: str, auth: dict[str, str] = ROOT) -> dict | None:
    return next((r for r in listing(server, auth)["streams"] if r["stream_id"] == sid), None)


# -- the JSON API ------------------------------------------------------------------------------


def test_streams_of_two_instances_are_listed_with_their_figures(pair, tag) -> None:
    a, b = pair
    # 6 s each: still running when their figures (sampled once a second) are listed, however late.
    with start(a, f"slow?tokens=30&delay_ms=200&tag={tag}-a", ALICE) as on_a, \
            start(b, f"slow?tokens=30&delay_ms=200&tag={tag}-b") as on_b:
        sid_a, sid_b = on_a.headers["X-Stream-Id"], on_b.headers["X-Stream-Id"]
        first_deltas(on_a, 3)
        first_deltas(on_b, 3)
        # Both are listed on either instance, running, with their producer's figures (sampled each second).
        for server in (a, b):
            poll_until(lambda server=server: all(r and r["tokens"] for r in (row_of(server, sid_a),
                                                                             row_of(server, sid_b))),
                       5, "both streams' figures")
        row_a, row_b = row_of(b, sid_a), row_of(a, sid_b)
        assert row_a["client"] == "alice" and row_b["client"] == "root"
        for row in (row_a, row_b):
            assert row["state"] == "running" and row["route"] == "openai" and row["format"] == "plain"
            assert row["model"].startswith("slow?tokens=30") and row["on_disconnect"] == "cancel"
            assert row["readers"] == 1 and row["resumes"] == 0 and row["outcome"] is None
            assert 0 < row["ttft_s"] < 5 and row["tokens"] >= 1 and row["last_event_at"] >= row["started"]
        assert row_a["process"] != row_b["process"]  # host:pid of each instance's worker
        on_a.read_all()
        on_b.read_all()
    ended = poll_until(lambda: (r := row_of(b, sid_a)) and r["state"] == "finished" and r["tokens"] and r,
                       10, "the end's figures")
    assert ended["outcome"] == "completed" and ended["finish_reason"] == "stop" and ended["error"] is None
    assert ended["tokens"] == 30 and ended["events"] == 32  # opened, 30 tokens, the end
    assert ended["ended"] > ended["started"] and 0 < ended["tokens_per_s"] < 1000
    assert ended["usage"]["completion_tokens"] == 30 and ended["usage"]["source"] == "reported"
    assert poll_until(lambda: row_of(a, sid_a)["readers"] == 0, 5, "the reader gone")


def test_filters_limit_and_a_resume_counted(pair, tag) -> None:
    a, b = pair
    with start(a, f"normal?tokens=3&tag={tag}", ALICE) as client:
        events = client.read_all()
        sid = client.headers["X-Stream-Id"]
    with SSEClient(f"{b.url}/api/streams/{sid}", headers={**ALICE, "Last-Event-ID": events[1].id}) as again:
        again.read_all()
    row = poll_until(lambda: (r := row_of(a, sid)) and r["resumes"] == 1 and r, 5, "the resume counted")
    assert row["state"] == "finished"
    mine = listing(a, key="alice", state="finished", model=f"normal?tokens=3&tag={tag}")["streams"]
    assert [r["stream_id"] for r in mine] == [sid]
    assert listing(a, state="running", model=f"normal?tokens=3&tag={tag}")["streams"] == []
    assert len(listing(a, limit=1)["streams"]) == 1
    # Empty values (a form's empty fields, the README's `?state=&key=&model=&limit=`) are not given.
    everything = listing(a, ALICE, state="", key="", model="", limit="")["streams"]
    assert sid in {r["stream_id"] for r in everything}
    for query, field in (({"limit": 0}, "limit"), ({"limit": "x"}, "limit"), ({"state": "done"}, "state")):
        resp = requests.get(f"{a.url}/api/streams", params=query, headers=ROOT, timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["field"] == field, resp.text


def test_a_key_that_is_not_admin_sees_its_own_streams_and_is_refused_the_rest(pair, tag) -> None:
    a, _ = pair
    with start(a, f"normal?tokens=2&tag={tag}-root") as mine:
        mine.read_all()
    with start(a, f"normal?tokens=2&tag={tag}-alice", ALICE) as theirs:
        theirs.read_all()
    root_sid, alice_sid = mine.headers["X-Stream-Id"], theirs.headers["X-Stream-Id"]
    seen = {r["stream_id"] for r in listing(a, ALICE)["streams"]}
    assert alice_sid in seen and root_sid not in seen
    assert {r["client"] for r in listing(a, ALICE)["streams"]} == {"alice"}
    refused = requests.get(f"{a.url}/api/streams?key=root", headers=ALICE, timeout=10)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_only"
    for path in ("/api/streams/live", f"/api/streams/{alice_sid}/watch"):
        resp = requests.get(f"{a.url}{path}", headers=ALICE, timeout=10)
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "admin_only", path
    assert requests.get(f"{a.url}/api/streams", timeout=10).status_code == 401
    # The page: words for a browser, never a JSON error.
    page = requests.get(f"{a.url}/inspect", headers=ALICE, timeout=10)
    assert page.status_code == 403 and page.headers["Content-Type"].startswith("text/html")
    assert "is not an admin key" in page.text and "alice" in page.text
    anonymous = requests.get(f"{a.url}/inspect", timeout=10)
    assert anonymous.status_code == 401 and anonymous.headers["Content-Type"].startswith("text/html")
    assert "Sign in with an admin key" in anonymous.text and "Bearer" not in anonymous.text
    wrong = requests.get(f"{a.url}/inspect", headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    admin = requests.get(f"{a.url}/inspect", headers=ROOT, timeout=10)
    assert admin.status_code == 200 and 'id="streams"' in admin.text
    assert "script-src 'self'" in admin.headers["Content-Security-Policy"]
    # An admin may cancel another key's stream (a key may not).
    with start(a, f"silence?at=1&silence_s=10&tag={tag}-x", ALICE) as running:
        sid = running.headers["X-Stream-Id"]
        first_deltas(running, 1)
        other = requests.post(f"{a.url}/api/streams/{sid}/cancel", headers={"X-API-Key": "no"}, timeout=5)
        assert other.status_code == 401
        assert requests.post(f"{a.url}/api/streams/{sid}/cancel", headers=ROOT, timeout=5).status_code == 202
        assert running.read_all()[-1].event == "end"


def test_only_an_admins_listing_has_the_processes_publish_figures(start_server, shared, redis_url) -> None:
    import redis

    prefix = f"streamapp-test-{uuid.uuid4().hex[:8]}"
    server = start_server(**dict(shared, REDIS_PREFIX=prefix))
    inspecting = f"{prefix}:inspecting"
    with redis.Redis.from_url(redis_url) as client:
        listing(server, ALICE, state="running")
        listing(server, ALICE)
        assert not client.exists(inspecting)  # a key's own streams: nobody publishes for it
        listing(server, ROOT)
        assert client.exists(inspecting)
        client.delete(inspecting)


def test_a_stall_shows_and_a_stream_whose_process_died_is_lost(pair, start_server, shared, tag) -> None:
    a, _ = pair
    doomed = start_server(**shared)
    with start(doomed, f"silence?at=2&silence_s=30&tag={tag}") as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 2)
        # Silent after two tokens: its last event stays where it was while it runs on.
        row = poll_until(lambda: (r := row_of(a, sid)) and r["tokens"] == 2
                         and listing(a)["now"] - r["last_event_at"] >= 2 and r, 10, "a stall of 2 s")
        assert row["state"] == "running" and row["tokens_per_s"] < 2
        os.kill(int(row["process"].rpartition(":")[2]), signal.SIGKILL)  # its worker, from the row
    row = poll_until(lambda: (r := row_of(a, sid)) and r["state"] == "lost" and r, 20, "the stream lost")
    assert row["outcome"] is None and row["ended"] is None


def test_the_live_table_sends_a_snapshot_then_what_changed(pair, tag) -> None:
    a, b = pair
    with SSEClient(f"{a.url}/api/streams/live", headers=ROOT, timeout=10) as live:
        events = live.iter_events()
        snapshot = next(events)
        assert snapshot.event == "snapshot" and snapshot.retry is not None
        assert {"now", "streams"} <= json.loads(snapshot.data).keys()
        with start(b, f"normal?tokens=3&tag={tag}") as client:
            client.read_all()
            sid = client.headers["X-Stream-Id"]
        deadline = time.monotonic() + 10
        ended = None
        while ended is None and time.monotonic() < deadline:
            event = next(events)
            assert event.event == "diff", event
            diff = json.loads(event.data)
            ended = next((r for r in diff["upsert"] if r["stream_id"] == sid and r["state"] == "finished"
                          and r["tokens"] == 3), None)
        assert ended is not None and ended["outcome"] == "completed"


# -- watching a stream -------------------------------------------------------------------------


@pytest.mark.parametrize("store", ["memory", "redis"])
def test_a_watcher_is_no_reader_a_stream_whose_client_left_still_stops(store, memory, pair, fake_upstream,
                                                                         tag) -> None:
    producer, onlooker = (memory, memory) if store == "memory" else pair
    client = start(producer, f"silence?at=2&silence_s=10&tag={tag}")
    sid = client.headers["X-Stream-Id"]
    first_deltas(client, 2)
    with SSEClient(f"{onlooker.url}/api/streams/{sid}/watch", headers=ROOT, timeout=10) as watcher:
        assert watcher.status == 200 and watcher.headers["X-Stream-Id"] == sid
        seen = first_deltas(watcher, 2)
        assert [json.loads(e.data)["delta"] for e in seen] == token_list(2)
        info = requests.get(f"{producer.url}/api/streams/{sid}/info", headers=ROOT, timeout=5).json()
        assert info["readers"] == 1  # the client only
        left = time.monotonic()
        client.close()
        # The stream stops (zero grace) although the inspector watches it.
        assert upstream_closed_after(fake_upstream, tag, left)["sent"] == 2
        rest = watcher.read_all()
    end = json.loads(rest[-1].data)
    assert end["is_end"] and end["finish_reason"] == "client_gone"
    row = poll_until(lambda: (r := row_of(onlooker, sid)) and r["outcome"] and r, 5, "the end's figures")
    assert row["outcome"] == "client_gone" and row["resumes"] == 0  # watching is no resume


def test_watch_a_stream_from_the_middle_and_past_its_end(memory, tag) -> None:
    with start(memory, f"normal?tokens=4&tag={tag}") as client:
        client.read_all()
        sid = client.headers["X-Stream-Id"]
    watch = f"{memory.url}/api/streams/{sid}/watch"
    with SSEClient(watch, headers={**ROOT, "Last-Event-ID": f"{sid}-3"}) as w:
        events = w.read_all()
    assert [e.id for e in events] == [f"{sid}-{n}" for n in (4, 5, 6)]  # tokens 3, 4, then the end
    at_end = requests.get(watch, headers={**ROOT, "Last-Event-ID": f"{sid}-6"}, timeout=5)
    assert at_end.status_code == 204
    unknown = requests.get(f"{memory.url}/api/streams/nosuch/watch", headers=ROOT, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["field"] == "stream_id"


# -- the page in Chromium ------------------------------------------------------------------------

# Records each new text of the watched answer; true once the view says the stream ended.
SAMPLE_WATCH = """() => {
    window.__samples = window.__samples || [];
    const t = document.querySelector('#d-answer').textContent;
    if (window.__samples[window.__samples.length - 1] !== t) window.__samples.push(t);
    return document.querySelector('#detail').dataset.done === 'true';
}"""


@pytest.fixture
def signed_in(browser, pair):
    """A page of instance a signed in with the admin key through the page's own form."""
    a, _ = pair
    context = browser.new_context(viewport={"width": 1500, "height": 900})
    page = context.new_page()
    page.goto(f"{a.url}/inspect")
    assert page.locator("#signin-needed").is_visible()
    page.fill("#api-key", ROOT_KEY)
    page.click("#auth-send")
    page.wait_for_selector("#streams", timeout=10000)
    page.wait_for_function("() => document.querySelector('#link').textContent === 'live'", timeout=10000)
    yield page
    context.close()


def test_the_page_lists_streams_of_both_instances_and_watches_one_live(pair, signed_in, tag) -> None:
    a, b = pair
    page = signed_in
    with start(a, f"slow?tokens=6&delay_ms=50&tag={tag}-a", ALICE, "from%20a") as on_a, \
            start(b, f"slow?tokens=40&delay_ms=150&tag={tag}-b", ROOT, "from%20b") as on_b:
        sid_a, sid_b = on_a.headers["X-Stream-Id"], on_b.headers["X-Stream-Id"]
        for sid in (sid_a, sid_b):
            page.wait_for_selector(f"tr[data-sid='{sid}']", timeout=10000)
        assert page.locator(f"tr[data-sid='{sid_a}'] td[data-col='client']").text_content() == "alice"
        assert page.locator(f"tr[data-sid='{sid_b}'] td[data-col='client']").text_content() == "root"
        page.wait_for_function(f"() => Number(document.querySelector(\"tr[data-sid='{sid_b}'] "
                               "td[data-col='tokens']\").textContent) >= 2", timeout=10000)
        page.screenshot(path="/tmp/inspector-two-instances.png", full_page=True)
        # Rows are updated in place: across diffs a row stays the same element, a text selection in
        # it stays, and a click whose button is held while a diff lands still opens the stream.
        tokens_b = f"tr[data-sid='{sid_b}'] td[data-col='tokens']"
        moved = f"(n) => document.querySelector(\"{tokens_b}\").textContent !== n"  # a diff landed
        page.evaluate(f"""() => {{
            window.__row = document.querySelector("tr[data-sid='{sid_a}']");
            const range = document.createRange();
            range.selectNodeContents(window.__row.querySelector("td[data-col='client']"));
            getSelection().removeAllRanges();
            getSelection().addRange(range);
        }}""")
        page.wait_for_function(moved, arg=page.locator(tokens_b).text_content(), timeout=10000)
        assert page.evaluate(f"""() => window.__row === document.querySelector("tr[data-sid='{sid_a}']")
                                 && window.__row.isConnected && getSelection().toString() === 'alice'""")
        page.hover(f"tr[data-sid='{sid_b}'] td[data-col='model']")
        page.mouse.down()
        page.wait_for_function(moved, arg=page.locator(tokens_b).text_content(), timeout=10000)
        page.mouse.up()
        # The stream of instance b, watched from a page of instance a: its tokens as they come.
        page.wait_for_function(f"() => document.querySelector('#d-sid').textContent === '{sid_b}'",
                               timeout=5000)
        page.wait_for_function(SAMPLE_WATCH, polling=20, timeout=20000)
        samples = page.evaluate("window.__samples")
        final = page.locator("#d-answer").text_content()
        assert final == "".join(token_list(40))
        growing = [s for s in samples if s and s != final]
        assert len(growing) >= 5, samples  # partial answers were on screen before the end
        assert all(final.startswith(s) for s in growing)
        assert page.locator("#d-end").text_content().startswith("ended: stop · usage: prompt ")
        page.screenshot(path="/tmp/inspector-watching.png", full_page=True)
        on_a.read_all()
        on_b.read_all()
    # The filters: alice's streams only.
    page.select_option("#f-key", "alice")
    page.wait_for_function(f"() => !document.querySelector(\"tr[data-sid='{sid_b}']\")", timeout=5000)
    assert page.locator(f"tr[data-sid='{sid_a}']").count() == 1
    assert set(page.locator("td[data-col='client']").all_text_contents()) == {"alice"}


def test_a_watched_streams_tool_calls_are_one_line_each(pair, signed_in, tag) -> None:
    a, _ = pair
    page = signed_in
    with start(a, f"tools?tag={tag}") as client:
        client.read_all()
        sid = client.headers["X-Stream-Id"]
    page.click(f"tr[data-sid='{sid}'] td[data-col='model']", timeout=10000)
    page.wait_for_function("() => document.querySelector('#detail').dataset.done === 'true'", timeout=10000)
    lines = page.locator("#d-tools .call").all_text_contents()
    assert [line.partition("(")[0] for line in lines] == [c["name"] for c in TOOL_CALLS]
    assert [json.loads(line.partition("(")[2][:-1]) for line in lines] == [c["arguments"] for c in TOOL_CALLS]
    assert page.locator("#d-end").text_content().startswith("ended: tool_calls")


def test_cancel_from_the_page_stops_the_upstream(pair, signed_in, fake_upstream, tag) -> None:
    _, b = pair
    page = signed_in
    dialogs: list[str] = []

    def accept(dialog) -> None:
        dialogs.append(dialog.message)
        dialog.accept()
    page.on("dialog", accept)
    with start(b, f"silence?at=3&silence_s=15&tag={tag}", ALICE) as client:
        sid = client.headers["X-Stream-Id"]
        first_deltas(client, 3)
        # Silent after three tokens: five seconds on, the page shows the stall.
        page.wait_for_selector(f"tr.stalled[data-sid='{sid}']", timeout=15000)
        page.click(f"tr[data-sid='{sid}']", timeout=10000)
        page.wait_for_function("() => document.querySelector('#d-answer').dataset.chunks === '3'",
                               timeout=10000)
        asked = time.monotonic()
        page.click("#d-cancel")
        page.wait_for_function("() => document.querySelector('#detail').dataset.done === 'true'",
                               timeout=10000)
        assert upstream_closed_after(fake_upstream, tag, asked)["sent"] == 3  # in its silence
        assert dialogs and sid in dialogs[0]
        # Its usage record: the output counted from what was produced.
        assert page.locator("#d-end").text_content() == "ended: cancelled · usage: prompt 5, completion 3, " \
            "total 8 (partial)"
        assert page.locator("#d-status").text_content() == "cancel: cancelling"
        assert json.loads(client.read_all()[-1].data)["finish_reason"] == "cancelled"
    assert len(upstream_log(fake_upstream, tag)) == 1
    page.wait_for_function(f"() => document.querySelector(\"tr[data-sid='{sid}'] td[data-col='outcome']\")"
                           ".textContent.startsWith('cancelled')", timeout=10000)


def test_a_key_that_is_not_admin_meets_words_on_the_page(pair, browser) -> None:
    a, _ = pair
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(f"{a.url}/inspect")
        page.fill("#api-key", ALICE_KEY)
        page.click("#auth-send")
        page.wait_for_selector("#refused", timeout=10000)
        assert "alice" in page.locator("#refused").text_content()
        assert page.locator("#streams").count() == 0
        page.fill("#api-key", "sk-wrong")
        page.click("#auth-send")
        page.wait_for_function("() => document.querySelector('#auth-status').textContent"
                               " === 'That key is not known to this server.'", timeout=10000)
    finally:
        context.close()


# -- the parts ---------------------------------------------------------------------------------


class _Producer:
    def __init__(self) -> None:
        self.seq, self.first_at = 0, None

    def content_events(self) -> int:
        return max(0, self.seq - 1)


def test_pulse_notes_the_last_event_only_when_the_count_moves() -> None:
    clock = [100.0]
    pulse = Pulse(lambda: clock[0])
    producer = _Producer()
    assert pulse.sample({"s": producer})["s"] == [0, 0, None, None]
    producer.seq, producer.first_at = 3, 99.5
    events, tokens, first, seen = pulse.sample({"s": producer})["s"]
    assert (events, tokens) == (3, 2) and abs(first - (time.time() - 0.5)) < 1 and seen is not None
    clock[0] += 1
    assert pulse.sample({"s": producer})["s"][3] == seen  # nothing new: the last event stays put
    producer.seq = 4
    assert pulse.sample({"s": producer})["s"][3] >= seen
    assert pulse.sample({}) == {} and pulse.figures == {}


def test_memory_store_lists_newest_first_notes_and_counts_resumes() -> None:
    clock = [0.0]
    store = MemoryStore(ttl=10, clock=lambda: clock[0])
    for sid in ("a", "b", "c"):
        store.create(sid, {"state": "running"})
    assert store.recent(2) == ["c", "b"]
    store.annotate("a", {"tokens": 4})
    store.count_resume("a")
    store.count_resume("a")
    assert store.metas(["a", "x"], ("tokens", "resumes", "state")) == [
        {"tokens": 4, "resumes": 2, "state": "running"}, None]
    from streamapp.events import Done
    store.append("c", 1, Done(), final=True)
    clock[0] = 11
    assert store.recent(10) == ["b", "a"]  # c expired


def scenario_recent_set(url: str, prefix: str) -> None:
    """The recent set: kept by the publisher's batches, trimmed to its count; resumes counted
    land in the meta; published live figures are read back."""
    import gevent

    from streamapp.streams.redis_store import RedisStore

    store = RedisStore(url, prefix, ttl=60, running_ttl=60, lease=5, recent_max=3)
    store.start("owner-1")
    try:
        for n in range(5):
            store.create(f"s{n}", {"state": "running", "format": "plain"})
            store.published(f"s{n}", 5)
        assert store.recent(10) == ["s4", "s3", "s2"], store.recent(10)
        store.annotate("s4", {"tokens": 7, "outcome": "completed"})
        store.count_resume("s4")
        store.publish_live({"s4": [9, 7, 1.0, 2.0]})
        assert store.live(["owner-1"]) == {}  # nobody inspects: nothing published
        store.inspected()
        store.attach("s4", "reader-1")  # a reader here: its lease is kept here, not in Redis
        store.publish_live({"s4": [9, 7, 1.0, 2.0]})
        for _ in range(100):
            if store.directory.metas(["s4"], ("tokens",))[0]:
                break
            gevent.sleep(0.02)
        assert store.directory.metas(["s4", "gone"], ("tokens", "outcome", "resumes", "state")) == [
            {"tokens": 7, "outcome": "completed", "resumes": 1, "state": "running"}, None]
        assert not store.redis.exists(f"{prefix}:meta:gone")
        assert store.live(["owner-1", "owner-2"]) == {"s4": [9, 7, 1.0, 2.0, 1]}
        assert 0 < store.redis.ttl(f"{prefix}:recent") <= 120
    finally:
        store.redis.delete(*store.redis.keys(f"{prefix}:*"))
        store.close()


def test_redis_recent_set_notes_resumes_and_live_figures(redis_url, redis_prefix) -> None:
    run_patched("test_inspector", "scenario_recent_set", url=redis_url, prefix=redis_prefix)


class _Counted:
    """A Redis client that notes the commands it sends about processes' liveness keys."""

    def __init__(self, client, prefix: str) -> None:
        self.client, self.owners, self.calls = client, f"{prefix}:owner:", []

    def __getattr__(self, name: str):
        attr = getattr(self.client, name)
        if name not in ("exists", "mget"):
            return attr

        def counted(*args, **kwargs):
            keys = [k for a in args for k in (a if isinstance(a, list) else [a])]
            if any(str(k).startswith(self.owners) for k in keys):
                self.calls.append(name)
            return attr(*args, **kwargs)
        return counted


def scenario_liveness_read_once(url: str, prefix: str) -> None:
    """Running streams of several other processes without published figures: the listing asks
    whether their processes live in one command, and those whose key expired are lost."""
    from types import SimpleNamespace

    from streamapp.streams.inspect import Inspector
    from streamapp.streams.redis_store import RedisStore

    stores = [RedisStore(url, prefix, ttl=60, running_ttl=60, lease=5, recent_max=20) for _ in range(4)]
    producers, watcher = stores[:3], stores[3]
    try:
        for n, producer in enumerate(producers):
            producer.start(f"producer-{n}")
            for k in range(2):
                producer.create(f"p{n}s{k}", {"state": "running", "format": "plain", "started": time.time()})
                producer.published(f"p{n}s{k}", 5)
        watcher.start("watcher")
        for n in (0, 1):  # their processes die: keys no longer renewed, expired
            producers[n].close()
            watcher.redis.delete(f"{prefix}:owner:producer-{n}")
        counted = watcher.liveness.client = _Counted(watcher.liveness.client, prefix)
        manager = SimpleNamespace(store=watcher, pulse=SimpleNamespace(figures={}), owner="watcher")
        rows = {r["stream_id"]: r["state"] for r in Inspector(manager, 100).rows()}
        assert rows == {f"p{n}s{k}": "lost" if n < 2 else "running" for n in range(3) for k in range(2)}, rows
        assert counted.calls == ["mget"], counted.calls  # three owners, six streams: one command
    finally:
        watcher.redis.delete(*watcher.redis.keys(f"{prefix}:*"))
        for store in stores:
            store.close()


def test_the_liveness_of_other_processes_is_read_in_one_command(redis_url, redis_prefix) -> None:
    run_patched("test_inspector", "scenario_liveness_read_once", url=redis_url, prefix=redis_prefix)
