"""The API's own description: ``GET /api.json`` (OpenAPI 3.1) and ``GET /swagger/`` (Swagger UI).

Swagger UI comes from the files of a pinned PyPI package (``flask-swagger-ui``,
which ships Swagger UI's ``dist``); the page loads nothing from any other origin.
"""

from __future__ import annotations

import logging
import os
from importlib import resources

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, send_from_directory

from .. import openapi
from ..openapi import describe
from ..openapi.parts import ANY_FILE, HTML, errors, json_body, path_param, response

bp = Blueprint("docs", __name__)
logger = logging.getLogger("streamapp.routes")

# Only the package's files are used, not its blueprint (whose page pulls in a top bar that fetches
# any URL typed into it).
SWAGGER_DIST = str(resources.files("flask_swagger_ui") / "dist")


@describe("This document", "docs",
          {"200": json_body({"type": "object"}, "The OpenAPI 3.1 document of every route, with this server's "
                                                "limits.")})
@bp.get("/api.json")
def api_json() -> Response:
    """The OpenAPI document of every route."""
    return jsonify(openapi.document(current_app))


@describe("Swagger UI", "docs",
          {"200": response("Swagger UI over /api.json, from local files (no CDN).", HTML)})
@bp.get("/swagger/")
def swagger() -> str:
    """Swagger UI pointed at /api.json; "Try it out" sends requests to this service."""
    return render_template("swagger.html")


@describe("Swagger UI's files", "docs",
          {"200": response("A file of the pinned Swagger UI distribution.", ANY_FILE), **errors("404")},
          path_params={"filename": path_param("a file of Swagger UI's dist", "swagger-ui.css")})
@bp.get("/swagger/<path:filename>")
def swagger_file(filename: str) -> Response:
    """A file of Swagger UI's distribution (404 for anything else)."""
    return send_from_directory(SWAGGER_DIST, filename, max_age=3600)


def log_route_table(app: Flask) -> None:
    """Log the route table (method, path, endpoint) once, as GoFrame does at start-up; and any
    route the OpenAPI document has no entry for."""
    rows = sorted(((method, rule.rule, rule.endpoint) for rule in app.url_map.iter_rules()
                   for method in sorted(rule.methods or ()) if method not in ("HEAD", "OPTIONS")),
                  key=lambda row: (row[1], row[0]))
    width = max(len(path) for _, path, _ in rows)
    lines = [f"  {'METHOD':<7} {'PATH':<{width}}  ENDPOINT"]
    lines += [f"  {method:<7} {path:<{width}}  {endpoint}" for method, path, endpoint in rows]
    logger.info("route table (pid %d):\n%s", os.getpid(), "\n".join(lines))
    missing = openapi.undocumented(app)
    if missing:
        logger.warning("routes without a description (@describe, streamapp/openapi): %s",
                       ", ".join(f"{m} {p}" for m, p in sorted(missing)))
