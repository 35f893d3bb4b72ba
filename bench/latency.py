"""Stop latencies of streamapp, one try at a time (default 50 tries each).

(a) client disconnect -> the upstream connection closed: the service runs with
    ``RESUME_GRACE_S=0`` and the upstream is silent when the client leaves;
(b) ``POST /api/streams/<id>/cancel`` -> the client receives the final event
    (``finish_reason: "cancelled"``) and the upstream connection is closed.
(c) with Redis, the same cancel sent to another instance than the one generating.
(d) stop over WebSocket -> upstream connection closed: a chat on ``GET /ws``, then
    ``{"type": "stop"}`` on the same socket; also when the client got the ``end``
    (``finish_reason: "cancelled"``).

Times come from ``time.monotonic()`` in this process and in the fake upstream
(``tests/fake_upstream.py``, which records when its peer closed), one clock on Linux.

    .venv/bin/python bench/latency.py [--tries 50] [--store memory|redis|both]
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import harness as h


def closed_by_peer(upstream: h.Proc, tag: str, timeout: float = 3) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = h.upstream_log(upstream, tag)
        if records and records[0]["closed_by_peer"] is not None:
            return records[0]["closed_by_peer"]
        time.sleep(0.005)  # bounded poll
    return None


def open_stream(service: h.Proc, tag: str, silence_s: float) -> h.SSEConn:
    model = f"silence?at=1&silence_s={silence_s:g}&tokens=3&tag={tag}"
    conn = h.SSEConn("127.0.0.1", service.port, "/ai-stream?prompt=hi&model=" + quote(model, safe=""))
    if conn.status != 200:
        raise RuntimeError(f"status {conn.status}")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the first token: the upstream is silent after it
        event = conn.next_event(deadline - time.monotonic())
        if event is None:
            raise RuntimeError("no first token")
        if event["event"] == "message":
            return conn
    raise RuntimeError("no first token in 10 s")


def try_disconnect(service: h.Proc, upstream: h.Proc, tag: str, silence_s: float) -> dict:
    conn = open_stream(service, tag, silence_s)
    time.sleep(0.1)  # let the service settle into waiting on the silent upstream
    t0 = conn.close()
    closed = closed_by_peer(upstream, tag)
    return {"upstream_closed_ms": None if closed is None else (closed - t0) * 1000}


def try_cancel(service: h.Proc, upstream: h.Proc, tag: str, silence_s: float,
               via: h.Proc | None = None) -> dict:
    """Cancel through ``via`` (another instance sharing Redis) or the stream's own."""
    conn = open_stream(service, tag, silence_s)
    try:
        time.sleep(0.1)
        t0 = time.monotonic()
        status, _ = h.http_post(f"{(via or service).url}/api/streams/{conn.sid}/cancel")
        t_post = time.monotonic()
        final = None
        deadline = t0 + 5
        while time.monotonic() < deadline:
            event = conn.next_event(deadline - time.monotonic())
            if event is None or event["event"] in ("end", "error"):
                final = event
                break
        t_final = time.monotonic()
        reason = json.loads(final["data"]).get("finish_reason") if final and final["event"] == "end" else None
        closed = closed_by_peer(upstream, tag)
        return {"cancel_status": status, "post_ms": (t_post - t0) * 1000,
                "final_event_ms": (t_final - t0) * 1000 if reason == "cancelled" else None,
                "finish_reason": reason,
                "upstream_closed_ms": None if closed is None else (closed - t0) * 1000}
    finally:
        conn.close()


def open_ws_chat(service: h.Proc, tag: str, silence_s: float) -> h.WSConn:
    """A chat over WebSocket, read up to its first token (the upstream is silent after it)."""
    model = f"silence?at=1&silence_s={silence_s:g}&tokens=3&tag={tag}"
    conn = h.WSConn(service.port)
    try:
        conn.send(type="chat", uid=1, message="hi", provider="openai", model=model)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            message = conn.next_message(deadline - time.monotonic())
            if message is None or message["type"] in ("error", "end"):
                raise RuntimeError(f"no first token: {message}")
            if message["type"] == "delta":
                return conn
        raise RuntimeError("no first token in 10 s")
    except BaseException:
        conn.close()
        raise


def try_ws_stop(service: h.Proc, upstream: h.Proc, tag: str, silence_s: float) -> dict:
    conn = open_ws_chat(service, tag, silence_s)
    try:
        time.sleep(0.1)  # as (a)-(c): let the service settle into waiting on the silent upstream
        t0 = time.monotonic()
        conn.send(type="stop")
        final = None
        deadline = t0 + 5
        while time.monotonic() < deadline:
            message = conn.next_message(deadline - time.monotonic())
            ended = message is None or message["type"] == "end" \
                or (message["type"] == "error" and "seq" in message)
            if ended:
                final = message
                break
        t_final = time.monotonic()
        reason = final.get("finish_reason") if final and final["type"] == "end" else None
        closed = closed_by_peer(upstream, tag)
        return {"final_event_ms": (t_final - t0) * 1000 if reason == "cancelled" else None,
                "finish_reason": reason,
                "upstream_closed_ms": None if closed is None else (closed - t0) * 1000}
    finally:
        conn.close()


def summary(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    missing = len(values) - len(got)
    if not got:
        return f"none of {len(values)}"
    text = (f"median {h.median(got):7.2f} ms   p90 {h.percentile(got, 90):7.2f} ms   "
            f"worst {max(got):7.2f} ms   (n={len(got)})")
    return text + (f"   MISSING {missing}" if missing else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="disconnect and cancel latencies of streamapp")
    p.add_argument("--tries", type=int, default=50)
    p.add_argument("--store", choices=["memory", "redis", "both"], default="memory")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--silence-s", type=float, default=5.0, help="upstream silence after the first token")
    args = p.parse_args(argv)
    tries = max(1, min(args.tries, 1000))
    logdir = Path(tempfile.mkdtemp(prefix="streamapp-latency-"))
    print(f"logs: {logdir}")
    stores = ["memory", "redis"] if args.store == "both" else [args.store]
    failed = False
    for store in stores:
        upstream = h.start_upstream(logdir, f"upstream-{store}")
        prefix = f"bench-lat-{secrets.token_hex(4)}"
        redis = {"redis_url": args.redis_url, "redis_prefix": prefix} if store == "redis" else {}
        service = other = None
        try:
            service = h.start_service(upstream, logdir, f"service-{store}", RESUME_GRACE_S=0, **redis)
            if store == "redis":  # a second instance (think: another host) sharing the Redis
                other = h.start_service(upstream, logdir, "service-redis-2", RESUME_GRACE_S=0, **redis)
            run = secrets.token_hex(3)
            disc, canc = [], []
            for i in range(tries):
                disc.append(try_disconnect(service, upstream, f"lat-a-{run}-{i}", args.silence_s))
            for i in range(tries):
                canc.append(try_cancel(service, upstream, f"lat-b-{run}-{i}", args.silence_s))
            remote = [try_cancel(service, upstream, f"lat-c-{run}-{i}", args.silence_s, via=other)
                      for i in range(tries if other else 0)]
            wstop = [try_ws_stop(service, upstream, f"lat-d-{run}-{i}", args.silence_s) for i in range(tries)]
            print(f"\n{store} store, {tries} tries each")
            rows = [("(a) disconnect -> upstream closed", [d["upstream_closed_ms"] for d in disc]),
                    ("(b) cancel POST answered", [c["post_ms"] for c in canc]),
                    ("(b) cancel -> client got final event", [c["final_event_ms"] for c in canc]),
                    ("(b) cancel -> upstream closed", [c["upstream_closed_ms"] for c in canc])]
            if remote:
                rows += [("(c) cancel via another instance -> final", [c["final_event_ms"] for c in remote]),
                         ("(c) cancel via another -> upstream closed",
                          [c["upstream_closed_ms"] for c in remote])]
            rows += [("(d) WS stop -> client got end", [w["final_event_ms"] for w in wstop]),
                     ("(d) WS stop -> upstream closed", [w["upstream_closed_ms"] for w in wstop])]
            for label, vals in rows:
                print(f"{label:38s} {summary(vals)}")
            bad = [c for c in canc + remote
                   if c["finish_reason"] != "cancelled" or c["cancel_status"] != 202]
            if bad:
                print(f"    {len(bad)} cancels without a 'cancelled' final event or a 202: {bad[:3]}")
            bad_ws = [w for w in wstop
                      if w["finish_reason"] != "cancelled" or w["upstream_closed_ms"] is None]
            if bad_ws:
                print(f"    {len(bad_ws)} WebSocket stops without a 'cancelled' end or an upstream close: "
                      f"{bad_ws[:3]}")
            failed |= bool(bad) or bool(bad_ws) or any(d["upstream_closed_ms"] is None for d in disc)
        finally:
            for proc in (service, other):
                if proc is not None:
                    proc.stop()
            upstream.stop()
            if store == "redis":
                h.redis_cleanup(args.redis_url, prefix)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
