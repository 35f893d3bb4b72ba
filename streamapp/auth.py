"""Who may use the API: API keys, browser session cookies and their secret, the Origin rule, CORS.

One ``before_request`` hook (:func:`authenticate`) decides who is calling, for every request:

- Public endpoints pass: the page, ``/healthz``, ``/readyz``, ``/metrics`` (which allows only
  ``METRICS_ALLOW`` addresses itself), ``/api.json``, ``/swagger/``, static files, and CORS
  preflights. Every other path, unknown ones and routes added later included, is protected.
- With no key configured the API is open: ``g.client`` is ``None`` (a warning at start-up when
  the server is bound to a non-loopback address).
- With keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared as SHA-256 digests
  with :func:`hmac.compare_digest` against every key (no early exit); or the signed session cookie
  that ``POST /api/session`` sets, accepted only from an allowed ``Origin`` (this one, or
  ``CORS_ORIGINS``) or with ``Sec-Fetch-Site: same-origin``, so a cross-site page cannot spend the
  user's cookie, by ``POST`` or by a ``GET`` stream route. A missing or wrong key is a 401
  (``Unauthorized``, with ``WWW-Authenticate: Bearer``); a cookie from elsewhere a 403. ``g.client``
  is then a :class:`Client`: the key's name and limits, never the key.

Checks the views call themselves, because only they know what is asked for:
:func:`require_owner` (403 ``not_stream_owner`` on another client's stream: deleting or continuing
a stored response), :func:`require_owner_or_admin` (the same, but an admin key passes: info, resume,
retrieve, cancel), :func:`require_admin` (the inspector), :func:`require_allowed_origin`
(the WebSocket handshake, from any page's ``Origin``) and :func:`page_viewer` (the inspector's
page, public so that a browser without a session meets words, not a JSON 401).

Session cookies are signed with :func:`session_secret`: ``STREAMAPP_SECRET_KEY`` when set; else,
with keys and Redis, one secret every instance shares, kept in Redis at
``<REDIS_PREFIX>:session-secret`` (the first process puts its instance's secret there; every
process puts back what it holds and adopts what Redis holds every few seconds:
:class:`SharedSecret`); else the instance's, made by gunicorn's master for all its workers; else
one for this process (a warning).

Keys (``API_KEYS``, comma-separated, or ``API_KEYS_FILE``, one a line, ``#`` comments)::

    sk-plain-key                                   # named key-<first 8 hex of its SHA-256>
    alice:sk-alice-key rpm=60 streams=2 models=demo,openai/gpt-4o-mini
    bob:sha256:<64 hex digits of the key's SHA-256> rate=1000/hour
    sha256:<64 hex digits>

Limits, all optional: ``rpm=N`` (``N/minute``) or ``rate=<flask-limiter string>``,
``streams=N`` (concurrent streams), ``models=a,b`` (allowed models), ``tokens=N/day`` (a token
budget, ``/hour`` and ``/minute`` too, several allowed: ``streamapp.usage.budgets``); and
``admin`` (a bare word: the key may list, inspect, watch, resume, retrieve and cancel every
client's streams and see their usage; never delete another's response or continue it).
``STREAMAPP_ADMIN_KEYS`` (comma-separated key names) marks keys admin too. Without any key the
service is open, and every caller is admin.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from flask import Flask, current_app, g, request, session
from flask_cors import CORS

from .errors import Forbidden, Unauthorized
from .usage.budgets import parse_limit

__all__ = ["Client", "Forbidden", "Keys", "Unauthorized", "init_app", "is_admin", "page_viewer",
           "require_admin", "require_owner", "require_owner_or_admin", "SharedSecret", "session_secret",
           "shared_secret"]

logger = logging.getLogger(__name__)

# Endpoints anyone may reach; everything else needs a key when keys are configured.
# The inspector's page checks its viewer itself (page_viewer), to answer a browser in words.
PUBLIC_ENDPOINTS = frozenset({"pages.index", "pages.healthz", "pages.readyz", "metrics.metrics", "static",
                              "inspect.page"})
PUBLIC_BLUEPRINTS = frozenset({"docs", "swagger_ui"})
SESSION_ENDPOINT = "session.create"
COOKIE_NAME = "streamapp_session"
# Session cookies' secret when STREAMAPP_SECRET_KEY is unset: kept in Redis at
# <REDIS_PREFIX>:session-secret, else the instance's, which gunicorn's master
# (conf/gunicorn.conf.py) puts in this variable before its workers fork.
SECRET_REDIS_KEY = "session-secret"
INSTANCE_SECRET_ENV = "_STREAMAPP_INSTANCE_SECRET"
# Seconds between a process's syncs of the shared secret with Redis (SharedSecret).
SECRET_SYNC_S = 2.0


@dataclass(frozen=True)
class Client:
    """Who is calling: a key's name (never the key) and its limits (``None``: the defaults)."""

    name: str
    rate_limit: str | None = None        # a flask-limiter string, e.g. "60/minute"
    max_streams: int | None = None       # concurrent streams
    models: frozenset[str] | None = None  # allowed models
    admin: bool = False                  # may read and cancel every client's streams, see their usage;
                                         # never delete or continue another's stored response
    token_budgets: tuple[tuple[int, str], ...] | None = None  # (tokens, period); None: TOKEN_BUDGET's


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _parse_entry(spec: str, limits: list[str], where: str) -> tuple[bytes, Client]:
    """One key: ``[NAME:]KEY`` or ``[NAME:]sha256:HEX`` and its limits. Errors never quote the key."""
    name, _, rest = spec.partition(":")
    if not rest:                                   # a bare key
        name, rest = "", spec
    elif name == "sha256":                         # an unnamed hash
        name, rest = "", spec
    if rest.startswith("sha256:"):
        hex_ = rest[len("sha256:"):]
        try:
            digest = bytes.fromhex(hex_)
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{where}: sha256: needs 64 hex digits")
    else:
        if not rest:
            raise ValueError(f"{where}: empty key")
        digest = _digest(rest)
    name = name or f"key-{digest.hex()[:8]}"
    opts: dict[str, Any] = {}
    for item in limits:
        opt, _, value = item.partition("=")
        try:
            if opt == "admin" and not value:
                opts["admin"] = True
            elif opt == "rpm":
                opts["rate_limit"] = f"{int(value)}/minute"
            elif opt == "rate" and value:
                opts["rate_limit"] = value
            elif opt == "streams":
                opts["max_streams"] = int(value)
            elif opt == "models" and value:
                opts["models"] = frozenset(v for v in value.split(",") if v)
            elif opt == "tokens":  # several allowed: one per period
                opts["token_budgets"] = (*opts.get("token_budgets", ()), parse_limit(value, where))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}: bad option {opt!r} (rpm=N, rate=N/unit, streams=N, "
                             "models=a,b, tokens=N/day, admin)") from None
    return digest, Client(name, **opts)


class Keys:
    """The configured keys: SHA-256 digests, each with its :class:`Client`."""

    def __init__(self, entries: list[tuple[bytes, Client]]) -> None:
        names = [c.name for _, c in entries]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"API key names must be unique: {', '.join(sorted(dupes))}")
        self._entries = entries
        self.by_name = {c.name: c for _, c in entries}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Keys:
        """The keys of ``API_KEYS`` and ``API_KEYS_FILE``."""
        entries = []
        for i, spec in enumerate(s.strip() for s in str(config.get("API_KEYS") or "").split(",")):
            if spec:
                entries.append(_parse_entry(spec, [], f"STREAMAPP_API_KEYS entry {i + 1}"))
        path = config.get("API_KEYS_FILE")
        if path:
            for n, line in enumerate(Path(path).read_text().splitlines(), 1):
                words = line.split("#", 1)[0].split()
                if words:
                    entries.append(_parse_entry(words[0], words[1:], f"{path} line {n}"))
        admins = {n.strip() for n in str(config.get("ADMIN_KEYS") or "").split(",") if n.strip()}
        unknown = admins - {c.name for _, c in entries}
        if unknown:
            raise ValueError(f"STREAMAPP_ADMIN_KEYS names no configured key: {', '.join(sorted(unknown))}")
        return cls([(d, replace(c, admin=True) if c.name in admins else c) for d, c in entries])

    def __bool__(self) -> bool:
        return bool(self._entries)

    def match(self, key: str) -> Client | None:
        """The client of ``key``: constant-time over every configured digest."""
        digest = _digest(key)
        found = None
        for known, client in self._entries:
            if hmac.compare_digest(digest, known):
                found = client
        return found


def _presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("X-API-Key") or None


def allowed_origins(config: dict[str, Any]) -> list[str]:
    """``CORS_ORIGINS`` as a list (``*`` kept: refused with keys at start-up)."""
    raw = config.get("CORS_ORIGINS") or ""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [o.strip().rstrip("/") for o in items if o.strip()]


def _allowed(origin: str, origins: frozenset[str]) -> bool:
    """Whether a page of ``origin`` is this site or one ``CORS_ORIGINS`` allows."""
    return origin == f"{request.scheme}://{request.host}" or origin in origins or "*" in origins


def _from_allowed_origin(origins: frozenset[str]) -> bool:
    """A cookie counts only from this origin or an allowed one (``Origin``), or when the browser
    says the request is same-origin (``Sec-Fetch-Site``, which pages cannot set)."""
    origin = request.headers.get("Origin")
    if origin is not None:
        return _allowed(origin, origins)
    return request.headers.get("Sec-Fetch-Site") == "same-origin"


def require_allowed_origin() -> None:
    """403 for a browser request from a page of another site (``Origin`` neither this site nor
    in ``CORS_ORIGINS``), whatever the authentication: the WebSocket handshake, which browsers
    let any page send, always with its ``Origin``. No ``Origin``: not a browser, allowed."""
    origin = request.headers.get("Origin")
    if origin is None or _allowed(origin, current_app.extensions["auth_origins"]):
        return
    raise Forbidden(f"the origin {origin[:100]} may not open this socket (STREAMAPP_CORS_ORIGINS)",
                    code="origin_not_allowed")


def session_client() -> Client | None:
    """The client of a valid, unexpired session cookie (Flask's signed cookie, max age = TTL)."""
    name = session.get("client")
    keys: Keys = current_app.extensions["auth"]
    return keys.by_name.get(name) if isinstance(name, str) else None


def authenticate() -> None:
    """The one check (a ``before_request`` hook): sets ``g.client`` or refuses the request."""
    keys: Keys = current_app.extensions["auth"]
    g.client = None
    if not keys or request.method == "OPTIONS" or request.endpoint in PUBLIC_ENDPOINTS \
            or request.blueprint in PUBLIC_BLUEPRINTS:
        return
    key = _presented_key()
    if key is not None:
        client = keys.match(key)
        if client is None:
            raise Unauthorized("invalid API key")
        g.client = client
        return
    if request.endpoint != SESSION_ENDPOINT and COOKIE_NAME in request.cookies:
        client = session_client()
        if client is not None:
            if not _from_allowed_origin(current_app.extensions["auth_origins"]):
                raise Forbidden("a session cookie is accepted only from this site's own pages "
                                "(Origin / Sec-Fetch-Site)", code="origin_not_allowed")
            g.client = client
            return
    raise Unauthorized("an API key is required: Authorization: Bearer <key> or X-API-Key, "
                       "or a session from POST /api/session")


def page_viewer() -> Client | None:
    """Who opens a page that checks its viewer itself (a ``GET`` that changes and carries
    nothing; its script's requests are checked as usual): the key presented (401 when wrong),
    else the session cookie's client, whatever the ``Origin`` (a typed address sends no
    ``Sec-Fetch-Site: same-origin``, and the cookie is ``SameSite=Strict``); ``None``: nobody."""
    keys: Keys = current_app.extensions["auth"]
    key = _presented_key()
    if key is not None:
        client = keys.match(key)
        if client is None:
            raise Unauthorized("invalid API key")
        return client
    return session_client() if COOKIE_NAME in request.cookies else None


def is_admin() -> bool:
    """Whether the caller may see every client's streams and usage: an admin key, or anybody
    when no key is configured (the service is open)."""
    client = g.get("client")
    return client is None or client.admin


def require_admin() -> None:
    """403 ``admin_only`` unless :func:`is_admin`."""
    if not is_admin():
        raise Forbidden("only an admin key may do this (STREAMAPP_ADMIN_KEYS, or admin in the keys file)",
                        code="admin_only")


def require_owner(meta: dict[str, Any]) -> None:
    """403 ``not_stream_owner`` unless the caller started the stream of ``meta`` (when keys are
    configured), admin or not: what changes or spends a stream (deleting a stored response,
    continuing one with ``previous_response_id`` or ``item_reference``) is its owner's only."""
    client = g.get("client")
    if client is not None and meta.get("client") != client.name:
        raise Forbidden("this stream was started by another client", code="not_stream_owner")


def require_owner_or_admin(meta: dict[str, Any]) -> None:
    """:func:`require_owner`, but an admin key passes too: for reading and stopping a stream
    only (its info, resuming or retrieving it, cancelling it)."""
    client = g.get("client")
    if client is None or not client.admin:
        require_owner(meta)


class SharedSecret:
    """The session secret every process of every instance keeps in Redis at ``key``.

    A process holds one value. :meth:`sync` puts it with ``SET NX`` and reads what Redis holds,
    which it then holds: the first process puts its own there and every other adopts it. Each
    process syncs every ``SECRET_SYNC_S`` (:meth:`keep`), so a Redis that restarted empty gets the
    held value back before a worker started later reads it; a process that could not reach Redis
    adopts the shared value once it can; and a value set in Redis by hand (a rotation) reaches
    every process.
    """

    def __init__(self, url: str, key: str, held: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        self.key, self.held = key, held
        self.synced = False  # True once a sync has reached Redis

    def sync(self) -> str:
        """Put the held value unless Redis has one (``SET NX``), then hold and return Redis's."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, self.held, nx=True)
        pipe.get(self.key)
        _, value = pipe.execute()
        if value:  # None: deleted between the two commands; the next sync puts it back
            self.held = value.decode()
        self.synced = True
        return self.held

    def keep(self, config: dict[str, Any], every: float) -> None:
        """Sync every ``every`` seconds in a daemon thread (a greenlet in a gevent worker, which
        makes the app after the fork), signing cookies with what Redis holds."""
        threading.Thread(target=self._run, args=(config, every), name="session-secret",
                         daemon=True).start()

    def _run(self, config: dict[str, Any], every: float) -> None:
        reachable = self.synced  # an outage at start is warned about once, by session_secret
        ticks = threading.Event()  # never set: its timed wait paces the loop
        while not ticks.wait(every):
            try:
                value = self.sync()
            except redis.RedisError as exc:
                if reachable:
                    logger.warning("could not sync the shared session secret %s with Redis (%s): "
                                   "retried every %s s", self.key, exc, every)
                reachable = False
                continue
            reachable = True
            if config["SECRET_KEY"] != value:
                logger.warning("session cookies are now signed with the shared secret in Redis at "
                               "%s: those signed with this process's previous one are refused", self.key)
                config["SECRET_KEY"] = value


def shared_secret(config: dict[str, Any], sessions: bool) -> SharedSecret | None:
    """The keeper of the secret in Redis when it signs cookies: ``sessions`` in use, ``REDIS_URL``
    set, no ``SECRET_KEY``."""
    if not sessions or config.get("SECRET_KEY") or not config.get("REDIS_URL"):
        return None
    # This instance's secret is what it puts in an empty Redis: a worker of the instance that put
    # it there, started after Redis lost it, puts back the same.
    return SharedSecret(config["REDIS_URL"], f"{config['REDIS_PREFIX']}:{SECRET_REDIS_KEY}",
                        os.environ.get(INSTANCE_SECRET_ENV) or secrets.token_hex(32))


def session_secret(config: dict[str, Any], sessions: bool, shared: SharedSecret | None = None) -> str:
    """What signs session cookies: ``SECRET_KEY``; else the one every instance shares in Redis
    (``shared``), or while Redis cannot be read the value ``shared`` holds; else this instance's
    (made by gunicorn's master for its workers); else one for this process, with a warning."""
    if config.get("SECRET_KEY"):
        return str(config["SECRET_KEY"])
    instance = os.environ.get(INSTANCE_SECRET_ENV)
    if shared is not None:
        try:
            return shared.sync()
        except redis.RedisError as exc:
            logger.warning("could not read the shared session secret %s from Redis (%s): session "
                           "cookies are signed with this %s's own until it can (retried every %s s)",
                           shared.key, exc, "instance" if instance else "process", SECRET_SYNC_S)
            return shared.held
    if instance:
        return instance
    if sessions:
        logger.warning("STREAMAPP_SECRET_KEY is not set: session cookies are signed with a key made "
                       "for this process, so they do not survive a restart or span processes")
    return secrets.token_hex(32)


def _loopback(bind: str) -> bool:
    if bind.startswith(("unix:", "fd://")):
        return True
    host = bind.rsplit(":", 1)[0] if bind.count(":") == 1 or bind.startswith("[") else bind
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: assume it is reachable


def init_app(app: Flask) -> None:
    """Load keys, set up signed session cookies and CORS, and install the hook."""
    config = app.config
    keys = Keys.from_config(config)
    origins = allowed_origins(config)
    if keys and "*" in origins:
        raise ValueError("STREAMAPP_CORS_ORIGINS=* is allowed only when no API key is configured")
    app.extensions["auth"] = keys
    app.extensions["auth_origins"] = frozenset(origins)
    shared = shared_secret(config, bool(keys))
    config["SECRET_KEY"] = session_secret(config, bool(keys), shared)
    if shared is not None:
        shared.keep(config, SECRET_SYNC_S)
    config.update(SESSION_COOKIE_NAME=COOKIE_NAME, SESSION_COOKIE_HTTPONLY=True,
                  SESSION_COOKIE_SAMESITE="Strict", SESSION_REFRESH_EACH_REQUEST=False,
                  PERMANENT_SESSION_LIFETIME=timedelta(seconds=config["SESSION_TTL_S"]))
    if not keys:
        binds = str(config.get("BIND") or "127.0.0.1:8000").split(",")
        exposed = [b for b in binds if not _loopback(b.strip())]
        if exposed:
            logger.warning("no API key configured (STREAMAPP_API_KEYS / STREAMAPP_API_KEYS_FILE) and "
                           "bound to %s: anyone who can reach it can use the API and its upstreams",
                           ", ".join(exposed))
    if origins:
        # Preflights are answered by flask-cors before our hook (which lets OPTIONS pass).
        CORS(app, origins=origins, supports_credentials="*" not in origins,
             allow_headers=["Content-Type", "Authorization", "X-API-Key", "Last-Event-ID",
                            "anthropic-version", "anthropic-beta"],
             expose_headers=["X-Stream-Id", "Retry-After"], max_age=600)
    app.before_request(authenticate)

    @app.context_processor
    def _auth_state() -> dict[str, Any]:
        client = session_client() if keys else None
        return {"auth_required": bool(keys), "session_client": client.name if client else None}
