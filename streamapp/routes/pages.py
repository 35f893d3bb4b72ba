"""The demo page and a health check."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

bp = Blueprint("pages", __name__)


@bp.get("/")
def index() -> str:
    """The demo chat page (no CDN: works offline)."""
    return render_template("index.html")


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness for load balancers and test fixtures."""
    return jsonify({"status": "ok"})
