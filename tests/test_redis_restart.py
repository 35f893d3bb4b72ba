"""A Redis without persistence restarts empty: running streams are published again.

Two gunicorn instances share a redis-server of this test's own; a stream runs on one,
Redis is killed and started again on the same port (empty), and a resume on the other
instance gets the rest of the stream, every event once, in order.
"""

from __future__ import annotations

import os
import signal

import redis
import requests

from streamapp import sse
from streamapp.sse import EventParser, LineSplitter
from tests.conftest import start_redis
from tests.fake_upstream import token_list
from tests.helpers import SSEClient, data_events, first_deltas, free_port, poll_until, q


def test_running_streams_are_published_again_when_redis_restarts_empty(start_server, tmp_path, tag):
    port = free_port()

    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        settings = dict(REDIS_URL=f"redis://127.0.0.1:{port}/0", REDIS_PREFIX=f"streamapp-test-{tag}",
                        RESUME_GRACE_S=30, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
        a, b = start_server(**settings), start_server(**settings)
        tokens = 400  # 20 s of answer: still running when the resume comes
        model = q(f"slow?tokens={tokens}&delay_ms=50&tag={tag}")
        client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
        sid = client.headers["X-Stream-Id"]
        got = first_deltas(client, 3)
        client.close()  # the stream goes on for the resume grace
        assert requests.get(f"{b.url}/api/streams/{sid}/info", timeout=5).status_code == 200

        redis_proc.stop(signal.SIGKILL)
        redis_proc = start_redis(port, tmp_path / "redis-2.log")  # empty: no persistence

        def found_running() -> bool:
            resp = requests.get(f"{b.url}/api/streams/{sid}/info", timeout=5)
            return resp.status_code == 200 and resp.json()
        info = poll_until(found_running, 8, "the running stream to be published again", interval=0.2)
        assert info["state"] == "running" and info["route"], info  # its whole metadata
        with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id},
                       timeout=30) as other:
            assert other.status == 200
            rest = other.read_all()
        assert rest[-1].event == "end", rest[-3:]
        seqs = [int(e.id.rsplit("-", 1)[1]) for e in rest if e.id]
        first = int(got[-1].id.rsplit("-", 1)[1])
        assert seqs == list(range(first + 1, first + 1 + len(seqs))), seqs  # every event once
        assert "".join(e.data for e in data_events(got + rest)) == "".join(token_list(tokens))
    finally:
        redis_proc.stop()


def scenario_republished_after_an_empty_restart() -> None:
    """Both ways the store learns Redis lost its data: its liveness key gone (a quiet
    stream, found by the heartbeat), a stream's metadata gone (found by the next write).
    Each stream comes back whole: its metadata, then its log from the first event."""
    from tests.redis_helpers import META, RedisServer, append_all, deltas, make_store, texts

    server = RedisServer().start()
    producer, remote = make_store(server.url, "re"), make_store(server.url, "re")
    producer.start("owner-p")
    for sid in ("quiet", "busy"):
        producer.create(sid, {**META, "route": "sse"})
        append_all(producer, sid, deltas("a", "b"), final_done=False)
    producer.flush()
    assert texts(remote.read("quiet", 0)) == ["a", "b"]
    server.stop()
    server.start()  # empty
    assert remote.meta("quiet") is None and remote.meta("busy") is None
    append_all(producer, "busy", deltas("c"), first=3)  # its write finds the metadata gone
    producer.flush()
    meta = poll_until(lambda: remote.meta("busy"), 10, "busy to be published again")
    assert meta["route"] == "sse" and meta["owner"] == "owner-p", meta
    poll_until(lambda: texts(remote.read("busy", 0)) == ["a", "b", "c", "done"], 10, "busy's whole log")
    assert remote.meta("busy")["state"] == "finished" and not producer.is_local("busy")
    assert remote.meta("quiet") is None  # nothing written since: the heartbeat finds it

    def beat_and_find() -> bool:
        producer.heartbeat()  # the manager's tick
        return remote.meta("quiet") is not None
    poll_until(beat_and_find, 10, "quiet to be published again")
    producer.flush()
    assert texts(remote.read("quiet", 0)) == ["a", "b"]
    append_all(producer, "quiet", deltas("d"), first=3)
    producer.flush()
    assert texts(remote.read("quiet", 0)) == ["a", "b", "d", "done"]
    server.stop()


def test_the_store_publishes_its_streams_again_after_an_empty_restart() -> None:
    from tests.redis_helpers import run_patched

    run_patched("test_redis_restart", "scenario_republished_after_an_empty_restart")


def _two_instances_on_a_stream(start_server, redis_port: int, tag: str, tokens: int):
    """Two instances on the test's Redis; a slow stream of ``tokens`` started on the first
    and left after 3 deltas (it goes on for the resume grace): (a, b, sid, deltas read)."""
    settings = dict(REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", REDIS_PREFIX=f"streamapp-test-{tag}",
                    RESUME_GRACE_S=30, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
    a, b = start_server(**settings), start_server(**settings)
    model = q(f"slow?tokens={tokens}&delay_ms=50&tag={tag}")
    client = SSEClient(f"{a.url}/ai-stream?prompt=hi&model={model}")
    sid = client.headers["X-Stream-Id"]
    got = first_deltas(client, 3)
    client.close()
    assert requests.get(f"{b.url}/api/streams/{sid}/info", timeout=5).status_code == 200
    return a, b, sid, got


def _assert_the_rest(got, rest, tokens: int) -> None:
    """``rest`` follows ``got`` to the stream's end: every event once, in order, no error."""
    assert rest[-1].event == "end", rest[-3:]
    assert not [e for e in rest if e.event == "error"], [e for e in rest if e.event == "error"]
    seqs = [int(e.id.rsplit("-", 1)[1]) for e in rest if e.id]
    first = int(got[-1].id.rsplit("-", 1)[1])
    assert seqs == list(range(first + 1, first + 1 + len(seqs))), seqs
    assert "".join(e.data for e in data_events(got + rest)) == "".join(token_list(tokens))


def test_a_resume_on_another_instance_right_after_an_empty_restart_waits_for_the_stream(
        start_server, tmp_path, tag):
    # Before the owner's heartbeat has published it again, the other instance finds no
    # metadata: it must wait for it (it knows Redis lost its state), not answer 204.
    port = free_port()
    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        tokens = 200
        a, b, sid, got = _two_instances_on_a_stream(start_server, port, tag, tokens)
        redis_proc.stop(signal.SIGKILL)
        redis_proc = start_redis(port, tmp_path / "redis-2.log")  # empty: no persistence
        with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id},
                       timeout=30) as other:
            assert other.status == 200
            rest = other.read_all()
        _assert_the_rest(got, rest, tokens)
    finally:
        redis_proc.stop()


def test_a_reader_on_another_instance_goes_on_through_an_empty_restart(start_server, tmp_path, tag):
    # The owner instance is stopped (SIGSTOP) while Redis loses its data, so Redis stays
    # without the stream's metadata while the reader on the other instance makes its checks
    # (its keep-alives show it looping): it must keep waiting, not end with stream_gap.
    port = free_port()
    redis_proc = start_redis(port, tmp_path / "redis-1.log")
    try:
        tokens = 200
        a, b, sid, got = _two_instances_on_a_stream(start_server, port, tag, tokens)
        splitter, parser, rest = LineSplitter(), EventParser(), []
        keep_alive = sse.comment("keep-alive")
        with SSEClient(f"{b.url}/api/streams/{sid}", headers={"Last-Event-ID": got[-1].id},
                       timeout=30) as other:
            assert other.status == 200
            chunks = other.iter_chunks()
            while len(rest) < 2:  # following it
                rest += [e for line in splitter.feed(next(chunks)) if (e := parser.feed_line(line))]
            os.killpg(a.process.proc.pid, signal.SIGSTOP)
            try:
                # Redis loses every key and script, as an empty restart does (without the
                # dropped connections, whose store_unavailable a client resumes from).
                with redis.Redis(port=port) as client:
                    client.flushall()
                    client.script_flush()
                idle = 0
                while idle < 6:  # three seconds of its loop: past a check with no metadata
                    chunk = next(chunks)
                    idle += chunk.count(keep_alive)
                    rest += [e for line in splitter.feed(chunk) if (e := parser.feed_line(line))]
                    assert not [e for e in rest if e.event == "error"], rest[-1]
            finally:
                os.killpg(a.process.proc.pid, signal.SIGCONT)
            for chunk in chunks:
                rest += [e for line in splitter.feed(chunk) if (e := parser.feed_line(line))]
        _assert_the_rest(got, rest, tokens)
    finally:
        redis_proc.stop()


def scenario_the_loss_is_kept_until_the_streams_are_sent_again() -> None:
    """The heartbeat that notices the loss fails right after (deleting a given-up stream's
    keys is refused): the next heartbeat still sends the running streams again, though
    this process's key is back in Redis by then."""
    import redis

    from tests.redis_helpers import META, Records, RedisServer, append_all, deltas, make_store, texts

    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    records = Records()
    producer, remote = make_store(server.url, "kl"), make_store(server.url, "kl")
    producer.start("owner-k")
    producer.create("kept", {**META, "route": "sse"})
    append_all(producer, "kept", deltas("a", "b"), final_done=False)
    producer.flush()
    assert texts(remote.read("kept", 0)) == ["a", "b"]
    client.execute_command("ACL", "SETUSER", "default", "-hsetnx")  # a new stream's meta refused
    producer.create("stray", META)
    poll_until(lambda: records.count("served by this process only"), 10, "the stream given up")
    client.execute_command("ACL", "SETUSER", "default", "+hsetnx", "-del")  # its keys' delete refused

    def refused() -> int:
        return int(client.info("errorstats").get("errorstat_NOPERM", {}).get("count", 0))
    before = refused()
    client.flushall()  # Redis lost its data
    producer.heartbeat()  # notices the loss, then fails deleting the stray's keys
    poll_until(lambda: refused() > before, 10, "the heartbeat's refused delete")
    client.execute_command("ACL", "SETUSER", "default", "+del")

    def beat_and_find() -> bool:
        producer.heartbeat()
        return remote.meta("kept") is not None
    poll_until(beat_and_find, 10, "kept to be published again")
    producer.flush()
    assert texts(remote.read("kept", 0)) == ["a", "b"]
    server.stop()


def test_a_failed_heartbeat_does_not_forget_that_redis_lost_the_streams() -> None:
    from tests.redis_helpers import run_patched

    run_patched("test_redis_restart", "scenario_the_loss_is_kept_until_the_streams_are_sent_again")
