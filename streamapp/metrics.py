"""Prometheus metrics: ``GET /metrics`` and the stream observer that feeds it.

Every metric is named ``streamapp_*`` and has low-cardinality labels only: ``provider`` is
one of the app's providers (``demo``, ``openai``, ``ollama``; anything else is ``other``),
never a model a client named, a stream id or a key.

- ``streamapp_active_streams``: streams running now (their producers), summed over the live
  workers (gauge, multiprocess mode ``livesum``).
- ``streamapp_streams_total{outcome}``: streams ended, by outcome: ``completed``,
  ``cancelled``, ``client_gone``, ``upstream_error``, ``error``, ``shutdown``.
- ``streamapp_stream_resumes_total``: resumes (``Last-Event-ID``, or a WebSocket ``resume``).
  A resumed stream still ends once with one of the outcomes above, so resumes are counted
  apart, not as an outcome.
- ``streamapp_time_to_first_token_seconds{provider}``: from a stream's start to its first
  token (text, reasoning or tool call); streams that got none are not observed.
- ``streamapp_stream_duration_seconds{provider}``: from a stream's start to its end, every
  outcome.
- ``streamapp_tokens_total{provider}``: text deltas relayed (one per upstream token chunk,
  not a tokenizer's count), added once per stream at its end.
- ``streamapp_upstream_errors_total{provider,code}``: streams that ended ``upstream_error``,
  by the error's code (``upstream_http_error``, ``upstream_timeout``, ``upstream_auth``, ...).
- ``streamapp_rejections_total{reason}``: stream starts refused with 429 (HTTP) or an error
  message (WebSocket): ``rate_limited``, ``too_many_streams`` (either concurrent cap) or
  ``budget_exceeded`` (a key's token budget).
- ``streamapp_usage_tokens_total{key,kind}``: only with ``USAGE_METRICS_BY_KEY`` (a series per
  key name: the operator's choice of cardinality): the tokens of each stream's usage record
  (``kind`` ``prompt`` or ``completion``), added once per stream at its end.
- ``streamapp_upstream_circuit_state{upstream}``: each upstream's circuit breaker
  (``streamapp.circuits``): 0 closed, 1 half-open, 2 open, -1 unknown (Redis out of reach).
  Read at the scrape: shared by every worker with Redis; without it, the answering worker's.
- ``streamapp_upstream_attempts_total{upstream,outcome}``: each start of a stream on an upstream
  (``streamapp.failover``: every target tried or skipped), by outcome: ``success`` (a first
  token, or a proper end), ``circuit_open`` (skipped: its circuit was open), ``first_token_timeout``,
  ``stopped`` (the stream was stopped meanwhile), ``internal_error``, or the upstream's error
  code (``upstream_unreachable``, ``upstream_http_error``, ``upstream_timeout``, ...). The
  upstream is a provider or an upstream of the upstreams file, never a model's name.

Nothing is counted per event: the observer works at a stream's start, resume and end, and
the two limit handlers count their refusals.

**Several workers.** gunicorn's config sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
fork; each worker then writes its values to files there and ``GET /metrics`` on any worker
sums them all (prometheus-client's multiprocess mode; a dead worker's live gauge is dropped
by ``child_exit``). Without that variable (``create_app`` in a test, ``flask run``) each app
gets its own registry, so ``create_app`` may run any number of times in one process.

**Who may scrape.** ``GET /metrics`` needs no API key, but only the addresses and networks
of ``STREAMAPP_METRICS_ALLOW`` (comma-separated, default ``127.0.0.1/8,::1``; ``*`` lets
anyone in, an empty value no one) get an answer; others get 403. The address is the peer's,
or the client's through ``TRUSTED_PROXIES`` hops.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from .circuits import STATES, Circuits
from .errors import error_response
from .failover import OUTCOMES as ATTEMPT_OUTCOMES
from .streams import get_manager
from .streams.observe import StreamSummary

__all__ = ["OUTCOMES", "REJECTIONS", "StreamMetrics", "count_rejection", "init_app", "parse_allow"]

EXTENSION = "streamapp.metrics"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OUTCOMES = ("completed", "cancelled", "client_gone", "upstream_error", "error", "shutdown")
REJECTIONS = ("rate_limited", "too_many_streams", "budget_exceeded")
# Where a stream's generation moved, and why (streams.producer): to its only reader's greenlet when
# that reader has read everything; back to its own greenlet on anything else.
MOVES = (("reader", "alone"),) + tuple(("greenlet", reason) for reason in (
    "second_reader", "reader_left", "slow_client", "read_elsewhere", "stopped", "shutdown"))
# LLM streams: a first token in tens of milliseconds (a local model) to many seconds (a long
# prompt, a reasoning model); answers from a fraction of a second to the hour STREAM_MAX_DURATION_S allows.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

bp = Blueprint("metrics", __name__)


class StreamMetrics:
    """One app's metrics, the registry ``GET /metrics`` reads, and the manager's observer."""

    def __init__(self, providers: Iterable[str], allow: tuple[Network, ...] | None,
                 multiproc_dir: str | None = None, circuits: Circuits | None = None,
                 by_key: bool = False) -> None:
        self.providers = frozenset(providers)
        self.allow = allow  # None: anyone
        if multiproc_dir:
            if prometheus_values.ValueClass is prometheus_values.MutexValue:
                # Chosen once, when prometheus_client is first imported: too late to switch now.
                raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported; "
                                   "set it before the process starts (gunicorn.conf.py does)")
            if not os.path.isdir(multiproc_dir):
                raise ValueError(f"{MULTIPROC_ENV}={multiproc_dir!r} is not a directory")
            own = None  # values go to files; the scrape reads every worker's
            self.registry = CollectorRegistry()
            MultiProcessCollector(self.registry, path=multiproc_dir)
        else:
            own = self.registry = CollectorRegistry()
        self.active = Gauge("streamapp_active_streams", "Streams running now (their producers).",
                            registry=own, multiprocess_mode="livesum")
        self.streams = Counter("streamapp_streams_total", "Streams ended, by outcome.", ["outcome"],
                               registry=own)
        self.resumes = Counter("streamapp_stream_resumes_total",
                               "Streams resumed by a client (each still ends once with an outcome).",
                               registry=own)
        self.ttft = Histogram("streamapp_time_to_first_token_seconds",
                              "From a stream's start to its first token.", ["provider"],
                              buckets=TTFT_BUCKETS, registry=own)
        self.duration = Histogram("streamapp_stream_duration_seconds", "From a stream's start to its end.",
                                  ["provider"], buckets=DURATION_BUCKETS, registry=own)
        self.tokens = Counter("streamapp_tokens_total", "Text deltas relayed (one per upstream token chunk).",
                              ["provider"], registry=own)
        self.upstream_errors = Counter("streamapp_upstream_errors_total",
                                       "Streams ended by an upstream failure, by its code.",
                                       ["provider", "code"], registry=own)
        self.queue_wait = Histogram("streamapp_queue_wait_seconds",
                                    "How long a stream waited for a slot at a full cap, by how the wait "
                                    "ended (started, timeout, left).", ["outcome"],
                                    buckets=TTFT_BUCKETS, registry=own)
        self.rejections = Counter("streamapp_rejections_total", "Stream starts refused, by reason.",
                                  ["reason"], registry=own)
        self.attempts = Counter("streamapp_upstream_attempts_total",
                                "Stream starts on an upstream (each target tried or skipped), by outcome.",
                                ["upstream", "outcome"], registry=own)
        self.moves = Counter("streamapp_stream_moves_total",
                             "Moves of a stream's generation to its only reader's greenlet (to=reader) or "
                             "to its own greenlet (to=greenlet), by reason.", ["to", "reason"], registry=own)
        self.usage_tokens = Counter("streamapp_usage_tokens_total", "Tokens of streams' usage records, by "
                                    "key name and kind (prompt, completion).", ["key", "kind"],
                                    registry=own) if by_key else None
        if circuits is not None:
            self.registry.register(CircuitCollector(circuits))
            for name in circuits.names:
                for outcome in ATTEMPT_OUTCOMES:
                    self.attempts.labels(name, outcome)
        # Every known series from the start (at 0), so rates work from the first scrape.
        for outcome in OUTCOMES:
            self.streams.labels(outcome)
        for reason in REJECTIONS:
            self.rejections.labels(reason)
        for to, reason in MOVES:
            self.moves.labels(to, reason)
        for provider in self.providers:
            self.ttft.labels(provider)
            self.duration.labels(provider)
            self.tokens.labels(provider)

    # -- the manager's observer (quick, never blocks: a few in-memory or mmap writes) --------------
    def stream_started(self, sid: str, meta: dict[str, Any]) -> None:
        self.active.inc()

    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None:
        self.resumes.inc()

    def generation_moved(self, to: str, reason: str) -> None:
        self.moves.labels(to, reason).inc()

    def stream_ended(self, s: StreamSummary) -> None:
        provider = self._provider(s.meta)
        self.active.dec()
        self.streams.labels(s.outcome if s.outcome in OUTCOMES else "error").inc()
        self.duration.labels(provider).observe(s.duration_s)
        if s.ttft_s is not None:
            self.ttft.labels(provider).observe(s.ttft_s)
        if s.tokens:
            self.tokens.labels(provider).inc(s.tokens)
        if self.usage_tokens is not None and s.usage:
            key = str(s.meta.get("client") or "-")
            for kind in ("prompt", "completion"):
                count = s.usage.get(f"{kind}_tokens")
                if count:
                    self.usage_tokens.labels(key, kind).inc(count)
        if s.outcome == "upstream_error":
            # Codes are the app's own constants (errors.UpstreamError), never upstream text.
            self.upstream_errors.labels(provider, s.error_code or "unknown").inc()

    def _provider(self, meta: dict[str, Any]) -> str:
        provider = meta.get("provider")
        return provider if provider in self.providers else "other"

    # -- the rest ------------------------------------------------------------------------------
    def attempted(self, upstream: str, outcome: str) -> None:
        """Count a stream's attempt on ``upstream`` (``failover.Failover``'s ``observe``)."""
        self.attempts.labels(upstream, outcome if outcome in ATTEMPT_OUTCOMES else "internal_error").inc()

    def rejected(self, reason: str) -> None:
        """Count a refused stream start (``reason`` one of ``REJECTIONS``; others are ignored)."""
        if reason in REJECTIONS:
            self.rejections.labels(reason).inc()

    def queue_waited(self, outcome: str, seconds: float) -> None:
        """Measure a wait for a slot that ended with ``outcome``."""
        self.queue_wait.labels(outcome).observe(seconds)

    def allows(self, address: str | None) -> bool:
        """Whether ``address`` may read the metrics."""
        if self.allow is None:
            return True
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
        return any(ip in net or (mapped is not None and mapped in net) for net in self.allow)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format (every worker's, in multiprocess mode)."""
        return generate_latest(self.registry)


class CircuitCollector:
    """``streamapp_upstream_circuit_state``, read from the circuits at each scrape."""

    def __init__(self, circuits: Circuits) -> None:
        self.circuits = circuits

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """One gauge, a sample per upstream."""
        gauge = GaugeMetricFamily("streamapp_upstream_circuit_state",
                                  "Each upstream's circuit: 0 closed, 1 half-open, 2 open, -1 unknown.",
                                  labels=["upstream"])
        for name, entry in self.circuits.states().items():
            gauge.add_metric([name], STATES.get(entry["state"], -1))
        yield gauge


def parse_allow(value: Any) -> tuple[Network, ...] | None:
    """``STREAMAPP_METRICS_ALLOW`` as networks; ``None`` for ``*`` (anyone)."""
    entries = [e.strip() for e in str(value or "").split(",") if e.strip()]
    if "*" in entries:
        return None
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"STREAMAPP_METRICS_ALLOW: {entry!r} is not an address or a network "
                             "(CIDR), nor *") from None
    return tuple(nets)


def count_rejection(reason: str) -> None:
    """Count a refused stream start of the current app: ``rate_limited`` or ``too_many_streams``
    (any other code is ignored, so a caller may pass an error's code as it is)."""
    state: StreamMetrics | None = current_app.extensions.get(EXTENSION)
    if state is not None:
        state.rejected(reason)


@bp.get("/metrics")
def metrics() -> Response:
    """The metrics in Prometheus' text format, for the allowed addresses."""
    state: StreamMetrics = current_app.extensions[EXTENSION]
    if not state.allows(request.remote_addr):
        return error_response(403, "forbidden", "metrics are served only to the addresses of "
                                                "STREAMAPP_METRICS_ALLOW")
    return Response(state.exposition(), content_type=CONTENT_TYPE_LATEST,
                    headers={"Cache-Control": "no-store"})


def init_app(app: Flask) -> None:
    """Create the app's metrics, observe its streams and serve ``GET /metrics``
    (after ``streams.init_app``)."""
    state = StreamMetrics(app.extensions.get("providers", {}), parse_allow(app.config["METRICS_ALLOW"]),
                          os.environ.get(MULTIPROC_ENV) or None, app.extensions.get("circuits"),
                          app.config["USAGE_METRICS_BY_KEY"])
    app.extensions[EXTENSION] = state
    with app.app_context():
        get_manager().observers.append(state)
    app.register_blueprint(bp)
