"""This process's OpenTelemetry providers: OTLP/HTTP exporters behind a batch span processor
and a periodic metric reader, configured by the SDK from the ``OTEL_*`` variables.

Imported only when OpenTelemetry is on. Nothing is registered globally (no
``set_tracer_provider``): the providers live in ``app.extensions`` like every other part,
so ``create_app`` may run any number of times in one process. Both exporters run in the
SDK's own thread, which gevent's monkey-patching (``wsgi.py``) makes a greenlet: an export
waits on its socket like any request and never blocks the worker.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

SCOPE = "streamapp"
DEFAULT_SERVICE = "streamapp"
SHUTDOWN_MS = 5000  # at a worker's exit, at most this long to send what is left (each signal)


def resource() -> Resource:
    """``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` (read by the SDK); the service is
    ``streamapp`` unless they name it, and each worker is its own ``service.instance.id`` (its
    cumulative metrics are a series of their own, not mixed with another worker's)."""
    found = Resource.create()
    extra = {}
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        extra[SERVICE_NAME] = DEFAULT_SERVICE
    if SERVICE_INSTANCE_ID not in found.attributes:
        extra[SERVICE_INSTANCE_ID] = str(uuid.uuid4())
    return found.merge(Resource(extra)) if extra else found


class Providers:
    """A tracer provider and a meter provider for ``signals`` (``traces``, ``metrics``); a
    signal left out gets the API's no-op one."""

    def __init__(self, signals: Iterable[str]) -> None:
        on = set(signals)
        res = resource()
        self._tracer_provider = self._meter_provider = None
        if "traces" in on:
            self._tracer_provider = TracerProvider(resource=res, shutdown_on_exit=False)
            self._tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.tracer = self._tracer_provider.get_tracer(SCOPE)
        else:
            self.tracer = trace.NoOpTracer()
        if "metrics" in on:
            reader = PeriodicExportingMetricReader(OTLPMetricExporter())
            self._meter_provider = MeterProvider(resource=res, metric_readers=[reader],
                                                 shutdown_on_exit=False)
            self.meter = self._meter_provider.get_meter(SCOPE)
        else:
            self.meter = metrics.NoOpMeter(SCOPE)

    def shutdown(self) -> None:
        """Export what is pending, then stop (idempotent)."""
        if self._tracer_provider is not None:
            self._tracer_provider.force_flush(SHUTDOWN_MS)
            self._tracer_provider.shutdown()
            self._tracer_provider = None
        if self._meter_provider is not None:
            self._meter_provider.shutdown(SHUTDOWN_MS)
            self._meter_provider = None
