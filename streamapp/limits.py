"""What one client may spend: request rates, concurrent streams, input sizes.

Three extensions, bound to the app by :func:`init_app` and applied in one place each:

- **Rate limits** (Flask-Limiter): one shared count per client across the routes that start
  a generation (``STREAM_ENDPOINTS``), keyed by the API key's name (``g.client.name``) or,
  when the service runs open, by the client IP (``X-Forwarded-For`` is trusted only through
  ``TRUSTED_PROXIES`` hops, see ``create_app``). The limit is ``g.client.rate_limit`` or
  ``RATE_LIMIT``; counts live in Redis when ``REDIS_URL`` is set, so every worker and host
  shares them. Over it: 429 ``rate_limited`` with ``Retry-After``; every limited answer
  carries ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``. A resume (``Last-Event-ID``)
  and a ``HEAD`` start nothing and are not counted.
- **Stream caps** (:mod:`streamapp.slots`, taken by ``routes.door.take_slot`` when a stream
  starts, waiting in :mod:`streamapp.queue` when ``QUEUE_WAIT_S`` allows): concurrent
  streams per client (``g.client.max_streams`` or ``MAX_STREAMS_PER_KEY``), detached
  streams (``on_disconnect=finish``) per client (``MAX_DETACHED_PER_CLIENT``, 4 by default)
  and streams per process
  (``MAX_STREAMS_PER_PROCESS``); leases in Redis when ``REDIS_URL`` is set, so every worker
  and host counts the same streams. Over a cap: 429 ``too_many_streams`` or
  ``too_many_detached_streams``, naming the setting.
- **Input limits** (:func:`check_chat_input`): message length, number of messages, total
  characters, the ``max_tokens`` ceiling and the model allow-list, the same for
  ``POST /api/chat``, ``POST /v1/chat/completions`` and ``POST /v1/messages``.

A value of 0 (or an empty string) switches a limit off.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask, Response, current_app, g, request
from flask_limiter import Limiter, RequestLimit

from .errors import ApiError, TooManyDetachedStreams, TooManyStreams
from .metrics import count_rejection
from .models import parse_allowed_models
from .slots import Slot, StreamSlots
from .streams import short_client

logger = logging.getLogger(__name__)

# The views that start a generation (embeddings too): one shared rate-limit count across them.
STREAM_ENDPOINTS = ("sse.stream", "sse.ai_stream", "sse.local_ai", "chat.chat", "v1.chat_completions",
                    "responses.create", "embeddings.embeddings", "messages.messages")


def client_identity() -> str:
    """Whom a request's limits count against: its API key's name, else its IP."""
    client = getattr(g, "client", None)
    if client is not None:
        return f"key:{client.name}"
    return f"ip:{request.remote_addr or 'unknown'}"


# -- rate limits -------------------------------------------------------------------------------

def _rate_limit() -> str:
    client = getattr(g, "client", None)
    return (getattr(client, "rate_limit", None) or current_app.config["RATE_LIMIT"] or "").strip()


def _not_counted() -> bool:
    # HEAD and resumes never start a generation (the resume rule); no limit, nothing to count.
    if not _rate_limit():
        return True
    if request.endpoint == "ws.ws":
        return False  # each chat on a socket counts, whatever its handshake carried
    return request.method == "HEAD" or \
        bool(request.headers.get("Last-Event-ID") or request.args.get("last_event_id"))


def _breach_message() -> str:
    return f"rate limit exceeded: at most {_rate_limit()} stream starts for this " \
           f"{'API key' if getattr(g, 'client', None) is not None else 'client address'}"


def _storage(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if config["REDIS_URL"]:
        return config["REDIS_URL"], {"key_prefix": f"{config['REDIS_PREFIX']}:ratelimit",
                                     "socket_timeout": 2, "socket_connect_timeout": 2}
    return "memory://", {}


def _rate_headers(response: Response) -> Response:
    """``X-RateLimit-*`` on every limited answer; ``Retry-After`` on the 429 only."""
    limiter: Limiter = current_app.extensions["streamapp.limiter"]
    current: RequestLimit | None = limiter.current_limit
    if current is None:
        return response
    try:
        reset = current.reset_at
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["X-RateLimit-Reset"] = str(reset)
        if response.status_code == 429 and current.breached:
            response.headers["Retry-After"] = str(max(1, int(reset - time.time())))
    except Exception as exc:  # noqa: BLE001 - the store failed: the answer goes out without them
        logger.warning("could not read the rate-limit window: %s", exc)
    return response


def _any_rate_limit(app: Flask) -> bool:
    """Whether a stream start can be rate limited at all: the default limit, or a key's own."""
    keys = app.extensions.get("auth")
    return bool(str(app.config["RATE_LIMIT"] or "").strip()) or \
        any(client.rate_limit for client in getattr(keys, "by_name", {}).values())


def _init_limiter(app: Flask) -> None:
    if not _any_rate_limit(app):
        app.extensions["streamapp.stream_limit"] = None  # nothing to count: no hook on any request
        return
    uri, options = _storage(app.config)
    limiter = Limiter(
        client_identity, storage_uri=uri, storage_options=options,
        strategy=app.config["RATE_LIMIT_STRATEGY"], headers_enabled=False,
        # Redis down: count in this process meanwhile rather than refuse every stream.
        in_memory_fallback_enabled=True, swallow_errors=True,
        key_prefix="", default_limits=[])
    limiter.init_app(app)
    shared = limiter.shared_limit(_rate_limit, scope="streams", exempt_when=_not_counted,
                                  error_message=_breach_message,
                                  on_breach=lambda _: count_rejection("rate_limited"))  # HTTP and WebSocket
    for endpoint in STREAM_ENDPOINTS:
        view = app.view_functions.get(endpoint)
        if view is not None:
            app.view_functions[endpoint] = shared(view)
    app.extensions["streamapp.limiter"] = limiter
    app.extensions["streamapp.stream_limit"] = shared
    app.after_request(_rate_headers)


def count_stream_start() -> None:
    """Count a stream start that no limited view made (a WebSocket chat) against the same
    shared limit as the HTTP ones; ``RateLimitExceeded`` over it."""
    limit = current_app.extensions["streamapp.stream_limit"]
    if limit is not None:
        with limit:
            pass


def retry_after() -> int | None:
    """Seconds until the limit just breached lets a stream start again (``None``: unknown)."""
    limiter: Limiter | None = current_app.extensions.get("streamapp.limiter")
    current: RequestLimit | None = limiter.current_limit if limiter is not None else None
    try:
        return max(1, int(current.reset_at - time.time())) if current is not None else None
    except Exception:  # noqa: BLE001 - the store failed: no hint
        return None


# -- stream caps -------------------------------------------------------------------------------

# -- input limits ------------------------------------------------------------------------------

def _text_length(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):  # content parts: their text counts
        return sum(len(p.get("text") or "") for p in content if isinstance(p, dict)
                   and isinstance(p.get("text"), str))
    return 0


def check_chat_input(list_field: str, messages: Iterable[tuple[str, Any]], provider: str,
                     model: str | None, max_tokens: dict[str, int | None] | None = None) -> None:
    """Raise ``ApiError`` (400, naming the field and the limit) when a chat request is over a
    limit. ``messages`` are ``(field, content)`` pairs of the list ``list_field`` (``history``,
    ``messages``); ``model`` None is the provider's default."""
    config = current_app.config
    per_message, most, total_max = config["MAX_MESSAGE_CHARS"], config["MAX_MESSAGES"], \
        config["MAX_INPUT_CHARS"]
    total = count = 0
    for field, content in messages:
        count += 1
        size = _text_length(content)
        if per_message and size > per_message:
            raise ApiError(f"{field} must be at most {per_message} characters "
                           f"(STREAMAPP_MAX_MESSAGE_CHARS), got {size}", field=field, code="too_long")
        total += size
    if most and count > most:
        raise ApiError(f"at most {most} messages (STREAMAPP_MAX_MESSAGES), got {count}",
                       field=list_field, code="too_many")
    if total_max and total > total_max:
        raise ApiError(f"the messages must total at most {total_max} characters "
                       f"(STREAMAPP_MAX_INPUT_CHARS), got {total}", field=list_field,
                       code="too_long")
    ceiling = config["MAX_TOKENS_CEILING"]
    for name, value in (max_tokens or {}).items():
        if ceiling and value is not None and value > ceiling:
            raise ApiError(f"{name} must be at most {ceiling} (STREAMAPP_MAX_TOKENS_CEILING)",
                           field=name, code="invalid_field")
    _check_model(provider, model)


def _check_model(provider: str, model: str | None) -> None:
    config = current_app.config
    if provider == "demo":
        return  # the embedded demo spends nothing
    if config.get("UPSTREAMS_FILE"):
        return  # routes: the resolver (routes/model.py) allowed the public name; this is the upstream's
    name = model or config.get(f"{provider.upper()}_MODEL")
    allowed = config["ALLOWED_MODELS_PARSED"].get(provider)
    if allowed is not None and name not in allowed:
        raise ApiError(f"the model '{name}' is not allowed for {provider}: allowed are "
                       f"{', '.join(sorted(allowed))} (STREAMAPP_ALLOWED_MODELS)", field="model",
                       code="model_not_allowed")
    client_models = getattr(getattr(g, "client", None), "models", None)
    if client_models is not None and name not in client_models and f"{provider}/{name}" not in client_models:
        raise ApiError(f"the model '{name}' is not allowed for this API key", field="model",
                       code="model_not_allowed", status=403)


# -- the extension -----------------------------------------------------------------------------

def init_app(app: Flask) -> None:
    """Bind the limiter and the stream caps to ``app`` (after its blueprints are registered)."""
    config = app.config
    # With an upstreams file ALLOWED_MODELS lists public names, checked by the resolver alone.
    config["ALLOWED_MODELS_PARSED"] = {} if config.get("UPSTREAMS_FILE") else \
        parse_allowed_models(config["ALLOWED_MODELS"])
    _init_limiter(app)
    app.extensions["streamapp.slots"] = StreamSlots(
        config["MAX_STREAMS_PER_KEY"], config["MAX_STREAMS_PER_PROCESS"], config["SLOT_LEASE_S"],
        config["REDIS_URL"], config["REDIS_PREFIX"], per_detached=config["MAX_DETACHED_PER_CLIENT"],
        client=short_client(app))


__all__ = ["STREAM_ENDPOINTS", "Slot", "StreamSlots", "TooManyDetachedStreams", "TooManyStreams",
           "check_chat_input", "client_identity", "init_app", "parse_allowed_models"]
