"""OpenTelemetry: a span per stream (and per upstream attempt) and the GenAI server metrics,
sent over OTLP/HTTP, following the GenAI semantic conventions (``streamapp.otel.genai``).

Configured only by the standard ``OTEL_*`` environment variables, read by the SDK itself
(endpoint, headers, timeouts, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL`` ...). A signal is exported when its OTLP
endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
/ ``..._METRICS_ENDPOINT`` for one signal), or when ``OTEL_TRACES_EXPORTER`` /
``OTEL_METRICS_EXPORTER`` names ``otlp`` (the SDK's default endpoint, localhost:4318);
``OTEL_{TRACES,METRICS}_EXPORTER=none`` turns one off, ``OTEL_SDK_DISABLED=true`` both. With
no signal on, the SDK is never imported and streams have no observer for it.

A request's W3C ``traceparent`` header (when tracing is on) is kept in the metadata of the
streams it starts, so a stream's span is a child of the caller's span, in the caller's trace.

Nothing runs per event: a stream's spans and measurements are made once, when it ends,
from its :class:`~streamapp.streams.observe.StreamSummary`, with explicit start and end
times; a batch processor (a greenlet under gevent) sends them. Each gunicorn worker builds
its own providers in ``create_app`` (after the fork) and flushes them in ``worker_exit``
(``conf/gunicorn.conf.py``), so what a worker recorded is sent before it exits.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

from flask import Flask, g, request

from ..streams import get_manager

__all__ = ["EXTENSION", "init_app", "shutdown", "signals"]

EXTENSION = "streamapp.otel"
SIGNALS = ("traces", "metrics")
PROTOCOL = "http/protobuf"  # the one OTLP protocol shipped (opentelemetry-exporter-otlp-proto-http)
# W3C Trace Context, version 00: version-trace_id-parent_id-flags, lower-case hex
# (https://www.w3.org/TR/trace-context/#traceparent-header); all-zero ids are invalid.
TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")

logger = logging.getLogger(__name__)


def signals(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The signals the ``OTEL_*`` variables of ``environ`` ask to export (``traces``,
    ``metrics``); empty: OpenTelemetry stays off. ``ValueError`` for an OTLP protocol other
    than ``http/protobuf``."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return ()
    on = []
    for signal in SIGNALS:
        exporters = {e.strip().lower() for e in environ.get(f"OTEL_{signal.upper()}_EXPORTER", "").split(",")}
        exporters.discard("")
        endpoint = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT") or \
            environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if "none" in exporters or (exporters and "otlp" not in exporters):
            if exporters - {"none", "otlp"}:
                logger.warning("OTEL_%s_EXPORTER=%s: only otlp is supported here", signal.upper(),
                               ",".join(sorted(exporters)))
            continue
        if exporters or endpoint:
            on.append(signal)
    for signal in on:
        protocol = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL") or \
            environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or PROTOCOL
        if protocol.strip() != PROTOCOL:
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported here: "
                             f"{signal} are sent as {PROTOCOL} (OTLP over HTTP)")
    return tuple(on)


def init_app(app: Flask, environ: Mapping[str, str] | None = None) -> None:
    """When ``OTEL_*`` asks for it: this process's tracer and meter providers, and the
    observer that turns each stream's end into spans and measurements (after
    ``streams.init_app``). Otherwise nothing (no import of the SDK)."""
    on = signals(os.environ if environ is None else environ)
    if not on:
        return
    from .genai import StreamTelemetry
    from .setup import Providers

    providers = Providers(on)
    app.extensions[EXTENSION] = providers
    if "traces" in on:
        app.before_request(_keep_traceparent)
    with app.app_context():
        kinds = {name: getattr(p, "name", name) for name, p in app.extensions.get("providers", {}).items()}
        get_manager().observers.append(StreamTelemetry(providers.tracer, providers.meter, kinds))
    logger.info("OpenTelemetry on: %s over OTLP/HTTP", " and ".join(on),
                extra={"otel_signals": ",".join(on)})


def _keep_traceparent() -> None:
    """The request's ``traceparent``, when valid, for the streams it starts (``door.client_meta``)."""
    value = request.headers.get("traceparent", "").strip()
    if TRACEPARENT.fullmatch(value):
        g.traceparent = value


def shutdown(app: Any) -> None:
    """Send what this process recorded and stop its exporters (at a worker's exit); nothing
    when OpenTelemetry is off."""
    providers = getattr(app, "extensions", {}).get(EXTENSION)
    if providers is not None:
        providers.shutdown()
