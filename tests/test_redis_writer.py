"""The Redis store's writer and write script, against real redis-server processes."""

from __future__ import annotations

from tests.helpers import poll_until
from tests.redis_helpers import META, Records, RedisServer, append_all, deltas, make_store, run_patched, texts


def scenario_a_failing_xadd_is_logged_and_retried() -> None:
    """Redis out of memory (``maxmemory``, ``noeviction``) refuses the XADDs: the failure
    reaches the writer, is logged and retried; once Redis takes writes again, every event
    arrives, in order. Given up, the batch is logged as dropped."""
    import redis

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    records = Records()
    producer, remote = make_store(server.url, "oom"), make_store(server.url, "oom")
    producer.start("owner-o")
    producer.create("o1", META)
    producer.flush()  # its metadata is in
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)  # every command that needs memory is refused now
    append_all(producer, "o1", deltas("a", "b"), final_done=False)
    poll_until(lambda: records.count("maxmemory"), 10, "the refused write to be logged")
    client.config_set("maxmemory", 0)
    producer.flush()
    poll_until(lambda: texts(remote.read("o1", 0)) == ["a", "b"], 10, "the events after a retry")
    # Refused on every try: the batch is dropped, with an error line naming the cause.
    client.config_set("maxmemory", 1)
    append_all(producer, "o1", deltas("c"), first=3, final_done=False)
    poll_until(lambda: records.count("dropped"), 15, "the dropped batch to be logged")
    client.config_set("maxmemory", 0)
    assert texts(remote.read("o1", 0)) == ["a", "b"]
    server.stop()


def test_a_failing_xadd_is_logged_and_retried_not_dropped_silently() -> None:
    run_patched("test_redis_writer", "scenario_a_failing_xadd_is_logged_and_retried")


def scenario_writer_survives() -> None:
    """An event orjson refuses is kept, escaped; a batch refused on every try is dropped and
    the writer goes on; the end of a stream in it is recorded once Redis takes writes."""
    import redis

    from streamapp.events import Delta

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    records = Records()
    producer, remote = make_store(server.url, "w", ttl=30), make_store(server.url, "w")
    producer.writer.backoff = 0.01
    producer.writer.end_retry_s = 0.05
    producer.start("owner-w")
    producer.create("w1", META)
    producer.append("w1", 1, Delta("bad \ud800 text", 0), final=False)  # a lone surrogate
    producer.append("w1", 2, Delta("fine", 1), final=False)
    producer.flush()
    assert texts(remote.read("w1", 0)) == ["bad \ud800 text", "fine"]
    producer.create("w2", META)
    producer.flush()  # its metadata is in
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", 1)
    last = append_all(producer, "w2", deltas("lost", "too"))
    poll_until(lambda: records.count("dropped"), 10, "the refused batch to be dropped")
    assert remote.meta("w2")["state"] == "running"
    assert texts(producer.read("w2", 0)) == ["lost", "too", "done"]  # local readers got it all
    client.config_set("maxmemory", 0)
    # The end of w2 is recorded by a later round: remote readers learn it cannot arrive.
    meta = poll_until(lambda: (m := remote.meta("w2")) and m["state"] == "finished" and m,
                      10, "the end of w2 to be recorded")
    assert meta["last"] == last and remote.read("w2", 0) == []
    assert 0 < client.ttl("w:meta:w2") <= 30
    producer.create("w3", META)
    append_all(producer, "w3", deltas("alive"))
    producer.flush()
    assert texts(remote.read("w3", 0)) == ["alive", "done"]
    server.stop()


def test_the_writer_survives_a_refused_batch_and_records_its_end() -> None:
    run_patched("test_redis_writer", "scenario_writer_survives")


def scenario_commit_window() -> None:
    """Appends of every stream within the commit window, and metadata fields added meanwhile,
    go in one script call."""
    import gevent
    import redis

    from streamapp.events import Delta

    server = RedisServer().start()  # its own: EVALSHA calls are counted server-wide
    client = redis.Redis.from_url(server.url)
    store, remote = make_store(server.url, "c", commit_window=1.0), make_store(server.url, "c")
    store.start("owner-c")
    sids = ["c1", "c2", "c3"]
    for sid in sids:
        store.create(sid, META)
    store.append("c1", 1, Delta("warm", 0), final=False)  # the scripts are loaded
    store.flush()

    def evalsha_calls() -> int:
        return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    before = evalsha_calls()
    for n, sid in enumerate(sids):  # one append per stream, the writer free to run between them
        store.append(sid, 2 if sid == "c1" else 1, Delta(sid, n), final=False)
        gevent.idle()
        assert store.read(sid, 0)  # readers in this process have it at once
    store.annotate("c2", {"upstream": "u"})  # metadata fields go in the same call
    store.flush()
    assert evalsha_calls() - before == 1  # one write for all three
    assert remote.meta("c2")["upstream"] == "u"
    assert texts(remote.read("c1", 0)) == ["warm", "c1"]
    assert all(texts(remote.read(sid, 0)) == [sid] for sid in sids[1:])
    server.stop()


def test_appends_are_gathered_for_the_commit_window() -> None:
    run_patched("test_redis_writer", "scenario_commit_window")


def scenario_events_wait_for_metadata(url: str, prefix: str) -> None:
    """A held stream's events wait, in order, while the others' go; released, they follow."""
    import gevent
    import gevent.event
    import redis

    from streamapp.streams.redis_store.codec import Keys, meta_fields
    from streamapp.streams.redis_store.health import Health
    from streamapp.streams.redis_store.scripts import Scripts
    from streamapp.streams.redis_store.writer import Writer

    client = redis.Redis.from_url(url)
    scripts = Scripts(client, Keys(prefix), 30, 120)
    held, ended, progress = {"h1"}, [], gevent.event.Event()
    writer = Writer(lambda: redis.Redis.from_url(url, single_connection_client=True), scripts, Health(),
                    commit_window=0, held=held, local_only=set(), ended=ended.append,
                    lost=lambda sids: None, progress=progress)
    gevent.spawn(writer.run)
    scripts.publish(client, [("free", meta_fields(META, "o"))])
    for sid in ("h1", "free"):
        append_all(writer, sid, deltas("a", "b"))
    progress.clear()
    progress.wait(5)
    assert client.xlen(f"{prefix}:log:free") == 3 and ended == ["free"]
    assert not client.exists(f"{prefix}:log:h1")  # held: nothing of it in Redis
    assert [seq for sid, seq, _, _ in writer.pending] == [1, 2, 3]  # waiting, in order
    scripts.publish(client, [("h1", meta_fields(META, "o"))])
    held.clear()
    progress.clear()
    writer.wake()
    poll_until(lambda: ended == ["free", "h1"], 5, "h1 to be written")
    assert [eid for eid, _ in client.xrange(f"{prefix}:log:h1")] == [b"0-1", b"0-2", b"0-3"]


def test_a_held_streams_events_wait_for_its_metadata(redis_url, redis_prefix) -> None:
    run_patched("test_redis_writer", "scenario_events_wait_for_metadata", url=redis_url, prefix=redis_prefix)


def scenario_write_script(url: str, prefix: str) -> None:
    """The write script: a retried batch changes nothing twice; a stream Redis has no
    metadata for is left untouched and named."""
    import redis

    from streamapp.streams.redis_store.codec import Keys, meta_fields
    from streamapp.streams.redis_store.scripts import Scripts

    client = redis.Redis.from_url(url)
    scripts = Scripts(client, Keys(prefix), 30, 120)
    scripts.publish(client, [("s1", meta_fields(META, "o"))])
    batch = [("s1", 2, [1, b'{"kind":"delta","text":"a","index":0}', 2, b'{"kind":"done"}']),
             ("s2", 0, [1, b'{"kind":"delta","text":"b","index":0}'])]
    assert scripts.write(client, batch) == ["s2"]
    assert scripts.write(client, batch) == ["s2"]  # a retry: the duplicates are skipped
    assert client.xlen(f"{prefix}:log:s1") == 2 and client.hget(f"{prefix}:meta:s1", "last") == b"2"
    assert not client.exists(f"{prefix}:log:s2", f"{prefix}:meta:s2")
    # Published again over its end: the fields there are kept, and so is the TTL.
    scripts.publish(client, [("s1", meta_fields(META, "o"))])
    assert client.hget(f"{prefix}:meta:s1", "state") == b'"finished"'
    assert 0 < client.ttl(f"{prefix}:meta:s1") <= 30


def test_the_write_script_is_safe_to_repeat_and_needs_the_metadata(redis_url, redis_prefix) -> None:
    run_patched("test_redis_writer", "scenario_write_script", url=redis_url, prefix=redis_prefix)


def test_a_long_log_is_written_a_bounded_number_of_events_a_call() -> None:
    # A stream's whole log sent again (Redis lost it) must not become one script call that
    # holds Redis up for all its events: the write is split, and every event lands once.
    import redis

    from streamapp.events import Delta
    from streamapp.streams.redis_store.codec import encode
    from streamapp.streams.redis_store.scripts import WRITE_EVENTS

    server = RedisServer().start()
    try:
        store = make_store(server.url, "long")
        client = redis.Redis.from_url(server.url)
        for sid in ("warm", "long"):
            client.hset(f"long:meta:{sid}", "format", '"plain"')  # its metadata is in
        store.scripts.write(client, [("warm", 0, [1, encode(Delta("w", 0))])])  # the script loaded

        def calls() -> int:
            return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        before, n = calls(), 2 * WRITE_EVENTS + 100
        events = [x for seq in range(1, n + 1) for x in (seq, encode(Delta(str(seq), seq - 1)))]
        assert store.scripts.write(client, [("long", n, events)]) == []
        assert calls() - before == 3  # n events, WRITE_EVENTS at most a call
        assert texts(store.read("long", 0)) == [str(seq) for seq in range(1, n + 1)]
        assert store.meta("long")["last"] == n  # the end went with the last part
    finally:
        server.stop()
