"""The load generator: one gevent process holding up to thousands of streams.

Run by ``bench/run.py`` as ``python bench/loadgen.py SPEC.json OUT.json``. Raw
sockets, a minimal chunked-transfer and SSE splitter, and one
``time.monotonic()`` stamp per received token event. Spec keys:

- ``host``, ``port``; ``kind``: ``"sse"`` (GET ``path``, the service or the parsing relay),
  ``"openai"`` (POST ``/v1/chat/completions`` with ``model``: the upstream itself) or
  ``"passthrough"`` (GET ``path``, the upstream's own events: the pass-through relay)
- ``streams`` (how many), ``concurrency`` (at most this many at once)
- ``mode``: ``"full"`` (read to the end), ``"hold"`` (open all, each until its first
  token, ``concurrency`` opening at once; print ``ready``; hold ``hold_s``; print
  ``hold-end``; wait for a line on stdin; count survivors; close all) or
  ``"disconnect"`` (close the socket ``disconnect_after`` = [lo, hi] seconds after
  the first token, and record that instant)
- ``{i}`` in ``path`` or ``model`` becomes the stream's index (one upstream tag each)
- ``recv_timeout_s``, ``deadline_s``: every wait is bounded.

Each stream's record: ``t0`` (before connect), ``tsent`` (the request written),
``times`` (token arrivals),
``end`` (terminal event kind), ``err`` (error kind or null), ``sid``, ``tdisc``.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import errno  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.lock  # noqa: E402
import gevent.pool  # noqa: E402

now = time.monotonic


class Stream:
    __slots__ = ("i", "t0", "tsent", "times", "end", "err", "sid", "tdisc", "opened", "finish")

    def __init__(self, i: int) -> None:
        self.i = i
        self.t0 = 0.0
        self.tsent: float | None = None
        self.times: list[float] = []
        self.end: str | None = None
        self.err: str | None = None
        self.sid: str | None = None
        self.tdisc: float | None = None
        self.opened = False
        self.finish: str | None = None

    def as_dict(self) -> dict:
        return {"t0": self.t0, "tsent": self.tsent, "times": self.times, "end": self.end, "err": self.err,
                "sid": self.sid, "tdisc": self.tdisc, "finish": self.finish}


class Body:
    """Chunked-transfer decoding, then SSE blocks split on a blank line."""

    def __init__(self, chunked: bool, kind: str, st: Stream) -> None:
        self.chunked, self.kind, self.st = chunked, kind, st
        self.raw = b""
        self.buf = b""
        self.complete = False  # the body's end (last chunk) was seen
        self.terminal = False  # the stream's final event was seen

    def feed(self, data: bytes, t: float) -> None:
        if self.chunked:
            raw = self.raw + data if self.raw else data
            pos, out, n = 0, [], len(raw)
            while True:
                nl = raw.find(b"\r\n", pos)
                if nl < 0:
                    break
                size = int(raw[pos:nl].split(b";", 1)[0], 16)
                if size == 0:
                    self.complete = True
                    pos = n
                    break
                end = nl + 2 + size
                if n < end + 2:
                    break
                out.append(raw[nl + 2:end])
                pos = end + 2
            self.raw = raw[pos:]
            data = b"".join(out)
        if not data:
            return
        buf = self.buf + data if self.buf else data
        blocks = buf.split(b"\n\n")
        self.buf = blocks.pop()
        st = self.st
        for block in blocks:
            if not block:
                continue
            if block[0] == 58:  # ":" a comment
                if block.startswith(b": stream "):
                    st.sid = block[9:].decode()
                continue
            if self.kind != "sse":  # the upstream's own events (openai, passthrough)
                if b"data: [DONE]" in block:
                    st.end = "end"
                    self.terminal = True
                elif b'"content"' in block:
                    st.times.append(t)
                elif b'"error"' in block:
                    st.end, st.err = "error", "upstream_inband_error"
                    self.terminal = True
                continue
            if b"event: " in block:
                if b"event: end" in block:
                    st.end = "end"
                    self.terminal = True
                    i = block.find(b'"finish_reason":"')
                    if i >= 0:
                        st.finish = block[i + 17:block.find(b'"', i + 17)].decode()
                elif b"event: error" in block:
                    st.end = "error"
                    i = block.find(b'"code":"')
                    code = block[i + 8:block.find(b'"', i + 8)].decode() if i >= 0 else "?"
                    st.err = f"sse_error:{code}"
                    self.terminal = True
                continue
            if b"data:" in block:
                st.times.append(t)


def _errname(exc: OSError) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    return errno.errorcode.get(exc.errno or 0, type(exc).__name__)


class Generator:
    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.addr = (spec["host"], spec["port"])
        self.kind = spec["kind"]
        self.per_stream = "{i}" in spec.get("model", "") + spec.get("path", "")
        self._request = self._build(0)
        self.mode = spec.get("mode", "full")
        self.recv_timeout = float(spec.get("recv_timeout_s", 30))
        self.streams = [Stream(i) for i in range(int(spec["streams"]))]
        self.ramp = gevent.lock.Semaphore(int(spec.get("concurrency", len(self.streams))))
        self.opened = 0
        self.all_opened = gevent.event.Event()
        self.settled = 0

    def _build(self, i: int) -> bytes:
        spec, host = self.spec, b"%s:%d" % (self.addr[0].encode(), self.addr[1])
        if self.kind == "openai":
            body = json.dumps({"model": spec["model"].replace("{i}", str(i)), "stream": True,
                               "messages": [{"role": "user", "content": "hi"}],
                               "stream_options": {"include_usage": True}}).encode()
            return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: %s\r\n"
                    b"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                    b"Authorization: Bearer x\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (host, len(body), body))
        path = spec["path"].replace("{i}", str(i)).encode()
        return (b"GET %s HTTP/1.1\r\nHost: %s\r\nAccept: text/event-stream\r\n"
                b"Connection: close\r\n\r\n" % (path, host))

    def run_one(self, st: Stream) -> None:
        hold = self.mode == "hold"
        if hold:
            self.ramp.acquire()
        released = not hold
        sock = None
        st.t0 = now()
        try:
            sock = socket.create_connection(self.addr, timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(self._build(st.i) if self.per_stream else self._request)
            st.tsent = now()
            sock.settimeout(self.recv_timeout)
            buf = b""
            while b"\r\n\r\n" not in buf:
                more = sock.recv(65536)
                if not more:
                    st.err = "eof_before_headers"
                    return
                buf += more
            head, _, rest = buf.partition(b"\r\n\r\n")
            status = int(head[9:12])
            if status != 200:
                st.err = f"http_{status}"
                return
            lower = head.lower()
            i = lower.find(b"x-stream-id: ")
            if i >= 0:
                st.sid = head[i + 13:head.find(b"\r\n", i)].decode()
            body = Body(b"transfer-encoding: chunked" in lower, self.kind, st)
            body.feed(rest, now())
            disc_at = None
            while not body.complete:
                if st.times and not st.opened:
                    st.opened = True
                    if hold:
                        self.ramp.release()
                        released = True
                        self.opened += 1
                        if self.opened + self.settled >= len(self.streams):
                            self.all_opened.set()
                        sock.settimeout(None)  # idle by design; ended by the holder
                    elif self.mode == "disconnect":
                        lo, hi = self.spec.get("disconnect_after", [0.5, 1.5])
                        disc_at = now() + random.uniform(lo, hi)
                if disc_at is not None:
                    left = disc_at - now()
                    if left <= 0:
                        st.tdisc = now()
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                        sock.close()
                        return
                    sock.settimeout(left)
                    try:
                        more = sock.recv(65536)
                    except TimeoutError:
                        continue
                else:
                    more = sock.recv(65536)
                if not more:
                    if not body.terminal:
                        st.err = "eof_before_end"
                    return
                body.feed(more, now())
            if not body.terminal:
                st.err = "body_ended_without_end_event"
        except OSError as exc:
            st.err = ("connect_" if sock is None else "") + _errname(exc)
        except ValueError as exc:
            st.err = f"bad_response:{exc}"[:80]
        finally:
            if sock is not None:
                sock.close()
            if not released:
                self.ramp.release()
                if not st.opened:
                    self.settled += 1
                    if self.opened + self.settled >= len(self.streams):
                        self.all_opened.set()

    def run(self) -> dict:
        spec = self.spec
        deadline = float(spec.get("deadline_s", 120))
        t_start = now()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        cpu_start = ru.ru_utime + ru.ru_stime
        out: dict = {"t_start": t_start}
        if self.mode == "hold":
            greenlets = [gevent.spawn(self.run_one, st) for st in self.streams]
            self.all_opened.wait(float(spec.get("ramp_timeout_s", 60)))
            out["ready_at"] = now()
            out["opened"] = sum(1 for st in self.streams if st.opened and st.err is None and st.end is None)
            print(f"ready {out['opened']} {out['ready_at'] - t_start:.2f}", flush=True)
            gevent.sleep(float(spec["hold_s"]))
            print("hold-end", flush=True)
            gevent.spawn(sys.stdin.readline).join(timeout=60)  # the holder samples memory now
            out["survivors"] = sum(1 for st in self.streams if st.opened and st.err is None
                                   and st.end is None)
            out["released_at"] = now()
            gevent.killall(greenlets, block=True, timeout=30)
        else:
            pool = gevent.pool.Pool(int(spec.get("concurrency", len(self.streams))))
            for st in self.streams:
                if now() - t_start > deadline:
                    st.err = "not_started_deadline"
                    continue
                pool.spawn(self.run_one, st)
            if not pool.join(timeout=max(1.0, deadline - (now() - t_start))):
                for st in self.streams:
                    if st.end is None and st.err is None:
                        st.err = "deadline"
                pool.kill(block=True, timeout=10)
        out["t_end"] = now()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        out["cpu_s"] = ru.ru_utime + ru.ru_stime - cpu_start
        out["streams"] = [st.as_dict() for st in self.streams]
        return out


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result = Generator(spec).run()
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)
    print("done", flush=True)


if __name__ == "__main__":
    main()
