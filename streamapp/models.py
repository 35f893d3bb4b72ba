"""The one model resolver: which provider and model a request's ``model`` names, whether
anybody here serves it, and whether this client may use it.

Every route that takes a model asks it (``POST /v1/chat/completions``, ``POST /api/chat``,
WebSocket chats, ``GET /ai-stream`` and ``/local-ai``, ``GET /v1/models``). A name is read
the same way everywhere:

- ``demo``: the embedded demo provider (its only model);
- ``openai/<model>``, ``ollama/<model>``: that provider with that model;
- any other name: the default provider (``STREAMAPP_DEFAULT_PROVIDER``) with that name as
  its model; no name: the default provider's default model.

A route that names its provider (``/ai-stream`` is openai, ``/local-ai`` is ollama, the
``provider`` of a chat) takes the model name as it is (``meta-llama/llama-3`` included).

What is served: the demo always; the openai provider when it has a key, or a base URL of its
own (``OPENAI_BASE_URL`` other than api.openai.com: a compatible server may need no key);
Ollama when it was asked for: ``OLLAMA_HOST`` set, or ``ollama`` named in
``STREAMAPP_DEFAULT_PROVIDER``, ``STREAMAPP_READY_PROVIDERS`` or ``STREAMAPP_ALLOWED_MODELS``
(Ollama needs no key, so only the configuration says whether one is meant to be there). The
demo serves only ``demo``; an upstream serves any name (its own 404 says the rest). Anything
else is a 404 ``model_not_found`` (field ``model``).

Allowed (:func:`check_allowed`): ``STREAMAPP_ALLOWED_MODELS`` per provider (400
``model_not_allowed``) and an API key's ``models=`` (403 ``model_not_allowed``), matched by
bare name or ``provider/name``. The demo spends nothing and is always allowed.

With an upstreams file (``STREAMAPP_UPSTREAMS_FILE``, ``streamapp.upstreams``) the resolver is
:class:`FleetModels` instead: the public names are the file's routes and ``demo``, a route
resolves to its targets, and the allow-lists name public names (:func:`build_models` picks).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiError
from .upstreams import Fleet, Route, Target

__all__ = ["FleetModels", "Models", "Resolved", "Target", "build_models", "check_allowed",
           "parse_allowed_models"]

DEMO = "demo"
UPSTREAMS = ("openai", "ollama")
OPENAI_HOST = "api.openai.com"  # the one OpenAI-compatible server known to need a key


@dataclass(frozen=True, slots=True)
class Resolved:
    """A model somebody here serves: the provider, the model it is asked for, and its id in
    ``GET /v1/models`` (``demo``, ``openai/<model>``, ``ollama/<model>``, or a route's name);
    ``targets``, the upstreams to try in turn (by ``strategy``: ``fallback`` or ``weighted``),
    default to the one ``(provider, model)``."""

    provider: str
    model: str
    public_name: str
    targets: tuple[Target, ...] = ()
    strategy: str = "fallback"

    def __post_init__(self) -> None:
        if not self.targets:
            object.__setattr__(self, "targets", (Target(self.provider, self.model),))


def parse_allowed_models(value: str) -> dict[str, frozenset[str]]:
    """``"openai:gpt-4o-mini,gpt-4o;ollama:llama3.2"`` -> ``{provider: models}``."""
    allowed: dict[str, frozenset[str]] = {}
    for part in filter(None, (p.strip() for p in (value or "").split(";"))):
        provider, sep, models = part.partition(":")
        names = frozenset(filter(None, (m.strip() for m in models.split(","))))
        if not sep or not provider.strip() or not names:
            raise ValueError(f"STREAMAPP_ALLOWED_MODELS: {part!r} is not 'provider:model,model'")
        allowed[provider.strip()] = names
    return allowed


def _not_found(name: str, why: str) -> ApiError:
    return ApiError(f"the model '{name}' does not exist here: {why}", code="model_not_found", status=404,
                    field="model")


def _unserved(config: Mapping[str, Any], allowed: Mapping[str, frozenset[str]]) -> dict[str, str]:
    """Why each provider that cannot serve cannot (``{}``: all can)."""
    why: dict[str, str] = {}
    if not config["OPENAI_API_KEY"] and urlsplit(config["OPENAI_BASE_URL"]).hostname == OPENAI_HOST:
        why["openai"] = "the openai provider is not configured (set OPENAI_API_KEY, or OPENAI_BASE_URL " \
                        "for a compatible server)"
    ready = {p.strip() for p in str(config.get("READY_PROVIDERS") or "").split(",")}
    if not (config.get("OLLAMA_HOST_SET") or config["DEFAULT_PROVIDER"] == "ollama" or "ollama" in ready
            or "ollama" in allowed):
        why["ollama"] = "the ollama provider is not configured (set OLLAMA_HOST)"
    return why


class Models:
    """The models of one app: :meth:`resolve`, :meth:`servable`, and the allow-list
    ``allowed`` (``STREAMAPP_ALLOWED_MODELS``) for :func:`check_allowed`."""

    def __init__(self, config: Mapping[str, Any], providers: Mapping[str, Any]) -> None:
        self.default = config["DEFAULT_PROVIDER"]
        self.defaults = {name: getattr(provider, "default_model", None) or DEMO
                         for name, provider in providers.items()}
        self.allowed = parse_allowed_models(config["ALLOWED_MODELS"])
        self.unserved = _unserved(config, self.allowed)

    def check(self, resolved: Resolved, client_models: frozenset[str] | None) -> None:
        """:func:`check_allowed` by this app's allow-list."""
        check_allowed(resolved, client_models, self.allowed)

    def resolve(self, name: str | None, provider: str | None = None) -> Resolved:
        """What ``name`` (of ``provider``, when the route names one) is; ``ApiError`` 404
        ``model_not_found`` when nobody here serves it."""
        asked = name
        if provider is None:
            provider, name = self._split(name)
        shown = asked or self.defaults[provider]  # the name as the client wrote it
        if provider in self.unserved:
            raise _not_found(shown, self.unserved[provider])
        if provider == DEMO:
            if name not in (None, DEMO):
                raise _not_found(shown, "the demo provider serves only 'demo' (GET /v1/models lists the "
                                        "models served here)")
            return Resolved(DEMO, DEMO, DEMO)
        model = name or self.defaults[provider]
        return Resolved(provider, model, f"{provider}/{model}")

    def _split(self, name: str | None) -> tuple[str, str | None]:
        """``(provider, model or None)`` of ``name`` on a route that names no provider."""
        if name is None:
            return self.default, None
        if name == DEMO:
            return DEMO, None
        prefix, sep, rest = name.partition("/")
        if sep and prefix in self.defaults:
            if not rest:
                raise _not_found(name, "name one after the '/'")
            return prefix, rest
        return self.default, name

    def servable(self) -> list[Resolved]:
        """What ``GET /v1/models`` lists: the demo, and each served upstream's allowed models
        (``STREAMAPP_ALLOWED_MODELS``) or, without an allow-list, its default model."""
        found = [Resolved(DEMO, DEMO, DEMO)]
        for provider in UPSTREAMS:
            if provider in self.unserved:
                continue
            models = sorted(self.allowed.get(provider) or (self.defaults[provider],))
            found.extend(Resolved(provider, model, f"{provider}/{model}") for model in models)
        return found


def check_allowed(resolved: Resolved, client_models: frozenset[str] | None,
                  allowed_config: Mapping[str, frozenset[str]]) -> None:
    """Raise ``ApiError`` ``model_not_allowed`` (field ``model``) when ``resolved`` is outside
    ``allowed_config`` (400) or the client's own ``client_models`` (403; ``None``: any)."""
    provider, model = resolved.provider, resolved.model
    if provider == DEMO:
        return  # the embedded demo spends nothing
    allowed = allowed_config.get(provider)
    if allowed is not None and model not in allowed:
        raise ApiError(f"the model '{model}' is not allowed for {provider}: allowed are "
                       f"{', '.join(sorted(allowed))} (STREAMAPP_ALLOWED_MODELS)", field="model",
                       code="model_not_allowed")
    if client_models is not None and model not in client_models and resolved.public_name not in client_models:
        raise ApiError(f"the model '{model}' is not allowed for this API key", field="model",
                       code="model_not_allowed", status=403)


def _route_resolved(route: Route, targets: tuple[Target, ...] | None = None) -> Resolved:
    """A route as resolved: its first target answers until failover tries the others."""
    targets = targets or route.targets
    return Resolved(targets[0].upstream, targets[0].model, route.name, targets, route.strategy)


def _public_allow_list(value: str, fleet: Fleet) -> frozenset[str] | None:
    """``STREAMAPP_ALLOWED_MODELS`` with an upstreams file: public names, comma-separated."""
    names = frozenset(filter(None, (n.strip() for n in (value or "").split(","))))
    for name in sorted(names):
        if name != DEMO and name not in fleet.routes:
            raise ValueError(f"STREAMAPP_ALLOWED_MODELS: {name!r} is not a route of {fleet.source} (with an "
                             f"upstreams file it lists public names, comma-separated: "
                             f"{', '.join(fleet.routes)})")
    return names or None


class FleetModels:
    """The models of an app with an upstreams file (``streamapp.upstreams``): the public names
    are its routes and ``demo``; ``upstream/model`` names are not served (404, naming them).

    A route that names a provider (``/ai-stream``, ``/local-ai``, a chat's ``provider``) takes a
    route's targets of that kind: ``model`` a route's name (of a target of that kind), or, with
    none, the default route when it has one, else the first route in the file that has one.
    ``STREAMAPP_ALLOWED_MODELS`` and keys' ``models=`` list public names."""

    def __init__(self, config: Mapping[str, Any], fleet: Fleet) -> None:
        self.fleet = fleet
        self.allowed: dict[str, frozenset[str]] = {}  # per provider: only without a file
        self.public = _public_allow_list(config["ALLOWED_MODELS"], fleet)  # None: every route
        if fleet.default_route is None and config["DEFAULT_PROVIDER"] != DEMO:
            raise ValueError(f"STREAMAPP_DEFAULT_PROVIDER={config['DEFAULT_PROVIDER']}: with an upstreams "
                             f"file a request naming no model goes to default_route; set it in "
                             f"{fleet.source} (or leave STREAMAPP_DEFAULT_PROVIDER at demo)")
        self.default = fleet.default_route or DEMO
        if self.public is not None and self.default not in self.public | {DEMO}:
            raise ValueError(f"STREAMAPP_ALLOWED_MODELS leaves out default_route {self.default!r} of "
                             f"{fleet.source}: a request naming no model would be refused")

    def _names(self) -> str:
        return ", ".join(m.public_name for m in self.servable())

    def resolve(self, name: str | None, provider: str | None = None) -> Resolved:
        """The route (or the demo) ``name`` is; ``ApiError`` 404 ``model_not_found`` otherwise."""
        if provider not in (None, DEMO):
            return self._of_kind(name, provider)
        if provider == DEMO or (name or self.default) == DEMO:
            if name not in (None, DEMO):
                raise _not_found(name, "the demo provider serves only 'demo'")
            return Resolved(DEMO, DEMO, DEMO)
        route = self.fleet.routes.get(name or self.default)
        if route is None:
            raise _not_found(name or "", f"name one of GET /v1/models: {self._names()}")
        return _route_resolved(route)

    def _of_kind(self, name: str | None, kind: str) -> Resolved:
        upstreams = self.fleet.upstreams
        if name is not None:
            if name not in self.fleet.routes:
                raise _not_found(name, f"name one of GET /v1/models: {self._names()}")
            candidates = [self.fleet.routes[name]]
        else:
            candidates = [r for r in self.fleet.routes.values() if r.name == self.default] + \
                [r for r in self.fleet.routes.values() if r.name != self.default]
        for route in candidates:
            targets = tuple(t for t in route.targets if upstreams[t.upstream].kind == kind)
            if targets:
                return _route_resolved(route, targets)
        what = f"the route '{name}' has" if name is not None else "no route has"
        raise _not_found(name or kind, f"{what} a target of kind {kind} in {self.fleet.source}")

    def check(self, resolved: Resolved, client_models: frozenset[str] | None) -> None:
        """``ApiError`` ``model_not_allowed`` (field ``model``) when ``resolved``'s public name is
        outside ``STREAMAPP_ALLOWED_MODELS`` (400) or the client's ``models=`` (403)."""
        name = resolved.public_name
        if resolved.provider == DEMO:
            return  # the embedded demo spends nothing
        if self.public is not None and name not in self.public:
            raise ApiError(f"the model '{name}' is not allowed: allowed are {', '.join(sorted(self.public))} "
                           "(STREAMAPP_ALLOWED_MODELS)", field="model", code="model_not_allowed")
        if client_models is not None and name not in client_models:
            raise ApiError(f"the model '{name}' is not allowed for this API key", field="model",
                           code="model_not_allowed", status=403)

    def servable(self) -> list[Resolved]:
        """What ``GET /v1/models`` lists: the demo, then the routes (those allowed), in the file's order."""
        return [Resolved(DEMO, DEMO, DEMO)] + [_route_resolved(r) for r in self.fleet.routes.values()
                                               if self.public is None or r.name in self.public]


def build_models(config: Mapping[str, Any], providers: Mapping[str, Any],
                 fleet: Fleet | None) -> Models | FleetModels:
    """The resolver of an app: by the upstreams file when there is one, else by the settings."""
    return Models(config, providers) if fleet is None else FleetModels(config, fleet)
