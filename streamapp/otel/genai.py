"""A stream's end as OpenTelemetry spans and GenAI metrics (the GenAI semantic conventions,
https://github.com/open-telemetry/semantic-conventions-genai: spans, server metrics).

One SERVER span per stream, ``chat {model}``, from the stream's start to its end, with:

- ``gen_ai.operation.name`` (``chat``: every front door is a chat), ``gen_ai.provider.name``
  (the kind of the upstream that answered, else of the stream's provider: ``openai``,
  ``ollama``, ``demo``; ``streamapp.upstream`` is its name), ``gen_ai.request.model`` (the
  model the stream asked for), ``gen_ai.response.model`` (the model of the attempt that
  answered, when attempts are recorded);
- ``gen_ai.request.stream`` (``true`` when the client asked for a stream; unset for a whole
  answer, as the conventions say), ``gen_ai.response.finish_reasons`` (the ``Done``'s),
  ``gen_ai.response.time_to_first_chunk`` (seconds, start to the first token);
- ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens`` and, when the upstream gave
  them, ``gen_ai.usage.reasoning.output_tokens`` and ``gen_ai.usage.cache_read.input_tokens``
  (only what the usage says: an unknown count is left out, never a 0; an estimate is there
  too, ``streamapp.usage.source`` says so);
- ``error.type`` (our error code, ``upstream_timeout``...) and an ERROR status for a stream
  that failed; a stop (cancel, client gone, shutdown) is not an error: its finish reason says it;
- ``streamapp.stream.id``, ``streamapp.request.id``, ``streamapp.route``, ``streamapp.outcome``,
  ``streamapp.upstream``, ``streamapp.client`` (an API key's name), ``streamapp.events``,
  ``streamapp.text_deltas``, ``streamapp.usage.source`` (where the usage came from, when recorded).

With a ``traceparent`` in the stream's metadata (the request's W3C header) the span is a
child of the caller's span, in the caller's trace; otherwise it starts a trace.

When the stream's metadata has ``attempts`` (``streamapp.failover``: one per target tried, in
order, ``upstream``, ``model``, ``outcome``, ``status``, ``start_ms``, ``ms``), each is a
CLIENT child span ``chat {model}`` with its upstream, model, outcome, the upstream's HTTP
status (``http.response.status_code``), its time and the stream's ``gen_ai.request.stream``; usage stays
on the stream's span only, so no backend counts it twice.

Metrics (histograms, in the conventions' units and bucket boundaries): ``gen_ai.server.request.duration``
(s, every stream), ``gen_ai.server.time_to_first_token`` (s) and
``gen_ai.server.time_per_output_token`` (s) for streams that got a first token and did not
fail, and ``gen_ai.client.token.usage`` ({token}, ``gen_ai.token.type`` ``input`` /
``output``) when the upstream reported the usage (``source: reported``; estimates are not
counted there): the conventions define no server-side token metric,
and towards the upstream this service is the GenAI client.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.metrics import Meter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ..streams.observe import StreamSummary

OPERATION = "chat"
# The conventions' advised bucket boundaries (gen-ai-metrics.md).
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
SUCCESS = ("success", "ok", "completed")  # an attempt's outcome that is not an error
PROPAGATOR = TraceContextTextMapPropagator()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def usage_counts(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """The ``gen_ai.usage.*`` attributes of a usage record (OpenAI's names, or the
    conventions' own), only the counts it has."""
    if not usage:
        return {}
    details_in = usage.get("prompt_tokens_details") or {}
    details_out = usage.get("completion_tokens_details") or {}
    found = {
        "gen_ai.usage.input_tokens": usage.get("input_tokens", usage.get("prompt_tokens")),
        "gen_ai.usage.output_tokens": usage.get("output_tokens", usage.get("completion_tokens")),
        "gen_ai.usage.reasoning.output_tokens": details_out.get("reasoning_tokens")
        if isinstance(details_out, Mapping) else None,
        "gen_ai.usage.cache_read.input_tokens": details_in.get("cached_tokens")
        if isinstance(details_in, Mapping) else None,
    }
    return {k: int(v) for k, v in found.items() if _number(v)}


def _set(attributes: dict[str, Any], key: str, value: Any) -> None:
    if value is not None and value != "":
        attributes[key] = value if isinstance(value, (bool, int, float)) else str(value)


class StreamTelemetry:
    """The manager's observer that records each stream once, at its end."""

    def __init__(self, tracer: Tracer, meter: Meter, kinds: Mapping[str, str] | None = None,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.tracer = tracer
        self.kinds = dict(kinds or {})  # provider (upstream) name -> its kind: openai, ollama, demo
        self.wall_ns = wall_ns
        self.duration = meter.create_histogram(
            "gen_ai.server.request.duration", unit="s", description="GenAI server request duration: a "
            "stream from its start to its end.", explicit_bucket_boundaries_advisory=DURATION_BUCKETS)
        self.ttft = meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s", description="Time to the first token for "
            "successful responses.", explicit_bucket_boundaries_advisory=TTFT_BUCKETS)
        self.tpot = meter.create_histogram(
            "gen_ai.server.time_per_output_token", unit="s", description="Time per output token after the "
            "first token for successful responses.", explicit_bucket_boundaries_advisory=TPOT_BUCKETS)
        self.token_usage = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens "
            "used.", explicit_bucket_boundaries_advisory=TOKEN_BUCKETS)

    def stream_started(self, sid: str, meta: dict[str, Any]) -> None:
        pass  # recorded at the end, once

    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None:
        pass

    def stream_ended(self, s: StreamSummary) -> None:
        end_ns = self.wall_ns()
        start_ns = end_ns - int(s.duration_s * 1e9)
        meta = s.meta
        common: dict[str, Any] = {"gen_ai.operation.name": OPERATION}
        upstream = meta.get("upstream") or meta.get("provider")  # the one that answered, if known
        _set(common, "gen_ai.provider.name", self.kinds.get(upstream, upstream))
        _set(common, "gen_ai.request.model", meta.get("model"))
        attempts = [a for a in meta.get("attempts") or () if isinstance(a, Mapping)]
        answered = next((a for a in reversed(attempts) if a.get("outcome") in SUCCESS), None)
        if answered is not None:
            _set(common, "gen_ai.response.model", answered.get("model"))
        failed = s.error_code is not None
        usage = getattr(s, "usage", None) or meta.get("usage")
        counts = usage_counts(usage if isinstance(usage, Mapping) else None)
        self._span(s, common, counts, usage, attempts, start_ns, end_ns)
        # The token metric takes the upstream's own counts only: the conventions forbid offline
        # counting unless asked for, and an estimate would mix with them unseen.
        source = usage.get("source", "reported") if isinstance(usage, Mapping) else None
        self._measure(s, common, counts if source == "reported" else {}, failed)

    def _span(self, s: StreamSummary, common: dict[str, Any], counts: dict[str, int], usage: Any,
              attempts: list[Mapping[str, Any]], start_ns: int, end_ns: int) -> None:
        meta = s.meta
        attributes = {**common, **counts}
        if meta.get("stream", True):
            attributes["gen_ai.request.stream"] = True
        if s.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [s.finish_reason]
        if s.ttft_s is not None:
            attributes["gen_ai.response.time_to_first_chunk"] = s.ttft_s
        _set(attributes, "error.type", s.error_code)
        _set(attributes, "streamapp.stream.id", s.sid)
        _set(attributes, "streamapp.request.id", meta.get("request_id"))
        _set(attributes, "streamapp.route", meta.get("route"))
        _set(attributes, "streamapp.upstream", meta.get("upstream") or meta.get("provider"))
        _set(attributes, "streamapp.client", meta.get("client"))
        _set(attributes, "streamapp.outcome", s.outcome)
        attributes["streamapp.events"] = s.events
        attributes["streamapp.text_deltas"] = s.tokens
        if isinstance(usage, Mapping):
            _set(attributes, "streamapp.usage.source", usage.get("source"))
        caller = meta.get("traceparent")
        context = PROPAGATOR.extract({"traceparent": caller}) if isinstance(caller, str) else None
        span = self.tracer.start_span(f"{OPERATION} {common.get('gen_ai.request.model', '')}".rstrip(),
                                      context=context, kind=SpanKind.SERVER, attributes=attributes,
                                      start_time=start_ns)
        if s.error_code is not None:
            span.set_status(Status(StatusCode.ERROR, s.error_code))
        if attempts:
            self._attempts(span, common, attempts, start_ns, end_ns, streaming=bool(meta.get("stream", True)))
        span.end(end_time=end_ns)

    def _attempts(self, parent: trace.Span, common: dict[str, Any], attempts: list[Mapping[str, Any]],
                  start_ns: int, end_ns: int, *, streaming: bool) -> None:
        """A CLIENT span per upstream attempt, from its ``start_ms`` after the stream's start
        (else right after the one before) for its ``ms``; the one that answered (``success``)
        lasts to the stream's end: its upstream streamed the answer. ``streaming``: the stream's
        request asked for a stream (``gen_ai.request.stream``, set only then)."""
        context = trace.set_span_in_context(parent)
        at = start_ns
        for attempt in attempts:
            started, ms, outcome = attempt.get("start_ms"), attempt.get("ms"), attempt.get("outcome")
            if _number(started):
                at = min(end_ns, start_ns + int(started * 1e6))
            until = end_ns if outcome in SUCCESS or not _number(ms) else min(end_ns, at + int(ms * 1e6))
            attributes: dict[str, Any] = {"gen_ai.operation.name": OPERATION}
            if streaming:
                attributes["gen_ai.request.stream"] = True
            kind = attempt.get("kind") or self.kinds.get(attempt.get("upstream"))
            _set(attributes, "gen_ai.provider.name", kind or common.get("gen_ai.provider.name"))
            _set(attributes, "gen_ai.request.model", attempt.get("model"))
            _set(attributes, "streamapp.upstream", attempt.get("upstream"))
            _set(attributes, "streamapp.attempt.outcome", outcome)
            if _number(attempt.get("status")):
                attributes["http.response.status_code"] = int(attempt["status"])
            error = None if outcome in SUCCESS else attempt.get("code") or attempt.get("error") or outcome
            _set(attributes, "error.type", error)
            name = f"{OPERATION} {attempt.get('model') or ''}".rstrip()
            span = self.tracer.start_span(name, context=context, kind=SpanKind.CLIENT, attributes=attributes,
                                          start_time=at)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end(end_time=max(at, until))
            at = max(at, until)

    def _measure(self, s: StreamSummary, common: dict[str, Any], counts: dict[str, int],
                 failed: bool) -> None:
        self.duration.record(s.duration_s, {**common, "error.type": s.error_code} if failed else common)
        for kind, key in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")):
            if key in counts:
                self.token_usage.record(counts[key], {**common, "gen_ai.token.type": kind})
        if failed or s.ttft_s is None:
            return  # the two latencies are of successful responses
        self.ttft.record(s.ttft_s, common)
        output = counts.get("gen_ai.usage.output_tokens", s.tokens)  # else the text deltas
        if output > 1:
            self.tpot.record(max(0.0, s.duration_s - s.ttft_s) / (output - 1), common)
