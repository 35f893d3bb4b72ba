"""``GET /api/usage``: what a key used, from the usage ledger (``streamapp.usage``)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated, Any

import redis
from flask import Blueprint, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ..auth import require_admin
from ..errors import ApiError, StoreError
from ..openapi import describe
from ..openapi.models import UsageAnswer
from ..openapi.parts import errors, json_body
from ..schemas import parse
from ..usage.ledger import ANONYMOUS, Row
from ..usage.prices import Prices, units
from ..usage.service import get_usage, today

bp = Blueprint("usage", __name__)
DEFAULT_DAYS = 30  # without from: the 30 days up to to
MAX_DAYS = 366  # the longest range one answer covers
COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens", "streams")


class UsageQuery(BaseModel):
    """Query of ``GET /api/usage``."""

    model_config = ConfigDict(extra="ignore")
    from_: Annotated[date | None, Field(alias="from", description=(
        f"the first day (UTC, YYYY-MM-DD); absent: {DEFAULT_DAYS} days before to"))] = None
    to: Annotated[date | None, Field(description="the last day (UTC, YYYY-MM-DD); absent: today")] = None
    key: Annotated[Annotated[str, StringConstraints(min_length=1, max_length=200)] | None, Field(
        description="admin keys only: another key's usage, by its name")] = None
    all: Annotated[bool, Field(description="admin keys only: every key's usage")] = False  # noqa: A003


def _name(key: str) -> str | None:
    return None if key == ANONYMOUS else key


def _answer(rows: list[Row], every: bool, prices: Prices | None) -> dict[str, Any]:
    """Ledger rows (per upstream) as the answer's rows per day, key and model, and the total;
    with a price table, each with its ``cost`` and the answer with the ``currency``."""
    merged: dict[tuple[date, str, str], dict[str, int]] = {}
    for day, key, model, _upstream, counts in rows:
        row = merged.setdefault((day, key, model), dict.fromkeys(("prompt", "completion", "total", "streams",
                                                                  "cost"), 0))
        for name, value in counts.items():
            row[name] += value
    days, total, cost = [], dict.fromkeys(COUNTS, 0), 0
    for (day, key, model), counts in sorted(merged.items()):
        item: dict[str, Any] = {"day": day.isoformat(), **({"key": _name(key)} if every else {}),
                                "model": model, "prompt_tokens": counts["prompt"],
                                "completion_tokens": counts["completion"],
                                "total_tokens": counts["total"], "streams": counts["streams"]}
        if prices is not None:
            item["cost"] = units(counts["cost"])
            cost += counts["cost"]
        days.append(item)
        for name in COUNTS:
            total[name] += item[name]
    if prices is None:
        return {"days": days, "total": total}
    return {"days": days, "total": {**total, "cost": units(cost)}, "currency": prices.currency}


@describe("Token usage of a key, per day and model", "usage",
          {"200": json_body(UsageAnswer, "The caller's usage (or, for an admin key, another key's or every "
                                         "key's) per day (UTC) and model, and its total."),
           **errors("400", "403", "503")}, query=(UsageQuery,),
          description="Added once per stream at its end (a resume or a replay never counts again), under "
                      "the key's name, model, upstream and day; with Redis one ledger for every worker and "
                      "host. Tokens are the streams' usage records' (reported, partial or estimated; "
                      "a stream whose usage is unknown counts in `streams` only). `key` and `all` need "
                      "an admin key (STREAMAPP_ADMIN_KEYS, or `admin` in the keys file): 403 `admin_only` "
                      "otherwise. With a price table (`[prices]` of the upstreams file) each row and the "
                      "total have their `cost`, and the answer its `currency`.")
@bp.get("/api/usage")
def usage() -> Response:
    """The caller's usage from ``from`` to ``to``; an admin's, another key's or every key's."""
    query = parse(UsageQuery, request.args.to_dict())
    client = g.get("client")
    own = client.name if client is not None else ANONYMOUS
    if query.all or (query.key is not None and query.key != own):
        require_admin()
    last = query.to or today()
    first = query.from_ or last - timedelta(DEFAULT_DAYS - 1)
    if first > last:
        raise ApiError("from must not be after to", field="from")
    if (last - first).days >= MAX_DAYS:
        raise ApiError(f"from and to must be at most {MAX_DAYS} days apart", field="from")
    name = query.key or own
    try:
        rows = get_usage().ledger.rows(None if query.all else [name], first, last)
    except redis.RedisError as exc:
        raise StoreError(f"the usage ledger failed: {exc}") from None
    answer = _answer(rows, query.all, get_usage().prices)
    return jsonify({"key": None if query.all else _name(name), **answer})
