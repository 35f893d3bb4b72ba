"""OpenTelemetry (streamapp.otel): spans and GenAI metrics as an OTLP/HTTP receiver in the
test decodes them (the official protobuf classes), from real gunicorn servers configured
only by ``OTEL_*``; flushed when a worker exits; nothing exported, and the SDK not even
imported, when ``OTEL_*`` does not ask for it.

Exports are waited for (``poll_until`` with a deadline) with short export intervals
(``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_METRIC_EXPORT_INTERVAL``), never slept for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from streamapp.otel import signals
from streamapp.otel.genai import StreamTelemetry
from streamapp.streams.observe import StreamSummary
from tests.conftest import ROOT
from tests.helpers import SSEClient, free_port, poll_until
from tests.otlp_receiver import OTLPReceiver, Span

SERVER, CLIENT = 2, 3  # Span.SpanKind in the OTLP protobuf
STATUS_ERROR = 2
MESSAGES = [{"role": "user", "content": "Hi"}]
QUICK = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_METRIC_EXPORT_INTERVAL": "200"}
METRIC_UNITS = {"gen_ai.server.request.duration": "s", "gen_ai.server.time_to_first_token": "s",
                "gen_ai.server.time_per_output_token": "s", "gen_ai.client.token.usage": "{token}"}


@pytest.fixture
def receiver():
    r = OTLPReceiver()
    yield r
    r.stop()


def span_of(receiver: OTLPReceiver, sid: str, timeout: float = 15) -> Span:
    """The stream span of stream ``sid``, once it arrived."""
    def find() -> Span | None:
        return next((s for s in receiver.spans() if s.attributes.get("streamapp.stream.id") == sid), None)
    return poll_until(find, timeout, f"the span of stream {sid}")


# -- which variables switch it on ------------------------------------------------------------------
@pytest.mark.parametrize(("environ", "expected"), [
    ({}, ()),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_BSP_SCHEDULE_DELAY": "10"}, ()),  # no endpoint, no exporter
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ("traces", "metrics")),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://h:4318/v1/traces"}, ("traces",)),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://h:4318/v1/metrics"}, ("metrics",)),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ("traces",)),  # the SDK's default endpoint
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_METRICS_EXPORTER": "none"}, ("traces",)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_TRACES_EXPORTER": "console"}, ("metrics",)),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_SDK_DISABLED": "true"}, ()),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     ("traces", "metrics")),
])
def test_which_variables_switch_it_on(environ, expected) -> None:
    assert signals(environ) == expected


def test_a_grpc_protocol_is_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL.*grpc"):
        signals({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})


# -- a real server ---------------------------------------------------------------------------------
@pytest.fixture
def otel_server(start_server, receiver):
    return start_server(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="streamapp-test",
                        DEMO_DELAY_MS=1, HEADER_WAIT_S=0.3, **QUICK)


def test_a_stream_is_a_genai_span_with_its_ids(otel_server, receiver) -> None:
    url = f"{otel_server.url}/stream?text=one+two+three&delay_ms=0"
    with SSEClient(url, headers={"X-Request-ID": "req-otel-1"}) as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    span = span_of(receiver, sid)
    assert span.name == "chat demo"
    assert span.kind == SERVER
    assert span.parent_span_id == ""
    assert span.end_ns > span.start_ns
    a = span.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.provider.name"] == "demo"
    assert a["gen_ai.request.model"] == "demo"
    assert a["gen_ai.request.stream"] is True
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert 0 < a["gen_ai.response.time_to_first_chunk"] < (span.end_ns - span.start_ns) / 1e9
    assert a["streamapp.request.id"] == "req-otel-1"
    assert a["streamapp.route"] == "stream"
    assert a["streamapp.outcome"] == "completed"
    assert a["streamapp.text_deltas"] == 3
    assert "error.type" not in a
    assert span.resource["service.name"] == "streamapp-test"
    assert span.resource["service.instance.id"]


def test_usage_from_the_upstream_is_on_the_span(otel_server, receiver, tag) -> None:
    body = {"model": f"openai/reasoning?tokens=5&tag={tag}", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    with SSEClient(f"{otel_server.url}/v1/chat/completions", "POST", body) as client:
        assert client.status == 200
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    a = span_of(receiver, sid).attributes
    assert a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == f"openai/reasoning?tokens=5&tag={tag}"
    # The fake upstream's REASONING_USAGE, by the conventions' names.
    assert a["gen_ai.usage.input_tokens"] == 7
    assert a["gen_ai.usage.output_tokens"] == 9
    assert a["gen_ai.usage.reasoning.output_tokens"] == 3
    assert a["gen_ai.usage.cache_read.input_tokens"] == 4
    assert a["streamapp.route"] == "v1"


def test_a_failed_stream_is_an_error_span(otel_server, receiver, tag) -> None:
    body = {"model": f"openai/status?status=503&tag={tag}", "messages": MESSAGES, "stream": True}
    resp = requests.post(f"{otel_server.url}/v1/chat/completions", json=body, timeout=10,
                         headers={"X-Request-ID": f"req-{tag}"})
    assert resp.status_code >= 500
    span = span_of(receiver, resp.headers["X-Stream-Id"])
    assert span.status_code == STATUS_ERROR
    assert span.attributes["error.type"].startswith("upstream_")
    assert span.attributes["streamapp.outcome"] == "upstream_error"
    assert span.attributes["streamapp.request.id"] == f"req-{tag}"
    assert "gen_ai.response.finish_reasons" not in span.attributes
    assert "gen_ai.usage.output_tokens" not in span.attributes  # unknown, never a 0
    assert span.attributes["streamapp.usage.source"] == "unknown"


def test_a_whole_answer_is_not_marked_streaming(otel_server, receiver, tag) -> None:
    body = {"model": f"openai/normal?tokens=3&tag={tag}", "messages": MESSAGES, "stream": False}
    resp = requests.post(f"{otel_server.url}/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200
    sid = poll_until(lambda: next((s.attributes["streamapp.stream.id"] for s in receiver.spans()
                                   if tag in s.attributes.get("gen_ai.request.model", "")
                                   and "streamapp.stream.id" in s.attributes), None),  # not an attempt's
                     15, "the span of the whole answer")
    a = span_of(receiver, sid).attributes
    assert "gen_ai.request.stream" not in a  # "if and only if the request is streaming"
    assert a["gen_ai.usage.output_tokens"] == 3


def test_genai_server_metrics_are_exported(otel_server, receiver, tag) -> None:
    with SSEClient(f"{otel_server.url}/stream?text=a+b+c+d&delay_ms=0") as client:
        client.read_all()
    failing = f"openai/status?status=503&tag={tag}"
    requests.post(f"{otel_server.url}/v1/chat/completions", timeout=10,
                  json={"model": failing, "messages": MESSAGES, "stream": True})
    estimated = f"openai/nousage?tokens=4&tag={tag}"  # no usage from the upstream: an estimate
    with SSEClient(f"{otel_server.url}/v1/chat/completions", "POST",
                   {"model": estimated, "messages": MESSAGES, "stream": True}) as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    assert span_of(receiver, sid).attributes["streamapp.usage.source"] == "estimated"

    def complete() -> dict | None:
        seen = {m.name: m for m in receiver.metrics()}
        if not set(METRIC_UNITS) <= set(seen):
            return None
        durations = [p["attributes"] for p in seen["gen_ai.server.request.duration"].points]
        done = any(a.get("error.type") for a in durations) and \
            any(a.get("gen_ai.request.model") == estimated for a in durations)
        return seen if done else None
    seen = poll_until(complete, 15, "the four GenAI metrics, a failure's duration among them")
    for name, unit in METRIC_UNITS.items():
        assert seen[name].unit == unit, name
        assert seen[name].kind == "histogram", name
    durations = seen["gen_ai.server.request.duration"].points
    assert {p["attributes"]["gen_ai.provider.name"] for p in durations} >= {"demo", "openai"}
    assert all(p["attributes"]["gen_ai.operation.name"] == "chat" for p in durations)
    assert durations[0]["bounds"][:3] == [0.01, 0.02, 0.04]  # the conventions' advised buckets
    failed = [p for p in durations if p["attributes"].get("error.type")]
    assert failed[0]["attributes"]["error.type"].startswith("upstream_")
    # time to first token: successful responses only
    ttft = seen["gen_ai.server.time_to_first_token"].points
    assert {p["attributes"]["gen_ai.request.model"] for p in ttft} >= {"demo", estimated}
    assert not any(p["attributes"]["gen_ai.request.model"] == failing for p in ttft)
    usage = seen["gen_ai.client.token.usage"].points
    assert {p["attributes"]["gen_ai.token.type"] for p in usage} == {"input", "output"}
    assert not any(p["attributes"].get("gen_ai.request.model") == estimated for p in usage)  # reported only


def test_what_a_worker_holds_is_sent_when_it_exits(start_server, receiver) -> None:
    """Export intervals of ten minutes: the span and the metrics can only come from the flush
    in gunicorn's worker_exit (the SDK's batch thread is a greenlet under gevent)."""
    server = start_server(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_BSP_SCHEDULE_DELAY="600000",
                          OTEL_METRIC_EXPORT_INTERVAL="600000", DEMO_DELAY_MS=1)
    with SSEClient(f"{server.url}/stream?text=bye+now&delay_ms=0") as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    assert receiver.counts()["spans"] == 0
    server.stop()
    assert server.process.proc.returncode is not None
    span = span_of(receiver, sid, timeout=1)  # already there: sent before the worker exited
    assert span.attributes["streamapp.outcome"] == "completed"
    assert {m.name for m in receiver.metrics()} >= set(METRIC_UNITS) - {"gen_ai.client.token.usage"}
    assert receiver.errors == []


# -- off ---------------------------------------------------------------------------------------------
def test_nothing_is_exported_when_the_sdk_is_disabled(start_server, receiver) -> None:
    server = start_server(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SDK_DISABLED="true",
                          DEMO_DELAY_MS=1, **QUICK)
    with SSEClient(f"{server.url}/stream?text=quiet&delay_ms=0") as client:
        client.read_all()
        assert client.status == 200
    server.stop()  # a worker's exit is when anything held would be sent
    assert receiver.counts() == {"traces": 0, "spans": 0, "metrics": 0, "errors": 0}


def test_without_otel_variables_nothing_of_it_is_loaded() -> None:
    """The app as gunicorn's worker builds it (``wsgi.py``), a stream run to its end: neither
    our telemetry modules nor the SDK's tracing and exporters were imported, and no extension
    was made. (redis-py 8 imports ``opentelemetry.sdk.metrics`` by itself when the SDK is
    installed, for its own observability, which stays off until an app turns it on.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STREAMAPP_", "REDIS_URL"))}
    ours = ("streamapp.otel.", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    script = ("import sys, wsgi\n"
              "resp = wsgi.app.test_client().get('/stream?text=a+b&delay_ms=0')\n"
              "assert resp.status_code == 200 and b'event: end' in resp.data, resp.data\n"
              f"print(sorted(m for m in sys.modules if m.startswith({ours!r})))\n"
              "print('streamapp.otel' in wsgi.app.extensions)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "False"]


# -- attempts (a stream's metadata that failover fills) -------------------------------------------
def test_each_upstream_attempt_is_a_client_child_span(receiver, monkeypatch) -> None:
    from streamapp.otel.setup import Providers

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
    providers = Providers(("traces",))
    from streamapp.failover import Attempt

    attempts = [Attempt("primary", "gpt-4o-mini", "upstream_http_error", 503, start_ms=0.0, ms=20).to_dict(),
                Attempt("local", "llama3.2", "success", None, start_ms=20.0, ms=50).to_dict()]  # as recorded
    meta = {"route": "v1", "provider": "primary", "model": "gpt-4o-mini", "request_id": "r-1",
            "upstream": "local", "attempts": attempts, "stream": False}  # a whole answer
    summary = StreamSummary(sid="s-attempts", meta=meta,
                            outcome="completed", finish_reason="stop", error_code=None, ttft_s=0.06,
                            events=5, tokens=3, duration_s=0.5,
                            usage={"prompt_tokens": 5, "completion_tokens": 3, "source": "reported"})
    StreamTelemetry(providers.tracer, providers.meter, {"primary": "openai", "local": "ollama"},
                    wall_ns=time.time_ns).stream_ended(summary)
    providers.shutdown()
    got = poll_until(lambda: len(receiver.spans()) == 3 and receiver.spans(), 10, "three spans")
    stream = next(s for s in got if s.kind == SERVER)
    first, second = sorted((s for s in got if s.kind == CLIENT), key=lambda s: s.start_ns)
    assert (stream.name, first.name, second.name) == ("chat gpt-4o-mini", "chat gpt-4o-mini", "chat llama3.2")
    assert stream.attributes["gen_ai.response.model"] == "llama3.2"
    assert stream.attributes["gen_ai.provider.name"] == "ollama"  # the kind of the upstream that answered
    assert stream.attributes["streamapp.upstream"] == "local"
    assert stream.attributes["streamapp.usage.source"] == "reported"
    for child in (first, second):
        assert child.kind == CLIENT
        assert child.parent_span_id == stream.span_id and child.trace_id == stream.trace_id
        assert child.attributes["gen_ai.operation.name"] == "chat"
        assert "gen_ai.usage.input_tokens" not in child.attributes  # counted once, on the stream's span
        assert "gen_ai.request.stream" not in child.attributes  # the stream's own: a whole answer
    assert first.attributes["streamapp.upstream"] == "primary"
    assert first.attributes["gen_ai.provider.name"] == "openai"
    assert first.attributes["error.type"] == "upstream_http_error" and first.status_code == STATUS_ERROR
    assert first.attributes["http.response.status_code"] == 503
    assert "http.response.status_code" not in second.attributes
    assert second.attributes["gen_ai.provider.name"] == "ollama"
    assert "error.type" not in second.attributes
    assert stream.start_ns == first.start_ns < first.end_ns == second.start_ns
    assert second.start_ns < second.end_ns == stream.end_ns
    assert first.end_ns - first.start_ns == 20_000_000


def test_an_upstream_of_the_file_is_named_by_its_kind(start_server, receiver, fake_upstream, tmp_path,
                                                      tag) -> None:
    """With an upstreams file the provider is the operator's name for an upstream: the span's
    ``gen_ai.provider.name`` is its kind (a value the conventions know), ``streamapp.upstream``
    its name."""
    path = tmp_path / "upstreams.toml"
    path.write_text(f'[upstreams.primary]\nkind = "openai"\nbase_url = "{fake_upstream}/v1"\n\n'
                    f'[routes.otel-route]\ntargets = ["primary/normal?tokens=3&tag={tag}"]\n')
    server = start_server(UPSTREAMS_FILE=path, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.url}/v1/traces",
                          **QUICK)
    body = {"model": "otel-route", "messages": MESSAGES, "stream": True}
    with SSEClient(f"{server.url}/v1/chat/completions", "POST", body) as client:
        assert client.status == 200, client.body()
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    a = span_of(receiver, sid).attributes
    assert a["gen_ai.provider.name"] == "openai"
    assert a["streamapp.upstream"] == "primary"
    assert a["gen_ai.usage.output_tokens"] == 3
    assert receiver.metrics() == []  # only the traces endpoint was set


def test_a_callers_traceparent_makes_the_stream_span_its_child(otel_server, receiver) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    url = f"{otel_server.url}/stream?text=traced&delay_ms=0"
    with SSEClient(url, headers={"traceparent": f"00-{trace_id}-{parent}-01"}) as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    span = span_of(receiver, sid)
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent)
    invalid = f"00-{trace_id}-{'0' * 16}-01"  # an all-zero parent id: ignored
    with SSEClient(url, headers={"traceparent": invalid}) as client:
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    span = span_of(receiver, sid)
    assert span.trace_id != trace_id and span.parent_span_id == ""


def test_a_failover_is_a_client_span_per_attempt(start_server, receiver, fake_upstream, tmp_path,
                                                 tag) -> None:
    """A route whose first target refuses connections: the stream's span has a CLIENT child per
    attempt, the refused one an error, the second the one that answered."""
    path = tmp_path / "upstreams.toml"
    path.write_text(f'[upstreams.down]\nkind = "openai"\nbase_url = "http://127.0.0.1:{free_port()}/v1"\n\n'
                    f'[upstreams.primary]\nkind = "openai"\nbase_url = "{fake_upstream}/v1"\n\n'
                    f'[routes.fo]\ntargets = ["down/normal", "primary/normal?tokens=3&tag={tag}"]\n')
    server = start_server(UPSTREAMS_FILE=path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, **QUICK)
    with SSEClient(f"{server.url}/v1/chat/completions", "POST",
                   {"model": "fo", "messages": MESSAGES, "stream": True}) as client:
        assert client.status == 200, client.body()
        sid = client.headers["X-Stream-Id"]
        client.read_all()
    stream = span_of(receiver, sid)
    children = poll_until(lambda: len(found := [s for s in receiver.spans()
                                                if s.parent_span_id == stream.span_id]) == 2 and found,
                          15, "the two attempt spans")
    first, second = sorted(children, key=lambda s: s.start_ns)
    assert (first.kind, second.kind) == (CLIENT, CLIENT)
    assert first.attributes["streamapp.upstream"] == "down"
    assert first.attributes["error.type"] == "upstream_unreachable" and first.status_code == STATUS_ERROR
    assert second.attributes["streamapp.upstream"] == "primary"
    assert second.attributes["gen_ai.request.model"] == f"normal?tokens=3&tag={tag}"
    assert first.attributes["gen_ai.request.stream"] is second.attributes["gen_ai.request.stream"] is True
    assert "error.type" not in second.attributes
    assert first.end_ns <= second.start_ns and second.end_ns == stream.end_ns
    assert stream.attributes["streamapp.upstream"] == "primary"
    assert stream.attributes["gen_ai.response.model"] == f"normal?tokens=3&tag={tag}"
