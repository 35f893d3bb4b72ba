"""The Redis store's facade against real redis-server processes: every operation's
failure mode, degraded mode, TTLs, the mirror, readers' leases.

Each scenario runs in a gevent-patched child (``tests.redis_helpers.run_patched``).
Redis outages use a redis-server of the scenario's own on a free port; everything
else uses the shared Redis under a key prefix of its own. The parts have their own
files: ``test_redis_writer.py``, ``test_redis_publisher.py``, ``test_redis_dispatcher.py``,
``test_redis_restart.py``.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests.helpers import poll_until
from tests.redis_helpers import META, Records, RedisServer, append_all, deltas, make_store, run_patched, texts


@pytest.fixture
def prefix() -> str:
    return f"streamapp-test-{uuid.uuid4().hex[:10]}"


# -- 1. every operation maps a Redis failure to StoreError ---------------------------

def scenario_every_operation_raises_store_error() -> None:
    import gevent.event

    from streamapp.errors import StoreError

    server = RedisServer().start()
    producer, reader = make_store(server.url, "p"), make_store(server.url, "p")
    producer.start("owner-p")
    reader.start("owner-r")
    producer.create("remote", META)
    append_all(producer, "remote", deltas("a", "b"), final_done=False)
    producer.flush()
    assert texts(reader.read("remote", 0)) == ["a", "b"]  # pooled connections are live
    reader.attach("remote", "r1")
    server.stop()
    wake = gevent.event.Event()
    operations = {
        "read": lambda: reader.read("remote", 0, 10),
        "count": lambda: reader.count("remote"),
        "meta": lambda: reader.meta("remote"),
        "wait": lambda: reader.wait("remote", 2, 1.0, wake),
        "attach": lambda: reader.attach("remote", "r2"),
        "detach": lambda: reader.detach("remote", "r1"),
        "detach_quietly": lambda: reader.detach_quietly("remote", "r1"),
        "readers": lambda: reader.readers("remote"),
        "reader_counts": lambda: reader.reader_counts(["remote"]),
        "cancel_requested": lambda: reader.cancel_requested("remote"),
        "request_cancel": lambda: reader.request_cancel("remote"),
        "owner_alive": lambda: reader.owner_alive({"owner": "owner-p"}),
        "forget": lambda: reader.forget("remote"),
    }
    for name, operation in operations.items():
        began = time.monotonic()
        try:
            operation()
        except StoreError:
            pass
        else:
            raise AssertionError(f"{name} did not raise StoreError with Redis down")
        assert time.monotonic() - began < 3, f"{name} took {time.monotonic() - began:.1f}s to fail"
    reader.heartbeat()  # these only log
    assert reader.cancelled(["remote"]) == set()


def test_every_operation_maps_redis_failure_to_store_error() -> None:
    run_patched("test_redis_store", "scenario_every_operation_raises_store_error")


# -- 2. degraded mode ----------------------------------------------------------------

def scenario_degraded_mode() -> None:
    import gevent
    import gevent.event
    import redis

    records = Records()
    server = RedisServer()  # not started: Redis is down from the beginning
    store = make_store(server.url, "deg")
    calls: list[tuple[str, str]] = []
    store.control_handler = lambda kind, sid: calls.append((kind, sid))
    store.start("owner-d")
    for sid in ("d1", "d2", "d3"):
        store.create(sid, META)  # no StoreError
    store.flush()  # the publisher tried to send their metadata
    assert records.count("Redis is unavailable") == 1, records.messages  # once per outage
    # Local readers work: read, wait, count, meta.
    wake = gevent.event.Event()
    store.watch("d1", wake)
    append_all(store, "d1", deltas("x", "y"), final_done=False)
    assert texts(store.read("d1", 0)) == ["x", "y"] and store.count("d1") == 2
    wake.clear()
    waiter = gevent.spawn(store.wait, "d1", 2, 10, wake)
    gevent.idle()
    assert not waiter.dead
    store.append("d1", 3, deltas("z")[0], final=False)
    waiter.join(5)
    assert waiter.successful(), "a local reader's wait was not woken"
    assert store.meta("d1")["state"] == "running"
    # Reader bookkeeping of local streams.
    store.attach("d1", "r1")
    store.attach("d1", "r2")
    assert store.readers("d1") == 2 and store.reader_counts(["d1", "d2"]) == [2, 0]
    assert store.detach("d1", "r1") == 1
    store.detach_quietly("d1", "r2")
    store.attach("d2", "r3")
    assert store.detach("d2", "r3") == 0 and ("idle", "d2") in calls
    # Cancel of a local stream reaches its producer directly.
    store.request_cancel("d1")
    assert ("cancel", "d1") in calls
    assert store.cancel_requested("d1") and store.cancelled(["d1", "d2"]) == {"d1"}
    append_all(store, "d3", deltas("p", "q"))
    store.flush()
    assert store.meta("d3")["state"] == "finished" and texts(store.read("d3", 0)) == ["p", "q", "done"]
    # Redis comes back: the store notices by itself (its heartbeat) and new streams are shared.
    server.start()
    client = redis.Redis.from_url(server.url)
    attempt = iter(range(1000))

    def shared_again() -> bool:
        store.heartbeat()  # the manager's tick
        sid = f"back{next(attempt)}"
        store.create(sid, META)
        store.flush()
        return client.exists(f"deg:meta:{sid}") and sid
    sid = poll_until(shared_again, 10, "new streams to go to Redis again")
    assert records.count("Redis is back") == 1
    append_all(store, sid, deltas("s"))
    store.flush()
    assert client.hget(f"deg:meta:{sid}", "state") == b'"finished"'
    assert client.xlen(f"deg:log:{sid}") == 2
    # A stream started during the outage stays this process's own: none of it reaches Redis.
    append_all(store, "d1", deltas("w"), first=4)
    store.flush()
    assert texts(store.read("d1", 0)) == ["x", "y", "z", "w", "done"]
    assert not client.exists("deg:meta:d1", "deg:log:d1", "deg:readers:d1", "deg:cancel:d1")
    server.stop()


def test_degraded_mode_serves_new_streams_locally_and_recovers() -> None:
    run_patched("test_redis_store", "scenario_degraded_mode")


# -- 3. metadata TTLs keep up with the log's ---------------------------------------------

def scenario_ttls(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix, ttl=30), make_store(url, prefix)
    store.start("owner-t")
    store.create("t1", META)
    remote.attach("t1", "reader")
    store.request_cancel("t1")
    append_all(store, "t1", deltas("a"), final_done=False)
    store.flush()
    kinds = ("log", "meta", "readers", "cancel")

    def ttls() -> dict[str, int]:
        with client.pipeline(transaction=True) as pipe:  # one instant for every key
            for kind in kinds:
                pipe.ttl(f"{prefix}:{kind}:t1")
            return dict(zip(kinds, pipe.execute(), strict=True))
    for kind in ("meta", "readers", "cancel"):  # as if the stream had run for hours
        client.expire(f"{prefix}:{kind}:t1", 5)
    store.append("t1", 2, deltas("b")[0], final=False)
    store.flush()
    running = ttls()
    assert running["log"] > 30, running
    assert all(running[kind] >= running["log"] for kind in kinds), running
    store.append("t1", 3, deltas("c")[0], final=True)
    store.flush()
    ended = ttls()
    assert all(0 < ended[kind] <= 30 for kind in kinds), ended
    assert all(ended[kind] >= ended["log"] for kind in kinds), ended
    meta = remote.meta("t1")
    assert meta["state"] == "finished" and meta["last"] == 3, meta


def test_meta_readers_and_cancel_keys_live_as_long_as_the_log(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_ttls", url=redis_url, prefix=prefix)


# -- 4. bounded memory: pages, XLEN, the mirror freed ------------------------------------

def scenario_pages_and_mirror(url: str, prefix: str) -> None:
    import gevent.event

    store, remote = make_store(url, prefix), make_store(url, prefix)
    store.start("owner-m")
    store.create("m1", META)
    wake = gevent.event.Event()
    store.watch("m1", wake)
    last = append_all(store, "m1", deltas(*[f"t{i}" for i in range(10)]), final_done=False)
    store.flush()
    assert [seq for seq, _ in remote.read("m1", 0, 3)] == [1, 2, 3]
    assert [seq for seq, _ in remote.read("m1", 3, 4)] == [4, 5, 6, 7]
    assert remote.count("m1") == last == 10
    assert store.is_local("m1")
    store.attach("m1", "r1")
    store.append("m1", 11, deltas("end")[0], final=True)
    store.flush()
    # Its end is in Redis, but a reader here still reads it: the mirror stays until it leaves,
    # so that it never turns to Redis for the last events, nor to leave.
    assert store.is_local("m1") and [seq for seq, _ in store.read("m1", 9)] == [10, 11]
    store.unwatch("m1", wake)
    assert store.is_local("m1")  # its lease is still there
    assert store.detach("m1", "r1") == 0
    assert not store.is_local("m1") and not store.mirror.holds("m1")  # freed as it left
    assert [seq for seq, _ in store.read("m1", 9)] == [10, 11]
    assert store.count("m1") == 11 and store.meta("m1")["last"] == 11
    # A stream nobody here reads is freed once its end is in Redis; one whose reader here
    # never leaves, after a lease (kept_for) at most: that reader goes on from Redis.
    store.create("m2", META)
    append_all(store, "m2", deltas("a"))
    store.create("m3", META)
    store.watch("m3", wake)
    append_all(store, "m3", deltas("a"))
    store.flush()
    assert not store.is_local("m2") and store.is_local("m3")
    wake.clear()
    store.mirror.kept_for = 0
    store.mirror.tidy()
    assert not store.is_local("m3") and wake.is_set()  # woken to read on from Redis
    assert texts(store.read("m3", 0)) == ["a", "done"]


def test_reads_page_count_uses_xlen_and_the_mirror_is_freed(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_pages_and_mirror", url=redis_url, prefix=prefix)


# -- 5. readers in the producing process: leases kept here, Redis's added ---------------------

def scenario_local_leases(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix), make_store(url, prefix)
    calls: list[tuple[str, str]] = []
    store.control_handler = lambda kind, sid: calls.append((kind, sid))
    store.start("owner-l")
    remote.start("owner-r")
    store.create("l1", META)
    store.flush()
    store.attach("l1", "here")
    assert not client.exists(f"{prefix}:readers:l1")  # no round trip for a reader here
    assert store.reader_counts(["l1"]) == [1]
    remote.attach("l1", "there")  # a reader on another process: its lease is in Redis
    assert client.zcard(f"{prefix}:readers:l1") == 1
    assert store.readers("l1") == 2  # both counted, once each
    assert store.detach("l1", "here") == 0 and calls == [("idle", "l1")]  # the last one here
    assert store.reader_counts(["l1"]) == [1]  # ... but the one there still reads it
    remote.detach("l1", "there")
    assert store.reader_counts(["l1"]) == [0]


def test_readers_in_the_producing_process_hold_their_leases_there(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_local_leases", url=redis_url, prefix=prefix)


# -- 6. forget: the keys, the owner's mirror, what the writer still held --------------------

KINDS = ("log", "meta", "readers", "cancel")


def scenario_forget(url: str, prefix: str) -> None:
    import gevent.event
    import redis

    client = redis.Redis.from_url(url)
    owner, other = make_store(url, prefix), make_store(url, prefix)
    owner.start("owner-f")
    other.start("owner-o")
    # Forgotten by another process: every key goes, and the owner drops its mirror.
    owner.create("f1", META)
    append_all(owner, "f1", deltas("a", "b"), final_done=False)
    owner.request_cancel("f1")
    owner.flush()
    other.attach("f1", "there")
    keys = [f"{prefix}:{kind}:f1" for kind in KINDS]
    assert client.exists(*keys) == 4
    assert owner.mirror.holds("f1")
    wake = gevent.event.Event()
    owner.watch("f1", wake)
    other.forget("f1")
    assert client.exists(*keys) == 0
    poll_until(lambda: not owner.mirror.holds("f1"), 10, "the owner dropped its mirror")
    assert wake.is_set()  # its readers there woke, to find it gone
    assert owner.meta("f1") is None and other.meta("f1") is None
    assert owner.read("f1", 0) == [] and other.read("f1", 0) == []
    # Forgotten by its owner before the writer sent its end: nothing of it reaches Redis after.
    owner.create("f2", META)
    owner.flush()  # the metadata is in
    append_all(owner, "f2", deltas("c", "d"))
    assert owner.writer.busy()
    owner.forget("f2")
    owner.flush()
    assert client.exists(*(f"{prefix}:{kind}:f2" for kind in KINDS)) == 0
    assert owner.meta("f2") is None and other.meta("f2") is None
    # A stream Redis never saw (created while it was down) is forgotten here alone.
    owner.health.down = True  # as after a failed command: the new stream stays here
    owner.create("f3", META)
    owner.health.down = False
    append_all(owner, "f3", deltas("e"))
    owner.forget("f3")
    owner.flush()
    assert client.exists(*(f"{prefix}:{kind}:f3" for kind in KINDS)) == 0
    assert owner.meta("f3") is None, owner.meta("f3")
    assert "f3" not in owner.mirror.local_only


def test_forget_deletes_every_key_and_the_owners_mirror(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_forget", url=redis_url, prefix=prefix)


def scenario_late_renewal(url: str, prefix: str) -> None:
    """A lease renewal sent before its reader's detach and landing after it does not bring
    the reader back; a new reader attaches, and a reader whose lease Redis lost (an empty
    restart) is counted again at its next renewal."""
    import redis

    store = make_store(url, prefix)
    store.attach("late", "r1")
    assert store.readers("late") == 1
    store.detach("late", "r1")
    store.attach("late", "r1")  # the renewal that was in flight
    assert store.readers("late") == 0
    store.attach("late", "r2")
    assert store.readers("late") == 1
    redis.Redis.from_url(url).delete(f"{prefix}:readers:late")  # Redis lost it
    store.attach("late", "r2")
    assert store.readers("late") == 1
    store.detach_quietly("late", "r2")  # leaving for another process: not back either
    store.attach("late", "r2")
    assert store.readers("late") == 0
    assert redis.Redis.from_url(url).ttl(f"{prefix}:readers:late") > 0
    store.detach("gone", "r3")  # its lease lost (Redis lost it) while its renewal was on its way
    store.attach("gone", "r3")
    assert store.readers("gone") == 0
    assert redis.Redis.from_url(url).ttl(f"{prefix}:readers:gone") > 0


def test_a_late_lease_renewal_does_not_bring_a_departed_reader_back(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_late_renewal", url=redis_url, prefix=prefix)


# -- 7. annotate: fields added to a stream's metadata, after it is published, never a stray hash --

def scenario_annotate(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    owner, other = make_store(url, prefix), make_store(url, prefix)
    owner.start("owner-a")
    attempts = [{"upstream": "a", "outcome": "upstream_unreachable"}, {"upstream": "b", "outcome": "success"}]
    owner.create("a1", META)
    owner.annotate("a1", {"upstream": "b", "attempts": attempts})  # before its metadata is in Redis
    assert owner.meta("a1")["attempts"] == attempts  # here at once
    owner.flush()
    assert other.meta("a1")["upstream"] == "b" and other.meta("a1")["attempts"] == attempts
    assert other.meta("a1")["format"] == "plain"  # the publisher's fields are all there
    append_all(owner, "a1", deltas("x"))
    owner.annotate("a1", {"usage": {"total_tokens": 3}, "upstream": "c"})  # at its end: replaces
    owner.flush()
    assert other.meta("a1")["usage"] == {"total_tokens": 3} and other.meta("a1")["upstream"] == "c"
    assert other.meta("a1")["state"] == "finished" and client.ttl(f"{prefix}:meta:a1") > 0
    # A stream Redis does not know (forgotten, expired) gets no hash without a TTL.
    owner.annotate("gone", {"upstream": "a"})
    owner.flush()
    assert not client.exists(f"{prefix}:meta:gone")
    # A local-only stream (created while Redis was down) keeps its fields here only.
    owner.health.down = True
    owner.create("a2", META)
    owner.health.down = False
    owner.annotate("a2", {"upstream": "a"})
    owner.flush()
    assert owner.meta("a2")["upstream"] == "a" and not client.exists(f"{prefix}:meta:a2")


def test_annotate_adds_fields_to_the_metadata_everywhere(redis_url, prefix) -> None:
    run_patched("test_redis_store", "scenario_annotate", url=redis_url, prefix=prefix)
