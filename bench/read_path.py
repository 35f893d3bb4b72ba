"""CPU per event of the upstream read path, in process: each layer of the body read, apart.

Usage (from the repository root)::

    .venv/bin/python bench/read_path.py                 # 9 rounds, both shapes, every variant
    .venv/bin/python bench/read_path.py --rounds 15 --tokens 400 --reps 20
    .venv/bin/python bench/read_path.py --provider ollama   # NDJSON instead of SSE

One fake upstream (``tests/fake_upstream.py``, its own process: its CPU is not counted) and,
in this process (gevent-patched, as a worker is), the OpenAI provider's path over a real
socket, timed from the response's headers to the body's end (the request apart). Figures
are CPU time of this process (``time.process_time``) per token event, so other processes
on the machine do not count; the variants alternate within each round (one order, then
the reverse) and the report gives median [min-max] over rounds.

Shapes: ``burst`` (the whole answer in one write: reads as full as they get, pure CPU),
``at once`` (``normal``: every token its own HTTP chunk, written at once, so one
read of the socket brings many) and ``paced`` (``slow`` with ``--delay-ms``: a chunk per read,
the shape of a real model's stream).

Variants of the body read (``iter_chunks``), each under two levels:

- ``read``: the body's bytes only (POST, then read to the end, nothing decoded)
- ``events``: the provider's whole stream (SSE decoded, JSON parsed, events made)

Body readers:

- ``urllib3``: urllib3's ``read_chunked`` (a ``readline``, two reads and a decode call per
  HTTP chunk), what ``streamapp.providers._http`` used before the lean read
- ``dechunk``: ``_chunked.dechunk`` over the socket reader's ``read1`` (one block per read)
- ``requests``: ``Response.iter_content(None)``, requests' own layers over urllib3's
  ``stream``: what a relay built on ``requests`` reads through
- ``recv``: ``dechunk`` over the socket's own ``recv`` after the first read, without the
  ``BufferedReader`` and ``SocketIO`` under ``read1`` (reaches into urllib3's private
  members, so only here: what those two layers cost)
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import harness as h  # noqa: E402

sys.path.insert(0, str(h.ROOT))

from streamapp.events import Delta  # noqa: E402
from streamapp.providers import _http  # noqa: E402
from streamapp.providers._chunked import dechunk  # noqa: E402
from streamapp.providers.base import ChatRequest  # noqa: E402
from streamapp.providers.ollama import OllamaProvider  # noqa: E402
from streamapp.providers.openai import OpenAIProvider  # noqa: E402

LEAN = _http.iter_chunks
Provider = OpenAIProvider | OllamaProvider


def urllib3_reader(resp, what: str) -> Iterator[bytes]:
    """The body through urllib3's ``read_chunked`` (the read before the lean one)."""
    with _http.translate_errors(what):
        yield from resp.raw.read_chunked(_http.READ_SIZE, decode_content=False)


def requests_reader(resp, what: str) -> Iterator[bytes]:
    """The body through requests' ``iter_content`` (its generator over urllib3's ``stream``)."""
    with _http.translate_errors(what):
        yield from resp.iter_content(None)


def recv_reader(resp, what: str) -> Iterator[bytes]:
    """``dechunk`` over the socket's own ``recv`` past the first read (no ``BufferedReader``,
    no ``SocketIO``): what the two layers left under ``dechunk`` cost."""
    fp = resp.raw._original_response.fp
    sock = resp.raw._connection.sock
    first = [True]

    def read1(n: int) -> bytes:
        if first[0]:  # what the reader holds past the headers; after it, its buffer is empty
            first[0] = False
            return fp.read1(n)
        return sock.recv(n)
    with _http.translate_errors(what):
        yield from dechunk(read1, _http.READ_SIZE)
        resp.raw._original_response.close()
        resp.raw.release_conn()


READERS: dict[str, Callable] = {"urllib3": urllib3_reader, "dechunk": LEAN, "requests": requests_reader,
                                 "recv": recv_reader}


def one_read(provider: Provider, model: str) -> tuple[int, float]:
    """POST, then read the body's bytes to the end: (0, CPU s of the read, the request apart)."""
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    resp = _http.post_stream(provider.session, provider.what, provider.url, payload, {}, provider.timeouts)
    try:
        t0 = time.process_time()
        for _ in _http.iter_chunks(resp, provider.what):
            pass
        return 0, time.process_time() - t0
    finally:
        resp.close()


def one_stream(provider: Provider, model: str) -> tuple[int, float]:
    """The provider's whole stream: (token events, CPU s from ``Opened``, the request apart)."""
    events = provider.stream(ChatRequest(messages=[{"role": "user", "content": "hi"}], model=model))
    next(events)  # Opened: the request is sent and the headers are in
    t0 = time.process_time()
    got = sum(type(e) is Delta for e in events)
    return got, time.process_time() - t0


def measure(provider: Provider, level: str, model: str, tokens: int, reps: int) -> float:
    """CPU µs per token event over ``reps`` streams, reading the body only."""
    run = one_stream if level == "events" else one_read
    spent = 0.0
    for _ in range(reps):
        got, cpu = run(provider, model)
        spent += cpu
        if level == "events" and got != tokens:
            raise RuntimeError(f"{got} token events, expected {tokens}")
    return spent * 1e6 / (tokens * reps)


def stats(values: list[float]) -> str:
    values = sorted(values)
    return f"{h.median(values):6.2f} [{values[0]:.2f}-{values[-1]:.2f}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--reps", type=int, default=10, help="streams per variant per round (at once)")
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--paced-reps", type=int, default=3, help="streams per variant per round (paced)")
    p.add_argument("--delay-ms", type=int, default=2, help="paced: between tokens")
    p.add_argument("--readers", default=",".join(READERS))
    p.add_argument("--provider", choices=("openai", "ollama"), default="openai",
                   help="the OpenAI provider (SSE) or the Ollama one (NDJSON)")
    args = p.parse_args(argv)
    readers = [r for r in args.readers.split(",") if r]
    shapes = {"burst": (f"burst?tokens={args.tokens}", args.reps),
              "at once": (f"normal?tokens={args.tokens}", args.reps),
              "paced": (f"slow?tokens={args.tokens}&delay_ms={args.delay_ms}", args.paced_reps)}
    logdir = Path(tempfile.mkdtemp(prefix="read-path-"))
    upstream = h.start_upstream(logdir, "read-path-upstream")
    try:
        provider = (OpenAIProvider(f"{upstream.url}/v1", "x", "m", (5.0, 30.0)) if args.provider == "openai"
                    else OllamaProvider(upstream.url, "m", (5.0, 30.0)))
        results: dict[tuple[str, str, str], list[float]] = {}
        cells = [(s, lv, r) for s in shapes for lv in ("read", "events") for r in readers]
        for s, lv, r in cells:  # warm-up: imports, the pool's connection, caches
            _http.iter_chunks = READERS[r]
            measure(provider, lv, shapes[s][0], args.tokens, 1)
        for rnd in range(args.rounds):
            order = cells if rnd % 2 == 0 else list(reversed(cells))
            for s, lv, r in order:
                _http.iter_chunks = READERS[r]
                model, reps = shapes[s]
                results.setdefault((s, lv, r), []).append(measure(provider, lv, model, args.tokens, reps))
        _http.iter_chunks = LEAN
    finally:
        upstream.stop()
    print(f"{args.provider}: CPU µs per token event, this process only; {args.tokens} tokens per stream; "
          f"median [min-max] over {args.rounds} rounds")
    print(f"{'shape':8s} {'level':7s} " + " ".join(f"{r:>22s}" for r in readers))
    for s in shapes:
        for lv in ("read", "events"):
            print(f"{s:8s} {lv:7s} " + " ".join(f"{stats(results[(s, lv, r)]):>22s}" for r in readers))
    if "urllib3" in readers and "dechunk" in readers:
        for s in shapes:
            for lv in ("read", "events"):
                ratio = [a / b for a, b in zip(results[(s, lv, "dechunk")], results[(s, lv, "urllib3")],
                                               strict=True)]
                saved = [b - a for a, b in zip(results[(s, lv, "dechunk")], results[(s, lv, "urllib3")],
                                               strict=True)]
                print(f"dechunk / urllib3, {s}, {lv}: {stats(ratio)}x, saves {stats(saved)} µs/event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
