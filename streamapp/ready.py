"""Readiness (``GET /readyz``): can this process serve, and if not, which part fails.

Checked: the stream store (Redis when configured: a ``PING``) and the providers this
service is configured to use (``READY_PROVIDERS``; by default the default provider, and
the OpenAI-compatible one when ``OPENAI_API_KEY`` is set; with an upstreams file, the
upstreams it names, none by default): a ``GET`` of their model list
or version with a 2 s timeout. The demo provider needs nothing. The answer is cached for
``READY_CACHE_S`` and one probe runs at a time, so frequent probes stay cheap and never
fan out to the upstreams. Messages name the failing part, never a host or a key (the
route is public). Each upstream's circuit breaker (``streamapp.circuits``) is shown too,
as it is at the request (never cached): ``upstreams: {name: {"state", "retry_after"}}``. An
open circuit does not make the process unready: it refuses that upstream's starts itself.
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.lock

from .circuits import Circuits
from .providers import Provider
from .streams.store import Store
from .upstreams import Fleet


def providers_to_check(config: dict[str, Any], fleet: Fleet | None = None) -> list[str]:
    """``READY_PROVIDERS`` (comma-separated), else the default provider and, with a key, openai.

    With an upstreams file ``READY_PROVIDERS`` names its upstreams (``ValueError`` for another
    name), and by default none is checked: every host shares the same upstreams, so one that is
    down is for failover and its circuit (shown in ``upstreams``), not a reason to take every
    host out of its load balancer, the demo and the other routes with it."""
    named = [p.strip() for p in str(config.get("READY_PROVIDERS") or "").split(",") if p.strip()]
    if fleet is not None:
        unknown = sorted(set(named) - {"demo", *fleet.upstreams})
        if unknown:
            raise ValueError(f"STREAMAPP_READY_PROVIDERS: {', '.join(unknown)} names no upstream of "
                             f"{fleet.source} (known: {', '.join(fleet.upstreams)})")
        return named
    if named:
        return named
    names = [config["DEFAULT_PROVIDER"]]
    if config.get("OPENAI_API_KEY") and "openai" not in names:
        names.append("openai")
    return names


class Readiness:
    """The checks of one process, cached for ``cache_s``."""

    def __init__(self, store: Store, providers: dict[str, Provider], names: list[str],
                 cache_s: float = 2.0, circuits: Circuits | None = None) -> None:
        self.store, self.providers, self.names, self.cache_s = store, providers, names, cache_s
        self.circuits = circuits
        self._lock = gevent.lock.Semaphore()
        self._report: tuple[bool, dict[str, Any]] | None = None
        self._at = 0.0

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``; ``body["failing"]`` names what fails."""
        with self._lock:  # a probe in flight serves everyone waiting for it
            if self._report is None or time.monotonic() - self._at >= self.cache_s:
                self._report = self._probe()
                self._at = time.monotonic()
            ready, body = self._report
        if self.circuits is not None:
            body = {**body, "upstreams": self.circuits.states()}
        return ready, body

    def _probe(self) -> tuple[bool, dict[str, Any]]:
        jobs = {"store": gevent.spawn(self.store.check)}
        for name in self.names:
            check = getattr(self.providers.get(name), "check", None)
            if check is not None:
                jobs[f"provider:{name}"] = gevent.spawn(check)
        gevent.joinall(list(jobs.values()), timeout=5)
        checks: dict[str, Any] = {"store": {"kind": "redis" if self.store.shared else "memory"},
                                  "providers": {name: {} for name in self.names}}
        failing = []
        for part, job in jobs.items():
            problem = job.value if job.successful() else "no answer in time"
            entry = checks["store"] if part == "store" else checks["providers"][part.split(":", 1)[1]]
            entry["ok"] = problem is None
            if problem is not None:
                entry["error"] = problem
                failing.append(part)
            job.kill(block=False)
        for entry in checks["providers"].values():
            entry.setdefault("ok", True)  # nothing to check (demo)
        ready = not failing
        return ready, {"status": "ready" if ready else "not_ready", "failing": failing, "checks": checks}
