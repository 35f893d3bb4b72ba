"""gunicorn settings for streamapp: gevent workers holding many long streams.

The STREAMAPP_* variables read here are in the README's "Configuration"; the defaults serve
``make run``: one worker on 127.0.0.1:8000 with the in-memory store, no nginx, no Redis.
Behind nginx (conf/nginx-site.conf) run one such instance per host, all on one REDIS_URL.
"""

import gc
import glob
import multiprocessing
import os
import secrets
import shutil
import tempfile
import time

# Loopback by default: nginx (or a client on this host) connects here. Comma-separated.
bind = os.environ.get("STREAMAPP_BIND", "127.0.0.1:8000").split(",")
# A stream spends its life waiting on sockets (upstream, client, Redis): it is a greenlet, not a
# thread. wsgi.py patches with gevent before anything imports socket or ssl.
worker_class = "gevent"
# The memory store lives in one process, so one worker unless Redis shares streams (a resume
# or a cancel may reach any worker). With Redis, one per core: a worker uses one core, and
# CPU (encoding events) is what runs out first, not connections.
workers = int(os.environ.get("STREAMAPP_WORKERS",
                             multiprocessing.cpu_count() if os.environ.get("REDIS_URL") else 1))
# Session cookies (streamapp/auth.py): unless STREAMAPP_SECRET_KEY is set or Redis keeps one
# secret for every instance, the workers of this instance sign with one secret made here, in
# the master, before they fork (a secret per worker refuses the other workers' cookies). It
# lasts as long as the master: a reload keeps it, a restart makes a new one.
os.environ.setdefault("_STREAMAPP_INSTANCE_SECRET", secrets.token_hex(32))
# Connections one worker serves at once (streams, WebSockets, idle keep-alives); past it, new
# ones wait in the listen backlog. gunicorn's 1000 is low for long streams, which stay open
# for minutes. Each stream also holds an upstream socket, so the open-files limit (ulimit -n)
# must be above twice this.
worker_connections = int(os.environ.get("STREAMAPP_WORKER_CONNECTIONS", 10000))
# For gevent, timeout is only the worker's own heartbeat: its loop reports every second, and a
# worker silent for this long (a loop blocked by CPU work or a call gevent cannot switch out of)
# is killed with all its streams. It bounds no request: streams last up to
# STREAM_MAX_DURATION_S and send an SSE comment every HEARTBEAT_S (15 s) on their own.
timeout = 60
# On SIGTERM (or to the workers a reload retires) gunicorn ends what still runs this long
# after the signal. Meanwhile each worker stops accepting (nginx sends new requests elsewhere),
# readers hand over between events (with Redis), and producers may finish for
# graceful_timeout - 3 s, keeping 3 s to end the rest as "shutdown" (both in post_worker_init).
# Raise it to let longer answers finish across a deploy.
graceful_timeout = int(os.environ.get("STREAMAPP_GRACEFUL_TIMEOUT", 30))
# Seconds an idle keep-alive connection waits for its next request. nginx's upstream
# keepalive_timeout (4 s) is shorter, so nginx closes first and never sends on a closing one.
keepalive = 5
# gunicorn's most (default 4094): room for GET /stream's text at STREAM_MAX_TEXT characters
# even percent-encoded at 12 bytes each (a 4-byte UTF-8 character), and nginx's 8 KB buffer.
limit_request_line = 8190
# No --preload: with it the master imports the app (socket, ssl, requests, redis) before the
# worker patches them with gevent (gunicorn #2177, #2796), and streams block the whole worker.
preload_app = False
# gunicorn 27's control socket has one default path per user, so several
# instances on a host would share it: opt in with a path of this instance's own.
if os.environ.get("STREAMAPP_CONTROL_SOCKET"):
    control_socket = os.environ["STREAMAPP_CONTROL_SOCKET"]
else:
    control_socket_disable = True
# The app writes its own structured line per request (streamapp/logs.py): gunicorn's
# access log is off unless asked for (STREAMAPP_ACCESS_LOG=- for stderr).
accesslog = os.environ.get("STREAMAPP_ACCESS_LOG") or None
# gunicorn's own messages (workers booting, exiting, killed on timeout) go to stderr at this level.
loglevel = os.environ.get("STREAMAPP_LOG_LEVEL", "info")


# Garbage collection in a worker: the objects loaded with the app (modules, routes, config) are
# frozen out of every collection, and the youngest generation is collected after this many
# allocations rather than Python's 700. Streams allocate fast and free by reference count, so
# frequent cycle collections would mostly walk the same long-lived objects again.
gc_threshold = int(os.environ.get("STREAMAPP_GC_THRESHOLD", 50_000))
if gc_threshold < 1:
    raise ValueError("STREAMAPP_GC_THRESHOLD must be >= 1 (0 would turn the cycle collector off)")


def post_worker_init(worker):
    """Tune the garbage collector (above); tell the app's streams when this worker starts
    shutting down."""
    import gevent

    gc.freeze()
    gc.set_threshold(gc_threshold, 10, 10)

    manager = worker.wsgi.extensions["streams"]

    def watch_alive():
        while worker.alive:
            gevent.sleep(0.1)
        worker.streamapp_drain_by = time.monotonic() + max(1, graceful_timeout - 3)
        manager.begin_shutdown()
        # Producers get until 3 s before the arbiter's SIGKILL, then end with "shutdown": their
        # readers (and so their connections, which the worker waits for) end with them. Here,
        # not only in worker_exit, which runs once every connection is closed or timed out.
        manager.drain(max(1, graceful_timeout - 3), close=False)

    gevent.spawn(watch_alive)


def worker_exit(server, worker):
    """Let producers finish until the same deadline (their readers may have resumed
    elsewhere: with Redis the connections close early), then stop them and close the store;
    then send the OpenTelemetry spans and metrics this worker still holds (their ends included)."""
    app = getattr(worker, "wsgi", None)
    manager = app and app.extensions.get("streams")
    if manager is not None:
        deadline = getattr(worker, "streamapp_drain_by", time.monotonic() + graceful_timeout - 3)
        manager.drain(max(1, deadline - time.monotonic()))
    if app:
        from streamapp import otel

        otel.shutdown(app)


# Prometheus multiprocess mode: each worker writes its metrics to files in one directory,
# which GET /metrics on any worker sums. The directory must be known before the workers
# start (they import prometheus_client after the fork) and must start empty.
_made_metrics_dir = None


def on_starting(server):
    """Prepare PROMETHEUS_MULTIPROC_DIR: the operator's (emptied) or a new temporary one."""
    global _made_metrics_dir
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    else:
        path = _made_metrics_dir = tempfile.mkdtemp(prefix="streamapp-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def child_exit(server, worker):
    """A worker's live gauges (active streams) stop counting when it exits."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Remove the metrics directory this master made."""
    if _made_metrics_dir:
        shutil.rmtree(_made_metrics_dir, ignore_errors=True)
