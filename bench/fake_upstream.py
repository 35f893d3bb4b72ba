"""A cheap fake OpenAI upstream for the benchmark (thousands of connections).

Same wire format as ``tests/fake_upstream.py`` (OpenAI SSE: ``data: {chat.completion.chunk}``
events, ``data: [DONE]``, chunked transfer encoding, one HTTP chunk per event,
``Connection: close``) and the same ``model`` query string
(``"<mode>?tokens=N&delay_ms=D&tag=T"``; modes ``normal``, ``slow``, ``silence``
with ``at`` and ``silence_s``, ``hang``). It differs only in cost: frames are
encoded once, a pause is one ``gevent.sleep`` and a peer that closes is noticed
by one greenlet blocked in ``recv`` per connection instead of a 10 ms poll.

``GET /_log?tag=T`` returns ``[{opened, closed_by_peer, finished, sent}]`` in
``time.monotonic()`` seconds (one clock for every process on Linux); ``?prefix=P``
returns ``{tag: records}`` for every tag starting with ``P``.

Run: ``python bench/fake_upstream.py --port N`` (prints ``listening N``).
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

TOKENS = ["Hello", ",", " world", "!", " 你好", "，", "世界", "。", " Streaming", " works", "."]
MAX_RECORDS = 200_000
LOG: dict[str, list[dict]] = {}
COUNT = [0]


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _openai(text: str | None, finish: str | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "fake", "choices": []}
    if usage is not None:
        obj["usage"] = usage
    else:
        delta = {"content": text} if text is not None else {}
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


TOKEN_FRAMES = [_chunk(_openai(t)) for t in TOKENS]
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + _chunk(b": fake upstream comment\n\n"))
STOP_FRAME = _chunk(_openai(None, "stop"))
DONE_FRAMES = _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"


class PeerGone(Exception):
    pass


def _record(tag: str, mode: str) -> dict:
    if COUNT[0] >= MAX_RECORDS:  # bounded: forget the oldest tags
        for old in list(LOG)[: max(1, len(LOG) // 2)]:
            COUNT[0] -= len(LOG.pop(old))
    record = {"opened": time.monotonic(), "closed_by_peer": None, "finished": None, "sent": 0,
              "mode": mode}
    LOG.setdefault(tag, []).append(record)
    COUNT[0] += 1
    return record


def _serve(sock: socket.socket, record: dict, mode: str, p: dict) -> None:
    n = int(p.get("tokens", 5))
    delay = float(p.get("delay_ms", 200 if mode == "slow" else 0)) / 1000
    at = int(p.get("at", 1 if mode == "silence" else -1))
    if mode == "hang":
        gevent.sleep(float(p.get("silence_s", 60)))
        return
    sock.sendall(HEAD)
    for i in range(n):
        if i == at and mode == "silence":
            gevent.sleep(float(p.get("silence_s", 5)))
        if delay and i:
            gevent.sleep(delay)
        sock.sendall(TOKEN_FRAMES[i % len(TOKENS)])
        record["sent"] += 1
    usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
    sock.sendall(STOP_FRAME + _chunk(_openai(None, usage=usage)) + DONE_FRAMES)


def _watch(sock: socket.socket, record: dict, writer: gevent.Greenlet) -> None:
    """Block in recv (no polling); the peer closing makes it return."""
    try:
        data = sock.recv(4096)
    except OSError:
        data = b""
    if not data and record["finished"] is None:  # not our own close racing this recv
        record["closed_by_peer"] = time.monotonic()
        writer.kill(PeerGone, block=False)


def handle(sock: socket.socket, addr) -> None:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                return
            data += more
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(body) < length:
            more = sock.recv(65536)
            if not more:
                return
            body += more
        url = urlsplit(target)
        if method == "GET" and url.path in ("/_log", "/_health"):
            query = parse_qs(url.query)
            if "prefix" in query:  # {tag: records} for every tag starting with prefix
                prefix = query["prefix"][0]
                out = json.dumps({t: r for t, r in LOG.items() if t.startswith(prefix)}).encode()
            else:
                out = json.dumps(LOG.get(query.get("tag", [""])[0], [])).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
            return
        if method != "POST" or url.path != "/v1/chat/completions":
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        mode, _, query = str(json.loads(body).get("model", "normal")).partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        record = _record(params.get("tag", ""), mode)
        watcher = gevent.spawn(_watch, sock, record, gevent.getcurrent())
        try:
            _serve(sock, record, mode, params)
        except PeerGone:
            pass
        except OSError:
            if record["closed_by_peer"] is None:
                record["closed_by_peer"] = time.monotonic()
        finally:
            record["finished"] = time.monotonic()
            watcher.kill(block=False)
    except PeerGone:
        pass
    finally:
        sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = StreamServer((args.host, args.port), handle, backlog=4096)
    server.init_socket()
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
