"""The dispatchers: remote readers wait on a few blocking connections (real Redis)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from tests.helpers import SSEClient, data_events, poll_until
from tests.redis_helpers import META, RedisServer, deltas, make_store, run_patched, texts


@pytest.fixture
def prefix() -> str:
    return f"streamapp-test-{uuid.uuid4().hex[:10]}"


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
    producer.append("y", 1, deltas("now")[0], final=False)
    waiting_y.join(10)
    assert waiting_y.ready(), "the new wait never returned"
    # Seen through the doorbell: an entry on the dispatcher's bell stream ends the XREAD in
    # flight at once (without it, that XREAD would return only at its own timeout).
    bells = client.keys(f"{prefix}:bell:*")
    assert bells and all(client.xlen(bell) == 1 for bell in bells), bells


def test_many_remote_waits_share_the_blocking_pool(redis_url, prefix) -> None:
    run_patched("test_redis_dispatcher", "scenario_remote_waits", url=redis_url, prefix=prefix, streams=30)


def test_a_new_wait_interrupts_the_blocking_read(redis_url, prefix) -> None:
    run_patched("test_redis_dispatcher", "scenario_doorbell", url=redis_url, prefix=prefix)


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
