"""A fake LLM upstream speaking the exact OpenAI SSE and Ollama NDJSON wire formats.

Run it as a process: ``python tests/fake_upstream.py --port N``. It is a gevent
``StreamServer`` writing raw HTTP/1.1, so tests control every byte and every
network chunk. The request's ``model`` picks the behaviour, as a query string:
``"<mode>?tokens=5&delay_ms=10&tag=abc"``. Modes:

- ``normal``      tokens (each repeated ``repeat`` times), then the proper end
                  (``[DONE]`` / ``done: true``)
- ``slow``        the same with ``delay_ms`` between tokens (default 200)
- ``hang``        accept the request and never answer (a read timeout)
- ``reset``       close the connection before any response byte
- ``status``      answer ``status`` (default 429) with the upstream's JSON error body
- ``inband``      200, ``at`` tokens (default 0), then an in-band ``{"error": ...}``
- ``malformed``   200, one token, then a line that is not JSON
- ``drop``        200, ``at`` tokens (default 2), then close mid-stream (no end)
- ``split``       200, the text "héllo 你好 wörld", each multi-byte character
                  cut in two across network chunks (and CRLF line ends for SSE)
- ``silence``     ``at`` tokens (default 1), then silent for ``silence_s`` (default
                  5) watching for the peer to close, then the rest

Every connection is recorded; ``GET /_log?tag=T`` returns the records with that
tag: ``{"opened", "closed_by_peer", "finished", "sent"}`` (``time.monotonic()``
seconds, comparable across processes on Linux).
"""

from __future__ import annotations

if __name__ == "__main__":  # imported by tests only for its constants: no patching then
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
RECORDS: list[dict] = []


def token_list(n: int) -> list[str]:
    return [TOKENS[i % len(TOKENS)] for i in range(n)]


class PeerGone(Exception):
    pass


class Conn:
    def __init__(self, sock: socket.socket, record: dict) -> None:
        self.sock, self.record = sock, record

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self.record.setdefault("closed_by_peer", time.monotonic())
            raise PeerGone from exc
        self.record["sent"] += 1

    def head(self, status: int, ctype: str, reason: str = "OK", length: int | None = None) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}", "Connection: close"]
        lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
        self.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def chunk(self, data: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(data), data))

    def end(self) -> None:
        self.send(b"0\r\n\r\n")

    def idle(self, seconds: float) -> None:
        """Stay silent, noticing when the peer closes its end."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                gevent.socket.wait_read(self.sock.fileno(), timeout=min(left, 0.01))
            except gevent.socket.timeout:
                continue
            try:
                data = self.sock.recv(1, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                self.record["closed_by_peer"] = time.monotonic()
                raise PeerGone
            gevent.sleep(0.01)


def openai_chunk(text: str | None, finish: str | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "fake", "choices": []}
    if usage is not None:
        obj["usage"] = usage
    else:
        delta = {"content": text} if text is not None else {}
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def ollama_line(text: str, done: bool = False, generate: bool = False) -> bytes:
    obj: dict = {"model": "fake", "created_at": "2026-01-01T00:00:00Z", "done": done}
    if generate:
        obj["response"] = text
    else:
        obj["message"] = {"role": "assistant", "content": text}
    if done:
        obj.update(done_reason="stop", prompt_eval_count=7, eval_count=11)
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def serve(conn: Conn, api: str, mode: str, p: dict) -> None:
    sse = api == "openai"
    ctype = "text/event-stream" if sse else "application/x-ndjson"
    tokens = [t * int(p.get("repeat", 1)) for t in token_list(int(p.get("tokens", 5)))]
    delay = float(p.get("delay_ms", 200 if mode == "slow" else 0)) / 1000
    at = int(p.get("at", {"inband": 0, "drop": 2, "silence": 1}.get(mode, 0)))

    def token(text: str) -> bytes:
        return openai_chunk(text) if sse else ollama_line(text, generate=api == "generate")

    def finish() -> None:
        if sse:
            conn.chunk(openai_chunk(None, "stop"))
            conn.chunk(openai_chunk(None, usage={"prompt_tokens": 7, "completion_tokens": len(tokens),
                                                 "total_tokens": 7 + len(tokens)}))
            conn.chunk(b"data: [DONE]\n\n")
        else:
            conn.chunk(ollama_line("", done=True, generate=api == "generate"))
        conn.end()

    if mode == "hang":
        conn.idle(float(p.get("silence_s", 60)))
        return
    if mode == "reset":
        return
    if mode == "status":
        status = int(p.get("status", 429))
        if sse:
            body = {"error": {"message": "Rate limit reached for fake-model", "type": "rate_limit_error",
                              "param": None, "code": "rate_limit_exceeded"}}
        else:
            body = {"error": 'model "fake" not found, try pulling it first'}
        data = json.dumps(body).encode()
        conn.head(status, "application/json", reason="Error", length=len(data))
        conn.send(data)
        return
    conn.head(200, ctype)
    if sse:
        conn.chunk(b": fake upstream comment\n\n")
    if mode == "split":
        text = ["h\u00e9llo", " \u4f60\u597d", " w\u00f6rld"]
        for piece in text:
            frame = token(piece)
            if sse:
                frame = frame.replace(b"\n", b"\r\n")
            cut = next(i for i in range(len(frame)) if frame[i] >= 0x80) + 1  # inside a character
            conn.chunk(frame[:cut])
            gevent.sleep(0.05)
            conn.chunk(frame[cut:])
            gevent.sleep(0.02)
        finish()
        return
    for i, text in enumerate(tokens):
        if i == at:
            if mode == "inband":
                err = {"error": {"message": "The server had an error while processing your request.",
                                 "type": "server_error", "param": None, "code": None}} if sse \
                    else {"error": "an error was encountered while running the model"}
                line = json.dumps(err).encode()
                conn.chunk(b"data: " + line + b"\n\n" if sse else line + b"\n")
                conn.end()
                return
            if mode == "malformed":
                conn.chunk(b"data: {not json\n\n" if sse else b"{not json\n")
                conn.end()
                return
            if mode == "drop":
                return
            if mode == "silence":
                conn.idle(float(p.get("silence_s", 5)))
        if delay and i:
            conn.idle(delay)
        conn.chunk(token(text))
    finish()


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
            tag = parse_qs(url.query).get("tag", [""])[0]
            out = json.dumps([r for r in RECORDS if r["tag"] == tag]).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(out), out))
            return
        apis = {"/v1/chat/completions": "openai", "/api/chat": "ollama", "/api/generate": "generate"}
        api = apis.get(url.path)
        if method != "POST" or api is None:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        request = json.loads(body)
        mode, _, query = str(request.get("model", "normal")).partition("?")
        params = {k: v[0] for k, v in parse_qs(query).items()}
        record = {"tag": params.get("tag", ""), "mode": mode, "api": api, "opened": time.monotonic(),
                  "closed_by_peer": None, "finished": None, "sent": 0,
                  "messages": request.get("messages"), "stream": request.get("stream"),
                  "stream_options": request.get("stream_options"),
                  "authorization": headers.get("authorization")}
        RECORDS.append(record)
        del RECORDS[:-5000]
        conn = Conn(sock, record)
        try:
            serve(conn, api, mode, params)
        except PeerGone:
            pass
        finally:
            record["finished"] = time.monotonic()
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
