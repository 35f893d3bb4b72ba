"""streamapp's exceptions, one per layer, and the one JSON error shape.

    StreamappError
     ├── ApiError        the HTTP layer: a request we refuse (4xx) -> JSON body
     ├── StoreError      the stream store (Redis) failed: a 503
     └── UpstreamError   the provider layer: any failure of an LLM upstream
                         (unreachable, timeout, HTTP status, bad response, auth,
                         in-band error). Before the first byte it becomes a 502
                         (504 on timeout) JSON response; after it, a final
                         ``event: error`` (see ``streamapp.streams.reader``).

Every error body is ``{"error": {"code", "message", "field"}}`` (OpenAI's shape
under ``/v1/``, see :func:`error_response`).
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from flask import Response, g, jsonify, request

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


class ApiError(StreamappError):
    """A request streamapp refuses; ``status`` is a 4xx."""

    status = 400
    code = "invalid_request"


class StoreError(StreamappError):
    """The stream store cannot be reached; the request may be retried.

    ``message`` (what clients see) is always :attr:`PUBLIC_MESSAGE`; the text it is made
    with, the backend's own (Redis's host and port included), is ``detail``, and ``str()``,
    for the log only (:func:`log_store_error`).
    """

    status = 503
    code = "store_unavailable"
    PUBLIC_MESSAGE = "the stream store is unavailable; try again shortly"

    def __init__(self, detail: str) -> None:
        super().__init__(self.PUBLIC_MESSAGE)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class UpstreamError(StreamappError):
    """An LLM upstream failed. Codes:

    ``upstream_unreachable``, ``upstream_timeout`` (status 504),
    ``upstream_http_error`` (the upstream's status in ``upstream_status``,
    a redirect included: they are not followed), ``upstream_auth`` (401/403
    from the upstream), ``upstream_bad_response`` (not JSON, JSON of the wrong
    shape, a body that cannot be decoded), ``upstream_error`` (an in-band error
    object), ``upstream_disconnected``.

    ``message`` goes to clients: it names the upstream by its role ("OpenAI
    upstream") and may relay the upstream's own error message, never our hosts,
    ports or exception reprs. ``detail`` is the whole story for the log.
    """

    status = 502
    code = "upstream_error"

    def __init__(self, message: str, *, code: str | None = None,
                 upstream_status: int | None = None, detail: str | None = None) -> None:
        status = 504 if code == "upstream_timeout" else 502
        super().__init__(message, code=code, status=status)
        self.upstream_status = upstream_status
        self.detail = detail or message


class BodyRefused(ApiError):
    """A request body we stop reading (too large: 413, too slow: 408). The
    connection is closed after the answer, or the server would go on to read
    the rest of the body before the next request."""

    status = 413
    code = "request_entity_too_large"


def log_store_error(exc: StoreError) -> None:
    """Log a store failure a client is told about, its detail with the request's id."""
    logger.warning("the stream store failed: %s", exc.detail,
                   extra={"request_id": g.get("request_id"), "path": request.path})


def error_response(status: int, code: str, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None, close: bool = False) -> Response:
    """The one JSON error response every route and handler uses.

    Under ``/v1/`` the body has OpenAI's shape, ``{"error": {"message", "type",
    "code", "param"}}`` (``param`` is our ``field``), which its SDKs turn into
    their error classes. With ``close``, the connection ends once the response is written: gunicorn
    drops a ``Connection: close`` header from the app, so its socket is shut
    for writing (the client reads the answer, then the end) and gunicorn closes
    it when the client does or its keep-alive wait runs out.
    """
    if request.path.startswith("/v1/"):
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
