"""Every setting in one place: defaults, environment, validation.

``STREAMAPP_<NAME>`` environment variables override ``DEFAULTS`` (values are
parsed as JSON when they can be, so ``STREAMAPP_HEARTBEAT_S=0.5`` is a float).
The standard ``OPENAI_API_KEY``, ``OPENAI_BASE_URL``, ``OLLAMA_HOST`` and
``REDIS_URL`` are read as they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "DEFAULT_PROVIDER": "demo",        # provider when a request names none
    "UPSTREAMS_FILE": "",              # TOML of named upstreams and routes (streamapp/upstreams.py); "": none
    "DEMO_DELAY_MS": 40,               # pace of the demo provider's tokens
    "STREAM_DEFAULT_DELAY_MS": 50,     # GET /stream delay_ms default
    "STREAM_MAX_DELAY_MS": 5000,       # GET /stream delay_ms is capped here
    "STREAM_MAX_TEXT": 600,            # GET /stream text length limit (fits the request line)
    "MAX_BODY_BYTES": 1 << 20,         # request bodies above this get 413
    "BODY_TIMEOUT_S": 10.0,            # a request body must arrive within this (else 408)
    "CONNECT_TIMEOUT_S": 5.0,          # upstream TCP connect
    "READ_TIMEOUT_S": 120.0,           # upstream silence before giving up
    "STALL_TIMEOUT_S": 60.0,           # after the first token: no upstream event this long is a stall
    "OPENAI_MODEL": "gpt-4o-mini",
    "OLLAMA_MODEL": "llama3.2",
    "HEARTBEAT_S": 15.0,               # SSE comment when nothing else was sent
    "RETRY_MS": 2000,                  # SSE retry: field sent first on every stream
    "HEADER_WAIT_S": 1.0,              # hold headers this long for a first token
    "RESUME_TTL_S": 300.0,             # a finished stream's log is kept this long
    "RESUME_GRACE_S": 10.0,            # a stream with no reader lives this long
    "WRITE_TIMEOUT_S": 30.0,           # a client that reads nothing this long is dropped
    "LEASE_S": 60.0,                   # a reader's presence lease: at least 2 x WRITE_TIMEOUT_S
    "STREAM_MAX_EVENTS": 100_000,      # events with content (text, reasoning, tool calls); past it: "length"
    "STREAM_MAX_BYTES": 8 << 20,       # UTF-8 bytes those events carry; likewise
    "STREAM_MAX_DURATION_S": 3600.0,   # any stream (on_disconnect=finish too) ends with "length"
    "REDIS_PREFIX": "streamapp",       # every Redis key starts with this
    "REDIS_POOL_SIZE": 100,            # Redis connections per worker for short commands
    "REDIS_BLOCKING_POOL_SIZE": 4,     # per worker: blocking reads for readers of other workers' streams
    "REDIS_COMMIT_MS": 5,              # appends gathered this long before each write to Redis (group commit)
    # Access (streamapp/auth.py). No key configured: the API is open.
    "API_KEYS": "",                    # comma-separated keys: KEY, NAME:KEY or [NAME:]sha256:HEX
    "API_KEYS_FILE": "",               # one key a line, with a name and limits (see auth.py)
    "ADMIN_KEYS": "",                  # comma-separated key names that are admin (see auth.py)
    "SECRET_KEY": None,                # signs session cookies; unset: one per process (a warning)
    "SESSION_TTL_S": 43200.0,          # a browser session cookie (POST /api/session) lasts this long
    "CORS_ORIGINS": "",                # comma-separated origins allowed cross-origin; "*" only when open
    # What one client may spend (streamapp/limits.py); 0 or "" switches a limit off.
    "TRUSTED_PROXIES": 0,              # proxy hops whose X-Forwarded-For is believed (nginx in front: 1)
    "RATE_LIMIT": "120/minute",        # stream starts per API key (per client IP when open); "" = none
    "RATE_LIMIT_STRATEGY": "moving-window",  # exact over the last period (the limits package's names)
    "MAX_STREAMS_PER_KEY": 0,          # concurrent streams per API key (per client IP when open)
    "MAX_STREAMS_PER_PROCESS": 0,      # concurrent streams one worker runs
    "MAX_DETACHED_PER_CLIENT": 4,      # running on_disconnect=finish streams per key (per IP when open)
    "QUEUE_WAIT_S": 0.0,               # a stream at a full cap waits this long for a slot; 0: 429 at once
    "SLOT_LEASE_S": 15.0,              # a stream slot's lease in Redis, renewed every third of it
    # Usage and token budgets (streamapp/usage/).
    "TOKEN_BUDGET": "",                # token budgets of keys without tokens=: "N/day,M/hour"; "" = none
    "BUDGET_DEFAULT_MAX_TOKENS": 4096,  # a budgeted stream without max_tokens: reserved, and its cap
    "BUDGET_LEASE_S": 60.0,            # a reservation's lease in Redis, renewed every third of it
    "USAGE_RETENTION_DAYS": 400,       # the ledger keeps a day this long after its last stream (Redis)
    "USAGE_METRICS_BY_KEY": False,     # /metrics: streamapp_usage_tokens_total{key,kind}, a series per key
    "MAX_MESSAGE_CHARS": 100_000,      # characters of one message
    "MAX_MESSAGES": 500,               # messages of one request (history and the new message)
    "MAX_INPUT_CHARS": 400_000,        # characters of all the messages of one request
    "MAX_TOKENS_CEILING": 65_536,      # max_tokens / max_completion_tokens above this: 400
    "MAX_EMBED_INPUTS": 2048,          # inputs of one POST /v1/embeddings (OpenAI's own cap)
    "MAX_EMBED_CHARS": 400_000,        # characters of all of them (a token id counts as one)
    "ALLOWED_MODELS": "",              # "openai:gpt-4o-mini,gpt-4o;ollama:llama3.2"; "" = any
    "CIRCUIT_FAILURES": 5,             # start failures in a row opening an upstream's circuit; 0: none
    "CIRCUIT_COOLDOWN_S": 30.0,        # an open circuit refuses starts this long, then lets one probe
    # Failover before the first token (streamapp/failover.py), for models with several targets.
    "FIRST_TOKEN_TIMEOUT_S": 30.0,     # a target left: an attempt with no first token this long is given up
    "START_BUDGET_S": 60.0,            # no attempt starts later than this after the first; 0: no failover
    "RETRY_AFTER_CAP_S": 5.0,          # a target asking to wait (Retry-After) up to this is retried last
    "READY_PROVIDERS": "",             # providers /readyz checks; "": the default one (+ openai with a key)
    "READY_CACHE_S": 2.0,              # GET /readyz reuses its last answer this long
    "METRICS_ALLOW": "127.0.0.1/8,::1",  # who may GET /metrics: addresses, CIDRs (comma-separated), "*"
    "LOG_LEVEL": "info",               # the app's log level (gunicorn's too)
    "LOG_FORMAT": "text",              # text (a line, then key=value fields) or json (one object a line)
    # The stream inspector (GET /inspect, GET /api/streams): admin keys only.
    "INSPECT_MAX_STREAMS": 1000,       # recent streams listed at most (Redis keeps this many ids)
    "INSPECT_LIVE_S": 300.0,           # a live table connection ends after this long (the page reconnects)
    # WebSocket (GET /ws). A frame over MAX_BODY_BYTES is refused with an error message.
    "WS_PING_S": 20.0,                 # ping frame interval; a peer silent until the next ping is dropped
    "WS_MAX_FRAME_BYTES": 2 << 20,     # a frame over this closes the socket (1009)
}

_FLOATS = ("CONNECT_TIMEOUT_S", "READ_TIMEOUT_S", "STALL_TIMEOUT_S", "HEARTBEAT_S", "HEADER_WAIT_S",
           "BODY_TIMEOUT_S", "RESUME_TTL_S", "RESUME_GRACE_S", "WRITE_TIMEOUT_S", "LEASE_S",
           "STREAM_MAX_DURATION_S", "SESSION_TTL_S", "SLOT_LEASE_S", "WS_PING_S", "READY_CACHE_S",
           "QUEUE_WAIT_S", "CIRCUIT_COOLDOWN_S", "INSPECT_LIVE_S", "FIRST_TOKEN_TIMEOUT_S", "START_BUDGET_S",
           "RETRY_AFTER_CAP_S", "BUDGET_LEASE_S")
# Taken as written from the environment (Flask parses STREAMAPP_* values as JSON: a key "1e5" stays text).
_RAW_STRINGS = ("API_KEYS", "API_KEYS_FILE", "ADMIN_KEYS", "SECRET_KEY", "CORS_ORIGINS", "READY_PROVIDERS",
                "UPSTREAMS_FILE", "TOKEN_BUDGET")
_INTS = ("DEMO_DELAY_MS", "STREAM_DEFAULT_DELAY_MS", "STREAM_MAX_DELAY_MS",
         "STREAM_MAX_TEXT", "MAX_BODY_BYTES", "RETRY_MS", "STREAM_MAX_EVENTS", "STREAM_MAX_BYTES",
         "REDIS_POOL_SIZE", "REDIS_BLOCKING_POOL_SIZE", "TRUSTED_PROXIES", "MAX_STREAMS_PER_KEY",
         "MAX_STREAMS_PER_PROCESS", "MAX_DETACHED_PER_CLIENT", "MAX_MESSAGE_CHARS", "MAX_MESSAGES",
         "MAX_INPUT_CHARS", "MAX_TOKENS_CEILING", "WS_MAX_FRAME_BYTES", "REDIS_COMMIT_MS",
         "MAX_EMBED_INPUTS", "MAX_EMBED_CHARS", "CIRCUIT_FAILURES",
         "INSPECT_MAX_STREAMS", "BUDGET_DEFAULT_MAX_TOKENS", "USAGE_RETENTION_DAYS")
PROVIDERS = ("demo", "openai", "ollama")


def from_environ(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Settings from the standard variables (the STREAMAPP_* ones come via Flask)."""
    env = os.environ if environ is None else environ
    return {
        "OPENAI_API_KEY": env.get("OPENAI_API_KEY", ""),
        "OPENAI_BASE_URL": env.get("OPENAI_BASE_URL", "https://api.openai.com/v1").rstrip("/"),
        "OLLAMA_HOST": _ollama_url(env.get("OLLAMA_HOST") or "http://127.0.0.1:11434"),
        "OLLAMA_HOST_SET": bool(env.get("OLLAMA_HOST")),  # Ollama is served only when asked for (models.py)
        "REDIS_URL": env.get("REDIS_URL", ""),
    }


def _ollama_url(value: str) -> str:
    # Ollama's own clients accept "host:port" without a scheme.
    value = value.rstrip("/")
    return value if "://" in value else f"http://{value}"


def validate(config: dict[str, Any]) -> None:
    """Coerce types and reject impossible values, naming the setting."""
    for key in _RAW_STRINGS:
        raw = os.environ.get(f"STREAMAPP_{key}")
        if raw is not None and config.get(key) is not None and not isinstance(config[key], str):
            config[key] = raw
    for key in _FLOATS:
        config[key] = _number(config, key, float)
    for key in _INTS:
        config[key] = _number(config, key, int)
    unknown = set(filter(None, (p.strip() for p in str(config["READY_PROVIDERS"] or "").split(",")))) \
        - set(PROVIDERS)
    if unknown and not config.get("UPSTREAMS_FILE"):  # with the file it names upstreams: ready.py checks
        raise ValueError(f"STREAMAPP_READY_PROVIDERS: unknown provider {', '.join(sorted(unknown))}")
    if config["LOG_FORMAT"] not in ("text", "json"):
        raise ValueError("STREAMAPP_LOG_FORMAT must be text or json")
    if config["DEFAULT_PROVIDER"] not in PROVIDERS:
        raise ValueError(f"STREAMAPP_DEFAULT_PROVIDER must be one of {', '.join(PROVIDERS)}")
    if config["HEARTBEAT_S"] <= 0:
        raise ValueError("STREAMAPP_HEARTBEAT_S must be > 0")
    if config["STALL_TIMEOUT_S"] <= 0:
        raise ValueError("STREAMAPP_STALL_TIMEOUT_S must be > 0")
    for key in ("REDIS_POOL_SIZE", "REDIS_BLOCKING_POOL_SIZE"):
        if config[key] < 1:
            raise ValueError(f"STREAMAPP_{key} must be >= 1")
    if not 0 <= config["REDIS_COMMIT_MS"] <= 1000:
        raise ValueError("STREAMAPP_REDIS_COMMIT_MS must be between 0 and 1000")
    for key in ("SLOT_LEASE_S", "WS_PING_S", "WRITE_TIMEOUT_S", "CIRCUIT_COOLDOWN_S", "INSPECT_LIVE_S",
                "INSPECT_MAX_STREAMS", "BUDGET_LEASE_S", "USAGE_RETENTION_DAYS"):
        if config[key] <= 0:
            raise ValueError(f"STREAMAPP_{key} must be > 0")
    if not 0 <= config["QUEUE_WAIT_S"] <= 600:
        raise ValueError("STREAMAPP_QUEUE_WAIT_S must be between 0 and 600")
    _check_lease(config["LEASE_S"], config["WRITE_TIMEOUT_S"])
    if config["WS_MAX_FRAME_BYTES"] < config["MAX_BODY_BYTES"]:
        raise ValueError("STREAMAPP_WS_MAX_FRAME_BYTES must be >= STREAMAPP_MAX_BODY_BYTES")
    for key in ("RATE_LIMIT", "ALLOWED_MODELS"):  # from_prefixed_env parses "0" or 60 as a number
        config[key] = "" if config[key] in (None, 0, False) else str(config[key])
    config["USAGE_METRICS_BY_KEY"] = config["USAGE_METRICS_BY_KEY"] in (True, 1, "1", "true", "yes")
    config["MAX_CONTENT_LENGTH"] = config["MAX_BODY_BYTES"]


def _check_lease(lease: float, write_timeout: float) -> None:
    """Refuse a reader's lease that a blocked write can outlive."""
    # A reader renews its lease every third of it: when its transport asks for more events,
    # and on the host's tick while the transport is blocked in a write (StreamManager.
    # renew_leases). The first alone can leave lease / 3 + write_timeout between two renewals
    # (a write may block that long); a lease of at least 2 x write_timeout covers that by a
    # sixth of itself (10 s by default), so a blocked write never makes a live reader count as
    # gone, even when the tick's renewal fails or comes late.
    if lease < 2 * write_timeout:
        raise ValueError(f"STREAMAPP_LEASE_S ({lease:g}) must be at least twice "
                         f"STREAMAPP_WRITE_TIMEOUT_S ({write_timeout:g}): a reader whose write is "
                         "blocked renews its lease only when the write ends, and must not count as "
                         "gone meanwhile")


def _number(config: dict[str, Any], key: str, kind: type) -> Any:
    try:
        value = kind(config[key])
    except (TypeError, ValueError):
        raise ValueError(f"STREAMAPP_{key} must be a number, got {config[key]!r}") from None
    if value < 0:
        raise ValueError(f"STREAMAPP_{key} must be >= 0, got {value}")
    return value
