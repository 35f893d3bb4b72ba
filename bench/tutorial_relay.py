"""Baseline C: the SSE relay a tutorial would write (Flask + requests ``iter_lines``).

``GET /ai-stream?prompt=...&model=...`` posts to ``$OPENAI_BASE_URL/chat/completions``
with ``stream=True`` and yields ``data: <token>\\n\\n`` per delta, then ``event: end``.
No stream log, no resume, no disconnect watcher: a client that leaves is noticed
only when a write to it fails. Run under the same gunicorn gevent worker as the
service (see ``bench/harness.py``: ``start_relay``).
"""

from __future__ import annotations

import json
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
                if not line.startswith(b"data: "):
                    continue
                data = line[len(b"data: "):]
                if data == b"[DONE]":
                    break
                for choice in json.loads(data).get("choices", []):
                    content = choice["delta"].get("content")
                    if content:
                        yield f"data: {content}\n\n"
        yield "event: end\ndata: {}\n\n"

    return Response(generate(), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
