"""Fixtures that start real parts: gunicorn + gevent, the fake upstream, Redis.

Every server binds a free loopback port, is waited for with a deadline, and
is stopped at teardown. A missing binary fails the test with the command that
installs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def require_binary(name: str, install: str) -> str:
    """The path of ``name``, or fail naming the command that installs it."""
    path = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if path is None:
        pytest.fail(f"{name} is not installed; install it with: {install}", pytrace=False)
    return path


class Process:
    """A child process started for a test, stopped at teardown.

    Its output goes to ``log``; :meth:`wait_for` blocks until a line containing
    some text appears (the process says it is ready), with a deadline.
    """

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with open(self.log, "wb") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self._changed:
                    self._lines.append(line.decode(errors="replace"))
                    self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float, what: str) -> None:
        """Block until the output has a line containing ``text``, or fail."""
        def seen() -> bool:
            return self._eof or any(text in line for line in self._lines)
        with self._changed:
            self._changed.wait_for(seen, timeout)
            found = any(text in line for line in self._lines)
        if not found:
            state = "exited" if self.proc.poll() is not None else f"not ready after {timeout}s"
            raise AssertionError(f"{what} {state}:\n{self.output()[-3000:]}")

    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._reader.join(5)


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory) -> Iterator[str]:
    """Base URL of the fake OpenAI/Ollama upstream (one process per test session)."""
    port = free_port()
    proc = Process([sys.executable, "tests/fake_upstream.py", "--port", str(port)],
                   dict(os.environ), tmp_path_factory.mktemp("upstream") / "upstream.log")
    proc.wait_for("listening", 15, f"fake upstream on {port}")
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def answers(url: str, process: Process, what: str) -> None:
    """One request that must succeed: the listener is bound, so it waits in the
    backlog until the server accepts it."""
    try:
        status = requests.get(url, timeout=20).status_code
    except requests.RequestException as exc:
        raise AssertionError(f"{what} does not answer ({exc}):\n{process.output()[-3000:]}") from None
    assert status == 200, f"{what} answered {status}"


class Server:
    """A running gunicorn + gevent streamapp."""

    def __init__(self, url: str, process: Process, port: int) -> None:
        self.url, self.process, self.port = url, process, port

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.process.stop(sig)


@pytest.fixture(scope="session")
def start_server(fake_upstream, tmp_path_factory) -> Iterator:
    """Factory: ``start_server(**settings)`` runs gunicorn with the production config.

    Settings become ``STREAMAPP_<NAME>`` environment variables, except the
    standard names (``REDIS_URL``, ``OPENAI_*``, ``OLLAMA_HOST``, ``OTEL_*``) kept as they are.
    The test's own ``OTEL_*`` variables never reach a server (OpenTelemetry is off unless asked).
    """
    gunicorn = require_binary("gunicorn", "make test (pip install -r requirements-dev.txt)")
    started: list[Server] = []

    def start(port: int | None = None, **settings: object) -> Server:
        port = port or free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "REDIS_URL", "OTEL_"))}
        env.update({
            "STREAMAPP_BIND": f"127.0.0.1:{port}",
            "STREAMAPP_WORKERS": "1",
            "STREAMAPP_ACCESS_LOG": "",
            "STREAMAPP_RATE_LIMIT": "",  # tests start many streams from one address; test_limits sets its own
            "STREAMAPP_CIRCUIT_FAILURES": "0",  # tests fail the upstream on purpose (not test_circuits)
            "OPENAI_BASE_URL": f"{fake_upstream}/v1",
            "OPENAI_API_KEY": "sk-test",
            "OLLAMA_HOST": fake_upstream,
        })
        for key, value in settings.items():
            name = key if key in ("REDIS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "OLLAMA_HOST") \
                or key.startswith("OTEL_") else f"STREAMAPP_{key}"
            env[name] = str(value)
        log = tmp_path_factory.mktemp("gunicorn") / "gunicorn.log"
        proc = Process([gunicorn, "-c", "conf/gunicorn.conf.py", "wsgi:app"], env, log)
        url = f"http://127.0.0.1:{port}"
        proc.wait_for("Booting worker", 20, f"gunicorn on {port}")
        answers(f"{url}/healthz", proc, f"gunicorn on {port}")
        server = Server(url, proc, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """A shared server with quick settings (memory store)."""
    return start_server(HEARTBEAT_S=0.5, RESUME_GRACE_S=0, HEADER_WAIT_S=0.3,
                        READ_TIMEOUT_S=3, CONNECT_TIMEOUT_S=2, MAX_BODY_BYTES=4096,
                        DEMO_DELAY_MS=20)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A Redis URL: the machine's on 127.0.0.1:6379 if it answers, else one started here."""
    if _redis_ping("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis") / "redis.log")
    yield f"redis://127.0.0.1:{port}/0"
    proc.stop()


def start_redis(port: int, log: Path) -> Process:
    """A redis-server of the test's own on ``port`` (nothing kept on disk: a restart starts
    empty), once it accepts connections; the test stops it."""
    binary = require_binary("redis-server", "apt-get install -y redis-server")
    proc = Process([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no"], dict(os.environ), log)
    proc.wait_for("Ready to accept connections", 10, f"redis-server on {port}")
    return proc


def _redis_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test run uses."""
    return f"streamapp-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def tag() -> str:
    """A tag to find this test's connections in the fake upstream's log."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
def deadline() -> float:
    """Monotonic time by which a test's network loops must be done."""
    return time.monotonic() + 30


# Headless Debian Chromium as the machine's probe runs it: without the background-networking
# flags it keeps trying hosts this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    path = require_binary("chromium", "apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
