"""OpenTelemetry off against on, the same streams interleaved on two streamapp servers (one
worker each, memory store, one fake upstream, OTLP receiver for the one with ``OTEL_*``): the
worker's CPU per event, per round and median. A direct comparison, without the relay that
``bench/run.py --otel`` normalises by (the relay moves by 20 % between runs on a busy machine).

Usage (from the repository root)::

    .venv/bin/python bench/otel_ab.py --tokens 200 --streams 60 --rounds 10
    .venv/bin/python bench/otel_ab.py --tokens 20 --streams 300 --env '{"OTEL_METRICS_EXPORTER": "none"}'
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
from pathlib import Path

import harness as h


def run(proc: h.Proc, streams: int, tokens: int) -> None:
    """``streams`` streamed chat completions of ``tokens`` tokens, one after another, read whole."""
    body = json.dumps({"model": f"openai/normal?tokens={tokens}", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(streams):
        conn = http.client.HTTPConnection("127.0.0.1", proc.port, timeout=20)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{proc.name}: {resp.status}")
        finally:
            conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--streams", type=int, default=60, help="streams per round and server")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--env", default="{}", help="more OTEL_* for the server with OpenTelemetry, as JSON")
    args = parser.parse_args()
    logdir = Path(tempfile.mkdtemp(prefix="streamapp-otel-ab-"))
    started: list[h.Proc] = []
    try:
        upstream = h.start_upstream(logdir)
        started.append(upstream)
        receiver = h.start_otlp_receiver(logdir)
        started.append(receiver)
        servers = {"off": h.start_service(upstream, logdir, "off")}
        started.append(servers["off"])
        servers["on"] = h.start_service(upstream, logdir, "on", env_extra={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **json.loads(args.env)})
        started.append(servers["on"])
        for proc in servers.values():
            run(proc, 20, args.tokens)  # warm-up
        per_event: dict[str, list[float]] = {"off": [], "on": []}
        for rnd in range(args.rounds):
            for name in (("off", "on") if rnd % 2 == 0 else ("on", "off")):
                pids = servers[name].workers()
                before = h.cpu_seconds(pids)
                run(servers[name], args.streams, args.tokens)
                per_event[name].append((h.cpu_seconds(pids) - before) * 1e6 / (args.streams * args.tokens))
        for name, values in per_event.items():
            print(f"{name:3} CPU us/event, per round: {[round(v, 1) for v in values]}; "
                  f"median {h.median(values):.2f}")
        off, on = h.median(per_event["off"]), h.median(per_event["on"])
        print(f"on - off: {on - off:+.2f} us/event ({(on - off) * args.tokens:+.0f} us per stream of "
              f"{args.tokens} tokens)")
        print(f"receiver: {h.http_get(receiver.url + '/_counts')[1].decode()}")
    finally:
        for proc in reversed(started):
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
