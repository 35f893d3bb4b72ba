"""Benchmark plumbing shared by ``run.py`` and ``latency.py``.

Starting and stopping the processes under test (fake upstream, the service under
gunicorn with ``conf/gunicorn.conf.py``, the relays), reading their CPU
time and memory from ``/proc``, a blocking SSE client, a WebSocket client, and small
statistics. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FAKE_UPSTREAM = ROOT / "tests" / "fake_upstream.py"  # the one the test suite uses too
OTLP_RECEIVER = ROOT / "tests" / "otlp_receiver.py"  # bench --otel: where the service sends its telemetry
VENV_BIN = ROOT / ".venv" / "bin"
PY = str(VENV_BIN / "python")
GUNICORN = str(VENV_BIN / "gunicorn")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Shutdown only: how long a stopping worker lets its producers finish (production: 30 s).
GRACEFUL_S = "3"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, timeout: float = 5) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Proc:
    """A child process in its own session, its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.log = logdir / f"{name}.log"
        self._logfile = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._logfile,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.url = ""
        self.port = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_http(self, path: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            try:
                if http_get(self.url + path, timeout=1)[0] < 500:
                    return
            except OSError:
                pass
            time.sleep(0.05)  # bounded readiness poll
        raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.output()[-3000:]}")

    def workers(self) -> list[int]:
        """The pids doing the work: gunicorn's worker children, else the process itself."""
        kids = children(self.pid)
        return kids or [self.pid]

    def stop(self, timeout: float = 10) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        # make sure no worker outlives its master (fds, memory)
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._logfile.close()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return sorted(out)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime (all threads) of these processes."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def cpu_table() -> dict[int, tuple[int, float]]:
    """{pid: (process group, utime+stime s)} of every user-space process (kernel threads left out)."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == 2 or entry == "2":  # kthreadd's children: kernel threads
            continue
        out[int(entry)] = (int(fields[2]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def foreign_cpu(before: dict, after: dict, mine: set[int]) -> tuple[float, list[str]]:
    """CPU seconds used between two ``cpu_table``s by processes outside the groups ``mine``."""
    total, who = 0.0, []
    for pid, (pgid, cpu) in after.items():
        if pgid in mine or pid in mine:
            continue
        delta = cpu - before.get(pid, (pgid, 0.0))[1]
        if delta > 0:
            total += delta
            if delta >= 0.05:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()[:80]
                except OSError:
                    cmd = "?"
                who.append(f"{pid} {cmd} {delta:.2f}s")
    return total, who


def memory_kb(pid: int) -> dict[str, int]:
    """Rss and Pss (kB) from /proc/PID/smaps_rollup."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Rss", "Pss"):
                out[key.lower()] = int(rest.split()[0])
    return out


def memory_kb_sum(pids: list[int]) -> dict[str, int]:
    """Rss and Pss (kB) summed over processes (the workers of one server). Summing Pss
    counts a page shared by two workers once, as Pss splits it between them."""
    total = {"rss": 0, "pss": 0}
    for pid in pids:
        for key, value in memory_kb(pid).items():
            total[key] += value
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def fd_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("STREAMAPP_", "REDIS_URL", "OPENAI_", "OLLAMA_", "OTEL_"))}


def start_upstream(logdir: Path, name: str = "upstream") -> Proc:
    port = free_port()
    proc = Proc(name, [PY, str(FAKE_UPSTREAM), "--port", str(port)], clean_env(), logdir)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    proc.wait_http("/_health", 20)
    return proc


def start_otlp_receiver(logdir: Path) -> Proc:
    """An OTLP/HTTP receiver (``tests/otlp_receiver.py``) that decodes what it is sent."""
    port = free_port()
    proc = Proc("otlp-receiver", [PY, str(OTLP_RECEIVER), "--port", str(port)], clean_env(), logdir)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    proc.wait_http("/_counts", 20)
    return proc


def start_service(upstream: Proc, logdir: Path, name: str = "service", redis_url: str = "",
                  redis_prefix: str = "", workers: int = 1, env_extra: dict[str, str] | None = None,
                  **settings: object) -> Proc:
    """streamapp under gunicorn with the production config (conf/gunicorn.conf.py); ``env_extra``
    as it is (``OTEL_*``)."""
    port = free_port()
    env = clean_env()
    env.update({
        "STREAMAPP_BIND": f"127.0.0.1:{port}", "STREAMAPP_WORKERS": str(workers),
        "STREAMAPP_ACCESS_LOG": "", "STREAMAPP_GRACEFUL_TIMEOUT": GRACEFUL_S,
        "STREAMAPP_RATE_LIMIT": "",  # thousands of streams from one client address: measure the pipeline
        "OPENAI_BASE_URL": f"{upstream.url}/v1", "OPENAI_API_KEY": "x", "OLLAMA_HOST": upstream.url,
    })
    if redis_url:
        env["REDIS_URL"] = redis_url
        env["STREAMAPP_REDIS_PREFIX"] = redis_prefix
    for key, value in settings.items():
        env[f"STREAMAPP_{key}"] = str(value)
    env.update(env_extra or {})
    # --no-control-socket: gunicorn 27 otherwise binds ~/.gunicorn/gunicorn.ctl, one path shared by
    # every master on the machine (ours and anyone else's); it does not touch the worker.
    proc = Proc(name, [GUNICORN, "-c", "conf/gunicorn.conf.py", "--no-control-socket", "wsgi:app"],
                env, logdir)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    proc.wait_http("/healthz", 30)
    return proc


def start_relay(upstream: Proc, logdir: Path, name: str = "relay", workers: int = 1,
                app: str = "tutorial_relay:app") -> Proc:
    """A relay of ``bench/`` (``app``: the parsing tutorial relay, or ``passthrough_relay:app``)
    under the same gunicorn gevent worker settings as the service."""
    port = free_port()
    env = clean_env()
    env.update({"OPENAI_BASE_URL": f"{upstream.url}/v1", "OPENAI_API_KEY": "x"})
    args = [GUNICORN, "--chdir", str(BENCH), "-k", "gevent", "-w", str(workers),
            "--worker-connections", "10000", "--timeout", "60", "--graceful-timeout", GRACEFUL_S,
            "--keep-alive", "5", "--no-control-socket", "-b", f"127.0.0.1:{port}", app]
    proc = Proc(name, args, env, logdir)
    proc.port, proc.url = port, f"http://127.0.0.1:{port}"
    proc.wait_http("/healthz", 30)
    return proc


def upstream_log(upstream: Proc, tag: str) -> list[dict]:
    return json.loads(http_get(f"{upstream.url}/_log?tag={tag}", timeout=10)[1])


def wait_closed(upstream: Proc, tag: str, count: int, timeout: float) -> list[dict]:
    """Poll the upstream's log until ``count`` connections tagged ``tag`` ended (or timeout)."""
    deadline = time.monotonic() + timeout
    records: list[dict] = []
    while time.monotonic() < deadline:
        records = upstream_log(upstream, tag)
        if len(records) >= count and all(r["finished"] is not None for r in records):
            break
        time.sleep(0.05)  # bounded poll
    return records


def scan_log(path: Path, limit: int = 6) -> dict:
    """Counts of warnings, errors and tracebacks in a process log, with examples."""
    counts = {"traceback": 0, "error": 0, "warning": 0}
    examples: dict[str, int] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"counts": counts, "examples": []}
    for i, line in enumerate(lines):
        kind = None
        if line.startswith("Traceback"):
            kind = "traceback"
            tail = next((x for x in lines[i + 1:i + 60] if x and not x.startswith((" ", "Traceback"))), "")
            text = "Traceback: " + tail
        elif re.search(r"\b(ERROR|CRITICAL)\b|\[ERROR\]", line):
            kind, text = "error", line
        elif re.search(r"\bWARNING\b|\[WARNING\]", line):
            kind, text = "warning", line
        if kind:
            counts[kind] += 1
            key = re.sub(r"\d+", "N", re.sub(r"^\[[^]]*\] ", "", text))[:200]
            examples[key] = examples.get(key, 0) + 1
    top = sorted(examples.items(), key=lambda kv: -kv[1])[:limit]
    return {"counts": counts, "examples": [f"{n}x {k}" for k, n in top]}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def median(values: list[float]) -> float | None:
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


class SSEConn:
    """A blocking SSE client for one stream (latency tries): events with arrival times."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 10) -> None:
        self.t0 = time.monotonic()
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
                          b"Connection: close\r\n\r\n" % (path.encode(), host.encode(), port))
        buf = b""
        while b"\r\n\r\n" not in buf:
            more = self.sock.recv(65536)
            if not more:
                raise ConnectionError("closed before headers")
            buf += more
        head, _, self._raw = buf.partition(b"\r\n\r\n")
        self.status = int(head[9:12])
        self.chunked = b"transfer-encoding: chunked" in head.lower()
        m = re.search(rb"(?i)x-stream-id: (\S+)", head)
        self.sid = m.group(1).decode() if m else None
        self._buf = b""
        self.events: list[tuple[float, dict]] = []

    def next_event(self, timeout: float) -> dict | None:
        """The next SSE event as {event, data} (comments skipped), None on EOF/timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self._dechunk()
            if b"\n\n" in self._buf:
                block, self._buf = self._buf.split(b"\n\n", 1)
                if not block or block.startswith(b":"):
                    continue
                ev = {"event": "message", "data": ""}
                for line in block.decode().split("\n"):
                    name, _, value = line.partition(": ")
                    if name in ("event", "data", "id"):
                        ev[name] = value
                self.events.append((time.monotonic(), ev))
                return ev
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                more = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not more:
                return None
            self._raw += more

    def _dechunk(self) -> None:
        if not self.chunked:
            self._buf += self._raw
            self._raw = b""
            return
        while True:
            nl = self._raw.find(b"\r\n")
            if nl < 0:
                return
            size = int(self._raw[:nl], 16)
            if size == 0 or len(self._raw) < nl + 4 + size:
                return
            self._buf += self._raw[nl + 2:nl + 2 + size]
            self._raw = self._raw[nl + 4 + size:]

    def close(self) -> float:
        """Drop the connection; returns the monotonic instant just before."""
        t = time.monotonic()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        return t


class WSConn:
    """A WebSocket on the service's ``/ws`` (the ``websockets`` library's synchronous client,
    as the tests use it): JSON messages in, JSON messages out, every wait bounded."""

    def __init__(self, port: int, timeout: float = 10) -> None:
        from websockets.sync.client import connect  # requirements-dev.txt, like the tests

        self.ws = connect(f"ws://127.0.0.1:{port}/ws", open_timeout=timeout, close_timeout=2, proxy=None,
                          ping_interval=None, compression=None)

    def send(self, **message: object) -> None:
        self.ws.send(json.dumps(message))

    def next_message(self, timeout: float) -> dict | None:
        """The next message, ``None`` on timeout or a closed socket."""
        from websockets.exceptions import ConnectionClosed

        try:
            return json.loads(self.ws.recv(timeout=max(0.0, timeout)))
        except (TimeoutError, ConnectionClosed):
            return None

    def close(self) -> float:
        """Close the socket; returns the monotonic instant just before."""
        t = time.monotonic()
        self.ws.close()
        return t


def redis_cleanup(url: str, prefix: str) -> int:
    """Delete the keys a run left under ``prefix`` (bounded scan)."""
    try:
        import redis
    except ImportError:
        return 0
    client = redis.Redis.from_url(url, socket_timeout=5)
    deleted = 0
    try:
        for i, key in enumerate(client.scan_iter(match=f"{prefix}:*", count=1000)):
            deleted += client.delete(key)
            if i > 2_000_000:
                break
    finally:
        client.close()
    return deleted


def redis_pid(url: str) -> int | None:
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2)
        pid = int(client.info("server")["process_id"])
        client.close()
        return pid if os.path.exists(f"/proc/{pid}/stat") else None
    except Exception:  # noqa: BLE001 - optional figure
        return None
