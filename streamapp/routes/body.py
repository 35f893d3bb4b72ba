"""Reading a request body: bounded in size and in time, JSON parsed with bounds (not a blueprint)."""

from __future__ import annotations

import gevent
from flask import current_app, request

from ..errors import ApiError, BodyRefused
from ..schemas import load_json


def read_body() -> bytes:
    """The body, at most ``MAX_BODY_BYTES`` (else 413), within ``BODY_TIMEOUT_S`` (else 408).

    Read from the WSGI input itself: werkzeug's limit cuts a chunked body (no
    Content-Length) short without a word. The time limit is for the whole body,
    so a client trickling bytes cannot hold the connection either.
    """
    config = current_app.config
    limit, length = config["MAX_BODY_BYTES"], request.content_length
    too_large = BodyRefused(f"the body is larger than {limit} bytes (MAX_BODY_BYTES)")
    if length is not None and length > limit:
        raise too_large
    if length is None and not request.environ.get("wsgi.input_terminated"):
        return b""  # no length and a server that does not end the input: no body (PEP 3333)
    seconds = config["BODY_TIMEOUT_S"]
    timer = gevent.Timeout(seconds if seconds > 0 else None)
    timer.start()
    try:
        raw = request.environ["wsgi.input"].read(limit + 1 if length is None else length)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise BodyRefused(f"the body did not arrive within {seconds:g} s", code="request_timeout",
                          status=408) from None
    finally:
        timer.close()
    if len(raw) > limit:
        raise too_large
    if length is not None and len(raw) < length:
        raise ApiError("the body ended before its Content-Length", code="incomplete_body")
    return raw


def read_json_body() -> object:
    """The body's JSON (``Content-Type: application/json`` required, else 415)."""
    if not request.is_json:
        raise ApiError("Content-Type must be application/json", code="unsupported_media_type",
                       status=415)
    return load_json(read_body())
