"""gunicorn settings for streamapp: gevent workers holding many long streams."""

import glob
import multiprocessing
import os
import shutil
import tempfile

bind = os.environ.get("STREAMAPP_BIND", "127.0.0.1:8000").split(",")
worker_class = "gevent"
# The memory store lives in one process, so one worker unless Redis shares streams.
workers = int(os.environ.get("STREAMAPP_WORKERS",
                             multiprocessing.cpu_count() if os.environ.get("REDIS_URL") else 1))
worker_connections = int(os.environ.get("STREAMAPP_WORKER_CONNECTIONS", 10000))
# For gevent, timeout is only the worker's own heartbeat; streams may last far longer.
timeout = 60
# Producers get this long to finish at shutdown while their readers resume elsewhere.
graceful_timeout = int(os.environ.get("STREAMAPP_GRACEFUL_TIMEOUT", 30))
keepalive = 5
# gunicorn's most (default 4094): room for GET /stream's text at STREAM_MAX_TEXT characters
# even percent-encoded at 12 bytes each (a 4-byte UTF-8 character), and nginx's 8 KB buffer.
limit_request_line = 8190
preload_app = False  # the app must be imported after the worker patched with gevent
# gunicorn 27's control socket has one default path per user, so several
# instances on a host would share it: opt in with a path of this instance's own.
if os.environ.get("STREAMAPP_CONTROL_SOCKET"):
    control_socket = os.environ["STREAMAPP_CONTROL_SOCKET"]
else:
    control_socket_disable = True
# The app writes its own structured line per request (streamapp/logs.py): gunicorn's
# access log is off unless asked for (STREAMAPP_ACCESS_LOG=- for stderr).
accesslog = os.environ.get("STREAMAPP_ACCESS_LOG") or None
loglevel = os.environ.get("STREAMAPP_LOG_LEVEL", "info")


def post_worker_init(worker):
    """Tell the app's streams when this worker starts shutting down."""
    import gevent

    manager = worker.wsgi.extensions["streams"]

    def watch_alive():
        while worker.alive:
            gevent.sleep(0.1)
        manager.begin_shutdown()

    gevent.spawn(watch_alive)


def worker_exit(server, worker):
    """Let producers finish (their readers resume elsewhere), then stop them."""
    manager = getattr(worker, "wsgi", None) and worker.wsgi.extensions.get("streams")
    if manager is not None:
        manager.drain(max(1, graceful_timeout - 3))


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
