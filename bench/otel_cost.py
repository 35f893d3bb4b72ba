"""What OpenTelemetry costs per stream: CPU of turning a stream's end into its span and GenAI
metrics (``StreamTelemetry.stream_ended``) and of exporting them (protobuf encoding, the HTTP
posts), measured in one gevent-patched process as a worker is, against a receiver in its own
process (``tests/otlp_receiver.py``). Nothing of it runs per event, so the cost per event of a
stream of N tokens is this figure divided by N. With OpenTelemetry off there is no observer:
zero by construction.

Usage (from the repository root)::

    .venv/bin/python bench/otel_cost.py --streams 5000 [--attempts 2]
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after patching, as wsgi.py does
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402


def cpu() -> float:
    """This process's CPU seconds, every thread (and greenlet) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=5000)
    parser.add_argument("--attempts", type=int, default=0, help="upstream attempts in each stream's metadata")
    args = parser.parse_args()
    logdir = Path(os.environ.get("TMPDIR", "/tmp"))
    receiver = h.start_otlp_receiver(logdir)
    try:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.url
        from streamapp.otel.genai import StreamTelemetry
        from streamapp.otel.setup import Providers
        from streamapp.streams.observe import StreamSummary

        providers = Providers(("traces", "metrics"))
        telemetry = StreamTelemetry(providers.tracer, providers.meter, {"openai": "openai"})
        attempt = {"upstream": "openai", "model": "gpt-4o-mini", "outcome": "success", "ms": 30}
        attempts = [attempt] * args.attempts
        meta = {"route": "v1", "provider": "openai", "model": "gpt-4o-mini", "client": "alice",
                "request_id": "0123456789abcdef0123456789abcdef", "format": "openai", "attempts": attempts}
        usage = {"prompt_tokens": 120, "completion_tokens": 200, "total_tokens": 320}

        def run(n: int) -> None:
            for i in range(n):
                telemetry.stream_ended(StreamSummary(
                    sid=f"s{i:015d}", meta=meta, outcome="completed", finish_reason="stop", error_code=None,
                    ttft_s=0.2, events=203, tokens=200, duration_s=2.5, usage=usage))
                if i % 64 == 63:
                    gevent.sleep(0.005)  # streams end apart: the exporter greenlet keeps up (no drops)

        run(200)  # warm-up: imports, caches
        providers._tracer_provider.force_flush()
        start, wall = cpu(), time.perf_counter()
        run(args.streams)
        ended = cpu()
        providers.shutdown()  # every span and the metrics sent
        done, wall = cpu(), time.perf_counter() - wall
        counts = h.http_get(f"{receiver.url}/_counts", timeout=10)[1].decode()
    finally:
        receiver.stop()
    per = 1e6 / args.streams
    print(f"{args.streams} streams, {args.attempts} attempt spans each, wall {wall:.2f} s")
    print(f"stream_ended (span + 4 histograms): {(ended - start) * per:.1f} us CPU per stream")
    print(f"with the export (encode + POST):    {(done - start) * per:.1f} us CPU per stream")
    print(f"receiver: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
