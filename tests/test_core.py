"""The stream core without a server: memory store, producer, manager, reader.

Time is a fake clock moved by hand; waits are on gevent events, never sleeps.
The producer's greenlet runs when the test yields to the hub (``gevent.idle``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import gevent
import gevent.event
import pytest

from streamapp.events import Delta, Done, Event, Failed, Opened, Reasoning, ToolCall
from streamapp.streams.lifecycle import Lifecycle, Timing
from streamapp.streams.manager import StreamManager
from streamapp.streams.reader import StreamReader
from streamapp.streams.store import MemoryStore


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now



def ended_early(event, reason: str) -> bool:
    """``event`` ends a stream cut short with ``reason``, with a partial usage record."""
    return isinstance(event, Done) and event.finish_reason == reason and event.usage is not None \
        and event.usage["source"] == "partial"

def text_token(i: int) -> Event:
    return Delta(f"t{i} ", i)


class Upstream:
    """A provider stand-in: yields what the test feeds it; records when it was closed.

    ``token(i)`` makes its ``i``-th event (a text delta unless told otherwise)."""

    def __init__(self, tokens: int = 0, then_wait: bool = True, close_raises: bool = False,
                 token: Callable[[int], Event] = text_token) -> None:
        self.tokens, self.then_wait, self.close_raises = tokens, then_wait, close_raises
        self.token = token
        self.feed = gevent.event.Event()  # never set: the upstream stays silent
        self.closed = gevent.event.Event()

    def events(self) -> Iterator[Event]:
        try:
            yield Opened()
            for i in range(self.tokens):
                yield self.token(i)
            if self.then_wait:
                self.feed.wait()
            yield Done("stop", {"total_tokens": self.tokens})
        finally:
            self.closed.set()
            if self.close_raises:
                raise OSError("the upstream connection broke while closing")


@pytest.fixture
def clock() -> Clock:
    return Clock()


def manager_for(clock: Clock, grace: float = 10.0, lease: float = 30.0, **limits) -> StreamManager:
    # tick=3600: the periodic tick never fires by itself; tests call check() with the fake clock.
    return StreamManager(MemoryStore(300, lease=lease, clock=clock), grace, tick=3600, clock=clock,
                         **limits)


def settle() -> None:
    """Let every runnable greenlet run until none is left (the producer appends and blocks)."""
    for _ in range(50):
        gevent.idle()


def tick(manager: StreamManager, clock: Clock, seconds: float) -> None:
    """``seconds`` pass, the manager's periodic check runs, and what it stopped settles."""
    clock.now += seconds
    manager.check(clock.now)
    settle()


def finish_of(manager: StreamManager, sid: str) -> Event:
    meta = manager.store.meta(sid)
    assert meta["state"] == "finished", meta
    return manager.store.read(sid, meta["last"] - 1)[0][1]


# -- memory store ---------------------------------------------------------------

def test_memory_store_leases_expire_and_pages_are_bounded(clock) -> None:
    store = MemoryStore(300, lease=30, clock=clock)
    store.create("s", {"state": "running"})
    for seq in range(1, 11):
        store.append("s", seq, Delta(str(seq), seq - 1), final=False)
    store.append("s", 11, Done(), final=True)
    assert [seq for seq, _ in store.read("s", 3, limit=4)] == [4, 5, 6, 7]
    assert store.count("s") == 11
    assert store.meta("s")["last"] == 11
    store.attach("s", "r1")
    assert store.readers("s") == 1
    clock.now += 31  # r1's process died: its lease runs out by itself
    assert store.readers("s") == 0
    assert store.reader_counts(["s", "unknown"]) == [0, 0]


def test_memory_store_annotate_adds_and_replaces_fields(clock) -> None:
    store = MemoryStore(300, lease=30, clock=clock)
    store.create("s", {"state": "running", "route": "chat"})
    store.annotate("s", {"upstream": "a", "attempts": [{"upstream": "a"}]})
    store.annotate("s", {"upstream": "b"})
    store.annotate("unknown", {"upstream": "a"})  # nothing to add to: left alone
    assert store.meta("s") == {"state": "running", "route": "chat", "upstream": "b",
                               "attempts": [{"upstream": "a"}]}
    assert store.meta("unknown") is None


# -- producer ----------------------------------------------------------------------

def test_producer_exit_path_completes_when_closing_the_upstream_raises(clock) -> None:
    manager = manager_for(clock)
    upstream = Upstream(tokens=2, close_raises=True)
    sid = manager.start(upstream.events(), {})
    settle()
    manager.cancel(sid)
    settle()
    assert upstream.closed.is_set()
    assert ended_early(finish_of(manager, sid), "cancelled")
    assert sid not in manager._producers  # bookkeeping done: on_exit ran

    limited = manager_for(clock, max_events=1)  # stopped by a limit: close() runs on a suspended provider
    upstream = Upstream(tokens=5, close_raises=True)
    sid = limited.start(upstream.events(), {})
    settle()
    assert upstream.closed.is_set()
    assert ended_early(finish_of(limited, sid), "length")
    assert sid not in limited._producers


# Every kind of event that carries content, each carrying 3 bytes ("t0 " ... "t9 " as text,
# or a tool call's arguments; a tool call's id and name count too).
CONTENT = {
    "text": text_token,
    "reasoning": lambda i: Reasoning(f"t{i} "),
    "tool_call": lambda i: ToolCall(i // 4, arguments=f"t{i} "),
    "tool_call_named": lambda i: ToolCall(i, "c", "f", str(i % 10)),
}


@pytest.mark.parametrize("kind", CONTENT)
def test_limits_end_the_stream_with_length_and_close_the_upstream(clock, kind) -> None:
    token = CONTENT[kind]
    manager = manager_for(clock, max_events=5)
    upstream = Upstream(tokens=50, then_wait=False, token=token)
    sid = manager.start(upstream.events(), {})
    settle()
    assert upstream.closed.is_set()
    events = [e for _, e in manager.store.read(sid, 0)]
    assert events[1:-1] == [token(i) for i in range(5)]
    assert ended_early(events[-1], "length")

    by_bytes = manager_for(clock, max_bytes=12)  # 4 events of 3 bytes: the 5th is over
    upstream = Upstream(tokens=50, then_wait=False, token=token)
    sid = by_bytes.start(upstream.events(), {})
    settle()
    assert upstream.closed.is_set()
    events = [e for _, e in by_bytes.store.read(sid, 0)]
    assert events[1:-1] == [token(i) for i in range(4)] and ended_early(events[-1], "length")


# -- nobody reading means nothing generating -----------------------------------------

def test_a_stream_whose_first_reader_never_attaches_stops_after_the_grace(clock) -> None:
    manager = manager_for(clock, grace=10)
    upstream = Upstream(tokens=1)
    sid = manager.start(upstream.events(), {})
    with manager.holding(sid):  # the starting request decides its response: that counts as read
        tick(manager, clock, 60)
        assert not upstream.closed.is_set()
    # The response was never iterated (a HEAD, a crash between start and body): nobody attaches.
    tick(manager, clock, 9)
    assert not upstream.closed.is_set()
    tick(manager, clock, 1.5)
    assert upstream.closed.is_set()
    assert ended_early(finish_of(manager, sid), "client_gone")


def test_a_reader_whose_process_died_stops_the_stream_within_grace_plus_lease(clock) -> None:
    manager = manager_for(clock, grace=10, lease=30)
    upstream = Upstream(tokens=1)
    sid = manager.start(upstream.events(), {})
    with manager.holding(sid):
        pass
    manager.store.attach(sid, "remote-reader")  # a reader elsewhere, then SIGKILLed: no detach, no idle
    start = clock.now
    while not upstream.closed.is_set() and clock.now - start < 60:
        tick(manager, clock, 1)
    assert upstream.closed.is_set()
    assert clock.now - start <= 10 + 30 + 1  # grace + lease (+ one tick)
    assert clock.now - start > 30  # not before its lease ran out


def test_a_lost_idle_message_is_covered_by_the_check(clock) -> None:
    manager = manager_for(clock, grace=5)
    manager.store.control_handler = lambda kind, sid: None  # the "idle" message never arrives
    upstream = Upstream(tokens=1)
    sid = manager.start(upstream.events(), {})
    with manager.holding(sid):
        manager.store.attach(sid, "r")
    manager.check(clock.now)
    manager.store.detach(sid, "r")
    for _ in range(7):
        tick(manager, clock, 1)
    assert upstream.closed.is_set()


def test_finish_streams_outlive_their_readers_but_not_the_maximum_duration(clock) -> None:
    manager = manager_for(clock, grace=1, max_duration=100)
    upstream = Upstream(tokens=1)
    sid = manager.start(upstream.events(), {}, on_disconnect="finish")
    with manager.holding(sid):
        pass
    for _ in range(9):
        tick(manager, clock, 10)
    assert not upstream.closed.is_set()
    tick(manager, clock, 10)
    assert upstream.closed.is_set()
    assert ended_early(finish_of(manager, sid), "length")


# -- the reader -------------------------------------------------------------------

def filled(clock: Clock, n: int, final: bool = True) -> tuple[StreamManager, str]:
    manager = manager_for(clock)
    store = manager.store
    store.create("s", {"state": "running"})
    store.append("s", 1, Opened(), final=False)
    for seq in range(2, n + 1):
        store.append("s", seq, Delta(str(seq), seq - 2), final=False)
    if final:
        store.append("s", n + 1, Done(), final=True)
    return manager, "s"


def test_reader_pages_a_long_log_and_ends_at_the_final_event(clock) -> None:
    manager, sid = filled(clock, 1000)
    reader = StreamReader(manager, sid, 10, page=100)
    batches = list(reader)
    reader.close()
    assert max(len(b) for b in batches) == 100
    seqs = [seq for batch in batches for seq, _ in batch]
    assert seqs == list(range(11, 1002))
    assert manager.store.readers(sid) == 0


class HoleyStore(MemoryStore):
    """A log with event ``hole`` missing, as after a Redis batch that was dropped."""

    hole = 5

    def read(self, sid, after, limit=None):
        return [(seq, e) for seq, e in super().read(sid, after, limit) if seq != self.hole]


def test_reader_never_skips_a_sequence_number(clock) -> None:
    manager = StreamManager(HoleyStore(300, clock=clock), 10, tick=3600, clock=clock)
    store = manager.store
    store.create("s", {"state": "running"})
    for seq in range(1, 9):
        store.append("s", seq, Delta(str(seq), seq), final=False)
    reader = StreamReader(manager, "s", 2)
    got = [item for batch in reader for item in batch]
    reader.close()
    assert [seq for seq, _ in got[:-1]] == [3, 4]
    assert got[-1] == (4, Failed("stream_gap", got[-1][1].message, 502))


def test_reader_of_a_stream_whose_end_was_lost_ends_with_an_error(clock) -> None:
    manager, sid = filled(clock, 5, final=False)
    manager.store.meta(sid).update(state="finished", last=7)  # the end is recorded, events 6-7 lost
    reader = StreamReader(manager, sid, 3)
    got = [item for batch in reader for item in batch]
    reader.close()
    assert [seq for seq, _ in got] == [4, 5, 5]
    assert isinstance(got[-1][1], Failed) and got[-1][1].code == "stream_gap"


def test_a_forgotten_stream_is_unknown_and_its_readers_end_with_a_gap(clock) -> None:
    manager, sid = filled(clock, 10)
    store = manager.store
    replaying = StreamReader(manager, sid, 0, page=4)
    batches = iter(replaying)
    assert [seq for seq, _ in next(batches)] == [1, 2, 3, 4]
    live, live_sid = filled(clock, 5, final=False)
    waiting = StreamReader(live, live_sid, 5)
    follow = gevent.spawn(lambda: [item for batch in waiting for item in batch])
    settle()
    assert not follow.ready()  # it waits for event 6
    store.forget(sid)
    live.store.forget(live_sid)
    rest = [item for batch in batches for item in batch]
    replaying.close()
    assert rest == [(4, Failed("stream_gap", rest[0][1].message, 502))]
    assert follow.get(timeout=5) == [(5, Failed("stream_gap", rest[0][1].message, 502))]
    waiting.close()
    assert store.meta(sid) is None and store.read(sid, 0) == [] and store.count(sid) == 0


def test_forget_refuses_a_running_stream_and_forgets_it_once_it_ended(clock) -> None:
    manager = manager_for(clock)
    lifecycle = Lifecycle(manager, Timing(header_wait=1, first_limit=1, heartbeat=15))
    sid = manager.start(Upstream(tokens=2).events(), {})
    settle()
    assert lifecycle.forget(sid) == "running"
    assert manager.store.meta(sid)["state"] == "running"
    assert lifecycle.cancel(sid) == "cancelling"
    settle()
    assert ended_early(finish_of(manager, sid), "cancelled")
    assert lifecycle.forget(sid) == "forgotten"
    assert manager.store.meta(sid) is None
    assert lifecycle.forget(sid) is None and lifecycle.cancel(sid) is None


def test_reader_renews_its_lease_while_busy_writing(clock) -> None:
    manager, sid = filled(clock, 400)
    store = manager.store
    reader = StreamReader(manager, sid, 0, page=10)
    for batch in reader:
        clock.now += 3  # each write of a long burst takes a while; the reader never waits
        assert store.readers(sid) == 1, f"the lease lapsed at event {batch[-1][0]}"
    reader.close()
    assert clock.now - 1000 > 3 * store.lease  # the burst lasted several leases


def test_reader_blocked_in_a_write_keeps_its_lease(clock) -> None:
    """A transport stuck writing (a slow client, up to WRITE_TIMEOUT_S) does not iterate its
    reader; the manager's tick renews the lease meanwhile, so the reader is not counted gone."""
    manager, sid = filled(clock, 5, final=False)
    store = manager.store
    reader = StreamReader(manager, sid, 0)
    next(iter(reader))  # the first batch is being written ... and the write blocks
    for _ in range(8):
        clock.now += store.lease / 2
        renewing = manager.renew_leases(clock.now)
        assert renewing is not None, "nobody renews the lease of a reader blocked in a write"
        renewing.join(5)
        assert store.readers(sid) == 1, "a reader blocked in a write lost its lease"
    reader.close()


def test_the_tick_renews_no_lease_of_an_idle_reader(clock) -> None:
    """A reader waiting for events is woken by the tick and renews its own lease; the tick does
    no store call for it (one per reader would hold up the tick on a slow store)."""
    manager, sid = filled(clock, 3, final=False)
    reader = StreamReader(manager, sid, 3)  # at the end of the log: it will wait
    follow = gevent.spawn(lambda: next(iter(reader)))
    gevent.idle()
    clock.now += manager.store.lease / 2
    assert manager.renew_leases(clock.now) is None
    gevent.idle()
    assert manager.store.readers(sid) == 1  # renewed by the reader itself, once woken
    follow.kill()
    reader.close()


def test_reader_at_shutdown_delivers_an_event_before_leaving(clock) -> None:
    manager, sid = filled(clock, 5, final=False)
    manager.begin_shutdown()
    reader = StreamReader(manager, sid, 2, leave_at_shutdown=True)
    got = [item for batch in reader for item in batch]
    reader.close()
    assert [seq for seq, _ in got] == [3, 4, 5]  # what there was, then it leaves (no empty answer)

    waiting = StreamReader(manager, sid, 5, leave_at_shutdown=True)
    first = gevent.spawn(lambda: next(iter(waiting)))
    settle()
    assert not first.ready()  # nothing delivered yet: it does not leave empty-handed
    manager.store.append(sid, 6, Delta("6", 5), final=False)
    assert first.get(timeout=5) == [(6, Delta("6", 5))]
    waiting.close()


def test_reader_that_leaves_detaches_and_starts_the_grace(clock) -> None:
    manager = manager_for(clock, grace=0)
    upstream = Upstream(tokens=1)
    sid = manager.start(upstream.events(), {})
    with manager.holding(sid):
        settle()
    reader = StreamReader(manager, sid, 0)
    follow = gevent.spawn(lambda: [b for b in reader])
    settle()
    assert manager.store.readers(sid) == 1
    reader.leave()
    reader.join_departure()
    follow.join(5)
    settle()
    assert upstream.closed.is_set()
    assert ended_early(finish_of(manager, sid), "client_gone")


def test_a_burst_from_the_upstream_does_not_hold_back_the_first_event(clock) -> None:
    """A provider that yields 200 tokens without ever waiting (one upstream read holding them
    all): the reader gets the first token before the producer appended the rest."""
    from streamapp.streams.producer import FAIR_EVENTS

    def burst() -> Iterator[Event]:
        yield Opened()
        for i in range(200):
            yield Delta(f"t{i} ", i)
        yield Done("stop")

    manager = StreamManager(MemoryStore(300, clock=clock), 10, tick=3600, clock=clock)
    sid = manager.start(burst(), {"route": "test"})
    reader = manager.attach(sid, 0)
    batches = [len(batch) for batch in reader]
    reader.close()
    assert batches[0] == 2, batches  # Opened and the first token, alone
    assert max(batches) <= FAIR_EVENTS + 1 and sum(batches) == 202, batches


def test_the_first_event_waits_until_the_stream_is_published(clock) -> None:
    """A store that other processes share (Redis) learns of a new stream in the background;
    the request that started it shows no client its id before it is there."""

    class SlowToPublish(MemoryStore):
        def __init__(self) -> None:
            super().__init__(300, clock=clock)
            self.done = gevent.event.Event()

        def published(self, sid: str, timeout: float) -> None:
            self.done.wait(timeout)

    store = SlowToPublish()
    manager = StreamManager(store, 10, tick=3600, clock=clock)
    sid = manager.start(Upstream(tokens=1).events(), {"route": "test"})
    waiting = gevent.spawn(manager.first_event, sid, 5.0, 10.0, gevent.event.Event())
    settle()
    assert not waiting.ready()  # its first token is there, its publication is not
    store.done.set()
    assert isinstance(waiting.get(timeout=5), Delta)


class Counting:
    """A stateful encoder: numbers its own output, so it must see every event from the start."""

    name, content_type, resumable, coalesce, replays = "counting", "text/plain", True, False, True

    def __init__(self) -> None:
        self.n = 0

    def open(self, sid: str) -> bytes:
        return b""

    def heartbeat(self) -> bytes:
        return b""

    def event(self, sid: str, seq: int, event: Event, first: bool) -> bytes:
        self.n += 1
        return f"{self.n}:{seq};".encode()


def test_an_encoder_that_replays_learns_from_the_log_but_writes_only_after_the_resume_point(clock) -> None:
    from streamapp.routes.edge import http_body

    manager, sid = filled(clock, 6)
    reader = StreamReader(manager, sid, 0, page=2)  # the catch-up spans several batches
    body = b"".join(http_body(reader, Counting(), write_timeout=5, quiet_until=4))
    assert body == b"5:5;6:6;7:7;"  # numbered as if it had written all along; nothing up to 4


def test_a_resume_through_a_replaying_encoder_still_gets_the_failure_the_reader_makes_up(clock) -> None:
    """The log stops at 5 though the stream ended at 7 (events lost): a client resuming after 6
    gets the reader's stream_gap, not a clean end with nothing."""
    from streamapp.routes.edge import http_body

    manager, sid = filled(clock, 5, final=False)
    manager.store.meta(sid).update(state="finished", last=7)
    reader = StreamReader(manager, sid, 0)
    body = b"".join(http_body(reader, Counting(), write_timeout=5, quiet_until=6))
    assert body == b"6:5;"  # the made-up end, at the reader's cursor (5)
