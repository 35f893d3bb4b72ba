"""The demo page, liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify, render_template

from ..openapi import describe
from ..openapi.models import Health, Ready
from ..openapi.parts import HTML, json_body, response

bp = Blueprint("pages", __name__)


@describe("The demo chat page", "pages", {"200": response("The page (no CDN; works offline).", HTML)})
@bp.get("/")
def index() -> str:
    """The demo chat page (no CDN: works offline)."""
    return render_template("index.html")


@describe("Liveness", "pages", {"200": json_body(Health, "Always `{\"status\": \"ok\"}`.")})
@bp.get("/healthz")
def healthz() -> Response:
    """Liveness for load balancers and test fixtures."""
    return jsonify({"status": "ok"})


@describe("Readiness", "pages", {
    "200": json_body(Ready, "The store and the configured providers answer."),
    "503": json_body(Ready, "A part fails: `failing` names it (`store`, `provider:openai`...).")})
@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: 200 when the store and the configured providers answer, else 503 naming the
    failing part (``failing``: ``store``, ``provider:openai``...)."""
    ready, body = current_app.extensions["ready"].report()
    resp = jsonify(body)
    resp.status_code = 200 if ready else 503
    resp.headers["Cache-Control"] = "no-store"
    return resp
