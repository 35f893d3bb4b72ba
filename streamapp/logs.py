"""Structured logs: ``X-Request-ID``, one line per request, one summary line per stream.

Every request gets an id: the client's ``X-Request-ID`` when it is a plain token (at most
128 letters, digits and ``._:-``), else a new one; it is echoed in the response's
``X-Request-ID``, kept in the metadata of the streams the request starts, and written on
every line about them. Lines carry their facts as fields: ``STREAMAPP_LOG_FORMAT=json``
writes one JSON object per line (python-json-logger), ``text`` (the default) a readable
line followed by ``key=value`` pairs. No line holds a secret: a client is its API key's
name, a path is logged without its query string (prompts stay out of the log).

- ``request``: ``method``, ``path``, ``status``, ``duration_ms`` (to the end of the body, so
  a stream's whole life), ``request_id``, ``client``, ``remote_addr``. Health checks and
  metrics scrapes are logged at DEBUG.
- ``stream ended``: ``stream_id``, ``request_id``, ``route``, ``provider``, ``model``,
  ``client``, ``outcome``, ``finish_reason``, ``error_code``, ``ttft_ms``, ``events``,
  ``tokens``, ``duration_ms``, ``usage`` (the stream's usage record, with its ``source``),
  ``upstream`` (the one that answered) and ``attempts`` (each upstream its start tried:
  ``upstream/model outcome [status] ms``, ``;``-separated).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from .streams import get_manager
from .streams.observe import StreamSummary

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]')
QUIET_ENDPOINTS = frozenset({"pages.healthz", "pages.readyz", "metrics.metrics"})
_NOT_FIELDS = frozenset(RESERVED_ATTRS) | {"taskName", "color_message"}

access_log = logging.getLogger("streamapp.access")
stream_log = logging.getLogger("streamapp.streams")


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (the record's fields, in the order given)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = [f"{k}={_text(v)}" for k, v in record.__dict__.items()
                  if k not in _NOT_FIELDS and not k.startswith("_")]
        return f"{line} {' '.join(fields)}" if fields else line


def _text(value: Any) -> str:
    """A field's value on a text line: bare when plain, else a JSON string (quotes, backslashes
    and control characters escaped, so a value a client chose cannot forge a line)."""
    if isinstance(value, dict):  # a usage record: one JSON object
        return json.dumps(json.dumps(value, ensure_ascii=False, separators=(",", ":")), ensure_ascii=False)
    text = "-" if value is None else str(value)
    if not text or _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _clean(text: str) -> str:
    """A client's text for a log message: control characters escaped (no forged lines)."""
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)


def configure(config: dict[str, Any]) -> None:
    """Install the formatter on the root logger once per process (create_app may run again)."""
    # No line shows its source file or thread: skip gathering them for every record
    # (the logging HOWTO's "Optimization": finding the caller walks the stack).
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logMultiprocessing = False  # (gunicorn's lines show the process id)
    root = logging.getLogger()
    root.setLevel(str(config["LOG_LEVEL"]).upper())
    if any(getattr(h, "_streamapp", False) for h in root.handlers):
        return
    handler = logging.StreamHandler()
    if config["LOG_FORMAT"] == "json":
        handler.setFormatter(JsonFormatter("{asctime}{levelname}{name}{message}", style="{",
                                           rename_fields={"asctime": "time", "levelname": "level",
                                                          "name": "logger"},
                                           json_ensure_ascii=False))
    else:
        handler.setFormatter(TextFormatter())
    handler._streamapp = True  # type: ignore[attr-defined]
    root.addHandler(handler)


def _begin() -> None:
    given = request.headers.get("X-Request-ID", "")
    g.request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.started = time.monotonic()


def _end(resp: Response) -> Response:
    request_id = g.get("request_id") or uuid.uuid4().hex
    resp.headers["X-Request-ID"] = request_id
    client = g.get("client")
    upgraded = g.get("ws_upgraded", False)  # a WebSocket's view returns when its socket closed
    fields = {"method": request.method, "path": request.path, "status": 101 if upgraded else resp.status_code,
              "request_id": request_id, "client": client.name if client is not None else None,
              "remote_addr": request.remote_addr}
    level = logging.DEBUG if request.endpoint in QUIET_ENDPOINTS else logging.INFO
    started = g.get("started", time.monotonic())

    def log() -> None:
        fields["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
        access_log.log(level, "%s %s %s", fields["method"], _clean(fields["path"]), fields["status"],
                       extra=fields)

    if resp.is_streamed and not upgraded:
        resp.call_on_close(log)  # when the body is done: a stream's whole life
    else:
        log()
    return resp


class StreamLog:
    """The manager's observer that writes one summary line per stream."""

    def stream_started(self, sid: str, meta: dict[str, Any]) -> None:
        pass  # the manager logs the start itself

    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None:
        stream_log.info("stream %s resumed", sid, extra={"stream_id": sid, "request_id": g.get("request_id")})

    def stream_ended(self, s: StreamSummary) -> None:
        meta = s.meta
        stream_log.info(
            "stream %s ended: %s", s.sid, s.outcome,
            extra={"stream_id": s.sid, "request_id": meta.get("request_id"), "route": meta.get("route"),
                   "provider": meta.get("provider"), "model": meta.get("model"), "client": meta.get("client"),
                   "outcome": s.outcome, "finish_reason": s.finish_reason, "error_code": s.error_code,
                   "ttft_ms": None if s.ttft_s is None else round(s.ttft_s * 1000, 1),
                   "events": s.events, "tokens": s.tokens, "duration_ms": round(s.duration_s * 1000, 1),
                   "upstream": meta.get("upstream"), "attempts": attempts_text(meta.get("attempts")),
                   "usage": s.usage})


def attempts_text(attempts: list[dict[str, Any]] | None) -> str | None:
    """A stream's upstream attempts on one line: ``a/m upstream_http_error 503 12ms; b/m success 40ms``."""
    if not attempts:
        return None
    parts = ((f"{a['upstream']}/{a['model']}", a["outcome"], a["status"], f"{a['ms']:g}ms") for a in attempts)
    return "; ".join(" ".join(str(p) for p in part if p is not None) for part in parts)


def init_app(app: Flask) -> None:
    """Request ids and request lines (hooks that run before every other), stream summaries."""
    configure(app.config)
    app.before_request(_begin)
    app.after_request(_end)
    with app.app_context():
        get_manager().observers.append(StreamLog())
