"""Added time to first event of a failover before the first token (streamapp/failover.py).

One fake upstream (``tests/fake_upstream.py``) and a port nobody listens on, named in an
upstreams file; streamapp under gunicorn (one worker, memory store, circuits off so that
every try fails over). Three routes, tried in turn, ``--tries`` times each (default 50):

- ``direct``:  the upstream alone (the baseline);
- ``refused``: the closed port first (connection refused), then the upstream;
- ``timeout``: the upstream answering 200 and then silent first (``FIRST_TOKEN_TIMEOUT_S``
  given up), then the upstream.

Time to first event: from the request's first byte sent to the first ``data:`` event
(the first token) read on ``POST /api/chat``. Reported: each route's median and p90, the
added time of ``refused`` over ``direct``, and of ``timeout`` beyond the timeout itself.

    .venv/bin/python bench/failover.py [--tries 50] [--timeout 0.5]
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import harness as h

ROUTES = {
    "direct": ["up/normal?tokens=4"],
    "refused": ["down/normal", "up/normal?tokens=4"],
    "timeout": ["up/silence?at=0&silence_s=30", "up/normal?tokens=4"],
}


def first_event_ms(port: int, model: str, timeout: float = 10) -> float:
    """Milliseconds from sending a chat request to reading its first ``data:`` event."""
    body = json.dumps({"uid": 1, "message": "hi", "model": model}).encode()
    head = (b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Accept: text/event-stream\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
    request = head + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        sock.sendall(request)
        got = b""
        while b"\ndata: " not in got:
            more = sock.recv(65536)
            if not more:
                raise RuntimeError(f"no event: {got[:300]!r}")
            got += more
        took = (time.monotonic() - t0) * 1000
        if not got.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"not a stream: {got[:300]!r}")
        return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=50)
    parser.add_argument("--timeout", type=float, default=0.5, help="FIRST_TOKEN_TIMEOUT_S")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    upstream = h.start_upstream(logdir)
    text = (f'[upstreams.up]\nkind = "openai"\nbase_url = "{upstream.url}/v1"\n\n'
            f'[upstreams.down]\nkind = "openai"\nbase_url = "http://127.0.0.1:{h.free_port()}/v1"\n\n')
    text += "".join(f"[routes.{name}]\ntargets = {json.dumps(t)}\n\n" for name, t in ROUTES.items())
    (logdir / "upstreams.toml").write_text(text)
    service = h.start_service(upstream, logdir, UPSTREAMS_FILE=logdir / "upstreams.toml", CIRCUIT_FAILURES=0,
                              FIRST_TOKEN_TIMEOUT_S=args.timeout, HEADER_WAIT_S=1, RESUME_GRACE_S=0)
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    try:
        for name in ROUTES:  # warm up: the connection pool, the first request's imports
            first_event_ms(service.port, name)
        for _ in range(args.tries):
            for name in ROUTES:  # interleaved: the same load for each
                times[name].append(first_event_ms(service.port, name))
    finally:
        service.stop()
        upstream.stop()
    base = h.median(times["direct"])
    print(f"time to first event over {args.tries} tries each (ms), FIRST_TOKEN_TIMEOUT_S={args.timeout:g}")
    for name, values in times.items():
        print(f"  {name:8s} median {h.median(values):8.2f}  p90 {h.percentile(values, 90):8.2f}")
    print(f"  refused: {h.median(times['refused']) - base:+.2f} ms over direct "
          f"(ratio {h.median(times['refused']) / base:.2f})")
    print(f"  timeout: {h.median(times['timeout']) - base - args.timeout * 1000:+.2f} ms over direct "
          f"beyond the {args.timeout * 1000:g} ms timeout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
