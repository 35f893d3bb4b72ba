"""streamapp benchmark: the service (A) against the floor (B) and a tutorial relay (C).

Usage (from the repository root)::

    .venv/bin/python bench/run.py            # full default run (< 10 min), writes bench/results/latest.*
    .venv/bin/python bench/run.py --quick    # smoke run with small sizes, results in a temp dir
    .venv/bin/python bench/run.py --workloads w2,w5 --rounds 4 --w3-streams 500

Targets, all on one fake upstream (``tests/fake_upstream.py``) started per workload:

- A  streamapp under gunicorn + gevent with the production ``conf/gunicorn.conf.py``
     (``GET /ai-stream``); ``A-redis`` is the same with the Redis store (w2 only)
- B  the fake upstream itself, hit directly by the clients: the floor
- C  ``bench/tutorial_relay.py``: Flask + ``requests.iter_lines`` under the same gunicorn gevent worker

Each workload runs its targets interleaved, A B C then C B A (``--rounds``), and
every A figure is also given as a ratio to B and to C, computed per round, as
median [min-max] over rounds. The clients are ``bench/loadgen.py`` (gevent, raw
sockets, its own process). CPU is utime+stime of the serving process (gunicorn's
worker; the upstream process for B) from /proc over the run, per token event
received by the clients. Memory is Rss/Pss from /proc/PID/smaps_rollup.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
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
TARGET_NAMES = {"A": "A streamapp", "A-redis": "A streamapp (Redis store)", "B": "B upstream (floor)",
                "C": "C tutorial relay"}


# ----------------------------------------------------------------------------- settings
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="streamapp benchmark (A vs floor B vs tutorial relay C)")
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run (~1 min)")
    p.add_argument("--workloads", default="w1,w2,w3,w4,w5", help="comma list of w1..w5")
    p.add_argument("--rounds", type=int, default=None, help="rounds per workload (A B C, C B A, ...)")
    p.add_argument("--w4-rounds", type=int, default=None, help="rounds for w4 (default: --rounds)")
    p.add_argument("--w1-reps", type=int, default=None)
    p.add_argument("--w1-tokens", type=int, default=None)
    p.add_argument("--w2-streams", type=int, default=None)
    p.add_argument("--w2-tokens", type=int, default=None)
    p.add_argument("--w2-delay-ms", type=int, default=None)
    p.add_argument("--w3-streams", type=int, default=None)
    p.add_argument("--w3-tokens", type=int, default=None)
    p.add_argument("--w3-delay-ms", type=int, default=None)
    p.add_argument("--w4-streams", type=int, default=None)
    p.add_argument("--w4-hold-s", type=float, default=None)
    p.add_argument("--w4-ramp", type=int, default=None, help="streams opening at once in w4")
    p.add_argument("--w5-streams", type=int, default=None)
    p.add_argument("--w5-silence-s", type=float, default=None)
    p.add_argument("--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
                   help="Redis for the A-redis variant of w2 ('' to skip it)")
    p.add_argument("--redis-workers", type=int, default=1,
                   help="gunicorn workers of A-redis (default 1, as for the memory store, so the two "
                        "compare; the production config would start one per core with REDIS_URL)")
    p.add_argument("--out", default=None, help="results dir (default bench/results; --quick: a temp dir)")
    p.add_argument("--logs", default=None, help="keep process logs here (default: a temp dir)")
    args = p.parse_args(argv)
    full = dict(rounds=2, w1_reps=100, w1_tokens=200, w2_streams=200, w2_tokens=50, w2_delay_ms=20,
                w3_streams=1000, w3_tokens=20, w3_delay_ms=50, w4_streams=9000, w4_hold_s=30.0,
                w4_ramp=500, w5_streams=50, w5_silence_s=5.0)
    quick = dict(rounds=2, w1_reps=10, w1_tokens=200, w2_streams=50, w2_tokens=20, w2_delay_ms=20,
                 w3_streams=200, w3_tokens=10, w3_delay_ms=50, w4_streams=300, w4_hold_s=3.0,
                 w4_ramp=300, w5_streams=10, w5_silence_s=2.0)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.w4_rounds is None:
        args.w4_rounds = args.rounds
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    limit = h.fd_limit()
    most = (limit - FD_RESERVE) // 2
    args.w4_note = (f"w4 holds {args.w4_streams} streams: each needs 2 sockets in the one worker "
                    f"(client + upstream) and the per-process open-file limit is {limit}, so at most "
                    f"~{most} fit with {FD_RESERVE} fds of headroom (10,000 would need > {limit}).")
    if args.w4_streams > most:
        args.w4_note += f" Asked for {args.w4_streams}: clamped to {most}."
        args.w4_streams = most
    return args


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

    # -- processes ----------------------------------------------------------
    def upstream(self, name: str) -> h.Proc:
        proc = h.start_upstream(self.logdir, name)
        self.mine.add(proc.pid)
        return proc

    def start_target(self, target: str, upstream: h.Proc, workload: str, **settings: object) -> h.Proc:
        name = f"{workload}-{target}-{self.seq}"
        self.seq += 1
        if target == "A":
            proc = h.start_service(upstream, self.logdir, name, **settings)
        elif target == "A-redis":
            proc = h.start_service(upstream, self.logdir, name, redis_url=self.args.redis_url,
                                   redis_prefix=self.redis_prefix, workers=self.args.redis_workers,
                                   **settings)
        elif target == "C":
            proc = h.start_relay(upstream, self.logdir, name)
        else:
            return upstream
        self.logs_seen.append(proc.log)
        self.mine.add(proc.pid)
        self.warm_up(target, proc, upstream)
        return proc

    def warm_up(self, target: str, proc: h.Proc, upstream: h.Proc) -> None:
        """A few short streams so imports, pools and caches are in place before measuring."""
        spec = self.spec(target, proc, upstream, "normal?tokens=20&tag=warmup", streams=20, concurrency=5)
        self.loadgen(spec, timeout=60)

    def spec(self, target: str, proc: h.Proc, upstream: h.Proc, model: str, **kw: object) -> dict:
        if target == "B":
            spec = {"host": "127.0.0.1", "port": upstream.port, "kind": "openai", "model": model}
        else:
            spec = {"host": "127.0.0.1", "port": proc.port, "kind": "sse",
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
        pids = [upstream.pid] if target == "B" else proc.workers()
        redis = h.redis_pid(self.args.redis_url) if target == "A-redis" else None
        if redis:
            self.mine.add(redis)
        cpu0, up0 = h.cpu_seconds(pids), h.cpu_seconds([upstream.pid])
        red0 = h.cpu_seconds([redis]) if redis else 0.0
        out = self.loadgen(self.spec(target, proc, upstream, model, **kw), timeout)
        cpu1, up1 = h.cpu_seconds(pids), h.cpu_seconds([upstream.pid])
        run = summarize_streams(out, expected_tokens)
        run.update(workload=workload, target=target, round=rnd, cpu_s=round(cpu1 - cpu0, 3),
                   upstream_cpu_s=round(up1 - up0, 3), client_cpu_s=round(out["cpu_s"], 3))
        if run["tokens"]:
            run["cpu_us_per_event"] = round((cpu1 - cpu0) * 1e6 / run["tokens"], 2)
        if redis:
            run["redis_cpu_us_per_event"] = round((h.cpu_seconds([redis]) - red0) * 1e6
                                                  / max(1, run["tokens"]), 2)
        return run

    def record(self, run: dict) -> None:
        self.runs.append(run)
        bits = [f"{run['workload']} r{run['round']} {run['target']:8s}"]
        for key, fmt in (("ttfe_ms", "ttfe p50 {p50:.1f} p99 {p99:.1f} ms"), ("events_per_s", "{:.0f} ev/s"),
                         ("cpu_us_per_event", "{:.1f} us/ev"), ("pss_per_stream_kb", "pss {:.1f} KB/stream"),
                         ("survivors", "survivors {}"), ("close_ms", "close p50 {p50:.1f} max {max:.1f} ms")):
            value = run.get(key)
            if value is not None and not (isinstance(value, dict) and value.get("p50") is None):
                bits.append(fmt.format(**value) if isinstance(value, dict) else fmt.format(value))
        if run.get("errors"):
            bits.append(f"errors {dict(run['errors'])}")
        print("  " + " | ".join(bits), flush=True)

    def order(self, targets: list[str], rounds: int) -> list[tuple[int, str]]:
        out = []
        for r in range(rounds):
            out += [(r + 1, t) for t in (targets if r % 2 == 0 else list(reversed(targets)))]
        return out

    # -- workloads -------------------------------------------------------------
    def streaming(self, workload: str, targets: list[str], streams: int, tokens: int, delay_ms: int,
                  concurrency: int) -> None:
        a = self.args
        upstream = self.upstream(f"{workload}-upstream")
        self.logs_seen.append(upstream.log)
        procs = {t: self.start_target(t, upstream, workload) for t in targets}
        model = f"slow?tokens={tokens}&delay_ms={delay_ms}" if delay_ms else f"normal?tokens={tokens}"
        expected_s = tokens * delay_ms / 1000 * max(1, streams / concurrency)
        try:
            for rnd, target in self.order(targets, a.rounds):
                tag = f"{workload}-{target}-{rnd}"
                run = self.measure(workload, target, rnd, procs[target], upstream, f"{model}&tag={tag}",
                                   tokens, timeout=expected_s + 240, streams=streams,
                                   concurrency=concurrency, deadline_s=expected_s + 180)
                self.record(run)
        finally:
            stop_all(procs, upstream)

    def w1(self) -> None:
        a = self.args
        print(f"w1: 1 stream of {a.w1_tokens} tokens at 0 ms, {a.w1_reps} times in a row", flush=True)
        self.streaming("w1", ["A", "B", "C"], a.w1_reps, a.w1_tokens, 0, 1)

    def w2(self) -> None:
        a = self.args
        targets = ["A", "A-redis", "B", "C"] if a.redis_url else ["A", "B", "C"]
        print(f"w2: {a.w2_streams} concurrent streams of {a.w2_tokens} tokens at {a.w2_delay_ms} ms"
              f"{' (A also with the Redis store)' if a.redis_url else ''}", flush=True)
        self.streaming("w2", targets, a.w2_streams, a.w2_tokens, a.w2_delay_ms, a.w2_streams)

    def w3(self) -> None:
        a = self.args
        print(f"w3: {a.w3_streams} concurrent streams of {a.w3_tokens} tokens at {a.w3_delay_ms} ms",
              flush=True)
        self.streaming("w3", ["A", "B", "C"], a.w3_streams, a.w3_tokens, a.w3_delay_ms, a.w3_streams)

    def w4(self) -> None:
        a = self.args
        print(f"w4: {a.w4_streams} idle streams held {a.w4_hold_s:.0f} s by one worker. {a.w4_note}",
              flush=True)
        ramp_timeout = 60.0
        # Silent long enough to outlast the ramp and the hold, shorter than the service's
        # READ_TIMEOUT_S (120 s) so the upstream never times out while held.
        silence = min(115.0, ramp_timeout + a.w4_hold_s + 15)
        for rnd, target in self.order(["A", "B", "C"], a.w4_rounds):
            upstream = self.upstream(f"w4-upstream-{self.seq}")
            self.logs_seen.append(upstream.log)
            proc = upstream
            try:
                proc = self.start_target(target, upstream, "w4")
                pid = upstream.pid if target == "B" else proc.workers()[0]
                before = h.memory_kb(pid)
                fds_before = h.open_fds(pid)
                sample: dict = {}

                def on_line(line: str, stdin, pid=pid, sample=sample) -> None:
                    if line.startswith("ready"):
                        _, opened, ramp_s = line.split()
                        sample.update(opened=int(opened), ramp_s=float(ramp_s))
                    elif line == "hold-end":
                        sample.update(mem=h.memory_kb(pid), fds=h.open_fds(pid))
                        stdin.write("go\n")
                        stdin.flush()

                tag = f"w4-{target}-{rnd}"
                spec = self.spec(target, proc, upstream,
                                 f"silence?at=1&silence_s={silence:.0f}&tokens=2&tag={tag}",
                                 streams=a.w4_streams, concurrency=a.w4_ramp, mode="hold",
                                 hold_s=a.w4_hold_s, ramp_timeout_s=ramp_timeout)
                out = self.loadgen(spec, ramp_timeout + a.w4_hold_s + 180, on_line)
                run = summarize_streams(out, None)
                held = max(1, sample.get("opened", 0))
                mem = sample.get("mem", before)
                run.update(workload="w4", target=target, round=rnd, streams=a.w4_streams,
                           opened=sample.get("opened", 0), ramp_s=sample.get("ramp_s"),
                           survivors=out.get("survivors", 0),
                           dropped=a.w4_streams - out.get("survivors", 0),
                           mem_before_kb=before, mem_holding_kb=mem, fds_before=fds_before,
                           fds_holding=sample.get("fds"),
                           rss_per_stream_kb=round((mem["rss"] - before["rss"]) / held, 2),
                           pss_per_stream_kb=round((mem["pss"] - before["pss"]) / held, 2))
                run.pop("ttfe_ms", None)
                run.pop("gap_ms", None)
                run.pop("events_per_s", None)
                self.record(run)
            finally:
                if proc is not upstream:
                    proc.stop()
                upstream.stop()

    def w5(self) -> None:
        a = self.args
        print(f"w5: {a.w5_streams} streams whose client leaves during a {a.w5_silence_s:.0f} s upstream "
              "silence (service with RESUME_GRACE_S=0)", flush=True)
        upstream = self.upstream("w5-upstream")
        self.logs_seen.append(upstream.log)
        targets = ["A", "B", "C"]
        procs = {}
        try:
            procs = {t: (self.start_target(t, upstream, "w5", RESUME_GRACE_S=0) if t == "A"
                         else self.start_target(t, upstream, "w5")) for t in targets}
            after_tokens, after_delay = 40, 20
            for rnd, target in self.order(targets, a.rounds):
                prefix = f"w5-{target}-{rnd}-"
                model = (f"silence?at=1&silence_s={a.w5_silence_s:g}&tokens={after_tokens + 1}"
                         f"&delay_ms={after_delay}&tag={prefix}{{i}}")
                spec = self.spec(target, procs[target], upstream, model, streams=a.w5_streams,
                                 concurrency=a.w5_streams, mode="disconnect", disconnect_after=[0.5, 1.5],
                                 deadline_s=a.w5_silence_s + 60)
                out = self.loadgen(spec, a.w5_silence_s + 120)
                # the upstream ends every connection by silence + tokens at the latest
                records = wait_all_finished(upstream, prefix, a.w5_streams,
                                            a.w5_silence_s + after_tokens * after_delay / 1000 + 10)
                run = summarize_streams(out, None)
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
                for key in ("ttfe_ms", "gap_ms", "events_per_s"):
                    run.pop(key, None)
                self.record(run)
        finally:
            stop_all(procs, upstream)


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
            ttfe.append((times[0] - st["t0"]) * 1000)
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


# ----------------------------------------------------------------------------- report
def runs_of(runs: list[dict], workload: str, target: str) -> list[dict]:
    return [r for r in runs if r["workload"] == workload and r["target"] == target]


def getter(path: str):
    def get(run: dict):
        value = run
        for part in path.split("."):
            if not isinstance(value, dict):
                return None
            value = value.get(part)
        return value
    return get


def values(runs: list[dict], workload: str, target: str, get) -> list[float]:
    return [v for v in (get(r) for r in runs_of(runs, workload, target)) if v is not None]


def ratios(runs: list[dict], workload: str, num: str, den: str, get) -> list[float]:
    by_round = {r["round"]: get(r) for r in runs_of(runs, workload, den)}
    out = []
    for r in runs_of(runs, workload, num):
        a, b = get(r), by_round.get(r["round"])
        if a is not None and b:
            out.append(a / b)
    return out


def fmt_num(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "–"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 or x == 0 else f"{x:.{digits + 1}g}"


def cell(vals: list[float], suffix: str = "", digits: int = 1) -> str:
    if not vals:
        return "–"
    med = h.median(vals)
    text = fmt_num(med, digits) + suffix
    if len(vals) > 1 and min(vals) != max(vals):
        text += f" [{fmt_num(min(vals), digits)}–{fmt_num(max(vals), digits)}]"
    return text


def errors_cell(runs: list[dict], workload: str, target: str) -> str:
    total: collections.Counter = collections.Counter()
    for r in runs_of(runs, workload, target):
        total.update(r.get("errors") or {})
    return "0" if not total else ", ".join(f"{k}×{n}" for k, n in total.most_common())


METRICS = {
    "stream": [("TTFE p50 ms", "ttfe_ms.p50"), ("TTFE p90 ms", "ttfe_ms.p90"), ("TTFE p99 ms", "ttfe_ms.p99"),
               ("gap p50 ms", "gap_ms.p50"), ("gap p99 ms", "gap_ms.p99"), ("events/s", "events_per_s"),
               ("CPU µs/event", "cpu_us_per_event")],
    "w4": [("opened", "opened"), ("survivors", "survivors"), ("RSS KB/stream", "rss_per_stream_kb"),
           ("PSS KB/stream", "pss_per_stream_kb"), ("ramp s", "ramp_s")],
    "w5": [("close median ms", "close_ms.p50"), ("close p90 ms", "close_ms.p90"),
           ("close worst ms", "close_ms.max"), ("upstream ran to end", "upstream_ran_to_end")],
}


def table(result: dict) -> list[str]:
    runs = result["runs"]
    lines = ["| workload | metric | A | A/B | A/C | B floor | C tutorial |", "|---|---|---|---|---|---|---|"]
    for wl, desc in result["workload_desc"].items():
        kind = wl if wl in ("w4", "w5") else "stream"
        variants = [("A", wl)] + ([("A-redis", f"{wl} Redis")] if runs_of(runs, wl, "A-redis") else [])
        for a_name, label in variants:
            first = True
            for title, path in METRICS[kind]:
                get = getter(path)
                row = [f"**{label}** {desc}" if first else "", title,
                       cell(values(runs, wl, a_name, get)),
                       cell(ratios(runs, wl, a_name, "B", get), "×", 2),
                       cell(ratios(runs, wl, a_name, "C", get), "×", 2),
                       cell(values(runs, wl, "B", get)), cell(values(runs, wl, "C", get))]
                lines.append("| " + " | ".join(row) + " |")
                first = False
            lines.append("| | errors | " + errors_cell(runs, wl, a_name) + " | | | "
                         + errors_cell(runs, wl, "B") + " | " + errors_cell(runs, wl, "C") + " |")
    return lines


def targets(result: dict) -> list[dict]:
    runs = result["runs"]
    out = []

    def add(name: str, measured: str, ok: bool | None) -> None:
        out.append({"target": name, "measured": measured,
                    "result": "n/a" if ok is None else ("PASS" if ok else "FAIL")})

    for wl in ("w1", "w2", "w3"):
        r = ratios(runs, wl, "A", "C", getter("cpu_us_per_event"))
        cpu = getter("cpu_us_per_event")
        a, c = values(runs, wl, "A", cpu), values(runs, wl, "C", cpu)
        if r:
            add(f"{wl}: CPU µs per relayed event, A ≤ C",
                f"A {fmt_num(h.median(a))} vs C {fmt_num(h.median(c))} µs = {cell(r, '×', 2)}",
                h.median(r) <= 1.0)
    if runs_of(runs, "w3", "A"):
        errs = sum(sum((x.get("errors") or {}).values()) for x in runs_of(runs, "w3", "A"))
        add("w3: no errors (A)", f"{errs} errors in {len(runs_of(runs, 'w3', 'A'))} rounds", errs == 0)
        r = ratios(runs, "w3", "A", "B", getter("events_per_s"))
        add("w3: events/s A ≥ 0.8× floor", f"{cell(r, '×', 2)}", bool(r) and h.median(r) >= 0.8)
        r = ratios(runs, "w3", "A", "C", getter("ttfe_ms.p99"))
        add("w3: TTFE p99 A ≤ 0.5× C", f"{cell(r, '×', 2)}", bool(r) and h.median(r) <= 0.5)
    if runs_of(runs, "w4", "A"):
        a_runs = runs_of(runs, "w4", "A")
        dropped = sum(x["streams"] - x.get("survivors", 0) for x in a_runs)
        add("w4: idle streams, none dropped (A)",
            f"{dropped} of {sum(x['streams'] for x in a_runs)} not held to the end", dropped == 0)
        r = ratios(runs, "w4", "A", "C", getter("pss_per_stream_kb"))
        rr = ratios(runs, "w4", "A", "C", getter("rss_per_stream_kb"))
        add("w4: memory per stream A ≤ 50% of C (PSS)", f"PSS {cell(r, '×', 2)}, RSS {cell(rr, '×', 2)}",
            bool(r) and h.median(r) <= 0.5)
    if runs_of(runs, "w5", "A"):
        closes = [v for x in runs_of(runs, "w5", "A") for v in x.get("close_values_ms", [])]
        expected = sum(x["streams"] for x in runs_of(runs, "w5", "A"))
        med, worst = h.median(closes), (max(closes) if closes else None)
        add("w5: disconnect → upstream closed, median ≤ 50 ms (A)",
            f"{fmt_num(med, 2)} ms over {len(closes)}/{expected} streams", med is not None and med <= 50
            and len(closes) == expected)
        add("w5: disconnect → upstream closed, worst ≤ 1 s (A)", f"{fmt_num(worst, 2)} ms",
            worst is not None and worst <= 1000 and len(closes) == expected)
    if runs_of(runs, "w2", "A-redis"):
        r = ratios(runs, "w2", "A-redis", "A", getter("events_per_s"))
        add("w2: Redis store events/s within 20% of memory store",
            f"Redis/memory {cell(r, '×', 3)}", bool(r) and abs(h.median(r) - 1) <= 0.2)
    return out


def markdown(result: dict) -> str:
    a = result["settings"]
    w4_rounds = "" if a["w4_rounds"] == a["rounds"] else f" ({a['w4_rounds']} for w4)"
    lines = [f"# streamapp benchmark ({result['started']})", "",
             f"Machine: {result['machine']}. Total runtime {result['runtime_s']:.0f} s. "
             f"{a['rounds']} rounds per workload, interleaved A B C / C B A"
             f"{w4_rounds}.", "",
             "A = streamapp under gunicorn + gevent (conf/gunicorn.conf.py, 1 worker); B = the fake upstream "
             "hit directly (floor); C = tutorial relay (Flask + requests iter_lines, same gunicorn gevent "
             "worker). Values are the median over rounds [min–max]; ratios are computed per round, then the "
             "median [min–max]. TTFE = request start to first token event at the client; gap = between "
             "consecutive token events of a stream; CPU = utime+stime of the serving process per token event "
             "(B: the upstream's own). w4 memory = (Rss/Pss while holding − before) / streams held, from "
             "/proc/PID/smaps_rollup of the worker. w5 = client close → upstream saw its connection closed.",
             "", f"Note: {a['w4_note']}", ""]
    lines += table(result)
    lines += ["", "## Targets", "", "| target | measured (same run) | result |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['measured']} | **{t['result']}** |" for t in result["targets"]]
    if result.get("service_log"):
        lines += ["", "## Service log findings (gunicorn logs of A)", ""]
        c = result["service_log"]["counts"]
        lines.append(f"tracebacks {c['traceback']}, errors {c['error']}, warnings {c['warning']}")
        lines += [f"- `{x}`" for x in result["service_log"]["examples"]]
    if result.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def notes(result: dict) -> list[str]:
    runs = result["runs"]
    out = []
    for wl in ("w1", "w2", "w3"):
        for t in ("A", "B", "C"):
            rs = runs_of(runs, wl, t)
            if rs:
                total = h.median([r["cpu_s"] + r["upstream_cpu_s"] * (t != "B") + r["client_cpu_s"]
                                  for r in rs])
                span = h.median([r["span_s"] or 0 for r in rs])
                client = h.median([r["client_cpu_s"] for r in rs])
                if span:
                    out.append(f"{wl} {t}: serving + upstream + client CPU {total:.1f} s in {span:.1f} s "
                               f"({total / span:.2f} of 2 cores busy); the client alone {client:.1f} s")
    disturbed = [r for r in runs if r.get("foreign_cpu_s", 0) > 0.1 * max(1.0, r.get("wall_s") or 1.0)]
    if disturbed:
        worst = max(disturbed, key=lambda r: r["foreign_cpu_s"])
        out.append(f"DISTURBED: in {len(disturbed)} runs other processes (not started by this benchmark) "
                   f"used > 10% of a core, e.g. {worst['workload']} r{worst['round']} {worst['target']}: "
                   f"{worst['foreign_cpu_s']} s ({'; '.join(worst.get('foreign_procs', []))}); "
                   "figures of those runs are less reliable")
    else:
        out.append("No other process used noticeable CPU during the measured runs (checked per run, /proc).")
    for r in runs_of(runs, "w2", "A-redis")[:1]:
        if r.get("redis_cpu_us_per_event") is not None:
            vals = [x["redis_cpu_us_per_event"] for x in runs_of(runs, "w2", "A-redis")]
            out.append(f"w2 A-redis: redis-server CPU {fmt_num(h.median(vals))} µs/event "
                       "on top of the worker's")
    return out


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
    desc = {
        "w1": f"1×{args.w1_tokens} tok @0 ms, ×{args.w1_reps}",
        "w2": f"{args.w2_streams} streams×{args.w2_tokens} tok @{args.w2_delay_ms} ms",
        "w3": f"{args.w3_streams} streams×{args.w3_tokens} tok @{args.w3_delay_ms} ms",
        "w4": f"{args.w4_streams} idle streams held {args.w4_hold_s:g} s",
        "w5": f"{args.w5_streams} clients leave during {args.w5_silence_s:g} s silence",
    }
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
        if args.redis_url:
            try:
                h.redis_cleanup(args.redis_url, bench.redis_prefix)
            except Exception as exc:  # noqa: BLE001
                print(f"redis cleanup failed: {exc}")
    service_logs = [p for p in bench.logs_seen if "-A" in p.name]
    findings = {"counts": {"traceback": 0, "error": 0, "warning": 0}, "examples": []}
    for p in service_logs:
        f = h.scan_log(p)
        for k, v in f["counts"].items():
            findings["counts"][k] += v
        findings["examples"] += [f"{p.stem}: {x}" for x in f["examples"]]
    findings["examples"] = findings["examples"][:12]
    result = {
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, open-file limit {h.fd_limit()}, Python {sys.version.split()[0]}",
        "settings": {k: v for k, v in vars(args).items()},
        "workload_desc": {k: v for k, v in desc.items() if k in args.workloads},
        "runs": bench.runs, "failures": failures, "service_log": findings,
        "logs": str(logdir),
    }
    result["targets"] = targets(result)
    result["notes"] = notes(result) + [f"FAILED {f}" for f in failures]
    result["runtime_s"] = round(time.monotonic() - started, 1)
    md = markdown(result)
    for name, text in (("latest.json", json.dumps(result, indent=1)), ("latest.md", md)):
        tmp = outdir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(outdir / name)
    print()
    print(md)
    print(f"runtime {result['runtime_s']:.0f} s; wrote {outdir / 'latest.md'} and latest.json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
