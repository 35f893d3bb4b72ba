"""The publisher: new streams' metadata in Redis before their ids are shown (real Redis)."""

from __future__ import annotations

import uuid

import pytest

from tests.helpers import poll_until
from tests.redis_helpers import META, RedisServer, append_all, deltas, make_store, run_patched, texts


@pytest.fixture
def prefix() -> str:
    return f"streamapp-test-{uuid.uuid4().hex[:10]}"


def scenario_publication(url: str, prefix: str) -> None:
    """create() does not wait for Redis; published() does, and then any process finds the
    stream. A stream written whole before its metadata is in arrives whole, after it."""
    import redis

    client = redis.Redis.from_url(url)
    store, remote = make_store(url, prefix, ttl=30), make_store(url, prefix)
    store.start("owner-p")
    store.create("p1", {**META, "route": "sse"})
    store.published("p1", 5)
    meta = remote.meta("p1")
    assert meta is not None and meta["route"] == "sse" and meta["owner"] == "owner-p", meta
    assert client.ttl(f"{prefix}:meta:p1") > 30  # a running stream's TTL
    store.create("p2", {**META, "route": "sse"})
    last = append_all(store, "p2", deltas("a", "b"))  # the whole stream, end included, at once
    assert texts(store.read("p2", 0)) == ["a", "b", "done"]  # readers here: at once
    store.flush()
    meta = remote.meta("p2")
    assert meta["route"] == "sse" and meta["state"] == "finished" and meta["last"] == last, meta
    assert texts(remote.read("p2", 0)) == ["a", "b", "done"]
    assert 0 < client.ttl(f"{prefix}:meta:p2") <= 30


def test_a_new_stream_is_published_before_its_id_is_shown(redis_url, prefix) -> None:
    run_patched("test_redis_publisher", "scenario_publication", url=redis_url, prefix=prefix)


def scenario_publication_given_up() -> None:
    """Redis takes the metadata but its answers come too late (it sleeps): the publisher
    gives the stream up (``published`` returns), and deletes what Redis took once it answers."""
    import threading

    import gevent.event
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from streamapp.streams.redis_store.codec import Keys, meta_fields
    from streamapp.streams.redis_store.health import Health
    from streamapp.streams.redis_store.publisher import Publisher
    from streamapp.streams.redis_store.scripts import Scripts

    server = RedisServer(None, "--enable-debug-command", "yes").start()
    client = redis.Redis.from_url(server.url)
    keys = Keys("g")
    given_up, rounds = [], gevent.event.Event()

    def connect() -> redis.Redis:
        return redis.Redis.from_url(server.url, single_connection_client=True, socket_timeout=0.1,
                                    retry=Retry(NoBackoff(), 0))
    publisher = Publisher(connect, Scripts(client, keys, 30, 120), client, keys, Health(),
                          give_up=given_up.extend, done=rounds.set)
    publisher.backoff = 0.01
    gevent.spawn(publisher.run)
    publisher.announce("warm", meta_fields(META, "o"))  # the script is loaded
    publisher.published("warm", 5)
    assert client.exists("g:meta:warm") and given_up == []
    # Redis asleep for 3 s: the three tries (0.1 s each) time out, their commands queued. Asleep
    # means a ping unanswered for 0.5 s (a shorter wait could be a busy machine's, before the sleep).
    sleeper = threading.Thread(target=lambda: redis.Redis.from_url(server.url).execute_command(
        "DEBUG", "SLEEP", "3"))
    sleeper.start()
    poll_until(lambda: not server_answers(server.url), 5, "Redis to sleep")
    publisher.announce("g1", meta_fields(META, "o"))
    publisher.published("g1", 5)
    assert given_up == ["g1"]
    sleeper.join(10)
    poll_until(lambda: client.exists("g:meta:g1"), 5, "the metadata Redis took, unanswered")
    publisher.forget_strays()
    assert not client.exists("g:meta:g1")
    server.stop()


def server_answers(url: str) -> bool:
    import redis

    try:
        return redis.Redis.from_url(url, socket_timeout=0.5).ping()
    except redis.RedisError:
        return False


def test_a_publication_given_up_leaves_nothing_in_redis() -> None:
    run_patched("test_redis_publisher", "scenario_publication_given_up")

