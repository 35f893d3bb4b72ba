"""The upstreams file (``STREAMAPP_UPSTREAMS_FILE``): named upstreams and the routes that
serve public model names from them, read once at start-up into a frozen :class:`Fleet`.

TOML (read with :mod:`tomllib`), three top-level keys::

    default_route = "gpt-4o-mini"        # optional: the public name used when a request names none

    [upstreams.primary]                  # a name of the operator's choosing (no '/')
    kind = "openai"                      # "openai" (any OpenAI-compatible server) or "ollama"
    base_url = "https://api.openai.com/v1"
    api_key_env = "OPENAI_API_KEY"       # optional: the variable holding its key (must be set)
    connect_timeout_s = 5                # optional: else STREAMAPP_CONNECT_TIMEOUT_S
    read_timeout_s = 120                 # optional: else STREAMAPP_READ_TIMEOUT_S
    default_model = "gpt-4o-mini"        # optional: the model of a target naming only "primary"

    [routes."gpt-4o-mini"]               # a public model name clients send
    targets = ["primary/gpt-4o-mini", {target = "local/llama3.2", weight = 1}]
    strategy = "fallback"                # (default) in order; or "weighted": spread by weight

A target is ``"upstream/model"`` (split at the first ``/``: the model may hold more), or
``"upstream"`` alone for that upstream's ``default_model``, or a table ``{target = ..., weight
= N}`` (``weight``, > 0, default 1, counts only for ``weighted``).

Validation is strict: anything wrong raises ``ValueError`` naming the file, the table and the
key (``upstreams.toml: [routes."gpt-4o-mini"] targets[1]: "nowhere/llama3.2" names no upstream
(known: local, primary)``), so a bad file stops start-up. An ``api_key_env`` that is unset or
empty is refused too: the upstream would answer 401 to every request, and a 401 is not failed
over (the key is wrong everywhere), so the route would be dead while /readyz said ready.

Optional prices turn the usage ledger's tokens into cost (``streamapp.usage.prices``)::

    [prices]
    currency = "USD"                     # optional (default "USD"): what the prices are in
    [prices."gpt-4o-mini"]               # a public name, or "upstream/model"
    input = 0.15                         # per million input (prompt) tokens
    output = 0.60                        # per million output (completion) tokens

A new section is one more entry in ``SECTIONS`` (its parser) and one more field of
:class:`Fleet`; the top-level keys outside ``SECTIONS`` are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from .usage.prices import Price, Prices

__all__ = ["KINDS", "STRATEGIES", "Fleet", "Route", "Target", "Upstream", "load", "parse"]

KINDS = ("openai", "ollama")
STRATEGIES = ("fallback", "weighted")
RESERVED = "demo"  # the embedded demo's name: neither an upstream nor a route may take it


@dataclass(frozen=True, slots=True)
class Target:
    """One place a model is served: an upstream (a provider's name in
    ``app.extensions["providers"]``), the model asked of it, and its weight (for ``weighted``)."""

    upstream: str
    model: str
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """One upstream server: its provider ``kind``, where it is, its key (read from
    ``api_key_env`` at load, never shown), and its own timeouts (``None``: the settings')."""

    name: str
    kind: str
    base_url: str
    api_key_env: str | None = None
    api_key: str = field(default="", repr=False)
    connect_timeout_s: float | None = None
    read_timeout_s: float | None = None
    default_model: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """A public model name and the targets that serve it, tried by ``strategy``."""

    name: str
    targets: tuple[Target, ...]
    strategy: str = "fallback"


@dataclass(frozen=True, slots=True)
class Fleet:
    """The file, read: upstreams and routes by name (in the file's order), the default route."""

    source: str
    upstreams: Mapping[str, Upstream]
    routes: Mapping[str, Route]
    default_route: str | None = None
    prices: Prices | None = None  # [prices]: None without the table

    def describe(self) -> str:
        """A line per upstream (never its key) and per route, for the start-up log."""
        lines = [f"  upstream {u.name}: {u.kind} {u.base_url}"
                 + (f" (key from {u.api_key_env})" if u.api_key_env else "") for u in self.upstreams.values()]
        for r in self.routes.values():
            weighted = r.strategy == "weighted"
            targets = (f"{t.upstream}/{t.model}" + (f" x{t.weight:g}" if weighted else "") for t in r.targets)
            lines.append(f"  route {r.name} ({r.strategy}): {', '.join(targets)}")
        lines.append(f"  default route: {self.default_route or 'demo'}")
        return "\n".join(lines)

    def unrouted(self) -> list[str]:
        """The upstreams no route names (configured, never asked)."""
        used = {t.upstream for r in self.routes.values() for t in r.targets}
        return [name for name in self.upstreams if name not in used]


class _Where:
    """Where a value sits, for messages: ``file: [table] key``."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, table: str | None, key: str, problem: str) -> ValueError:
        place = f"[{table}] {key}" if table else key
        return ValueError(f"{self.source}: {place}: {problem}")


def _quoted(name: str) -> str:
    """A TOML key as people write it: bare when it is a word, else quoted (``"gpt-4o-mini"``)."""
    return name if re.fullmatch(r"\w+", name, re.ASCII) else json.dumps(name)


def _typed(where: _Where, table: str | None, key: str, value: Any, kind: type | tuple[type, ...],
           what: str) -> Any:
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise where.fail(table, key, f"must be {what}, got {json.dumps(value)}")
    if not isinstance(value, kind):
        raise where.fail(table, key, f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def _text(where: _Where, table: str, key: str, value: Any) -> str:
    value = _typed(where, table, key, value, str, "a string")
    if not value.strip():
        raise where.fail(table, key, "must not be empty")
    return value


def _positive(where: _Where, table: str, key: str, value: Any) -> float:
    value = float(_typed(where, table, key, value, (int, float), "a number"))
    if not math.isfinite(value) or value <= 0:
        raise where.fail(table, key, f"must be a number > 0, got {value:g}")
    return value


def _table(where: _Where, table: str | None, key: str, value: Any) -> dict[str, Any]:
    return _typed(where, table, key, value, dict, "a table")


def _only(where: _Where, table: str, value: Mapping[str, Any], known: tuple[str, ...],
          prefix: str = "") -> None:
    for key in value:
        if key not in known:
            raise where.fail(table, prefix + _quoted(key), f"unknown key (known: {', '.join(known)})")


UPSTREAM_KEYS = ("kind", "base_url", "api_key_env", "connect_timeout_s", "read_timeout_s", "default_model")


def _upstream(where: _Where, name: str, raw: Any, environ: Mapping[str, str]) -> Upstream:
    table = f"upstreams.{_quoted(name)}"
    if not name.strip() or "/" in name or name == RESERVED:
        raise where.fail("upstreams", _quoted(name), "an upstream's name must be non-empty, hold no '/' "
                                                     f"and not be {RESERVED!r}")
    raw = _table(where, "upstreams", _quoted(name), raw)
    _only(where, table, raw, UPSTREAM_KEYS)
    for key in ("kind", "base_url"):
        if key not in raw:
            raise where.fail(table, key, "missing (required)")
    kind = _text(where, table, "kind", raw["kind"])
    if kind not in KINDS:
        raise where.fail(table, "kind", f"{json.dumps(kind)} is not one of "
                                        f"{', '.join(map(json.dumps, KINDS))}")
    base_url = _text(where, table, "base_url", raw["base_url"]).rstrip("/")
    try:
        parts = urlsplit(base_url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise where.fail(table, "base_url", f"{json.dumps(base_url)} is not an http:// or https:// URL "
                                            "with a host")
    key_env, api_key = raw.get("api_key_env"), ""
    if key_env is not None:
        key_env = _text(where, table, "api_key_env", key_env)
        api_key = environ.get(key_env, "")
        if not api_key:
            raise where.fail(table, "api_key_env", f"the environment variable {key_env} is not set (or "
                                                   "empty): set it, or remove api_key_env")
    timeouts = {key: _positive(where, table, key, raw[key])
                for key in ("connect_timeout_s", "read_timeout_s") if key in raw}
    default_model = raw.get("default_model")
    if default_model is not None:
        default_model = _text(where, table, "default_model", default_model)
    return Upstream(name, kind, base_url, key_env, api_key, default_model=default_model, **timeouts)


ROUTE_KEYS = ("targets", "strategy")
TARGET_KEYS = ("target", "weight")


def _target(where: _Where, table: str, key: str, raw: Any, upstreams: Mapping[str, Upstream]) -> Target:
    weight = 1.0
    if isinstance(raw, dict):
        _only(where, table, raw, TARGET_KEYS, prefix=f"{key}.")  # "[routes.x] targets[0].colour"
        if "target" not in raw:
            raise where.fail(table, f"{key}.target", "missing (required)")
        if "weight" in raw:
            weight = _positive(where, table, f"{key}.weight", raw["weight"])
        key, raw = f"{key}.target", raw["target"]
    text = _typed(where, table, key, raw, str,
                  'a string "upstream/model" or a table {target = ..., weight = N}')
    upstream, sep, model = text.partition("/")
    if upstream not in upstreams:
        known = ", ".join(sorted(upstreams)) or "none"
        raise where.fail(table, key, f"{json.dumps(text)} names no upstream (known: {known})")
    if not sep:
        model = upstreams[upstream].default_model or ""
        if not model:
            raise where.fail(table, key, f"{json.dumps(text)} names no model, and [upstreams."
                                         f"{_quoted(upstream)}] has no default_model")
    elif not model.strip():
        raise where.fail(table, key, f"{json.dumps(text)} names no model after the '/'")
    return Target(upstream, model, weight)


def _route(where: _Where, name: str, raw: Any, upstreams: Mapping[str, Upstream]) -> Route:
    table = f"routes.{_quoted(name)}"
    if not name.strip() or name == RESERVED:
        raise where.fail("routes", _quoted(name), f"a route's name must be non-empty and not {RESERVED!r} "
                                                  "(the embedded demo)")
    raw = _table(where, "routes", _quoted(name), raw)
    _only(where, table, raw, ROUTE_KEYS)
    if "targets" not in raw:
        raise where.fail(table, "targets", "missing (required)")
    listed = _typed(where, table, "targets", raw["targets"], list, "a list")
    if not listed:
        raise where.fail(table, "targets", "is empty: name at least one \"upstream/model\"")
    targets: list[Target] = []
    for i, item in enumerate(listed):
        target = _target(where, table, f"targets[{i}]", item, upstreams)
        if any((t.upstream, t.model) == (target.upstream, target.model) for t in targets):
            raise where.fail(table, f"targets[{i}]", f'"{target.upstream}/{target.model}" is listed twice')
        targets.append(target)
    strategy = _text(where, table, "strategy", raw.get("strategy", "fallback"))
    if strategy not in STRATEGIES:
        raise where.fail(table, "strategy", f"{json.dumps(strategy)} is not one of "
                                            f"{', '.join(map(json.dumps, STRATEGIES))}")
    return Route(name, tuple(targets), strategy)


def _upstreams(where: _Where, raw: Any, environ: Mapping[str, str], _: dict[str, Any]) -> dict[str, Upstream]:
    raw = _table(where, None, "upstreams", raw)
    return {name: _upstream(where, name, value, environ) for name, value in raw.items()}


def _routes(where: _Where, raw: Any, _: Mapping[str, str], read: dict[str, Any]) -> dict[str, Route]:
    raw = _table(where, None, "routes", raw)
    return {name: _route(where, name, value, read.get("upstreams", {})) for name, value in raw.items()}


def _default_route(where: _Where, raw: Any, _: Mapping[str, str], read: dict[str, Any]) -> str:
    name = _typed(where, None, "default_route", raw, str, "a string")
    if name != RESERVED and name not in read.get("routes", {}):
        known = ", ".join([RESERVED, *sorted(read.get("routes", {}))])
        raise where.fail(None, "default_route", f"{json.dumps(name)} names no route (known: {known})")
    return name


PRICE_KEYS = ("input", "output")


def _prices(where: _Where, raw: Any, _: Mapping[str, str], read: dict[str, Any]) -> Prices:
    raw = _table(where, None, "prices", raw)
    currency = _text(where, "prices", "currency", raw.get("currency", "USD"))
    routes: Mapping[str, Route] = read.get("routes", {})
    priceable = {RESERVED, *routes, *(f"{t.upstream}/{t.model}" for r in routes.values() for t in r.targets)}
    models: dict[str, Price] = {}
    for name, value in raw.items():
        if name == "currency":
            continue
        if name not in priceable:  # a price that could never match: a typo, or a model no route serves
            known = ", ".join(sorted(priceable))
            raise where.fail("prices", _quoted(name), f"names no route, {RESERVED!r} nor a route's target "
                                                      f"(upstream/model); known: {known}")
        table = f"prices.{_quoted(name)}"
        value = _table(where, "prices", _quoted(name), value)
        _only(where, table, value, PRICE_KEYS)
        amounts = []
        for key in PRICE_KEYS:
            if key not in value:
                raise where.fail(table, key, "missing (required): the price of a million tokens")
            amount = float(_typed(where, table, key, value[key], (int, float), "a number"))
            if not math.isfinite(amount) or amount < 0:
                raise where.fail(table, key, f"must be a number >= 0, got {amount:g}")
            amounts.append(amount)
        models[name] = Price(*amounts)
    return Prices(MappingProxyType(models), currency)


# Each top-level key and its parser, in the order they are read (a later one sees the earlier
# ones' results in ``read``): add a section here, and a field of Fleet.
SECTIONS: dict[str, Callable[[_Where, Any, Mapping[str, str], dict[str, Any]], Any]] = {
    "upstreams": _upstreams,
    "routes": _routes,
    "default_route": _default_route,
    "prices": _prices,
}


def parse(text: str, source: str, environ: Mapping[str, str] | None = None) -> Fleet:
    """The :class:`Fleet` that TOML ``text`` (from ``source``, named in messages) describes;
    ``environ`` holds the upstreams' keys (default ``os.environ``)."""
    where = _Where(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: not valid TOML: {exc}") from None
    for key in data:
        if key not in SECTIONS:
            raise where.fail(None, _quoted(key), f"unknown key (known: {', '.join(SECTIONS)})")
    read: dict[str, Any] = {}
    for key, section in SECTIONS.items():
        if key in data:
            read[key] = section(where, data[key], os.environ if environ is None else environ, read)
    if not read.get("routes"):
        raise where.fail(None, "routes", "no route: clients name routes ([routes.\"<public name>\"])")
    return Fleet(source, MappingProxyType(read.get("upstreams", {})), MappingProxyType(read["routes"]),
                 read.get("default_route"), read.get("prices"))


def load(path: str, environ: Mapping[str, str] | None = None) -> Fleet:
    """:func:`parse` of the file at ``path``; ``ValueError`` when it cannot be read."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ValueError(f"STREAMAPP_UPSTREAMS_FILE: cannot read {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 (byte {exc.start})") from None
    return parse(text, path, environ)
