"""streamapp benchmark: the service against the plain gevent relay at the same worker count.

Usage (from the repository root)::

    .venv/bin/python bench/run.py            # full default run (~10 min), writes bench/results/latest.*
    .venv/bin/python bench/run.py --quick    # smoke run with small sizes, results in a temp dir
    .venv/bin/python bench/run.py --workloads w1,w1b --rounds 1 --out /tmp/bench
    .venv/bin/python bench/run.py --workloads w1,w2 --otel --out /tmp/bench-otel   # tracing on

Targets, all on one fake upstream (``tests/fake_upstream.py``) started per workload:

- A        streamapp, memory store, 1 worker (gunicorn + gevent, ``conf/gunicorn.conf.py``)
- A-redis  streamapp, Redis store, ``--redis-workers`` workers (default 2, one per core)
- C1, C2   the parsing relay, ``bench/tutorial_relay.py`` (Flask + ``requests.iter_lines``, each
           chunk's JSON parsed and its text sent: the relay a Python developer writes) under the
           same gunicorn gevent worker, on 1 and 2 workers
- P1, P2   the pass-through relay, ``bench/passthrough_relay.py`` (the same, but each upstream line
           yielded as it comes, no parsing: the cheapest relay on ``requests``), 1 and 2 workers
- B        the fake upstream itself, hit directly by the clients: the floor (w1-w3 only)

``--otel`` turns OpenTelemetry on in the streamapp targets (only there: ``OTEL_*`` is otherwise
kept from every process), exporting to an OTLP/HTTP receiver started for the run
(``tests/otlp_receiver.py``) with the SDK's default intervals; what it received is in the notes.
Compare with a run without it: the cost of tracing per event.

Every streamapp figure is compared with EACH relay at the SAME worker count (A with C1 and
P1, A-redis with C2 and P2), as issues #12 and #21 ask; ``--relays C`` or ``--relays P`` runs
one kind only. Each workload runs its targets interleaved, in one order then the reverse
(``--rounds``); a ratio is computed per round (A round r over C1 round r) and reported as
median [min-max] over rounds.

Workloads:

- w1   1 stream x 200 tokens, the upstream writing each token at once (no delay), 100 times
       in a row: CPU per event, time to first event (TTFE)
- w1b  the same, the upstream answering in ONE write (``burst`` mode): TTFE of a burst
- w2   200 concurrent streams x 50 tokens @20 ms: CPU per event
- w3   1,000 concurrent streams x 20 tokens @50 ms: errors, events/s, TTFE p99, gap p99
- w4   2,000 idle streams held: PSS per stream (every worker of the target summed)
- w4h  9,000 idle streams held 30 s by ONE streamapp worker (memory store): none dropped?
- w5   clients leave during an upstream silence: client gone -> upstream connection closed

The clients are ``bench/loadgen.py`` (gevent, raw sockets, its own process). TTFE is
from the request written to the first token event read, per stream. CPU is utime+stime
of the serving processes (all gunicorn workers; the upstream for B) from /proc over the
run, per token event received by the clients. Memory is Pss from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import operator
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import harness as h

FD_RESERVE = 1000  # fds a worker needs besides its streams (listeners, logs, Redis, pipes)
WORKLOADS = ["w1", "w1b", "w2", "w3", "w4", "w4h", "w5"]
FULL = dict(rounds=3, w4_rounds=2, w5_rounds=2, w1_reps=100, w1_tokens=200, w1b_reps=200,
            w2_streams=200, w2_tokens=50, w2_delay_ms=20, w3_streams=1000, w3_tokens=20, w3_delay_ms=50,
            w4_streams=2000, w4_hold_s=5.0, w4_ramp=500, hold_streams=9000, hold_s=30.0,
            w5_streams=50, w5_silence_s=5.0)
QUICK = dict(rounds=2, w4_rounds=1, w5_rounds=1, w1_reps=10, w1_tokens=200, w1b_reps=20,
             w2_streams=50, w2_tokens=20, w2_delay_ms=20, w3_streams=200, w3_tokens=10, w3_delay_ms=50,
             w4_streams=300, w4_hold_s=2.0, w4_ramp=300, hold_streams=500, hold_s=3.0,
             w5_streams=10, w5_silence_s=2.0)


# ----------------------------------------------------------------------------- settings
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="streamapp benchmark (vs the plain gevent relay, same workers)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (~2 min)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list of " + ",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, help="rounds of w1-w3 (one order, then the reverse, ...)")
    p.add_argument("--w4-rounds", type=int, help="rounds of w4 (idle streams)")
    p.add_argument("--w5-rounds", type=int, help="rounds of w5 (clients leave)")
    for key in ("w1_reps", "w1_tokens", "w1b_reps", "w2_streams", "w2_tokens", "w2_delay_ms",
                "w3_streams", "w3_tokens", "w3_delay_ms", "w5_streams"):
        p.add_argument("--" + key.replace("_", "-"), type=int)
    p.add_argument("--w4-streams", type=int, help="idle streams per target for the PSS figure")
    p.add_argument("--w4-hold-s", type=float)
    p.add_argument("--w4-ramp", type=int, help="idle streams opening at once (w4, w4h)")
    p.add_argument("--hold-streams", type=int,
                   help="w4h: idle streams one streamapp worker must hold (default 9000, the issue's figure)")
    p.add_argument("--hold-s", type=float, help="w4h: how long they are held (default 30)")
    p.add_argument("--w5-silence-s", type=float)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="Redis for A-redis ('' to skip A-redis and its relays)")
    p.add_argument("--relays", default="C,P",
                   help="relay kinds to compare with: C (parsing), P (pass-through); default both")
    p.add_argument("--redis-workers", type=int, default=2,
                   help="gunicorn workers of A-redis, and of the relay it is compared with (default 2)")
    p.add_argument("--otel", action="store_true",
                   help="OpenTelemetry on in the streamapp targets, to a receiver started here")
    p.add_argument("--out", default=None, help="results dir (default bench/results; --quick: a temp dir)")
    p.add_argument("--logs", default=None, help="keep process logs here (default: a temp dir)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.relays = [r.strip() for r in args.relays.split(",") if r.strip()]
    if not args.relays or set(args.relays) - set(RELAYS):
        p.error(f"--relays takes a comma list of {','.join(RELAYS)}")
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}")
    clamp_hold(args)
    return args


def clamp_hold(args: argparse.Namespace) -> None:
    """w4h needs 2 sockets per stream in one worker (client + upstream): bounded by the fd limit."""
    limit = h.fd_limit()
    most = (limit - FD_RESERVE) // 2
    args.hold_note = (f"w4h: each held stream needs 2 sockets in the one worker (client + upstream); "
                      f"the open-file limit is {limit}, so at most ~{most} fit with {FD_RESERVE} fds "
                      "of headroom.")
    if args.hold_streams > most:
        args.hold_note += f" Asked for {args.hold_streams}: clamped to {most}."
        args.hold_streams = most


# ----------------------------------------------------------------------------- targets
class Relay:
    """A kind of relay: its name in the report, its gunicorn app, how loadgen reads it."""

    def __init__(self, name: str, app: str, frames: str) -> None:
        self.name, self.app, self.frames = name, app, frames


# Target names: the letter, then the worker count (C1, P2 ...).
RELAYS = {"C": Relay("parsing relay", "tutorial_relay:app", "sse"),
          "P": Relay("pass-through relay", "passthrough_relay:app", "passthrough")}


def relay_workers(target: str) -> int:
    return int(target[1:])


def pairs(args: argparse.Namespace) -> dict[str, list[str]]:
    """Each streamapp target and the relays it is compared with: the same worker count."""
    out = {"A": [f"{kind}1" for kind in args.relays]}
    if args.redis_url:
        out["A-redis"] = [f"{kind}{args.redis_workers}" for kind in args.relays]
    return out


def target_order(args: argparse.Namespace, floor: bool) -> list[str]:
    """Each streamapp target next to its relays (so they run close in time), then B."""
    order: list[str] = []
    for service, relays in pairs(args).items():
        order += [t for t in (service, *relays) if t not in order]
    return order + (["B"] if floor else [])


def target_label(args: argparse.Namespace, target: str) -> str:
    if target == "A":
        return "A streamapp, memory, 1 worker"
    if target == "A-redis":
        return f"A streamapp, Redis, {args.redis_workers} workers"
    if target == "B":
        return "B upstream (floor)"
    n = relay_workers(target)
    return f"{target} {RELAYS[target[0]].name}, {n} worker{'s' * (n > 1)}"


# ----------------------------------------------------------------------------- running
class Bench:
    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        self.args = args
        self.logdir = logdir
        self.runs: list[dict] = []
        self.logs_seen: list[Path] = []
        self.redis_prefix = f"bench-{secrets.token_hex(5)}"
        self.seq = 0
        self.mine: set[int] = {os.getpgrp(), os.getpid()}  # process groups this run started
        self.otlp: h.Proc | None = None  # --otel: the receiver

    def otel_env(self) -> dict[str, str]:
        """--otel: the streamapp targets' OTEL_* (the receiver started on first use)."""
        if not self.args.otel:
            return {}
        if self.otlp is None:
            self.otlp = h.start_otlp_receiver(self.logdir)
            self.mine.add(self.otlp.pid)
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp.url, "OTEL_SERVICE_NAME": "streamapp-bench"}

    def otel_counts(self) -> dict | None:
        """--otel: what the receiver got (requests, spans) and its refusals."""
        if self.otlp is None:
            return None
        try:
            return json.loads(h.http_get(f"{self.otlp.url}/_counts", timeout=10)[1])
        except OSError as exc:
            return {"traces": 0, "spans": 0, "metrics": 0, "errors": f"the receiver did not answer: {exc}"}

    # -- processes ----------------------------------------------------------
    def upstream(self, name: str) -> h.Proc:
        proc = h.start_upstream(self.logdir, name)
        self.mine.add(proc.pid)
        self.logs_seen.append(proc.log)
        return proc

    def start_target(self, target: str, upstream: h.Proc, workload: str, **settings: object) -> h.Proc:
        name = f"{workload}-{target}-{self.seq}"
        self.seq += 1
        if target == "A":
            proc = h.start_service(upstream, self.logdir, name, env_extra=self.otel_env(), **settings)
        elif target == "A-redis":
            proc = h.start_service(upstream, self.logdir, name, redis_url=self.args.redis_url,
                                   redis_prefix=self.redis_prefix, workers=self.args.redis_workers,
                                   env_extra=self.otel_env(), **settings)
        elif target[0] in RELAYS:
            proc = h.start_relay(upstream, self.logdir, name, workers=relay_workers(target),
                                 app=RELAYS[target[0]].app)
        else:
            return upstream
        self.logs_seen.append(proc.log)
        self.mine.add(proc.pid)
        self.warm_up(target, proc, upstream)
        return proc

    def warm_up(self, target: str, proc: h.Proc, upstream: h.Proc) -> None:
        """Short streams so imports, pools and caches are in place before measuring; 40 streams,
        10 at once, so that with 2 workers both get some."""
        spec = self.spec(target, proc, upstream, "normal?tokens=20&tag=warmup", streams=40, concurrency=10)
        self.loadgen(spec, timeout=60)

    def serving_pids(self, target: str, proc: h.Proc, upstream: h.Proc) -> list[int]:
        """Every gunicorn worker of the target (2 workers: both), the upstream for B."""
        return [upstream.pid] if target == "B" else proc.workers()

    def spec(self, target: str, proc: h.Proc, upstream: h.Proc, model: str, **kw: object) -> dict:
        if target == "B":
            spec = {"host": "127.0.0.1", "port": upstream.port, "kind": "openai", "model": model}
        else:
            kind = RELAYS[target[0]].frames if target[0] in RELAYS else "sse"
            spec = {"host": "127.0.0.1", "port": proc.port, "kind": kind,
                    "path": "/ai-stream?prompt=hi&model=" + quote(model, safe="{}")}
        spec.update(kw)
        return spec

    def loadgen(self, spec: dict, timeout: float, on_line=None) -> dict:
        """Run bench/loadgen.py on ``spec``; ``on_line(line, stdin)`` sees its stdout lines."""
        with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
            spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
            spec_path.write_text(json.dumps(spec))
            proc = subprocess.Popen([h.PY, str(h.BENCH / "loadgen.py"), str(spec_path), str(out_path)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                    start_new_session=True)
            self.mine.add(proc.pid)
            table0 = h.cpu_table()
            lines: queue.Queue = queue.Queue()
            reader = threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True)
            reader.start()
            deadline = time.monotonic() + timeout
            try:
                while proc.poll() is None or not lines.empty():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError(f"loadgen did not finish in {timeout:.0f}s")
                    try:
                        line = lines.get(timeout=min(left, 0.5)).strip()
                    except queue.Empty:
                        continue
                    if on_line is not None:
                        on_line(line, proc.stdin)
                proc.wait(10)
                if proc.returncode != 0:
                    raise RuntimeError(f"loadgen exited {proc.returncode}")
                out = json.loads(out_path.read_text())
                out["foreign_cpu_s"], out["foreign_procs"] = h.foreign_cpu(table0, h.cpu_table(), self.mine)
                return out
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, 9)
                    proc.wait(5)

    # -- one measured run ----------------------------------------------------
    def measure(self, workload: str, target: str, rnd: int, proc: h.Proc, upstream: h.Proc,
                model: str, expected_tokens: int, timeout: float, **kw: object) -> dict:
        pids = self.serving_pids(target, proc, upstream)
        # redis-server's CPU is reported apart (it also serves whoever else uses this Redis)
        redis = h.redis_pid(self.args.redis_url) if target == "A-redis" else None
        if redis:
            self.mine.add(redis)
        cpu0, up0 = h.cpu_seconds(pids), h.cpu_seconds([upstream.pid])
        red0 = h.cpu_seconds([redis]) if redis else 0.0
        out = self.loadgen(self.spec(target, proc, upstream, model, **kw), timeout)
        cpu1, up1 = h.cpu_seconds(pids), h.cpu_seconds([upstream.pid])
        run = summarize_streams(out, expected_tokens)
        run.update(workload=workload, target=target, round=rnd, workers=len(pids),
                   cpu_s=round(cpu1 - cpu0, 3), upstream_cpu_s=round(up1 - up0, 3),
                   client_cpu_s=round(out["cpu_s"], 3))
        if run["tokens"]:
            run["cpu_us_per_event"] = round((cpu1 - cpu0) * 1e6 / run["tokens"], 2)
        if redis and run["tokens"]:
            red = (h.cpu_seconds([redis]) - red0) * 1e6 / run["tokens"]
            run["redis_cpu_us_per_event"] = round(red, 2)
            run["cpu_with_redis_us_per_event"] = round(run["cpu_us_per_event"] + red, 2)
        return run

    def record(self, run: dict) -> None:
        self.runs.append(run)
        bits = [f"{run['workload']} r{run['round']} {run['target']:8s}"]
        for key, fmt in (("ttfe_ms", "ttfe p50 {p50:.1f} p90 {p90:.1f} p99 {p99:.1f} ms"),
                         ("gap_ms", "gap p99 {p99:.1f} ms"), ("events_per_s", "{:.0f} ev/s"),
                         ("cpu_us_per_event", "{:.1f} us/ev"), ("pss_per_stream_kb", "pss {:.1f} KB/stream"),
                         ("survivors", "survivors {}"), ("close_ms", "close p50 {p50:.1f} max {max:.1f} ms")):
            value = run.get(key)
            if value is not None and not (isinstance(value, dict) and None in value.values()):
                bits.append(fmt.format(**value) if isinstance(value, dict) else fmt.format(value))
        if run.get("errors"):
            bits.append(f"errors {dict(run['errors'])}")
        print("  " + " | ".join(bits), flush=True)

    def order(self, targets: list[str], rounds: int) -> list[tuple[int, str]]:
        """Round 1 in one order, round 2 in the reverse, ...: drift hits every target alike."""
        out = []
        for r in range(rounds):
            out += [(r + 1, t) for t in (targets if r % 2 == 0 else list(reversed(targets)))]
        return out

    # -- streaming workloads (w1, w1b, w2, w3) ------------------------------------
    def streaming(self, workload: str, model: str, tokens: int, streams: int, concurrency: int,
                  expected_s: float) -> None:
        """Every target on one upstream; ``streams`` streams of ``model``, ``concurrency`` at once."""
        targets = target_order(self.args, floor=True)
        upstream = self.upstream(f"{workload}-upstream")
        procs = {}
        try:
            procs = {t: self.start_target(t, upstream, workload) for t in targets}
            for rnd, target in self.order(targets, self.args.rounds):
                tag = f"{workload}-{target}-{rnd}"
                run = self.measure(workload, target, rnd, procs[target], upstream, f"{model}&tag={tag}",
                                   tokens, timeout=expected_s + 240, streams=streams,
                                   concurrency=concurrency, deadline_s=expected_s + 180)
                self.record(run)
        finally:
            stop_all(procs, upstream)

    def w1(self) -> None:
        a = self.args
        print(f"w1: 1 stream of {a.w1_tokens} tokens, each written at once, {a.w1_reps} times in a row",
              flush=True)
        self.streaming("w1", f"normal?tokens={a.w1_tokens}", a.w1_tokens, a.w1_reps, 1, 0)

    def w1b(self) -> None:
        a = self.args
        print(f"w1b: 1 stream of {a.w1_tokens} tokens, all in ONE upstream write, {a.w1b_reps} times "
              "in a row", flush=True)
        self.streaming("w1b", f"burst?tokens={a.w1_tokens}", a.w1_tokens, a.w1b_reps, 1, 0)

    def w2(self) -> None:
        a = self.args
        print(f"w2: {a.w2_streams} concurrent streams of {a.w2_tokens} tokens at {a.w2_delay_ms} ms",
              flush=True)
        self.streaming("w2", f"slow?tokens={a.w2_tokens}&delay_ms={a.w2_delay_ms}", a.w2_tokens,
                       a.w2_streams, a.w2_streams, a.w2_tokens * a.w2_delay_ms / 1000)

    def w3(self) -> None:
        a = self.args
        print(f"w3: {a.w3_streams} concurrent streams of {a.w3_tokens} tokens at {a.w3_delay_ms} ms",
              flush=True)
        self.streaming("w3", f"slow?tokens={a.w3_tokens}&delay_ms={a.w3_delay_ms}", a.w3_tokens,
                       a.w3_streams, a.w3_streams, a.w3_tokens * a.w3_delay_ms / 1000)

    # -- idle streams (w4, w4h) -------------------------------------------------
    def w4(self) -> None:
        a = self.args
        print(f"w4: {a.w4_streams} idle streams held {a.w4_hold_s:g} s, per target (all its workers)",
              flush=True)
        for rnd, target in self.order(target_order(a, floor=False), a.w4_rounds):
            self.record(self.idle("w4", target, rnd, a.w4_streams, a.w4_hold_s))

    def w4h(self) -> None:
        a = self.args
        print(f"w4h: {a.hold_streams} idle streams held {a.hold_s:g} s by ONE streamapp worker "
              f"(memory store). {a.hold_note}", flush=True)
        self.record(self.idle("w4h", "A", 1, a.hold_streams, a.hold_s))

    def idle(self, workload: str, target: str, rnd: int, streams: int, hold_s: float) -> dict:
        """Open ``streams`` streams that get one token then stay silent; hold them ``hold_s``; sample
        the memory of the target's workers at the end of the hold; count the streams still open.
        A fresh upstream and target per run: memory freed by a previous run would blur the figure."""
        a = self.args
        ramp_timeout = 60.0
        # Silent long enough to outlast the ramp and the hold, shorter than the service's
        # READ_TIMEOUT_S (120 s) so the upstream never times out while held.
        silence = min(115.0, ramp_timeout + hold_s + 15)
        upstream = self.upstream(f"{workload}-upstream-{self.seq}")
        proc = upstream
        # Silent by design: streamapp's stall timer (STALL_TIMEOUT_S, 60 s by default) would end
        # the first streams held when a slow ramp and the hold together pass it.
        settings = {"STALL_TIMEOUT_S": silence + 60} if target.startswith("A") else {}
        try:
            proc = self.start_target(target, upstream, workload, **settings)
            pids = proc.workers()
            before = h.memory_kb_sum(pids)
            sample: dict = {}

            def on_line(line: str, stdin) -> None:
                if line.startswith("ready"):
                    _, opened, ramp_s = line.split()
                    sample.update(opened=int(opened), ramp_s=float(ramp_s))
                elif line == "hold-end":
                    sample.update(mem=h.memory_kb_sum(pids), fds=sum(h.open_fds(p) for p in pids))
                    stdin.write("go\n")
                    stdin.flush()

            spec = self.spec(target, proc, upstream,
                             f"silence?at=1&silence_s={silence:.0f}&tokens=2&tag={workload}-{target}-{rnd}",
                             streams=streams, concurrency=a.w4_ramp, mode="hold", hold_s=hold_s,
                             ramp_timeout_s=ramp_timeout)
            out = self.loadgen(spec, ramp_timeout + hold_s + 180, on_line)
        finally:
            if proc is not upstream:
                proc.stop()
            upstream.stop()
        run = summarize_streams(out, None)
        for key in ("ttfe_ms", "gap_ms", "events_per_s"):
            run.pop(key, None)
        held = max(1, sample.get("opened", 0))
        mem = sample.get("mem", before)
        run.update(workload=workload, target=target, round=rnd, workers=len(pids), streams=streams,
                   hold_s=hold_s, opened=sample.get("opened", 0), ramp_s=sample.get("ramp_s"),
                   survivors=out.get("survivors", 0), dropped=streams - out.get("survivors", 0),
                   mem_before_kb=before, mem_holding_kb=mem, fds_holding=sample.get("fds"),
                   rss_per_stream_kb=round((mem["rss"] - before["rss"]) / held, 2),
                   pss_per_stream_kb=round((mem["pss"] - before["pss"]) / held, 2))
        return run

    # -- clients that leave (w5) -------------------------------------------------
    def w5(self) -> None:
        a = self.args
        print(f"w5: {a.w5_streams} streams whose client leaves during a {a.w5_silence_s:g} s upstream "
              "silence (streamapp with RESUME_GRACE_S=0)", flush=True)
        targets = target_order(a, floor=False)
        upstream = self.upstream("w5-upstream")
        procs = {}
        try:
            for t in targets:
                # streamapp with grace 0: a stream with no reader stops at once (the default grace
                # keeps it for a resume, which is not what this measures)
                settings = {"RESUME_GRACE_S": 0} if t.startswith("A") else {}
                procs[t] = self.start_target(t, upstream, "w5", **settings)
            for rnd, target in self.order(targets, a.w5_rounds):
                self.record(self.leave(target, rnd, procs[target], upstream))
        finally:
            stop_all(procs, upstream)

    def leave(self, target: str, rnd: int, proc: h.Proc, upstream: h.Proc) -> dict:
        """Clients close 0.5-1.5 s after their first token, while the upstream is silent; the
        upstream records when it saw its connection closed. Figure: that instant − the client's."""
        a = self.args
        after_tokens, after_delay = 40, 20
        prefix = f"w5-{target}-{rnd}-"
        model = (f"silence?at=1&silence_s={a.w5_silence_s:g}&tokens={after_tokens + 1}"
                 f"&delay_ms={after_delay}&tag={prefix}{{i}}")
        spec = self.spec(target, proc, upstream, model, streams=a.w5_streams, concurrency=a.w5_streams,
                         mode="disconnect", disconnect_after=[0.5, 1.5], deadline_s=a.w5_silence_s + 60)
        out = self.loadgen(spec, a.w5_silence_s + 120)
        # the upstream ends every connection by silence + tokens at the latest
        records = wait_all_finished(upstream, prefix, a.w5_streams,
                                    a.w5_silence_s + after_tokens * after_delay / 1000 + 10)
        run = summarize_streams(out, None)
        for key in ("ttfe_ms", "gap_ms", "events_per_s"):
            run.pop(key, None)
        closes, ran_out = [], 0
        for i, st in enumerate(out["streams"]):
            recs = records.get(f"{prefix}{i}") or []
            if st["tdisc"] is None or not recs:
                continue
            rec = recs[0]
            if rec["closed_by_peer"] is not None:
                closes.append((rec["closed_by_peer"] - st["tdisc"]) * 1000)
            elif rec["finished"] is not None:
                ran_out += 1  # never closed by the relay: it ran to the end
                closes.append((rec["finished"] - st["tdisc"]) * 1000)
        run.update(workload="w5", target=target, round=rnd, disconnected=len(closes),
                   upstream_ran_to_end=ran_out, close_values_ms=[round(x, 3) for x in closes],
                   close_ms={"p50": h.median(closes), "p90": h.percentile(closes, 90),
                             "max": max(closes) if closes else None})
        return run


def stop_all(procs: dict, upstream: h.Proc) -> None:
    """Stop the targets of a workload, then its upstream."""
    for proc in procs.values():
        if proc is not upstream:
            proc.stop()
    upstream.stop()


def wait_all_finished(upstream: h.Proc, prefix: str, count: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    records: dict = {}
    while time.monotonic() < deadline:
        records = json.loads(h.http_get(f"{upstream.url}/_log?prefix={prefix}", timeout=10)[1])
        if len(records) >= count and all(r["finished"] is not None for rs in records.values() for r in rs):
            break
        time.sleep(0.1)  # bounded poll
    return records


def summarize_streams(out: dict, expected_tokens: int | None) -> dict:
    streams = out["streams"]
    errors: collections.Counter = collections.Counter()
    ttfe, gaps, tokens, last = [], [], 0, None
    for st in streams:
        times = st["times"]
        if st["err"]:
            errors[st["err"]] += 1
        elif expected_tokens is not None and (st["end"] != "end" or len(times) != expected_tokens):
            errors["incomplete"] += 1
        if times:
            # TTFE from the request written (not from connect): what the server makes the client wait
            ttfe.append((times[0] - (st.get("tsent") or st["t0"])) * 1000)
            gaps.extend((b - a) * 1000 for a, b in zip(times, times[1:], strict=False))
            tokens += len(times)
            last = times[-1] if last is None else max(last, times[-1])
    t0 = min((st["t0"] for st in streams if st["t0"]), default=None)
    span = (last - t0) if (last is not None and t0 is not None) else None
    return {
        "streams": len(streams), "tokens": tokens, "errors": dict(errors),
        "ok": len(streams) - sum(errors.values()),
        "ttfe_ms": {"p50": h.percentile(ttfe, 50), "p90": h.percentile(ttfe, 90),
                    "p99": h.percentile(ttfe, 99)},
        "gap_ms": {"p50": h.percentile(gaps, 50), "p99": h.percentile(gaps, 99)},
        "events_per_s": round(tokens / span, 1) if span else None,
        "span_s": round(span, 3) if span else None,
        "wall_s": round(out["t_end"] - out["t_start"], 2),
        "foreign_cpu_s": round(out.get("foreign_cpu_s", 0.0), 2),
        "foreign_procs": out.get("foreign_procs", [])[:5],
    }


# ----------------------------------------------------------------------------- statistics
def runs_of(runs: list[dict], workload: str, target: str) -> list[dict]:
    return [r for r in runs if r["workload"] == workload and r["target"] == target]


def getter(path: str):
    """``"ttfe_ms.p50"`` -> a function reading ``run["ttfe_ms"]["p50"]`` (None when absent)."""
    def get(run: dict):
        value = run
        for part in path.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value
    return get


def values(runs: list[dict], workload: str, target: str, path: str) -> list[float]:
    get = getter(path)
    return [v for v in (get(r) for r in runs_of(runs, workload, target)) if v is not None]


def ratios(runs: list[dict], workload: str, num: str, den: str, path: str,
           den_path: str | None = None) -> list[float]:
    """num/den per round (round r of num over round r of den): one ratio per round. ``den_path``:
    the denominator's metric, when not the same as the numerator's."""
    get, get_den = getter(path), getter(den_path or path)
    by_round = {r["round"]: get_den(r) for r in runs_of(runs, workload, den)}
    out = []
    for r in runs_of(runs, workload, num):
        a, b = get(r), by_round.get(r["round"])
        if a is not None and b:
            out.append(a / b)
    return out


def error_count(runs: list[dict], workload: str, target: str) -> int:
    return sum(sum((r.get("errors") or {}).values()) for r in runs_of(runs, workload, target))


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 or x == 0 else f"{x:.{digits + 1}g}"


def cell(vals: list[float], suffix: str = "", digits: int = 1) -> str:
    """median [min–max] (the spread over rounds), or the one value."""
    if not vals:
        return "–"
    text = fmt_num(h.median(vals), digits) + suffix
    if len(vals) > 1 and min(vals) != max(vals):
        text += f" [{fmt_num(min(vals), digits)}–{fmt_num(max(vals), digits)}]"
    return text


# ----------------------------------------------------------------------------- issue #21 targets
# Per workload: (figure, metric path, streamapp target, limits[, the relays' metric path]).
# ``limits`` maps a relay kind (C parsing, P pass-through) to (comparison, limit); a relay kind
# it does not name is still shown, as a ratio with no target. Every ratio is streamapp over
# the relay of that kind with the same worker count, per round. For TTFE the target applies
# to the median (p50) of a round's streams; p90 is shown beside it.
CPU_1 = "1 stream × {w1_tokens} tok: CPU µs/event"
TTFE_1 = "1 stream × {w1_tokens} tok: TTFE {stat} ms"
TTFE_BURST = "1 stream, burst of {w1_tokens} tok: TTFE {stat} ms"
CPU_2 = "{w2_streams} streams × {w2_tokens} tok @{w2_delay_ms} ms: CPU µs/event"
W3 = "{w3_streams} streams × {w3_tokens} tok @{w3_delay_ms} ms: "
RATIO_GOALS = {
    "w1": [
        (CPU_1, "cpu_us_per_event", "A", {"P": ("<=", 1.0), "C": ("<=", 0.7)}),
        (CPU_1, "cpu_us_per_event", "A-redis", {"P": ("<=", 1.1)}),
        # redis-server's CPU is not the worker's, but it is a cost of Redis mode: shown beside
        (CPU_1 + " incl. redis-server", "cpu_with_redis_us_per_event", "A-redis", {}, "cpu_us_per_event"),
        (TTFE_1.replace("{stat}", "median"), "ttfe_ms.p50", "A", {"P": ("<=", 1.0)}),
        (TTFE_1.replace("{stat}", "median"), "ttfe_ms.p50", "A-redis", {"P": ("<=", 1.0)}),
        (TTFE_1.replace("{stat}", "p90"), "ttfe_ms.p90", "A", {}),
        (TTFE_1.replace("{stat}", "p90"), "ttfe_ms.p90", "A-redis", {}),
    ],
    "w1b": [
        (TTFE_BURST.replace("{stat}", "median"), "ttfe_ms.p50", "A", {"P": ("<=", 1.0)}),
        (TTFE_BURST.replace("{stat}", "median"), "ttfe_ms.p50", "A-redis", {"P": ("<=", 1.0)}),
        (TTFE_BURST.replace("{stat}", "p90"), "ttfe_ms.p90", "A", {}),
        (TTFE_BURST.replace("{stat}", "p90"), "ttfe_ms.p90", "A-redis", {}),
    ],
    "w2": [
        (CPU_2, "cpu_us_per_event", "A", {}),
        (CPU_2, "cpu_us_per_event", "A-redis", {}),
    ],
    "w3": [
        (W3 + "events/s", "events_per_s", "A-redis", {"P": (">=", 1.0)}),
        (W3 + "events/s", "events_per_s", "A", {}),
        (W3 + "TTFE p99 ms", "ttfe_ms.p99", "A-redis", {"P": ("<=", 1.0)}),
        (W3 + "TTFE p99 ms", "ttfe_ms.p99", "A", {}),
        (W3 + "gap p99 ms", "gap_ms.p99", "A-redis", {"P": ("<=", 1.5)}),
        (W3 + "gap p99 ms", "gap_ms.p99", "A", {"P": ("<=", 1.5)}),
    ],
    "w4": [
        ("{w4_streams} idle streams: PSS KB/stream", "pss_per_stream_kb", "A", {"P": ("<=", 0.8)}),
        ("{w4_streams} idle streams: PSS KB/stream", "pss_per_stream_kb", "A-redis", {}),
    ],
}
COMPARE = {"<=": operator.le, ">=": operator.ge}
CLOSE_MS = 20  # w5: client gone -> upstream closed, the median's bound


def goal_row(figure: str, store: str, service: str, relay: str, relay_value: str, ratio: str,
             target: str, ok: bool | None) -> dict:
    result = "info" if target == "–" else ("n/a" if ok is None else ("PASS" if ok else "FAIL"))
    return {"figure": figure, "store": store, "streamapp": service, "relay": relay,
            "relay_value": relay_value, "ratio": ratio, "target": target, "result": result}


def store_label(args: argparse.Namespace, service: str) -> str:
    return "memory, 1 w" if service == "A" else f"Redis, {args.redis_workers} w"


def relay_label(relay: str) -> str:
    return f"{relay} {RELAYS[relay[0]].name}"


def ratio_goal(result: dict, args: argparse.Namespace, workload: str, goal: tuple) -> list[dict]:
    """One row per relay the streamapp target is compared with."""
    figure, path, service, limits = goal[:4]
    relay_path = goal[4] if len(goal) > 4 else path
    runs = result["runs"]
    if service not in pairs(args) or not runs_of(runs, workload, service):
        return []
    rows = []
    service_value = cell(values(runs, workload, service, path))
    for relay in pairs(args)[service]:
        op, limit = limits.get(relay[0], (None, None))
        r = ratios(runs, workload, service, relay, path, relay_path)
        ok = COMPARE[op](h.median(r), limit) if (op and r) else None
        target = f"{op.replace('<=', '≤').replace('>=', '≥')} {limit}×" if op else "–"
        rows.append(goal_row(figure.format(**vars(args)), store_label(args, service), service_value,
                             relay_label(relay), cell(values(runs, workload, relay, relay_path)),
                             cell(r, "×", 2), target, ok))
    return rows


def errors_goal(result: dict, args: argparse.Namespace) -> list[dict]:
    """w3: no stream of A-redis failed or came incomplete, over all rounds."""
    runs, out = result["runs"], []
    if "A-redis" not in pairs(args) or not runs_of(runs, "w3", "A-redis"):
        return []
    streams = sum(r["streams"] for r in runs_of(runs, "w3", "A-redis"))
    errs = error_count(runs, "w3", "A-redis")
    for relay in pairs(args)["A-redis"]:
        out.append(goal_row(f"{args.w3_streams} streams: errors (all rounds)", store_label(args, "A-redis"),
                            f"{errs} of {streams}", relay_label(relay), str(error_count(runs, "w3", relay)),
                            "–", "0", errs == 0))
    return out


def hold_goal(result: dict, args: argparse.Namespace) -> list[dict]:
    """w4h: every idle stream still open at the end of the hold (one worker, memory store)."""
    out = []
    for r in runs_of(result["runs"], "w4h", "A"):
        # held fewer than the 9,000 (--hold-streams): reported, but no verdict
        ok = r["dropped"] == 0 if r["streams"] >= 9000 else None
        held = f"{r['dropped']} dropped (PSS {fmt_num(r['pss_per_stream_kb'])} KB/stream)"
        out.append(goal_row(f"{r['streams']} idle streams held {r['hold_s']:g} s on one worker",
                            "memory, 1 w", held, "–", "–", "–", "0 of 9,000 dropped", ok))
    return out


def close_goals(result: dict, args: argparse.Namespace) -> list[dict]:
    """w5: client gone -> upstream closed, median over every client of every round ≤ CLOSE_MS."""
    runs, out = result["runs"], []
    for service, relays in pairs(args).items():
        rs = runs_of(runs, "w5", service)
        if not rs:
            continue
        closes = [v for r in rs for v in r["close_values_ms"]]
        expected = sum(r["streams"] for r in rs)
        med = h.median(closes)
        for relay in relays:
            relay_closes = [v for r in runs_of(runs, "w5", relay) for v in r["close_values_ms"]]
            ok = med is not None and med <= CLOSE_MS and len(closes) == expected
            figure = f"client gone → upstream closed: median ms ({len(closes)}/{expected} clients)"
            out.append(goal_row(figure, store_label(args, service), fmt_num(med, 2), relay_label(relay),
                                fmt_num(h.median(relay_closes)),
                                cell(ratios(runs, "w5", service, relay, "close_ms.p50"), "×", 2),
                                f"≤ {CLOSE_MS} ms", ok))
    return out


SPECIAL_GOALS = {"w3": errors_goal, "w4h": hold_goal, "w5": close_goals}


def evaluate(result: dict, args: argparse.Namespace) -> list[dict]:
    """The rows of the targets table, workload by workload."""
    rows = []
    for wl in WORKLOADS:
        if wl in SPECIAL_GOALS:
            rows += SPECIAL_GOALS[wl](result, args)
        for goal in RATIO_GOALS.get(wl, []):
            rows += ratio_goal(result, args, wl, goal)
    return rows


# ----------------------------------------------------------------------------- report
DETAIL_METRICS = {
    "stream": [("TTFE p50 ms", "ttfe_ms.p50"), ("TTFE p90 ms", "ttfe_ms.p90"), ("TTFE p99 ms", "ttfe_ms.p99"),
               ("gap p50 ms", "gap_ms.p50"), ("gap p99 ms", "gap_ms.p99"), ("events/s", "events_per_s"),
               ("CPU µs/event", "cpu_us_per_event"), ("redis-server CPU µs/event", "redis_cpu_us_per_event")],
    "w4": [("opened", "opened"), ("survivors", "survivors"), ("RSS KB/stream", "rss_per_stream_kb"),
           ("PSS KB/stream", "pss_per_stream_kb"), ("ramp s", "ramp_s")],
    "w5": [("close median ms", "close_ms.p50"), ("close p90 ms", "close_ms.p90"),
           ("close worst ms", "close_ms.max"), ("upstream ran to end", "upstream_ran_to_end")],
}
DETAIL_METRICS["w4h"] = DETAIL_METRICS["w4"]


def detail_table(result: dict, args: argparse.Namespace) -> list[str]:
    """Every figure of every target, each streamapp column followed by each relay and the ratio."""
    runs = result["runs"]
    cols: list[tuple[str, str, str | None]] = []  # (header, target, relay of a ratio column)
    for service, relays in pairs(args).items():
        cols.append((service, service, None))
        for relay in relays:
            cols += [(relay, relay, None), (f"{service}/{relay}", service, relay)]
    cols.append(("B floor", "B", None))
    lines = ["| workload | metric | " + " | ".join(c[0] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for wl, desc in result["workload_desc"].items():
        first = True
        for title, path in DETAIL_METRICS.get(wl, DETAIL_METRICS["stream"]):
            row = []
            for _, target, relay in cols:
                row.append(cell(ratios(runs, wl, target, relay, path), "×", 2) if relay
                           else cell(values(runs, wl, target, path)))
            if all(c == "–" for c in row):
                continue
            lines.append(f"| {f'**{wl}** {desc}' if first else ''} | {title} | " + " | ".join(row) + " |")
            first = False
        errors = []
        for _, target, relay in cols:
            ran = runs_of(runs, wl, target) and not relay
            errors.append(str(error_count(runs, wl, target)) if ran else "")
        lines.append("| | errors | " + " | ".join(errors) + " |")
    return lines


def describe(result: dict, args: argparse.Namespace) -> list[str]:
    """The header of the report: what ran, and how each figure is made."""
    relays = ", ".join(f"{s} vs {' and '.join(r)}" for s, r in pairs(args).items())
    return [
        f"# streamapp benchmark ({result['started']})", "",
        f"Machine: {result['machine']}. Total runtime {result['runtime_s']:.0f} s. Rounds: {args.rounds} "
        f"(w1–w3), {args.w4_rounds} (w4), {args.w5_rounds} (w5), 1 (w4h); targets interleaved, one order "
        "then the reverse.", "",
        "Targets: " + "; ".join(target_label(args, t) for t in target_order(args, floor=True)) + ". "
        "A is streamapp under gunicorn + gevent (conf/gunicorn.conf.py); C is the parsing relay a tutorial "
        "would write (bench/tutorial_relay.py: Flask + requests iter_lines, each chunk's JSON parsed); P is "
        "the pass-through relay (bench/passthrough_relay.py: the same, each upstream line yielded as it "
        "comes, no parsing); both under the same gunicorn gevent worker; B is the fake upstream hit "
        f"directly (floor). Ratios are streamapp over each relay with the SAME worker count ({relays}), "
        "computed per round, then median [min–max] over rounds; values are the median [min–max] over "
        "rounds.", "",
        "TTFE = request written → first token event read, per stream; gap = between consecutive token "
        "events of a stream; CPU = utime+stime of all the target's workers per token event received "
        "(redis-server's own CPU apart); PSS = (Pss of all the target's workers while holding − before) / "
        "streams held (smaps_rollup); w5 = client close → the upstream saw its connection closed.", "",
    ]


def markdown(result: dict, args: argparse.Namespace) -> str:
    lines = describe(result, args)
    lines += ["## Issue #21 targets (ratio to each relay, same run, same worker count)", "",
              "| figure | streamapp | streamapp value | relay | relay value | ratio | target | result |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {g['figure']} | {g['store']} | {g['streamapp']} | {g['relay']} | {g['relay_value']} | "
              f"{g['ratio']} | {g['target']} | **{g['result']}** |" for g in result["targets"]]
    lines += ["", "## All figures", ""] + detail_table(result, args)
    if result.get("service_log"):
        c = result["service_log"]["counts"]
        lines += ["", "## Service log findings (gunicorn logs of A)", "",
                  f"tracebacks {c['traceback']}, errors {c['error']}, warnings {c['warning']}"]
        lines += [f"- `{x}`" for x in result["service_log"]["examples"]]
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def notes(result: dict, args: argparse.Namespace) -> list[str]:
    runs = result["runs"]
    out = [args.hold_note] if "w4h" in args.workloads else []
    if "w4h" in args.workloads and args.hold_streams < 9000:
        out.append(f"w4h held {args.hold_streams} streams, not the issue's 9,000: its target is n/a")
    for wl in ("w1", "w1b", "w2", "w3"):
        # how busy the 2 cores were: near 2.0 the client or upstream may limit the figures too
        busy = []
        for t in target_order(args, floor=True):
            rs = runs_of(runs, wl, t)
            span = h.median([r["span_s"] or 0 for r in rs]) if rs else None
            if span:
                total = h.median([r["cpu_s"] + r["upstream_cpu_s"] * (t != "B") + r["client_cpu_s"]
                                  for r in rs])
                busy.append(f"{t} {total / span:.2f}")
        if busy:
            out.append(f"{wl}: cores busy (serving + upstream + client CPU / span): " + ", ".join(busy))
    disturbed = [r for r in runs if r.get("foreign_cpu_s", 0) > 0.1 * max(1.0, r.get("wall_s") or 1.0)]
    if disturbed:
        worst = max(disturbed, key=lambda r: r["foreign_cpu_s"])
        who = "; ".join(worst.get("foreign_procs", []))
        out.append(f"DISTURBED: in {len(disturbed)} of {len(runs)} runs other processes (not started by "
                   f"this benchmark) used > 10% of a core, e.g. {worst['workload']} r{worst['round']} "
                   f"{worst['target']}: {worst['foreign_cpu_s']} s ({who}); figures of those runs are "
                   "less reliable")
    else:
        out.append("No other process used noticeable CPU during the measured runs (checked per run, /proc).")
    if any(r.get("redis_cpu_us_per_event") is not None for r in runs):
        out.append("redis-server CPU is that of the whole server: anything else using this Redis during "
                   "a run adds to it")
    return out


def scan_service_logs(paths: list[Path]) -> dict:
    findings = {"counts": {"traceback": 0, "error": 0, "warning": 0}, "examples": []}
    for p in paths:
        f = h.scan_log(p)
        for k, v in f["counts"].items():
            findings["counts"][k] += v
        findings["examples"] += [f"{p.stem}: {x}" for x in f["examples"]]
    findings["examples"] = findings["examples"][:12]
    return findings


def workload_desc(args: argparse.Namespace) -> dict[str, str]:
    desc = {
        "w1": f"1×{args.w1_tokens} tok at once, ×{args.w1_reps}",
        "w1b": f"1×{args.w1_tokens} tok in one write, ×{args.w1b_reps}",
        "w2": f"{args.w2_streams} streams×{args.w2_tokens} tok @{args.w2_delay_ms} ms",
        "w3": f"{args.w3_streams} streams×{args.w3_tokens} tok @{args.w3_delay_ms} ms",
        "w4": f"{args.w4_streams} idle streams held {args.w4_hold_s:g} s",
        "w4h": f"{args.hold_streams} idle streams held {args.hold_s:g} s, one worker",
        "w5": f"{args.w5_streams} clients leave during {args.w5_silence_s:g} s silence",
    }
    return {k: v for k, v in desc.items() if k in args.workloads}


def write_results(outdir: Path, result: dict, md: str) -> None:
    for name, text in (("latest.json", json.dumps(result, indent=1)), ("latest.md", md)):
        tmp = outdir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(outdir / name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    logdir = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="streamapp-bench-logs-"))
    logdir.mkdir(parents=True, exist_ok=True)
    outdir = Path(args.out) if args.out else (
        Path(tempfile.mkdtemp(prefix="streamapp-bench-quick-")) if args.quick else h.BENCH / "results")
    outdir.mkdir(parents=True, exist_ok=True)
    print(f"logs: {logdir}\nresults: {outdir}", flush=True)
    bench = Bench(args, logdir)
    failures = []
    try:
        for wl in args.workloads:
            t = time.monotonic()
            try:
                getattr(bench, wl)()
            except Exception as exc:  # noqa: BLE001 - report and go on with the other workloads
                failures.append(f"{wl}: {type(exc).__name__}: {exc}"[:2000])
                print(f"  {wl} FAILED: {exc}", flush=True)
            print(f"  ({wl} took {time.monotonic() - t:.0f} s)", flush=True)
    finally:
        otel = bench.otel_counts()
        if bench.otlp is not None:
            bench.otlp.stop()
        if args.redis_url:
            try:
                h.redis_cleanup(args.redis_url, bench.redis_prefix)
            except Exception as exc:  # noqa: BLE001
                print(f"redis cleanup failed: {exc}")
    result = {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, open-file limit {h.fd_limit()}, Python {sys.version.split()[0]}",
        "settings": dict(vars(args)),
        "workload_desc": workload_desc(args),
        "runs": bench.runs, "failures": failures,
        "service_log": scan_service_logs([p for p in bench.logs_seen if "-A" in p.name]),
        "logs": str(logdir),
    }
    result["targets"] = evaluate(result, args)
    result["notes"] = notes(result, args) + [f"FAILED {f}" for f in failures]
    if otel is not None:
        result["otel"] = otel
        result["notes"].append(f"--otel: OpenTelemetry on in the streamapp targets; the receiver got "
                               f"{otel['spans']} spans in {otel['traces']} trace exports and "
                               f"{otel['metrics']} metric exports ({otel['errors']} refused)")
    result["runtime_s"] = round(time.monotonic() - started, 1)
    md = markdown(result, args)
    write_results(outdir, result, md)
    print()
    print(md)
    print(f"runtime {result['runtime_s']:.0f} s; wrote {outdir / 'latest.md'} and latest.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
