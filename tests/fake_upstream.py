"""A fake LLM upstream speaking the exact OpenAI SSE and Ollama NDJSON wire formats.

Run it as a process: ``python tests/fake_upstream.py --port N`` (prints ``listening N``).
The pytest suite and the benchmark (``bench/``) both use it. It is a gevent
``StreamServer`` writing raw HTTP/1.1, so tests control every byte and every
network chunk: one HTTP chunk per event. Like the real servers it keeps the
connection alive after a complete answer (normal, slow, burst, split, silence, status,
tools, reasoning, nousage); every other mode closes it. The request's
``model`` picks the behaviour, as a query string: ``"<mode>?tokens=5&delay_ms=10&tag=abc"``.
Modes:

- ``normal``      tokens (each repeated ``repeat`` times), then the proper end
                  (``[DONE]`` / ``done: true``)
- ``slow``        the same with ``delay_ms`` between tokens (default 200)
- ``burst``       the whole ``normal`` answer (head, tokens, end) in ONE write
- ``hang``        accept the request and never answer (a read timeout), for
                  ``silence_s`` (default 60)
- ``reset``       close the connection before any response byte
- ``status``      answer ``status`` (default 429) with the upstream's JSON error body; with
                  ``retry_after=N`` also a ``Retry-After: N`` header (OpenAI sends one with its
                  429s and 503s; an Ollama behind a proxy may)
- ``inband``      200, ``at`` tokens (default 0), then an in-band ``{"error": ...}``
- ``malformed``   200, ``at`` tokens (default 0), then a line that is not JSON
- ``drop``        200, ``at`` tokens (default 2), then close mid-stream (no end)
- ``split``       200, the text "héllo 你好 wörld", each multi-byte character
                  cut in two across network chunks (and CRLF line ends for SSE)
- ``silence``     ``at`` tokens (default 1), then silent for ``silence_s`` (default
                  5) watching for the peer to close, then the rest
- ``keepalive``   ``at`` tokens (default 2), then for ``silence_s`` (default 10) no event
                  but a keep-alive every ``every_ms`` (default 100): an SSE comment (OpenAI)
                  or an empty line (Ollama); then the rest and the proper end
- ``badtext``     200, the pieces of ``BAD_TEXT_PIECES``: lone surrogates as JSON
                  escapes (``"\\ud83d"``) and bytes that are not UTF-8, then the end;
                  a client that repairs them sees ``BAD_TEXT``
- ``shape``       200, ``at`` tokens (default 0), then one object of the wrong shape
                  named by ``bad`` (see ``BAD_SHAPES``), then the proper end
- ``redirect``    answer ``status`` (default 302) with a ``Location`` back to this
                  server; a client that follows it gets a normal stream, recorded
                  with ``followed: true``
- ``gzipbad``     200 with ``Content-Encoding: gzip`` and a body that is not gzip
- ``gzip``        the ``normal`` answer with ``Content-Encoding: gzip`` (a compressing
                  proxy), the gzip stream flushed after each event, one HTTP chunk each
- ``unchunked``   the ``normal`` answer without chunked encoding: the body ends where the
                  connection closes (an HTTP/1.0 proxy's way); both: ``delay_ms`` between
                  events, ``silence_s`` after ``at`` tokens
- ``status`` with ``message=bad``: the error body's message holds a lone surrogate
  escape and bytes that are not UTF-8
- ``tools``       200, the two calls of ``TOOL_CALLS``. OpenAI: a first chunk with
                  ``role``, then ``delta.tool_calls`` fragments (``index`` 0 and 1, ``id``
                  and ``name`` in each call's first, its arguments' JSON cut in
                  ``TOOL_FRAGMENTS`` pieces), ``finish_reason: "tool_calls"``, the usage
                  chunk, ``[DONE]``. Ollama: one line whose ``message.tool_calls`` holds
                  both calls whole (arguments as objects; with ``ids=1`` also the ``id``
                  and ``function.index`` newer Ollama sends), then the done line. With
                  ``calls=N`` only the first N calls; with ``then=N``, a request whose last
                  message is a tool result is answered as ``normal`` with N tokens (an
                  agent's loop: call, result, answer)
- ``reasoning``   200, the pieces of ``REASONING`` as reasoning, then ``tokens`` tokens
                  (default 5) of content. OpenAI: ``delta.reasoning_content`` (with
                  ``field=reasoning``: ``delta.reasoning``), ``content: null`` beside it,
                  and a usage with the details of ``REASONING_USAGE``; Ollama:
                  ``message.thinking`` lines; with ``delay_ms``, that long before each piece
- ``nousage``     ``tokens`` tokens and the end, without any usage (OpenAI: no usage
                  chunk; Ollama: a done line without counts)
- ``cachedprompt`` ``tokens`` tokens and the end whose counts leave the prompt's out: Ollama's
                  done line without ``prompt_eval_count`` (as it sends one for a prompt it
                  served from its cache); OpenAI: the ``normal`` end (its usage has every count)
- ``usagecut``    ``tokens`` tokens, then OpenAI's finish chunk and usage chunk, then close
                  before ``[DONE]``; Ollama: close after the tokens (its counts come only
                  with its end)
- ``zerousage``   ``tokens`` tokens and the end with an explicit usage of 0 (OpenAI: a usage
                  chunk of zeros; Ollama: ``prompt_eval_count: 0, eval_count: 0``), as a
                  server that counts nothing says it
- ``endless``     200, ``at`` tokens (default 0), then one line that never ends: chunks of
                  ``x`` without a newline, ``size_kb`` KiB in all (default 8192), then close
- ``errorpage``   answer ``status`` (default 502) with a body that is not the upstream's
                  error JSON, holding ``ERROR_PAGE_MARKER``: ``body=html`` (default) a proxy's
                  HTML page, ``body=json`` JSON without an ``error`` member, ``body=long`` an
                  error JSON whose message is ``LONG_MESSAGE_CHARS`` characters long

It is cheap enough for thousands of connections: token frames are encoded once,
a pause is one ``gevent.sleep``, and a peer that closes is noticed by one greenlet
per connection blocked in ``recv`` (no polling), or else by a write that fails.

Every connection is recorded: ``GET /_log?tag=T`` returns the list of records with
that tag, ``GET /_log?prefix=P`` returns ``{tag: records}`` for every tag starting
with ``P``. A record has ``opened``, ``closed_by_peer``, ``finished`` (``time.monotonic()``
seconds, comparable across processes on Linux), ``sent`` (token events written) and
what the request carried (``messages``, ``stream``, ``stream_options``, ``authorization``,
and ``body``: the whole parsed request body).
``GET /_log?tag=T&wait=FIELD&timeout=S`` is a long-poll: it answers once a record of
``T`` has ``FIELD`` set (``opened``: once there is a record), or after ``S`` seconds.

Embeddings (``POST /v1/embeddings``, ``POST /api/embed``) are answered by
``tests/fake_embed.py``, with its own modes, and recorded the same way.
"""

from __future__ import annotations

if __name__ == "__main__":  # imported by tests only for its constants: no patching then
    import sys
    from pathlib import Path

    from gevent import monkey

    monkey.patch_all()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script: `tests` importable

import argparse  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from urllib.parse import parse_qs, urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

from tests import fake_embed  # noqa: E402

TOKENS = ["Hello", ",", " world", "!", " 你好", "，", "世界", "。", " Streaming", " works", "."]
APIS = {"/v1/chat/completions": "openai", "/api/chat": "ollama", "/api/generate": "generate"}
MAX_RECORDS = 200_000
LOG: dict[str, list[dict]] = {}
COUNT = [0]
CHANGED = [gevent.event.Event()]  # replaced on every change; long-polls wait on it


def token_list(n: int) -> list[str]:
    return [TOKENS[i % len(TOKENS)] for i in range(n)]


def openai_chunk(text: str | None, finish: str | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000,
                 "model": "fake", "choices": []}
    if usage is not None:
        obj["usage"] = usage
    else:
        delta = {"content": text} if text is not None else {}
        obj["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def openai_delta(delta: dict, finish: str | None = None) -> bytes:
    """One chunk whose only choice has ``delta`` (any members) and ``finish``."""
    obj = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1700000000, "model": "fake",
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def ollama_message(message: dict, **fields: object) -> bytes:
    """One NDJSON line with ``message`` (role added) and ``fields`` (``done`` defaults to false)."""
    obj = {"model": "fake", "created_at": "2026-01-01T00:00:00Z",
           "message": {"role": "assistant", "content": "", **message}, "done": False, **fields}
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def ollama_line(text: str, done: bool = False, generate: bool = False) -> bytes:
    obj: dict = {"model": "fake", "created_at": "2026-01-01T00:00:00Z", "done": done}
    if generate:
        obj["response"] = text
    else:
        obj["message"] = {"role": "assistant", "content": text}
    if done:
        obj.update(done_reason="stop", prompt_eval_count=7, eval_count=11)
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def token_event(api: str, text: str) -> bytes:
    return openai_chunk(text) if api == "openai" else ollama_line(text, generate=api == "generate")


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def head(status: int, ctype: str, reason: str = "OK", length: int | None = None,
         keep_alive: bool = False, extra: tuple[str, ...] = ()) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {ctype}",
             "Connection: keep-alive" if keep_alive else "Connection: close", *extra]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _error_line(api: str, data: dict | str) -> bytes:
    line = json.dumps(data).encode()
    return b"data: " + line + b"\n\n" if api == "openai" else line + b"\n"


END = b"0\r\n\r\n"
# Everything that does not depend on the request, encoded once per API.
HEAD = {(api, keep): head(200, "text/event-stream" if api == "openai" else "application/x-ndjson",
                         keep_alive=keep)
        + (http_chunk(b": fake upstream comment\n\n") if api == "openai" else b"")
        for api in APIS.values() for keep in (False, True)}
KEEP_ALIVE_MODES = ("normal", "slow", "burst", "split", "silence", "status", "tools", "reasoning", "nousage",
                    "zerousage", "cachedprompt")
TOKEN_FRAMES = {api: [http_chunk(token_event(api, t)) for t in TOKENS] for api in APIS.values()}
OPENAI_STOP = http_chunk(openai_chunk(None, "stop"))
OPENAI_DONE = http_chunk(b"data: [DONE]\n\n") + END
OLLAMA_END = {api: http_chunk(ollama_line("", done=True, generate=api == "generate")) + END
              for api in ("ollama", "generate")}
INBAND = {api: http_chunk(_error_line(api, {"error": {
    "message": "The server had an error while processing your request.", "type": "server_error",
    "param": None, "code": None}} if api == "openai" else {
    "error": "an error was encountered while running the model"})) + END for api in APIS.values()}
MALFORMED = {api: http_chunk(b"data: {not json\n\n" if api == "openai" else b"{not json\n") + END
             for api in APIS.values()}
STATUS_BODY = {api: json.dumps({"error": {"message": "Rate limit reached for fake-model",
                                          "type": "rate_limit_error", "param": None,
                                          "code": "rate_limit_exceeded"}} if api == "openai"
                               else {"error": 'model "fake" not found, try pulling it first'}).encode()
               for api in APIS.values()}

# Text that is not valid Unicode, as it appears between the quotes of a JSON string:
# lone surrogates as escapes (either case), bytes that are not UTF-8 (an encoded
# surrogate among them), and a proper surrogate pair that must survive.
BAD_TEXT_PIECES = [b"a\\ud83d", b"\\udc00b", b"c\xff\xfed", b"\\ud83d\\ude00", b"e\xed\xa0\xbdf",
                   b"\\uD800"]
BAD_TEXT = "a\ufffd\ufffdbc\ufffd\ufffdd\U0001f600e\ufffd\ufffd\ufffdf\ufffd"
BAD_MESSAGE = {"openai": b'{"error": {"message": "Rate limit \\ud83d reached \xed\xa0\xbd for fake-model", '
                         b'"type": "rate_limit_error"}}',
               "ollama": b'{"error": "model \\udc00 \xed\xa0\xbd not found"}'}
BAD_MESSAGE["generate"] = BAD_MESSAGE["ollama"]


# ``errorpage`` mode: what a proxy in front of an upstream answers, never for clients' eyes.
ERROR_PAGE_MARKER = "gw-internal-7c1e.corp"
ERROR_PAGES = {
    "html": ("text/html", (f"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad "
                           f"Gateway</h1></center><hr><center>nginx ({ERROR_PAGE_MARKER}:8080)</center>"
                           "</body></html>").encode()),
    "json": ("application/json", json.dumps({"detail": f"no route to {ERROR_PAGE_MARKER}"}).encode()),
}
LONG_MESSAGE_CHARS = 10_000
ERROR_PAGES["long"] = ("application/json", json.dumps({"error": {
    "message": "overloaded " + "." * LONG_MESSAGE_CHARS + ERROR_PAGE_MARKER}}).encode())


def bad_text_event(api: str, piece: bytes) -> bytes:
    """A token event whose content is ``piece``, written as is (escapes and bytes alike)."""
    if api == "openai":
        return (b'data: {"id":"chatcmpl-fake","object":"chat.completion.chunk","choices":[{"index":0,'
                b'"delta":{"content":"' + piece + b'"},"finish_reason":null}]}\n\n')
    return b'{"model":"fake","message":{"role":"assistant","content":"' + piece + b'"},"done":false}\n'


_CHOICE = {"index": 0, "delta": {"content": ""}, "finish_reason": None}
_COUNTS = {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
_LINE = {"model": "fake", "message": {"role": "assistant", "content": ""}, "done": False}
_LAST = {**_LINE, "done": True, "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 1}
# Objects of the wrong shape, per API, by the name ``shape?bad=<name>`` picks.
BAD_SHAPES: dict[str, dict[str, dict]] = {
    "openai": {
        "usage": {"choices": [], "usage": "lots"},
        "choices": {"choices": {"0": _CHOICE}},
        "choice": {"choices": ["x"]},
        "delta": {"choices": [{**_CHOICE, "delta": "x"}]},
        "content": {"choices": [{**_CHOICE, "delta": {"content": 5}}]},
        "finish": {"choices": [{**_CHOICE, "finish_reason": 5}]},
        "count_null": {"choices": [], "usage": {**_COUNTS, "prompt_tokens": None}},
        "count_type": {"choices": [], "usage": {**_COUNTS, "completion_tokens": "1"}},
    },
    "ollama": {
        "message": {**_LINE, "message": "x"},
        "content": {**_LINE, "message": {"role": "assistant", "content": 5}},
        "done": {**_LINE, "done": "yes"},
        "finish": {**_LAST, "done_reason": 5},
        "count_null": {**_LAST, "prompt_eval_count": None},
        "count_type": {**_LAST, "eval_count": "1"},
    },
}


_TOOL_INDEX = {"index": 0, "id": "call_fake0", "type": "function"}
_TOOL_CHOICE = {"index": 0, "delta": {"tool_calls": [_TOOL_INDEX]}, "finish_reason": None}
BAD_SHAPES["openai"].update({
    "reasoning": {"choices": [{**_CHOICE, "delta": {"reasoning_content": 5}}]},
    "tool_calls": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": {"index": 0}}}]},
    "tool_call": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": ["x"]}}]},
    "tool_index": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [{**_TOOL_INDEX, "index": "0"}]}}]},
    "tool_no_index": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [{"id": "call_x"}]}}]},
    "tool_id": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [{**_TOOL_INDEX, "id": 7}]}}]},
    "tool_function": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [{**_TOOL_INDEX,
                                                                             "function": "f"}]}}]},
    "tool_name": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [{**_TOOL_INDEX,
                                                                         "function": {"name": 5}}]}}]},
    "tool_arguments": {"choices": [{**_TOOL_CHOICE, "delta": {"tool_calls": [
        {**_TOOL_INDEX, "function": {"name": "f", "arguments": {"a": 1}}}]}}]},
})


def _ollama_calls(calls: object, **message: object) -> dict:
    return {**_LINE, "message": {"role": "assistant", "content": "", "tool_calls": calls, **message}}


BAD_SHAPES["ollama"].update({
    "thinking": {**_LINE, "message": {"role": "assistant", "content": "", "thinking": 5}},
    "tool_calls": _ollama_calls({"function": {"name": "f", "arguments": {"a": 1}}}),
    "tool_call": _ollama_calls(["x"]),
    "tool_function": _ollama_calls([{"name": "f"}]),
    "tool_name": _ollama_calls([{"function": {"name": 5, "arguments": {}}}]),
    "tool_arguments": _ollama_calls([{"function": {"name": "f", "arguments": '{"a": 1}'}}]),
    "tool_id": _ollama_calls([{"id": 7, "function": {"name": "f", "arguments": {}}}]),
})

# ``tools`` mode: two calls, arguments with non-ASCII text and nesting; OpenAI streams each
# call's arguments JSON in TOOL_FRAGMENTS pieces.
TOOL_CALLS = [
    {"id": "call_fake0", "name": "get_weather", "arguments": {"city": "Zürich", "unit": "celsius"}},
    {"id": "call_fake1", "name": "search", "arguments": {"query": "你好 world", "filters": {"limit": 3}}},
]
TOOL_FRAGMENTS = 3
TOOL_USAGE = {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42}
# ``reasoning`` mode.
REASONING = ["Let me think", " about 你好", " first."]
REASONING_USAGE = {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16,
                   "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
                   "completion_tokens_details": {"reasoning_tokens": 3, "audio_tokens": 0,
                                                 "accepted_prediction_tokens": 0,
                                                 "rejected_prediction_tokens": 0}}


def pieces(text: str, n: int) -> list[str]:
    """``text`` cut in ``n`` pieces of about the same length."""
    size = -(-len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


def tools_frames(api: str, p: dict) -> bytes:
    """The whole ``tools`` answer after the head, up to the last HTTP chunk."""
    chosen = TOOL_CALLS[:int(p.get("calls", len(TOOL_CALLS)))]
    if api != "openai":
        calls = []
        for i, call in enumerate(chosen):
            function: dict = {"name": call["name"], "arguments": call["arguments"]}
            calls.append({"id": call["id"], "function": {"index": i, **function}} if p.get("ids")
                         else {"function": function})
        return (http_chunk(ollama_message({"tool_calls": calls}))
                + http_chunk(ollama_message({}, done=True, done_reason="stop", prompt_eval_count=12,
                                            eval_count=30)) + END)
    frames = [openai_delta({"role": "assistant", "content": None})]
    for i, call in enumerate(chosen):
        frames.append(openai_delta({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                                    "function": {"name": call["name"], "arguments": ""}}]}))
        for piece in pieces(json.dumps(call["arguments"], ensure_ascii=False), TOOL_FRAGMENTS):
            frames.append(openai_delta({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}))
    frames += [openai_delta({}, "tool_calls"), openai_chunk(None, usage=TOOL_USAGE)]
    return b"".join(http_chunk(f) for f in frames) + OPENAI_DONE


def reasoning_chunks(api: str, p: dict) -> tuple[list[bytes], bytes]:
    """The ``reasoning`` answer after the head: its HTTP chunks, and the tail that ends it."""
    n = int(p.get("tokens", 5))
    if api != "openai":
        frames = [ollama_message({"thinking": piece}) for piece in REASONING]
        frames += [ollama_message({"content": t}) for t in token_list(n)]
        frames.append(ollama_message({}, done=True, done_reason="stop", prompt_eval_count=7, eval_count=9))
        return [http_chunk(f) for f in frames], END
    field = "reasoning" if p.get("field") == "reasoning" else "reasoning_content"
    frames = [openai_delta({"role": "assistant", "content": ""})]
    frames += [openai_delta({"content": None, field: piece}) for piece in REASONING]
    frames += [openai_chunk(t) for t in token_list(n)]
    frames += [openai_chunk(None, "stop"), openai_chunk(None, usage=REASONING_USAGE)]
    return [http_chunk(f) for f in frames], OPENAI_DONE


def reasoning_frames(api: str, p: dict) -> bytes:
    """The whole ``reasoning`` answer after the head, up to the last HTTP chunk."""
    chunks, tail = reasoning_chunks(api, p)
    return b"".join(chunks) + tail


def nousage_frames(api: str, p: dict) -> bytes:
    """``tokens`` tokens and the end without any usage, after the head."""
    tokens = b"".join(TOKEN_FRAMES[api][i % len(TOKENS)] for i in range(int(p.get("tokens", 5))))
    if api == "openai":
        return tokens + OPENAI_STOP + OPENAI_DONE
    return tokens + http_chunk(ollama_message({}, done=True, done_reason="stop")) + END


def zerousage_frames(api: str, p: dict) -> bytes:
    """``tokens`` tokens and the end with a usage of explicit zeros, after the head."""
    tokens = b"".join(TOKEN_FRAMES[api][i % len(TOKENS)] for i in range(int(p.get("tokens", 5))))
    if api == "openai":
        zero = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        return tokens + OPENAI_STOP + http_chunk(openai_chunk(None, usage=zero)) + OPENAI_DONE
    return tokens + http_chunk(ollama_message({}, done=True, done_reason="stop", prompt_eval_count=0,
                                              eval_count=0)) + END


def cachedprompt_frames(api: str, p: dict) -> bytes:
    """``tokens`` tokens and an end whose counts leave the prompt's out (Ollama), after the head."""
    n = int(p.get("tokens", 5))
    tokens = b"".join(TOKEN_FRAMES[api][i % len(TOKENS)] for i in range(n))
    if api == "openai":
        return tokens + end_frames(api, n)
    return tokens + http_chunk(ollama_message({}, done=True, done_reason="stop", eval_count=n)) + END


def usagecut_frames(api: str, p: dict) -> bytes:
    """``tokens`` tokens, then (OpenAI) the finish and usage chunks, and no end: the connection
    closes before ``[DONE]`` (the last HTTP chunk is not sent either)."""
    n = int(p.get("tokens", 5))
    tokens = b"".join(TOKEN_FRAMES[api][i % len(TOKENS)] for i in range(n))
    if api != "openai":
        return tokens
    usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
    return tokens + OPENAI_STOP + http_chunk(openai_chunk(None, usage=usage))


def end_frames(api: str, n: int) -> bytes:
    """The proper end of a stream of ``n`` tokens, up to the last HTTP chunk."""
    if api != "openai":
        return OLLAMA_END[api]
    usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
    return OPENAI_STOP + http_chunk(openai_chunk(None, usage=usage)) + OPENAI_DONE


def end_events(api: str, n: int) -> list[bytes]:
    """The proper end of a stream of ``n`` tokens, as events (no HTTP framing)."""
    if api != "openai":
        return [ollama_line("", done=True, generate=api == "generate")]
    usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}
    return [openai_chunk(None, "stop"), openai_chunk(None, usage=usage), b"data: [DONE]\n\n"]


class PeerGone(Exception):
    pass


def new_record(tag: str, **fields: object) -> dict:
    if COUNT[0] >= MAX_RECORDS:  # bounded: forget the oldest tags
        for old in list(LOG)[: max(1, len(LOG) // 2)]:
            COUNT[0] -= len(LOG.pop(old))
    record = {"tag": tag, **fields, "opened": time.monotonic(), "closed_by_peer": None,
              "finished": None, "sent": 0}
    LOG.setdefault(tag, []).append(record)
    COUNT[0] += 1
    changed()
    return record


def changed() -> None:
    """Wake the long-polls of ``GET /_log?wait=...``: a record changed."""
    event, CHANGED[0] = CHANGED[0], gevent.event.Event()
    event.set()


def mark(record: dict, field: str) -> None:
    """Set a record's time ``field`` (once) and tell the long-polls."""
    if record[field] is None:
        record[field] = time.monotonic()
        changed()


def serve(sock: socket.socket, record: dict, api: str, mode: str, p: dict, keep: bool) -> None:
    n = int(p.get("tokens", 5))
    repeat = int(p.get("repeat", 1))
    delay = float(p.get("delay_ms", 200 if mode == "slow" else 0)) / 1000
    at = int(p.get("at", {"inband": 0, "malformed": 0, "drop": 2, "silence": 1, "shape": 0,
                          "keepalive": 2}.get(mode, -1)))

    if mode == "hang":
        gevent.sleep(float(p.get("silence_s", 60)))
        return
    if mode == "reset":
        return
    if mode == "status":
        body = BAD_MESSAGE[api] if p.get("message") == "bad" else STATUS_BODY[api]
        extra = (f"Retry-After: {p['retry_after']}",) if "retry_after" in p else ()
        status = int(p.get("status", 429))
        sock.sendall(head(status, "application/json", "Error", len(body), keep, extra) + body)
        return
    if mode == "errorpage":
        ctype, body = ERROR_PAGES[p.get("body", "html")]
        sock.sendall(head(int(p.get("status", 502)), ctype, "Bad Gateway", len(body)) + body)
        return
    if mode == "redirect":
        status = int(p.get("status", 302))
        sock.sendall(f"HTTP/1.1 {status} Redirect\r\nLocation: {p['_path']}?followed=1\r\n"
                     "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        return
    if mode == "gzipbad":
        gzip_head = head(200, "text/event-stream").replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")
        sock.sendall(gzip_head + http_chunk(b"this is not gzip at all") + END)
        return
    if mode in ("gzip", "unchunked"):
        ctype = "text/event-stream" if api == "openai" else "application/x-ndjson"
        events = [token_event(api, t) for t in token_list(n)] + end_events(api, n)

        def pace(i: int) -> None:  # delay_ms between events; silence_s after ``at`` tokens
            if i and delay:
                gevent.sleep(delay)
            if i == at:
                gevent.sleep(float(p.get("silence_s", 0)))
        if mode == "unchunked":
            sock.sendall(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nConnection: close\r\n\r\n".encode())
            for i, event in enumerate(events):
                pace(i)
                sock.sendall(event)
            record["sent"] = n
            return
        gz = zlib.compressobj(wbits=31)  # 31: the gzip container
        sock.sendall(head(200, ctype, extra=("Content-Encoding: gzip",)))
        for i, event in enumerate(events):
            pace(i)
            sock.sendall(http_chunk(gz.compress(event) + gz.flush(zlib.Z_SYNC_FLUSH)))
        sock.sendall(http_chunk(gz.flush()) + END)
        record["sent"] = n
        return
    if mode == "burst":  # the benchmark's "upstream answers at once": everything in one write
        frames = b"".join(TOKEN_FRAMES[api][i % len(TOKENS)] for i in range(n))
        sock.sendall(HEAD[api, keep] + frames + end_frames(api, n))
        record["sent"] = n
        return
    sock.sendall(HEAD[api, keep])
    if mode == "reasoning" and delay:
        chunks, tail = reasoning_chunks(api, p)
        for chunk in chunks:
            gevent.sleep(delay)
            sock.sendall(chunk)
        sock.sendall(tail)
        return
    if mode in ANSWERS:
        sock.sendall(ANSWERS[mode](api, p))
        return
    if mode == "badtext":
        for piece in BAD_TEXT_PIECES:
            sock.sendall(http_chunk(bad_text_event(api, piece)))
            record["sent"] += 1
        sock.sendall(end_frames(api, len(BAD_TEXT_PIECES)))
        return
    if mode == "endless":
        for i in range(int(p.get("at", 0))):
            sock.sendall(TOKEN_FRAMES[api][i % len(TOKENS)])
            record["sent"] += 1
        piece = b"x" * 65536
        sock.sendall(http_chunk(b"data: " + piece if api == "openai" else b'{"message": "' + piece))
        for _ in range(int(p.get("size_kb", 8192)) // 64):
            sock.sendall(http_chunk(piece))
        return
    if mode == "split":
        for piece in ["h\u00e9llo", " \u4f60\u597d", " w\u00f6rld"]:
            frame = token_event(api, piece)
            if api == "openai":
                frame = frame.replace(b"\n", b"\r\n")
            cut = next(i for i in range(len(frame)) if frame[i] >= 0x80) + 1  # inside a character
            sock.sendall(http_chunk(frame[:cut]))
            gevent.sleep(0.05)
            sock.sendall(http_chunk(frame[cut:]))
            gevent.sleep(0.02)
        sock.sendall(end_frames(api, n))
        return
    frames = TOKEN_FRAMES[api] if repeat == 1 else [http_chunk(token_event(api, t * repeat)) for t in TOKENS]
    for i in range(n):
        if i == at:
            if mode == "inband":
                sock.sendall(INBAND[api])
                return
            if mode == "malformed":
                sock.sendall(MALFORMED[api])
                return
            if mode == "drop":
                return
            if mode == "shape":
                sock.sendall(http_chunk(bad_shape_frame(api, p.get("bad", ""))) + end_frames(api, n))
                return
            if mode == "silence":
                gevent.sleep(float(p.get("silence_s", 5)))
            if mode == "keepalive":
                beat = http_chunk(b": keep-alive\n\n" if api == "openai" else b"\n")
                every = float(p.get("every_ms", 100)) / 1000
                for _ in range(int(float(p.get("silence_s", 10)) / every)):
                    sock.sendall(beat)
                    gevent.sleep(every)
        if delay and i:
            gevent.sleep(delay)
        sock.sendall(frames[i % len(TOKENS)])
        record["sent"] += 1
    sock.sendall(end_frames(api, n))


ANSWERS = {"tools": tools_frames, "reasoning": reasoning_frames, "nousage": nousage_frames,
           "zerousage": zerousage_frames, "cachedprompt": cachedprompt_frames, "usagecut": usagecut_frames}


def bad_shape_frame(api: str, bad: str) -> bytes:
    obj = BAD_SHAPES["openai" if api == "openai" else "ollama"][bad]
    line = json.dumps(obj).encode()
    return b"data: " + line + b"\n\n" if api == "openai" else line + b"\n"


def watch(sock: socket.socket, record: dict, writer: gevent.Greenlet) -> None:
    """Block in recv (no polling) until the peer closes, then stop the writer."""
    try:
        if sock.recv(1, socket.MSG_PEEK):
            return  # the client's next request (kept alive): leave it to be read
    except OSError:
        pass
    if record["finished"] is None:  # not our own close racing this recv
        mark(record, "closed_by_peer")
        writer.kill(PeerGone, block=False)


# GET answers of the real APIs that readiness checks use.
PROBES = {"/v1/models": {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]},
          "/api/version": {"version": "0.0.0-fake"}}


def answer_log(sock: socket.socket, query: str) -> None:
    q = parse_qs(query)
    if "wait" in q:  # long-poll: until a record of the tag has this field set, or a timeout
        tag, field = q.get("tag", [""])[0], q["wait"][0]
        deadline = time.monotonic() + min(float(q.get("timeout", ["5"])[0]), 30.0)
        while not any(r.get(field) is not None for r in LOG.get(tag, [])):
            if not CHANGED[0].wait(max(0.0, deadline - time.monotonic())):
                break
    if "prefix" in q:  # {tag: records} for every tag starting with prefix
        prefix = q["prefix"][0]
        out = json.dumps({t: r for t, r in LOG.items() if t.startswith(prefix)}).encode()
    else:
        out = json.dumps(LOG.get(q.get("tag", [""])[0], [])).encode()
    sock.sendall(head(200, "application/json", length=len(out)) + out)


def read_request(sock: socket.socket, buf: bytes) -> tuple[str, str, dict, bytes, bytes] | None:
    """One request (method, target, headers, body) and the bytes after it; None at EOF."""
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        if not more:
            return None
        buf += more
    header, _, rest = buf.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(rest) < length:
        more = sock.recv(65536)
        if not more:
            return None
        rest += more
    return method, target, headers, rest[:length], rest[length:]


def handle(sock: socket.socket, addr) -> None:
    # As real servers do: no Nagle delay for small frames on a kept-alive connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    try:
        for _ in range(10_000):  # requests on one kept-alive connection
            parsed = read_request(sock, buf)
            if parsed is None:
                return
            method, target, headers, body, buf = parsed
            url = urlsplit(target)
            if method == "GET" and url.path in ("/_log", "/_health"):
                answer_log(sock, url.query)
                return
            if method == "GET" and url.path in PROBES:  # what streamapp's /readyz asks
                out = json.dumps(PROBES[url.path]).encode()
                sock.sendall(head(200, "application/json", length=len(out)) + out)
                return
            api = APIS.get(url.path) or fake_embed.APIS.get(url.path)
            answer = fake_embed.serve if url.path in fake_embed.APIS else serve
            if method != "POST" or api is None:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                return
            request = json.loads(body)
            mode, _, query = str(request.get("model", "normal")).partition("?")
            params = {k: v[0] for k, v in parse_qs(query).items()}
            params["_path"] = url.path
            messages = request.get("messages") or [{}]
            if mode == "tools" and "then" in params and messages[-1].get("role") == "tool":
                mode, params["tokens"] = "normal", params["then"]  # the tool's result came back: answer
            followed = "followed=1" in url.query  # a client that followed our redirect
            if followed:
                mode = "normal"
            keep = mode in KEEP_ALIVE_MODES and headers.get("connection", "").lower() != "close"
            record = new_record(params.get("tag", ""), mode=mode, api=api, messages=request.get("messages"),
                                stream=request.get("stream"), stream_options=request.get("stream_options"),
                                authorization=headers.get("authorization"), followed=followed,
                                body=request)
            watcher = gevent.spawn(watch, sock, record, gevent.getcurrent())
            try:
                answer(sock, record, api, mode, params, keep)
            except PeerGone:
                return
            except OSError:  # a write failed: the peer is gone
                mark(record, "closed_by_peer")
                return
            finally:
                mark(record, "finished")
                watcher.kill(block=True)
            if not keep:
                return
    except PeerGone:  # the watcher's kill landed after serve() was done
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
