"""The app's usage: its ledger, its token budgets, and the stream observer that settles each
stream once, where it ends.

:class:`UsageObserver` is registered on the stream manager: when a producer exits (once per
stream, in the process that ran it) it adds the stream's usage record to the ledger under its
key's name, model (as clients name it: ``meta["public_model"]`` where a door's ``model`` is the
upstream's), upstream (``meta["upstream"]``, else its provider) and day (UTC), and settles the
stream's budget reservation (``meta["budget"]``) to what it used; with a price table
(``[prices]`` of the upstreams file) the ledger counts the stream's cost too, priced by the
target that answered (``meta["upstream"]`` and ``meta["upstream_model"]``), else its public
name. It works in the producer's greenlet after the stream's end reached its readers; a
failure is logged, never raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

import redis
from flask import Flask, current_app, g

from ..errors import BudgetExceeded
from ..metrics import count_rejection
from ..streams import get_manager, short_client
from ..streams.observe import StreamSummary
from .budgets import Budgets, budget_limits
from .ledger import ANONYMOUS, Entry, MemoryLedger, RedisLedger
from .prices import Prices
from .record import tokens

logger = logging.getLogger(__name__)
EXTENSION = "streamapp.usage"
Ledger = MemoryLedger | RedisLedger


def today(clock: Callable[[], float] = time.time) -> date:
    """The UTC day now."""
    return datetime.fromtimestamp(clock(), UTC).date()


class UsageObserver:
    """Adds each ended stream to the ledger and settles its budget reservation."""

    def __init__(self, ledger: Ledger, budgets: Budgets, prices: Prices | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.ledger, self.budgets, self.prices, self.clock = ledger, budgets, prices, clock

    def stream_started(self, sid: str, meta: dict[str, Any]) -> None:
        pass

    def stream_resumed(self, sid: str, meta: dict[str, Any]) -> None:
        pass  # a resume never counts again

    def stream_ended(self, s: StreamSummary) -> None:
        meta = s.meta
        prompt, completion, total = tokens(s.usage)
        model = str(meta.get("public_model") or meta.get("model") or "-")  # the name clients send
        upstream = str(meta.get("upstream") or meta.get("provider") or "-")
        cost = 0
        if self.prices is not None:  # the target that answered (upstream_model: failover), else the name
            answered = meta.get("upstream_model") or meta.get("model")
            cost = self.prices.nano_cost(model, upstream, str(answered) if answered else None,
                                         prompt, completion)
        entry = Entry(s.sid, str(meta.get("client") or ANONYMOUS), model, upstream, today(self.clock),
                      prompt, completion, total, cost)
        try:
            self.ledger.add(entry)
        except redis.RedisError as exc:
            logger.warning("stream %s: could not add its usage to the ledger: %s", s.sid, exc,
                           extra={"stream_id": s.sid, "request_id": meta.get("request_id")})
        reservation = meta.get("budget")
        if reservation:
            self.budgets.settle(reservation, total)


def get_usage() -> UsageObserver:
    """The current app's usage (ledger and budgets)."""
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> None:
    """Make the app's ledger and budgets (in Redis with ``REDIS_URL``) and observe its streams."""
    config = app.config
    url, prefix = config["REDIS_URL"], config["REDIS_PREFIX"]
    ledger: Ledger = RedisLedger(url, prefix, config["USAGE_RETENTION_DAYS"], client=short_client(app)) \
        if url else MemoryLedger()
    budgets = Budgets(budget_limits(config["TOKEN_BUDGET"], "STREAMAPP_TOKEN_BUDGET"),
                      config["BUDGET_LEASE_S"], url, prefix, client=short_client(app))
    fleet = app.extensions.get("upstreams")
    prices = fleet.prices if fleet is not None else None
    observer = UsageObserver(ledger, budgets, prices)
    app.extensions[EXTENSION] = observer
    with app.app_context():
        get_manager().observers.append(observer)


def reserve_budget(meta: dict[str, Any], slot: Any = None) -> dict[str, Any]:
    """``meta`` with the current client's budget reservation for a new stream when it has a
    budget: ``budget`` (its token) and ``budget_output``, the output it reserved (the stream's
    ``max_tokens``, else ``BUDGET_DEFAULT_MAX_TOKENS``), reserved with its ``prompt_estimate``.
    The stream then asks the upstream for no more output than that (``launch``) and its
    producer ends it with ``length`` past it (an upstream that ignores the limit). 429
    :class:`BudgetExceeded` (counted; ``slot``, a stream slot the caller took, given back)
    when the budget cannot cover it."""
    usage: UsageObserver | None = current_app.extensions.get(EXTENSION)
    if usage is None:
        return meta
    client = g.get("client")
    output = int(meta.get("max_tokens") or current_app.config["BUDGET_DEFAULT_MAX_TOKENS"])
    amount = output + int(meta.get("prompt_estimate") or 0)
    try:
        token = usage.budgets.reserve(client.name if client is not None else ANONYMOUS,
                                      getattr(client, "token_budgets", None), amount)
    except BudgetExceeded:
        count_rejection("budget_exceeded")
        if slot is not None:
            slot.release()
        raise
    return {**meta, "budget": token, "budget_output": output} if token else meta


def release_budget(meta: dict[str, Any]) -> None:
    """Give back the reservation of a stream that did not start."""
    token = meta.get("budget")
    if token:
        get_usage().budgets.settle(token, 0)
