"""The fake upstream's embeddings: OpenAI's ``POST /v1/embeddings`` and Ollama's ``POST /api/embed``.

``tests/fake_upstream.py`` routes those two paths here; the request is recorded as for chats
(``GET /_log?tag=T``: ``body`` is what streamapp passed on). The request's ``model`` picks the
behaviour, as a query string (``"<mode>?tag=abc&status=404"``). Modes:

- ``normal`` (and any other name) input ``i`` gets ``vector_for(item, i)``, ``dims`` long
  (default 4; OpenAI: the request's ``dimensions`` when given); OpenAI writes them in base64
  when ``encoding_format`` is ``base64``; usage counts ``tokens_of`` the input (OpenAI's
  ``usage``, Ollama's ``prompt_eval_count``)
- ``nousage``   the same without any count
- ``status``    answer ``status`` (default 429) with the API's JSON error body
- ``errorpage`` a proxy's HTML 502 holding ``ERROR_PAGE_MARKER``
- ``inband``    200 with an ``{"error": ...}`` body
- ``hang``      never answer (for ``silence_s``, default 60)
- ``shape``     200 with the object of ``BAD_SHAPES`` named by ``bad``
"""

from __future__ import annotations

import base64
import json
import socket
import struct

import gevent

APIS = {"/v1/embeddings": "openai", "/api/embed": "ollama"}
ERROR_PAGE_MARKER = "gw-embed-3f9a.corp"
ERRORS = {
    "openai": {"error": {"message": "Rate limit reached for fake-embed", "type": "rate_limit_error",
                         "param": None, "code": "rate_limit_exceeded"}},
    "ollama": {"error": 'model "fake-embed" not found, try pulling it first'},
}
BAD_SHAPES = {
    "openai": {
        "data": {"object": "list", "data": {"0": []}, "model": "fake"},
        "item": {"object": "list", "data": ["x"], "model": "fake"},
        "index": {"object": "list", "data": [{"object": "embedding", "index": "0", "embedding": [1.0]}]},
        "vector": {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": {"x": 1}}]},
        "numbers": {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": ["a"]}]},
        "usage": {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}],
                  "usage": {"prompt_tokens": "7", "total_tokens": 7}},
    },
    "ollama": {
        "data": {"model": "fake", "embeddings": {"0": [1.0]}},
        "count": {"model": "fake", "embeddings": []},
        "numbers": {"model": "fake", "embeddings": [["a"]]},
        "usage": {"model": "fake", "embeddings": [[1.0]], "prompt_eval_count": -1},
    },
}


def vector_for(item: str | list[int], index: int, dims: int = 4) -> list[float]:
    """The fake's vector of input ``index``: its length, its index, then 0.5, -1.5, 0.25, ...
    (each exact in float32), ``dims`` long."""
    values = [float(len(item)), float(index)]
    while len(values) < dims:
        values.append([0.5, -1.5, 0.25][(len(values) - 2) % 3])
    return values[:dims]


def tokens_of(inputs: list) -> int:
    """The fake's token count: words of the strings, ids of the token lists."""
    return sum(len(item.split()) if isinstance(item, str) else len(item) for item in inputs)


def _inputs(value: object) -> list:
    if isinstance(value, str) or (isinstance(value, list) and value and isinstance(value[0], int)):
        return [value]
    return value if isinstance(value, list) else []


def answer(api: str, mode: str, p: dict, request: dict) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of the fake's answer."""
    if mode == "status":
        return int(p.get("status", 429)), "application/json", json.dumps(ERRORS[api]).encode()
    if mode == "errorpage":
        page = f"<html><body><h1>502 Bad Gateway</h1>nginx ({ERROR_PAGE_MARKER})</body></html>"
        return 502, "text/html", page.encode()
    if mode == "inband":
        return 200, "application/json", json.dumps(ERRORS[api]).encode()
    if mode == "shape":
        return 200, "application/json", json.dumps(BAD_SHAPES[api][p.get("bad", "data")]).encode()
    inputs = _inputs(request.get("input"))
    dims = int(request.get("dimensions") or p.get("dims", 4)) if api == "openai" else int(p.get("dims", 4))
    vectors = [vector_for(item, i, dims) for i, item in enumerate(inputs)]
    count = tokens_of(inputs)
    if api == "ollama":
        obj: dict = {"model": "fake-embed", "embeddings": vectors, "total_duration": 1000}
        if mode != "nousage":
            obj["prompt_eval_count"] = count
        return 200, "application/json", json.dumps(obj).encode()
    encode = request.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i,
             "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if encode else v}
            for i, v in enumerate(vectors)]
    obj = {"object": "list", "data": data, "model": "fake-embed"}
    if mode != "nousage":
        obj["usage"] = {"prompt_tokens": count, "total_tokens": count}
    return 200, "application/json", json.dumps(obj).encode()


def serve(sock: socket.socket, record: dict, api: str, mode: str, p: dict, keep: bool) -> None:
    """Answer the embeddings request of ``record`` (its ``body``) on ``sock``."""
    if mode == "hang":
        gevent.sleep(float(p.get("silence_s", 60)))
        return
    status, ctype, body = answer(api, mode, p, record["body"])
    head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n")
    sock.sendall(head.encode() + body)
