"""A WebSocket session in-process, over a connection the test controls.

The connection is handed to :class:`WsSession` as simple-websocket's would be: the test
feeds its messages and can hold any outgoing message (a client not reading), so orders
that a real socket shows only under back-pressure are checked deterministically. Greenlets
run when the test yields to the hub (``gevent.idle``); every wait has a deadline.
"""

from __future__ import annotations

import json
from typing import Any

import gevent
import gevent.event
import gevent.queue
import pytest
from simple_websocket import ConnectionClosed

from streamapp import create_app
from streamapp.routes.ws_session import GOING_AWAY, WsSession
from streamapp.streams import get_manager

HANGUP = object()


class Connection:
    """A simple-websocket connection stand-in: ``feed`` messages in; sends are recorded, and
    the first send of a message of type ``hold_type`` blocks until ``release`` is set."""

    def __init__(self, hold_type: str | None = None) -> None:
        self.incoming: gevent.queue.Queue = gevent.queue.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: list[int] = []
        self.hold_type = hold_type
        self.holding = gevent.event.Event()  # a held send is waiting
        self.release = gevent.event.Event()
        self.sock = None

    def feed(self, **message: Any) -> None:
        self.incoming.put(json.dumps(message))

    def receive(self, timeout: float | None = None) -> str | None:
        try:
            message = self.incoming.get(timeout=timeout)
        except gevent.queue.Empty:
            return None
        if message is HANGUP:
            raise ConnectionClosed()
        return message

    def hangup(self) -> None:
        """The client closes the socket."""
        self.incoming.put(HANGUP)

    def send(self, text: str) -> None:
        message = json.loads(text)
        if message.get("type") == self.hold_type and not self.holding.is_set():
            self.holding.set()
            assert self.release.wait(10), "the test never released the held message"
        self.sent.append(message)

    def close(self, code: int, reason: str) -> None:
        self.closed.append(code)
        self.sent.append({"type": "close", "code": code})  # in order with the messages
        self.incoming.put(None)

    def types(self) -> list[str]:
        return [m["type"] for m in self.sent]


class Starts:
    """A stream observer counting the streams started."""

    def __init__(self) -> None:
        self.sids: list[str] = []

    def stream_started(self, sid: str, meta: dict[str, Any]) -> None:
        self.sids.append(sid)

    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None:
        pass

    def stream_ended(self, summary: Any) -> None:
        pass


@pytest.fixture
def app():
    app = create_app({"DEMO_DELAY_MS": 0, "RATE_LIMIT": "", "RESUME_GRACE_S": 0})
    yield app
    app.extensions["streams"].drain(1)


def run_session(app, conn: Connection) -> gevent.Greenlet:
    """The session's own greenlet, in a request context as flask-sock gives it."""
    def run() -> None:
        with app.test_request_context("/ws"):
            WsSession(conn).run()
    return gevent.spawn(run)


def wait_for(check, what: str, timeout: float = 10) -> None:
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not check():
            gevent.idle()
            gevent.sleep(0.001)  # the demo provider's timers need the loop to turn


def test_a_chat_sent_while_the_last_end_is_being_written_waits_for_that_relay(app) -> None:
    conn = Connection(hold_type="end")
    starts = Starts()
    with app.app_context():
        get_manager().observers.append(starts)
    session = run_session(app, conn)
    conn.feed(type="chat", uid=1, message="a b c")
    assert conn.holding.wait(10), "the first stream's end was never sent"
    conn.feed(type="chat", uid=2, message="d e")  # sent on the last delta, before the end arrives
    gevent.idle()
    assert len(starts.sids) == 1, "a second stream started while the first one's end was unsent"
    conn.release.set()
    wait_for(lambda: conn.types().count("end") == 2, "the second stream's end")
    types = conn.types()
    assert types.index("end") < types.index("start", 1)  # one relay at a time
    assert "error" not in types  # the second chat was not refused as busy
    conn.hangup()
    session.join(5)


def test_a_resume_being_started_is_not_closed_under_by_a_shutdown(app) -> None:
    with app.app_context():
        manager = get_manager()
    owner = Connection()
    session = run_session(app, owner)
    owner.feed(type="chat", uid=1, message="a b c d e f g h")
    wait_for(lambda: "end" in owner.types(), "the first stream's end")
    sid = owner.sent[0]["stream_id"]
    owner.hangup()
    session.join(5)

    conn = Connection(hold_type="start")
    session = run_session(app, conn)
    conn.feed(type="resume", stream_id=sid, last_seq=2)
    assert conn.holding.wait(10), "the resume's start was never sent"
    manager.begin_shutdown()
    gevent.idle()
    assert conn.closed == [], "the socket was closed under a resume being started"
    conn.release.set()
    wait_for(lambda: conn.closed, "the socket closed after the resumed stream's end")
    types = conn.types()
    assert types[0] == "start" and types[-2:] == ["end", "close"], types  # closed once it ended
    assert conn.closed == [GOING_AWAY]
    session.join(5)


class GatedUpstream:
    """A provider stand-in (the upstream is the one part tests replace): a first token, then
    the end once the test opens ``gate``."""

    name = "demo"

    def __init__(self) -> None:
        self.gate = gevent.event.Event()

    def stream(self, request):
        from streamapp.events import Delta, Done, Opened

        yield Opened()
        yield Delta("first")
        self.gate.wait(10)
        yield Done("stop")

    def check(self):
        return None


def test_a_chat_sent_while_a_resume_past_the_end_is_refused_waits_for_that_relay(app) -> None:
    """A resume past the end of a running stream ends with a not_found error when the stream
    ends; a chat sent while that error is being written waits for the relay instead of being
    refused as busy."""
    upstream = GatedUpstream()
    demo = app.extensions["providers"]["demo"]
    app.extensions["providers"]["demo"] = upstream
    owner = Connection()
    session = run_session(app, owner)
    owner.feed(type="chat", uid=1, message="hi")
    wait_for(lambda: "delta" in owner.types(), "the first stream's first token")
    sid = owner.sent[0]["stream_id"]

    conn = Connection(hold_type="error")
    other = run_session(app, conn)
    conn.feed(type="resume", stream_id=sid, last_seq=10_000)
    wait_for(lambda: conn.types() == ["start"], "the resume's start")
    app.extensions["providers"]["demo"] = demo
    upstream.gate.set()  # the stream ends before the point asked for
    assert conn.holding.wait(10), "the resume past the end was never refused"
    conn.feed(type="chat", uid=2, message="d e")
    gevent.idle()
    conn.release.set()
    wait_for(lambda: "end" in conn.types(), "the second chat's end")
    errors = [m for m in conn.sent if m["type"] == "error"]
    assert [m["code"] for m in errors] == ["not_found"], errors  # and no "busy"
    for c, g in ((conn, other), (owner, session)):
        c.hangup()
        g.join(5)
