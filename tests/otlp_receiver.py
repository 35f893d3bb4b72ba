"""An OTLP/HTTP receiver for tests and the benchmark: ``POST /v1/traces`` and ``/v1/metrics``
bodies decoded with the official protobuf classes (opentelemetry-proto's
``ExportTraceServiceRequest`` and ``ExportMetricsServiceRequest``), as a collector would.

In a test: ``OTLPReceiver()`` listens on a free loopback port in a thread of the test's
process; :attr:`url` goes into ``OTEL_EXPORTER_OTLP_ENDPOINT``; :meth:`spans` and
:meth:`metrics` flatten what arrived; :meth:`stop` closes it. As a process (the benchmark):
``python tests/otlp_receiver.py --port N`` prints ``listening N`` and answers
``GET /_counts`` with ``{"traces": requests, "spans": n, "metrics": requests}``.

A gzip body is inflated (``OTEL_EXPORTER_OTLP_COMPRESSION=gzip``); one that is not a valid
export request is answered 400 and recorded in :attr:`errors`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

PATHS = {"/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse),
         "/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse)}
MAX_BODY = 32 << 20


def value(v: AnyValue) -> Any:
    """An attribute's value as Python (arrays as lists)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: value(kv.value) for kv in kvs}


@dataclass
class Span:
    """One received span, flattened."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str


@dataclass
class Metric:
    """One received metric (one export's view of it): its data points' attributes and values."""

    name: str
    unit: str
    kind: str  # the data's field: histogram, sum, gauge ...
    points: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)


class OTLPReceiver:
    """A loopback OTLP/HTTP receiver in a thread; what it decoded, for assertions."""

    def __init__(self, port: int = 0) -> None:
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.traces: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.errors: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                receiver._post(self)

            def do_GET(self) -> None:  # noqa: N802
                body = json.dumps(receiver.counts()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _post(self, handler: BaseHTTPRequestHandler) -> None:
        kinds = PATHS.get(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(min(length, MAX_BODY))
        status, answer = 404, b""
        if kinds is not None:
            request_cls, response_cls = kinds
            request = request_cls()
            try:
                encoding = handler.headers.get("Content-Encoding", "identity")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding != "identity":
                    raise DecodeError(f"unknown Content-Encoding {encoding}")
                request.ParseFromString(body)
            except (DecodeError, OSError, EOFError) as exc:
                status = 400
                with self.lock:
                    self.errors.append(f"{handler.path}: {exc}")
            else:
                status, answer = 200, response_cls().SerializeToString()
                kept = self.traces if request_cls is ExportTraceServiceRequest else self.metric_requests
                with self.arrived:
                    kept.append(request)
                    self.arrived.notify_all()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/x-protobuf")
        handler.send_header("Content-Length", str(len(answer)))
        handler.end_headers()
        handler.wfile.write(answer)

    def spans(self) -> list[Span]:
        """Every span received so far."""
        with self.lock:
            requests = list(self.traces)
        out = []
        for request in requests:
            for rs in request.resource_spans:
                resource = attrs(rs.resource.attributes)
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        out.append(Span(sp.name, sp.kind, sp.trace_id.hex(), sp.span_id.hex(),
                                        sp.parent_span_id.hex(), sp.start_time_unix_nano,
                                        sp.end_time_unix_nano, sp.status.code, attrs(sp.attributes),
                                        resource, ss.scope.name))
        return out

    def metrics(self) -> list[Metric]:
        """Every metric of every export so far (cumulative exports repeat a metric)."""
        with self.lock:
            requests = list(self.metric_requests)
        out = []
        for request in requests:
            for rm in request.resource_metrics:
                resource = attrs(rm.resource.attributes)
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        kind = m.WhichOneof("data")
                        points = [{"attributes": attrs(p.attributes), **_point(kind, p)}
                                  for p in getattr(m, kind).data_points]
                        out.append(Metric(m.name, m.unit, kind, points, resource))
        return out

    def counts(self) -> dict[str, int]:
        with self.lock:
            spans = sum(len(ss.spans) for req in self.traces for rs in req.resource_spans
                        for ss in rs.scope_spans)
            return {"traces": len(self.traces), "spans": spans, "metrics": len(self.metric_requests),
                    "errors": len(self.errors)}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def _point(kind: str, p: Any) -> dict[str, Any]:
    if kind in ("histogram", "exponential_histogram"):
        return {"count": p.count, "sum": p.sum, "bounds": list(getattr(p, "explicit_bounds", []))}
    return {"value": p.as_double if p.WhichOneof("value") == "as_double" else p.as_int}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    receiver = OTLPReceiver(parser.parse_args().port)
    print(f"listening {receiver.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
