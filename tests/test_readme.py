"""The README as a new user meets it: its examples run after the set-up alone (``make run``),
against a real server, and what it says about the open routes is what the service does."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, Process, answers
from tests.helpers import free_port

README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE_URL = "http://127.0.0.1:8000"


def fenced_blocks(text: str, lang: str) -> list[str]:
    """The bodies of the README's ```lang blocks."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def section(title: str) -> str:
    """The README's text from the heading ``title`` to the next heading of any level."""
    start = README.index(f" {title}\n")
    end = re.compile(r"^#{1,6} ", re.M).search(README, start + len(title) + 2)
    return README[start:end.start() if end else len(README)]


def curl_commands() -> list[str]:
    """Every ``curl`` command of the README: in code spans and in sh blocks (continued lines
    joined, comments dropped)."""
    found = re.findall(r"`(curl [^`]+)`", README)
    for block in fenced_blocks(README, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("curl "):
                found.append(line)
    return found


def allowed_distributions() -> set[str]:
    """Packages a user has after ``make run`` (requirements.txt), and those the README tells
    them to install (``pip install NAME``)."""
    pinned = re.findall(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==", (ROOT / "requirements.txt").read_text(), re.M)
    told = re.findall(r"pip install ([A-Za-z0-9_.-]+)", README)
    return {re.sub(r"[-_.]+", "-", name).lower() for name in pinned + told}


def test_every_module_an_example_uses_is_installed_by_the_set_up_or_named():
    """``python -m X`` and imports in the README's examples need only the set-up's packages
    (or ones the README says to install)."""
    modules = set(re.findall(r"python -m ([A-Za-z_][\w]*)", README))
    for block in fenced_blocks(README, "python"):
        modules |= set(re.findall(r"^\s*(?:from|import) ([A-Za-z_]\w*)", block, re.M))
    owners = importlib.metadata.packages_distributions()
    allowed = allowed_distributions()
    missing = {}
    for module in sorted(modules - set(sys.stdlib_module_names)):
        dists = {re.sub(r"[-_.]+", "-", d).lower() for d in owners.get(module, [])}
        if not dists & allowed:
            missing[module] = sorted(dists) or "no installed package"
    assert not missing, f"README examples use modules the set-up does not install: {missing}"


def test_make_run_takes_another_port(tmp_path):
    """``make run PORT=N`` serves on N (8000 may be taken)."""
    port = free_port()
    venv = Path(sys.executable).parent.parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMAPP_", "REDIS_URL", "PORT"))}
    proc = Process(["make", "-o", f"{venv}/.installed", "run", f"VENV={venv}", f"PORT={port}"], env,
                   tmp_path / "make-run.log")
    try:
        proc.wait_for("Booting worker", 20, f"make run PORT={port}")
        answers(f"http://127.0.0.1:{port}/healthz", proc, f"make run PORT={port}")
    finally:
        if proc.proc.poll() is None:
            os.killpg(proc.proc.pid, signal.SIGTERM)  # make and the gunicorn it started
        proc.stop()
    assert f"PORT={port}" not in README  # the README shows a fixed example port, not this one
    assert re.search(r"make run PORT=\d+", README), "the set-up says how to pick another port"


@pytest.fixture(scope="module")
def user_server(start_server):
    """A server as ``make run`` starts it (production config, defaults), with the fake upstream
    standing in for the real model the set-up says how to configure."""
    return start_server()


def test_websocket_example_runs(user_server):
    """The WebSocket section's Python example chats over /ws and gets the end."""
    blocks = fenced_blocks(section("WebSocket (`GET /ws`)"), "python")
    assert blocks, "the WebSocket section has a Python example"
    code = blocks[0].replace(EXAMPLE_URL.replace("http", "ws"), user_server.url.replace("http", "ws"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "'type': 'end'" in done.stdout, done.stdout


def test_curl_examples_run(user_server):
    """Every curl example answers 2xx (``STREAM_ID`` is a finished stream's id, ``resp_STREAM_ID``
    a finished response's; a ``DELETE`` example gets a response of its own, so the order of the
    examples does not matter)."""
    made = requests.post(f"{user_server.url}/api/chat", json={"uid": 1, "message": "Hi"}, timeout=30)
    sid = made.headers["X-Stream-Id"]

    def new_response() -> str:
        return requests.post(f"{user_server.url}/v1/responses", json={"model": "demo", "input": "Hi"},
                             timeout=30).json()["id"]
    response = new_response()
    commands = curl_commands()
    assert len(commands) >= 15
    assert any("-X DELETE" in command for command in commands)
    failed = []
    for command in commands:
        rid = new_response() if "-X DELETE" in command else response
        args = shlex.split(command.replace(EXAMPLE_URL, user_server.url)
                           .replace("resp_STREAM_ID", rid).replace("STREAM_ID", sid))
        args[1:1] = ["-sS", "--fail", "--max-time", "30", "-o", os.devnull]
        done = subprocess.run(args, capture_output=True, text=True, timeout=40)
        if done.returncode != 0:
            failed.append(f"{command}: {done.stderr.strip()}")
    assert not failed, "\n".join(failed)


OPEN_ROUTES = re.compile(r"only (.+?) stay\s+open", re.S)


def filled(rule: str) -> str:
    """A concrete path for a URL rule."""
    return re.sub(r"<(?:path:)?filename>", "swagger-ui.css" if rule.startswith("/swagger") else "app.js",
                  re.sub(r"<[^>]+>", "x", rule))


def test_security_lists_exactly_the_open_routes(start_server):
    """With keys configured, the routes that answer without one are the README's list."""
    from streamapp import create_app

    server = start_server(API_KEYS="sk-readme-test")
    listed = re.findall(r"`([^`]+)`", OPEN_ROUTES.search(section("Security")).group(1))
    assert listed, "the Security section lists the open routes"
    opened = set()
    for rule in create_app().url_map.iter_rules():
        method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
        status = requests.request(method, server.url + filled(rule.rule), timeout=10, stream=True)
        status.close()
        if status.status_code != 401:
            opened.add(rule.rule)
    covered = {rule for rule in opened | {r.rule for r in create_app().url_map.iter_rules()}
               if any(rule == p or (p.endswith("/") and p != "/" and rule.startswith(p)) for p in listed)}
    assert covered == opened, f"README lists {listed}; open without a key: {sorted(opened)}"
