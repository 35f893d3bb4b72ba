"""streamapp: stream AI chat answers token by token over SSE, chunked HTTP and WebSocket."""

from __future__ import annotations

import logging
import os
from typing import Any

from flask import Flask, request
from werkzeug.middleware.proxy_fix import ProxyFix

from . import auth, circuits, errors, limits, logs, metrics, otel, streams, upstreams
from . import config as settings
from .models import build_models
from .providers import build_providers
from .ready import Readiness, providers_to_check
from .usage import service as usage

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

PAGES = frozenset({"pages.index", "inspect.page"})  # the HTML pages, under PAGE_CSP
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then environment, then ``test_config``."""
    app = Flask(__name__, template_folder="../templates", static_folder="../static")
    app.config.update(settings.DEFAULTS)
    app.config.update(settings.from_environ())
    app.config.from_prefixed_env("STREAMAPP")
    if test_config:
        app.config.update(test_config)
    settings.validate(app.config)
    app.json.ensure_ascii = False  # type: ignore[attr-defined]

    fleet = upstreams.load(app.config["UPSTREAMS_FILE"]) if app.config["UPSTREAMS_FILE"] else None
    app.extensions["upstreams"] = fleet  # the named upstreams and routes, or None: the settings' providers
    app.extensions["providers"] = build_providers(app.config, fleet)
    app.extensions["models"] = build_models(app.config, app.extensions["providers"], fleet)  # every route
    streams.init_app(app)
    circuits.init_app(app)  # each upstream's circuit breaker, checked by every front door's launch
    app.extensions["ready"] = Readiness(app.extensions["streams"].store, app.extensions["providers"],
                                        providers_to_check(app.config, fleet), app.config["READY_CACHE_S"],
                                        app.extensions["circuits"])
    errors.init_app(app)  # every error's JSON answer, registered here once
    logs.init_app(app)  # first hook: every request gets its id, every answer its log line
    auth.init_app(app)  # then every request is authenticated
    metrics.init_app(app)  # GET /metrics, fed by the streams' observer and the limits' refusals
    otel.init_app(app)  # OpenTelemetry spans and GenAI metrics at each stream's end, when OTEL_* asks
    usage.init_app(app)  # the usage ledger and token budgets, settled once per stream at its end

    from .routes import chat, embeddings, inspect, messages, pages, responses, session, sse, v1, ws
    from .routes import usage as usage_api

    app.register_blueprint(pages.bp)
    app.register_blueprint(sse.bp)
    app.register_blueprint(chat.bp)
    app.register_blueprint(v1.bp)
    app.register_blueprint(responses.bp)
    app.register_blueprint(embeddings.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(session.bp)
    app.register_blueprint(inspect.bp)
    app.register_blueprint(usage_api.bp)
    ws.init_app(app)
    limits.init_app(app)  # rate limits and stream caps, on the views registered above
    if app.config["TRUSTED_PROXIES"]:  # the client's address from X-Forwarded-For, through these hops only
        hops = app.config["TRUSTED_PROXIES"]  # the scheme too: behind TLS, Origin checks compare https
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)

    @app.after_request
    def _page_headers(resp):
        # The pages: no inline script or style, nothing from elsewhere, never framed.
        if request.endpoint in PAGES:
            resp.headers["Content-Security-Policy"] = PAGE_CSP
            resp.headers["X-Content-Type-Options"] = "nosniff"
            resp.headers["Referrer-Policy"] = "no-referrer"
        return resp

    from .routes import docs  # GET /api.json and /swagger/: registered last, to describe every route

    app.register_blueprint(docs.bp)
    docs.log_route_table(app)  # once per process: each gunicorn worker builds its own app
    if fleet is not None:
        logger.info("upstreams file %s (pid %d):\n%s", fleet.source, os.getpid(), fleet.describe())
        for name in fleet.unrouted():
            logger.warning("upstream %s of %s is in no route: nothing will ask it", name, fleet.source)
    return app
