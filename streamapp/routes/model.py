"""The model of a request, by the app's one resolver (``streamapp.models``): every route that
starts a stream asks :func:`request_model` before anything else is checked or started."""

from __future__ import annotations

from flask import current_app, g

from ..models import FleetModels, Models, Resolved


def request_model(name: str | None, provider: str | None = None) -> Resolved:
    """The model ``name`` (of ``provider`` when the route names one), served here and allowed
    for this client; else ``ApiError``: 404 ``model_not_found``, 400 / 403 ``model_not_allowed``."""
    models: Models | FleetModels = current_app.extensions["models"]
    resolved = models.resolve(name, provider)
    models.check(resolved, getattr(g.get("client"), "models", None))
    return resolved
