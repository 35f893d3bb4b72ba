"""Baseline P: a relay that passes the upstream's lines through without parsing them.

``GET /ai-stream?prompt=...&model=...`` posts to ``$OPENAI_BASE_URL/chat/completions``
with ``stream=True`` and yields each upstream line as ``requests`` ``iter_lines`` hands it
over, untouched: the client gets the upstream's own ``data: {chunk}`` events and
``data: [DONE]``. Only the blank lines between events are not passed one by one: each
line goes out with its blank line after it, one write per event (passing the blank line
as a write of its own would make this baseline slower than it needs to be). No JSON, no
stream log, no resume, no disconnect watcher: the cheapest relay on ``requests``, and the
floor streamapp's CPU per event is compared with beside the parsing relay
(``tutorial_relay.py``). Run under the same gunicorn gevent worker as the service (see
``bench/harness.py``: ``start_relay``).
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response, request

app = Flask(__name__)
UPSTREAM = os.environ.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/") + "/chat/completions"
API_KEY = os.environ.get("OPENAI_API_KEY", "")


@app.get("/healthz")
def healthz() -> dict:
    return {"status": "ok"}


@app.get("/ai-stream")
def ai_stream() -> Response:
    prompt = request.args.get("prompt", "hi")
    model = request.args.get("model", "gpt-4o-mini")

    def generate():
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True}
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with requests.post(UPSTREAM, json=payload, headers=headers, stream=True, timeout=120) as r:
            r.raise_for_status()
            for line in r.iter_lines():
                if line:
                    yield line + b"\n\n"

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
