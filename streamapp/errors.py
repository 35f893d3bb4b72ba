"""streamapp's exceptions, the one JSON error shape, and the handlers that turn them into it.

    StreamappError            the base (500 ``internal_error``); every error we raise on purpose
     ├── ApiError             a request we refuse: a 4xx (400 ``invalid_request`` unless told)
     │    ├── BodyRefused     413 or 408: a body we stop reading; the connection closes after
     │    ├── Unauthorized    401 with ``WWW-Authenticate``: no key, or a key or session we do not know
     │    ├── Forbidden       403: a cookie or socket from another site, another client's stream
     │    ├── TooManyStreams  429 with ``Retry-After``: over a concurrent-stream cap
     │    │    └── TooManyDetachedStreams   over the cap on detached (``on_disconnect=finish``) ones
     │    ├── BudgetExceeded  429 with ``Retry-After``: a key's token budget cannot cover a new stream
     │    └── UpstreamUnavailable  503 with ``Retry-After``: the circuits of every upstream of the
     │                             model are open
     ├── StoreError           503 with ``Retry-After``: the stream store (Redis) failed; clients see
     │                        one fixed message, the log the backend's detail with the request id
     └── UpstreamError        an LLM upstream failed (unreachable, timeout, HTTP status, bad
                              response, auth, in-band error): before the first byte a 502 (504
                              on timeout, 429 with its ``Retry-After`` when the upstream said 429)
                              JSON response, after it the stream's final error event

:func:`init_app` registers the app's handlers in one place: every ``StreamappError`` raised in a
view, Werkzeug's HTTP errors (404, 405...) and Flask-Limiter's ``RateLimitExceeded`` (429
``rate_limited``) all answer :func:`error_response`: ``{"error": {"code", "message", "field"}}``,
OpenAI's shape under ``/v1/``, Anthropic's under ``/v1/messages``. A message a client sees names
no host, port, key or exception.
"""

from __future__ import annotations

import logging
import math
import socket
from typing import Any

from flask import Flask, Response, g, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from .messages.objects import anthropic_error
from .wire import openai_error

logger = logging.getLogger(__name__)


class StreamappError(Exception):
    """Base of every error streamapp raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status
        self.field = field

    def to_dict(self) -> dict[str, Any]:
        """The JSON error object."""
        return {"code": self.code, "message": self.message, "field": self.field}

    def headers(self) -> dict[str, str]:
        """Headers its HTTP answer carries."""
        return {}


class ApiError(StreamappError):
    """A request streamapp refuses; ``status`` is a 4xx."""

    status = 400
    code = "invalid_request"


class UpstreamUnavailable(ApiError):
    """The circuit of the upstream (of every upstream ``names``) is open: 503 with
    ``Retry-After`` (whole seconds, at least 1: the shortest wait)."""

    status = 503
    code = "upstream_unavailable"

    def __init__(self, names: str | list[str], retry_after: float) -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        self.names = [names] if isinstance(names, str) else list(names)
        if isinstance(names, str) or len(names) == 1:
            name = names if isinstance(names, str) else names[0]
            told = f"the upstream {name} is failing: its circuit is open"
        else:
            told = f"the upstreams {', '.join(names)} are failing: their circuits are open"
        super().__init__(f"{told}, retry in {self.retry_after} s")

    def headers(self) -> dict[str, str]:
        """``Retry-After``: the seconds left of the cool-down (or of the probe's turn)."""
        return {"Retry-After": str(self.retry_after)}


class StoreError(StreamappError):
    """The stream store cannot be reached; the request may be retried.

    ``message`` (what clients see) is always :attr:`PUBLIC_MESSAGE`; the text it is made
    with, the backend's own (Redis's host and port included), is ``detail``, and ``str()``,
    for the log only (:func:`log_store_error`).
    """

    status = 503
    code = "store_unavailable"
    PUBLIC_MESSAGE = "the stream store is unavailable; try again shortly"
    RETRY_AFTER_S = 2  # an outage is brief; an EventSource never retries a 503 by itself

    def __init__(self, detail: str) -> None:
        super().__init__(self.PUBLIC_MESSAGE)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail

    def headers(self) -> dict[str, str]:
        """``Retry-After``."""
        return {"Retry-After": str(self.RETRY_AFTER_S)}


class UpstreamError(StreamappError):
    """An LLM upstream failed. Codes:

    ``upstream_unreachable``, ``upstream_timeout`` (status 504),
    ``upstream_http_error`` (the upstream's status in ``upstream_status``,
    a redirect included: they are not followed), ``upstream_auth`` (401/403
    from the upstream), ``upstream_bad_response`` (not JSON, JSON of the wrong
    shape, a body that cannot be decoded), ``upstream_error`` (an in-band error
    object), ``upstream_cut`` (the connection closed, or the body ended, before the
    answer's end).

    ``message`` goes to clients: it names the upstream by its role ("OpenAI
    upstream") and may relay the upstream's own error message, never our hosts,
    ports or exception reprs. ``detail`` is the whole story for the log.

    The status: 504 on a timeout, 429 when the upstream answered 429 (its client may slow
    down: the upstream's ``Retry-After``, in seconds, is ``retry_after``), else 502.
    """

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, code: str | None = None,
                 upstream_status: int | None = None, detail: str | None = None,
                 retry_after: float | None = None, usage: dict[str, Any] | None = None) -> None:
        status = 504 if code == "upstream_timeout" else 429 if upstream_status == 429 else 502
        super().__init__(message, code=code, status=status)
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.detail = detail or message
        self.usage = usage  # the counts the upstream sent before it failed, if it sent any

    def headers(self) -> dict[str, str]:
        """``Retry-After`` when the upstream asked for one, and on every 429."""
        return retry_after_header(self.retry_after, self.status)


def retry_after_header(seconds: float | None, status: int | None = None) -> dict[str, str]:
    """``{"Retry-After": whole seconds, at least 1}``; ``{}`` when ``seconds`` is ``None``,
    except for a 429 (``status``), which always says when to come back (1 s when unknown)."""
    if seconds is None:
        return {"Retry-After": "1"} if status == 429 else {}
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


class BodyRefused(ApiError):
    """A request body we stop reading (too large: 413, too slow: 408). The
    connection is closed after the answer, or the server would go on to read
    the rest of the body before the next request."""

    status = 413
    code = "request_entity_too_large"


class Unauthorized(ApiError):
    """No key, or a key (or session) we do not know: 401 with ``WWW-Authenticate``."""

    status = 401
    code = "unauthorized"

    def headers(self) -> dict[str, str]:
        """RFC 6750: a 401 names the scheme (the message never repeats what was sent)."""
        return {"WWW-Authenticate": 'Bearer realm="streamapp"'}


class Forbidden(ApiError):
    """Authenticated, but not allowed this (a cookie from another origin, another client's stream)."""

    status = 403
    code = "forbidden"


class TooManyStreams(ApiError):
    """Over a concurrent-stream cap: 429 naming the cap."""

    status = 429
    code = "too_many_streams"
    RETRY_AFTER_S = 1  # a slot may free up any moment

    def headers(self) -> dict[str, str]:
        """``Retry-After``."""
        return {"Retry-After": str(self.RETRY_AFTER_S)}


class TooManyDetachedStreams(TooManyStreams):
    """Over the cap on running detached streams (``on_disconnect=finish``): 429 naming it."""

    code = "too_many_detached_streams"


class BudgetExceeded(ApiError):
    """A key's token budget cannot cover a new stream (``streamapp.usage.budgets``): 429 with
    ``Retry-After``, the seconds until the budget's window resets."""

    status = 429
    code = "budget_exceeded"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = max(1, math.ceil(retry_after))

    def headers(self) -> dict[str, str]:
        """``Retry-After``."""
        return {"Retry-After": str(self.retry_after)}


def log_store_error(exc: StoreError) -> None:
    """Log a store failure a client is told about, its detail with the request's id."""
    logger.warning("the stream store failed: %s", exc.detail,
                   extra={"request_id": g.get("request_id"), "path": request.path})


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, close: bool = False) -> Response:
    """The one JSON error response every route and handler uses.

    Under ``/v1/`` the body has OpenAI's shape, ``{"error": {"message", "type",
    "code", "param"}}`` (``param`` is our ``field``), and under ``/v1/messages``
    Anthropic's, ``{"type": "error", "error": {"type", "message"}}``: their SDKs
    turn each into their error classes. With ``close``, the connection ends once
    the response is written: gunicorn drops a ``Connection: close`` header from the app, so its socket is shut
    for writing (the client reads the answer, then the end) and gunicorn closes
    it when the client does or its keep-alive wait runs out.
    """
    if request.path == "/v1/messages" or request.path.startswith("/v1/messages/"):
        resp = jsonify(anthropic_error(status, message))
    elif request.path.startswith("/v1/"):
        resp = jsonify(openai_error(status, code, message, field))
    else:
        resp = jsonify({"error": {"code": code, "message": message, "field": field}})
    resp.status_code = status
    for key, value in (headers or {}).items():
        resp.headers[key] = value
    sock = request.environ.get("gunicorn.socket") if close else None
    if sock is not None:
        def shut() -> None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already gone
        resp.call_on_close(shut)
    return resp


def init_app(app: Flask) -> None:
    """Register the error handlers (each error above, Werkzeug's, the rate limiter's)."""

    @app.errorhandler(StreamappError)
    def _ours(exc: StreamappError) -> Response:
        if isinstance(exc, StoreError):
            log_store_error(exc)  # its detail (the backend's address) stays in the log
        return error_response(exc.status, exc.code, exc.message, exc.field, headers=exc.headers(),
                              close=isinstance(exc, BodyRefused))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        # The exception's own headers (Allow of a 405, say), but our body's type.
        headers = {k: v for k, v in exc.get_headers() if k.lower() not in ("content-type", "content-length")}
        return error_response(exc.code or 500, code, exc.description or exc.name, headers=headers)

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        # Its Retry-After and X-RateLimit-* headers come from the limiter's hook (limits.py).
        return error_response(429, "rate_limited", exc.description or "rate limit exceeded")
