"""streamapp behind real nginx with conf/nginx.conf: unbuffered, and disconnects pass through."""

from __future__ import annotations

import os
import time

import pytest
import requests

from tests.conftest import ROOT, Process, answers, require_binary
from tests.helpers import SSEClient, data_events, free_port, upstream_closed_at


@pytest.fixture(scope="module")
def behind_nginx(start_server, tmp_path_factory):
    binary = require_binary("nginx", "apt-get install -y nginx-light")
    app = start_server(RESUME_GRACE_S=0, HEARTBEAT_S=0.5, HEADER_WAIT_S=0.2)
    port = free_port()
    work = tmp_path_factory.mktemp("nginx")
    conf = (ROOT / "conf" / "nginx.conf").read_text()
    for old, new in [("127.0.0.1:8080", f"127.0.0.1:{port}"), ("127.0.0.1:8000", f"127.0.0.1:{app.port}"),
                     ("/run/nginx-streamapp.pid", str(work / "nginx.pid")),
                     ("/var/log/nginx/streamapp-error.log", str(work / "error.log")),
                     ("/tmp/nginx-streamapp-", str(work / "tmp-"))]:
        assert old in conf, old
        conf = conf.replace(old, new)
    (work / "nginx.conf").write_text(conf)
    proc = Process([binary, "-g", "daemon off; error_log stderr notice;", "-p", str(work),
                    "-c", str(work / "nginx.conf")], dict(os.environ), work / "stdout.log")
    url = f"http://127.0.0.1:{port}"
    proc.wait_for("start worker process", 10, "nginx")  # listening by then
    answers(f"{url}/healthz", proc, "nginx")
    yield url
    proc.stop()


def test_events_arrive_one_by_one_through_nginx(behind_nginx) -> None:
    with SSEClient(f"{behind_nginx}/stream?delay_ms=60") as client:
        assert client.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        assert "Content-Encoding" not in client.headers
        events = client.read_all()
    times = [t for t, e in client.events if e.event == "message"]
    assert len(times) > 10
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert sorted(gaps)[len(gaps) // 2] > 0.03  # not one burst at the end
    assert events[-1].event == "end"


def test_client_leaving_nginx_closes_the_upstream(behind_nginx, fake_upstream, tag) -> None:
    model = requests.utils.quote(f"silence?at=1&silence_s=10&tag={tag}", safe="")
    client = SSEClient(f"{behind_nginx}/ai-stream?prompt=hi&model={model}")
    for event in client.iter_events():
        if event.event == "message":
            break
    left = time.monotonic()
    client.close()

    assert upstream_closed_at(fake_upstream, tag) - left < 1.0


def test_chat_post_through_nginx(behind_nginx) -> None:
    with SSEClient(f"{behind_nginx}/api/chat", "POST", {"uid": 1, "message": "hi"}) as client:
        events = client.read_all()
    assert len(data_events(events)) > 5
