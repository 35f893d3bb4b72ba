"""Helpers for the Redis store's tests: gevent-patched scenarios, a redis-server of a test's own.

The store is gevent code (a writer greenlet, dispatchers blocked in XREAD, a
pub/sub listener), so each scenario runs as production does: in a child Python
that patches with gevent before anything else (:func:`run_patched`). A scenario
is a plain function in a test module; a failed assertion in it fails the test
with the child's output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, poll_until

ROOT = Path(__file__).resolve().parent.parent
META = {"format": "plain", "state": "running"}  # what the manager creates a stream with


def run_patched(module: str, scenario: str, **kwargs: object) -> None:
    """Run ``tests.<module>.<scenario>(**kwargs)`` in a gevent-patched child; fail with its
    output if it fails."""
    code = ("from gevent import monkey; monkey.patch_all()\n"
            "import importlib, json, sys\n"
            f"t = importlib.import_module('tests.{module}')\n"
            f"t.{scenario}(**json.loads(sys.argv[1]))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(kwargs)], cwd=ROOT,
                          capture_output=True, timeout=180, check=False)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    assert proc.returncode == 0, f"{scenario} failed:\n{out[-6000:]}"


class RedisServer:
    """A redis-server of a scenario's own, on a free port, that it can stop and start.

    No persistence: a restart comes back empty."""

    def __init__(self, port: int | None = None, *options: str) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        assert os.path.exists(self.binary), "redis-server missing: apt-get install -y redis-server"
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.options = options  # more redis-server arguments
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", *self.options], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        poll_until(self.answers, 10, f"redis-server on {self.port}")
        return self

    def answers(self) -> bool:
        import redis

        try:
            return redis.Redis.from_url(self.url, socket_connect_timeout=1).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class Records(logging.Handler):
    """The store's log records, to count warnings."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []
        logger = logging.getLogger("streamapp.streams.redis_store")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)


def make_store(url: str, prefix: str, **options: object):
    """A ``RedisStore`` as ``make_store`` builds it, with test-sized TTLs."""
    from streamapp.streams.redis_store import RedisStore

    options.setdefault("lease", 30)
    return RedisStore(url, prefix, options.pop("ttl", 60), running_ttl=120, **options)


def deltas(*texts: str) -> list:
    from streamapp.events import Delta

    return [Delta(text, i) for i, text in enumerate(texts)]


def append_all(store, sid: str, events: list, first: int = 1, final_done: bool = True) -> int:
    """Append ``events`` from seq ``first`` (and a ``Done`` if ``final_done``); the last seq."""
    from streamapp.events import Done

    seq = first - 1
    for seq, event in enumerate(events, start=first):
        store.append(sid, seq, event, final=False)
    if final_done:
        seq += 1
        store.append(sid, seq, Done("stop"), final=True)
    return seq


def texts(batch: list) -> list[str]:
    return [getattr(event, "text", event.kind) for _, event in batch]
