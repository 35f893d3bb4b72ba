"""The Redis store against real redis-server processes.

The store is gevent code (a writer greenlet, dispatchers blocked in XREAD, a
pub/sub listener), so each scenario runs as production does: in a child Python
that patches with gevent before anything else (``run_patched``). A scenario is
a plain function here; a failed assertion in it fails the test with the child's
output. Redis outages use a redis-server of the scenario's own on a free port;
everything else uses the shared Redis under a key prefix of its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import SSEClient, data_events, free_port, poll_until

ROOT = Path(__file__).resolve().parent.parent
META = {"format": "plain", "state": "running"}  # what the manager creates a stream with


def run_patched(scenario: str, **kwargs: object) -> None:
    """Run ``scenario(**kwargs)`` in a gevent-patched child; fail with its output if it fails."""
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import json, sys\n"
            "from tests import test_redis_store as t\n"
            f"t.{scenario}(**json.loads(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=ROOT,
                          capture_output=True, timeout=180, check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"{scenario} failed:\n{out[-6000:]}"


@pytest.fixture
def prefix() -> str:
    return f"streamapp-test-{uuid.uuid4().hex[:10]}"


# -- helpers for the scenarios (they run in the child) ----------------------------

class RedisServer:
    """A redis-server of a scenario's own, on a free port, that it can stop and start."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert os.path.exists(self.binary), "redis-server missing: apt-get install -y redis-server"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll_until(self.answers, 10, f"redis-server on {self.port}")
        return self

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Records(logging.Handler):
    """The store's log records, to count warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        logger = logging.getLogger("streamapp.streams.redis_store")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)


def make_store(url: str, prefix: str, **options: object):
    from streamapp.streams.redis_store import RedisStore

    options.setdefault("lease", 30)
    return RedisStore(url, prefix, options.pop("ttl", 60), running_ttl=120, **options)


def deltas(*texts: str) -> list:
    from streamapp.events import Delta

    return [Delta(text, i) for i, text in enumerate(texts)]


def append_all(store, sid: str, events: list, first: int = 1, final_done: bool = True) -> int:
    """Append ``events`` from seq ``first`` (and a ``Done`` if ``final_done``); the last seq."""
    from streamapp.events import Done

    seq = first - 1
    for seq, event in enumerate(events, start=first):
        store.append(sid, seq, event, final=False)
    if final_done:
        seq += 1
        store.append(sid, seq, Done("stop"), final=True)
    return seq


def texts(batch: list) -> list[str]:
    return [getattr(event, "text", event.kind) for _, event in batch]


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
    run_patched("scenario_every_operation_raises_store_error")


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
    run_patched("scenario_degraded_mode")


# -- 3. the writer cannot die --------------------------------------------------------

def scenario_writer_survives(url: str, prefix: str) -> None:
    from streamapp.events import Delta

    records = Records()
    producer, remote = make_store(url, prefix, ttl=30), make_store(url, prefix)
    producer.backoff = 0.01
    producer.end_retry_s = 0.05
    producer.start("owner-w")
    # An event whose text cannot be encoded as UTF-8 (a lone surrogate) is kept, escaped.
    producer.create("w1", META)
    producer.append("w1", 1, Delta("bad \ud800 text", 0), final=False)
    producer.append("w1", 2, Delta("fine", 1), final=False)
    producer.flush()
    assert texts(remote.read("w1", 0)) == ["bad \ud800 text", "fine"]
    # Anything else that fails a batch: retried, then dropped, and the writer goes on.
    producer.create("w2", META)
    producer.flush()  # its metadata is in Redis
    writer = producer._own["write"]  # the writer's own connection
    real_execute = writer.execute_command
    failing = {"on": True}

    def execute(*args, **kwargs):
        if failing["on"]:
            raise RuntimeError("injected failure")
        return real_execute(*args, **kwargs)
    writer.execute_command = execute
    last = append_all(producer, "w2", deltas("lost", "too"))
    producer.flush()
    poll_until(lambda: records.count("dropped"), 10, "the failing batch to be dropped")
    assert remote.meta("w2")["state"] == "running"
    assert texts(producer.read("w2", 0)) == ["lost", "too", "done"]  # local readers got it all
    failing["on"] = False
    # The end of w2 is recorded by a later round: remote readers learn it cannot arrive.
    meta = poll_until(lambda: (m := remote.meta("w2")) and m["state"] == "finished" and m,
                      10, "the end of w2 to be recorded")
    assert meta["last"] == last and remote.read("w2", 0) == []
    import redis

    client = redis.Redis.from_url(url)
    assert 0 < client.ttl(f"{prefix}:meta:w2") <= 30
    producer.create("w3", META)
    append_all(producer, "w3", deltas("alive"))
    producer.flush()
    assert texts(remote.read("w3", 0)) == ["alive", "done"]


def test_the_writer_survives_any_failure_and_records_lost_ends(redis_url, prefix) -> None:
    run_patched("scenario_writer_survives", url=redis_url, prefix=prefix)


# -- 4. metadata TTLs keep up with the log's ---------------------------------------------

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
    run_patched("scenario_ttls", url=redis_url, prefix=prefix)


# -- 5. bounded memory: pages, XLEN, the mirror freed ------------------------------------

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
    store.append("m1", 11, deltas("end")[0], final=True)
    wake.clear()  # set by the append; now set again only by the mirror being freed
    store.flush()
    # Once its end is in Redis the mirror is freed; readers here go on from Redis.
    assert not store.is_local("m1") and store.local.meta("m1") is None
    assert wake.is_set()
    assert [seq for seq, _ in store.read("m1", 9)] == [10, 11]
    assert store.count("m1") == 11 and store.meta("m1")["last"] == 11


def test_reads_page_count_uses_xlen_and_the_mirror_is_freed(redis_url, prefix) -> None:
    run_patched("scenario_pages_and_mirror", url=redis_url, prefix=prefix)


# -- 6. remote readers share a few blocking connections ----------------------------------

def scenario_remote_waits(url: str, prefix: str, streams: int) -> None:
    import gevent
    import gevent.event
    import redis

    client = redis.Redis.from_url(url)
    producer = make_store(url, prefix)
    reader = make_store(url, prefix, pool_size=4, blocking_pool_size=2)
    producer.start("owner-a")
    reader.start("owner-b")
    sids = [f"r{i}" for i in range(streams)]
    for sid in sids:
        producer.create(sid, META)
    got: dict[str, list[str]] = {sid: [] for sid in sids}
    progress = gevent.event.Event()

    def follow(sid: str) -> None:
        wake = gevent.event.Event()
        reader.watch(sid, wake)
        cursor = 0
        try:
            while True:
                wake.clear()
                batch = reader.read(sid, cursor)
                if batch:
                    cursor = batch[-1][0]
                    got[sid].extend(texts(batch))
                    progress.set()
                    if cursor == 5:  # the final event
                        return
                    continue
                reader.wait(sid, cursor, None, wake)
        finally:
            reader.unwatch(sid, wake)

    followers = [gevent.spawn(follow, sid) for sid in sids]
    name = f"{prefix}-{os.getpid()}-block"
    for n in range(1, 6):
        for sid in sids:
            producer.append(sid, n, deltas(f"t{n}")[0], final=n == 5)
        with gevent.Timeout(5, AssertionError(f"readers did not all get event {n}: {got}")):
            while not all(len(got[sid]) >= n for sid in sids):
                progress.clear()
                progress.wait()
        blocking = [c for c in client.client_list() if c["name"] == name]
        assert len(blocking) <= 2, blocking
    assert len(gevent.joinall(followers, timeout=5, raise_error=True)) == len(sids)
    assert all(got[sid] == ["t1", "t2", "t3", "t4", "t5"] for sid in sids), got


def scenario_doorbell(url: str, prefix: str) -> None:
    """A wait on a log the XREAD in flight does not cover rings the dispatcher's doorbell."""
    import gevent
    import gevent.event
    import redis

    client = redis.Redis.from_url(url)
    producer = make_store(url, prefix)
    producer.start("owner-a")
    single = make_store(url, prefix, blocking_pool_size=1)
    single.start("owner-c")
    producer.create("x", META)
    producer.create("y", META)
    wake_x, wake_y = gevent.event.Event(), gevent.event.Event()
    gevent.spawn(single.wait, "x", 0, 30, wake_x)
    name = f"{prefix}-{os.getpid()}-block"

    def blocked_on_x() -> bool:
        return any(c["name"] == name and "b" in c["flags"] for c in client.client_list())
    poll_until(blocked_on_x, 5, "the dispatcher to block in XREAD")
    waiting_y = gevent.spawn(single.wait, "y", 0, 30, wake_y)
    gevent.idle()
    began = time.monotonic()
    producer.append("y", 1, deltas("now")[0], final=False)
    waiting_y.join(10)
    assert time.monotonic() - began < 1.0, "the new wait was not seen until the XREAD timed out"


def test_many_remote_waits_share_the_blocking_pool(redis_url, prefix) -> None:
    run_patched("scenario_remote_waits", url=redis_url, prefix=prefix, streams=30)


def test_a_new_wait_interrupts_the_blocking_read(redis_url, prefix) -> None:
    run_patched("scenario_doorbell", url=redis_url, prefix=prefix)


def test_remote_readers_across_instances_use_few_connections(start_server) -> None:
    """20 remote readers on an instance whose blocking pool holds 2: all complete, the
    connections stay within the pools, and the producing instance never looks dead."""
    import threading

    import redis
    import requests

    server = RedisServer().start()
    try:
        prefix = "pools"
        settings = dict(REDIS_URL=server.url, REDIS_PREFIX=prefix, REDIS_POOL_SIZE=4,
                        REDIS_BLOCKING_POOL_SIZE=2, HEARTBEAT_S=0.5, RESUME_GRACE_S=5)
        a, b = start_server(**settings), start_server(**settings)
        client = redis.Redis.from_url(server.url)
        text = " ".join(f"w{i}" for i in range(40))
        starts = [SSEClient(f"{a.url}/stream?delay_ms=50&text={requests.utils.quote(text)}")
                  for _ in range(20)]
        sids = [c.headers["X-Stream-Id"] for c in starts]
        owner = json.loads(client.hget(f"{prefix}:meta:{sids[0]}", "owner"))
        readers = [SSEClient(f"{b.url}/api/streams/{sid}", timeout=30) for sid in sids]
        for c in starts:
            c.close()  # the streams go on: they are read on b
        samples: list[tuple[int, int]] = []  # (connections, producer's liveness key present)
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append((len(client.client_list()), client.exists(f"{prefix}:owner:{owner}")))
                done.wait(0.05)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results = ["".join(e.data for e in data_events(r.read_all())) for r in readers]
        finally:
            done.set()
            sampler.join(5)
            for r in readers:
                r.close()
        assert results == [text] * 20, results
        # Each instance: short pool (4), blocking pool (2), control channel (1); and ours.
        # 20 readers each blocking in its own XREAD would need 20 more.
        assert samples and max(n for n, _ in samples) <= 2 * (4 + 2 + 1) + 1, samples
        assert all(alive for _, alive in samples), "the producing instance looked dead"
    finally:
        server.stop()


# -- 7. a new stream's metadata: published off the start path, never undoing its end ----------

def scenario_publication(url: str, prefix: str) -> None:
    import redis


    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix, ttl=30), make_store(url, prefix)
    store.start("owner-p")
    # create() does not wait for Redis; published() does, and then any process finds it.
    store.create("p1", {**META, "route": "sse"})
    store.published("p1", 5)
    meta = remote.meta("p1")
    assert meta is not None and meta["route"] == "sse" and meta["owner"] == "owner-p", meta
    assert client.ttl(f"{prefix}:meta:p1") > 30  # a running stream's TTL
    # A short stream whose end the writer records before its metadata is published: the
    # publisher fills in the rest and keeps the end (state, last) and its TTL.
    opened, done = b'{"kind":"open","stream_id":""}', b'{"kind":"done","finish_reason":"stop"}'
    store._run_writes([("p2", 2, [1, opened, 2, done])])
    fields = [x for k, v in {**META, "route": "sse"}.items() for x in (k, json.dumps(v))]
    store._run_script("publish", store._publish_script, store._publish_calls([("p2", fields)]))
    meta = remote.meta("p2")
    assert meta["state"] == "finished" and meta["last"] == 2 and meta["route"] == "sse", meta
    assert 0 < client.ttl(f"{prefix}:meta:p2") <= 30


def test_a_new_stream_is_published_before_its_id_is_shown_and_its_end_is_kept(redis_url, prefix) -> None:
    run_patched("scenario_publication", url=redis_url, prefix=prefix)


# -- 8. readers in the producing process: leases kept here, Redis's added ---------------------

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
    run_patched("scenario_local_leases", url=redis_url, prefix=prefix)


# -- 9. group commit: appends of every stream gathered for the commit window -------------------

def scenario_commit_window(url: str, prefix: str) -> None:
    import gevent

    from streamapp.events import Delta

    store, remote = make_store(url, prefix, commit_window=0.05), make_store(url, prefix)
    store.start("owner-c")
    sids = ["c1", "c2", "c3"]
    for sid in sids:
        store.create(sid, META)
    store.flush()
    batches: list[list[str]] = []
    real = store._run_writes

    def recording(writes):
        batches.append([sid for sid, _, _ in writes])
        return real(writes)
    store._run_writes = recording
    for sid in sids:  # one append per stream, the writer free to run between them
        store.append(sid, 1, Delta(sid, 0), final=False)
        gevent.sleep(0.005)
        assert store.read(sid, 0)  # readers in this process have it at once
    store.flush()
    assert batches == [sids], batches  # one write for all three
    assert all(texts(remote.read(sid, 0)) == [sid] for sid in sids)


def test_appends_are_gathered_for_the_commit_window(redis_url, prefix) -> None:
    run_patched("scenario_commit_window", url=redis_url, prefix=prefix)


# -- 10. a stream's events wait for its metadata; a publication given up leaves no trace ------

def scenario_events_wait_for_publication(url: str, prefix: str) -> None:
    import gevent
    import redis

    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix), make_store(url, prefix)
    store.start("owner-w")
    real = store._run_script

    def slow_publisher(role, script, calls):
        if role == "publish":
            gevent.sleep(0.3)  # Redis slow to take the metadata
        return real(role, script, calls)
    store._run_script = slow_publisher
    store.create("h1", {**META, "route": "sse"})
    last = append_all(store, "h1", deltas("a", "b"))  # the whole stream, end included
    gevent.sleep(0.1)  # the writer has run meanwhile
    assert texts(store.read("h1", 0)) == ["a", "b", "done"]  # readers here: at once
    assert not client.exists(f"{prefix}:log:h1")  # Redis: nothing before the metadata
    store.flush()
    meta = remote.meta("h1")
    assert meta["route"] == "sse" and meta["state"] == "finished" and meta["last"] == last, meta
    assert texts(remote.read("h1", 0)) == ["a", "b", "done"]


def test_a_streams_events_wait_for_its_metadata(redis_url, prefix) -> None:
    run_patched("scenario_events_wait_for_publication", url=redis_url, prefix=prefix)


def scenario_publication_given_up(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix), make_store(url, prefix)
    store.backoff = 0.01
    store.start("owner-g")
    real = store._run_script

    def reply_lost(role, script, calls):
        if role != "publish":
            return real(role, script, calls)
        real(role, script, calls)  # Redis took it...
        raise redis.TimeoutError("Timeout reading from socket")  # ... but its answer never came
    store._run_script = reply_lost
    store.create("g1", META)
    store.published("g1", 5)  # returns: the client is not kept waiting
    assert "g1" in store._local_only
    append_all(store, "g1", deltas("x"))
    store.flush()
    assert texts(store.read("g1", 0)) == ["x", "done"]  # served by this process
    assert not client.exists(f"{prefix}:log:g1")  # none of its events reach Redis
    assert client.exists(f"{prefix}:meta:g1")  # the metadata Redis took, unanswered...
    store._run_script = real
    store.heartbeat()
    poll_until(lambda: not client.exists(f"{prefix}:meta:g1"), 5, "the stray metadata to be deleted")
    assert remote.meta("g1") is None  # another process says 204, never waits on it


def test_a_publication_given_up_serves_the_stream_here_and_leaves_nothing_in_redis(redis_url, prefix) -> None:
    run_patched("scenario_publication_given_up", url=redis_url, prefix=prefix)
