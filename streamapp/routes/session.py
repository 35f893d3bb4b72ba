"""``POST /api/session``: trade an API key for a browser session cookie; ``DELETE``: sign out.

``EventSource`` (and WebSocket) cannot send headers and keys do not belong in URLs, so the
page posts the key once (``Authorization: Bearer``); the answer sets a signed, expiring,
``HttpOnly``, ``SameSite=Strict`` cookie naming the key's client (never the key). The key
check itself is :mod:`streamapp.auth`'s hook, like every other route's.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, session

from ..openapi import describe
from ..openapi.models import SessionInfo
from ..openapi.parts import json_body

bp = Blueprint("session", __name__)


@describe("Trade an API key for a browser session cookie", "auth", {"200": json_body(
    SessionInfo, "With keys configured: sets the `streamapp_session` cookie (signed, expiring after "
                 "{SESSION_TTL_S} s (SESSION_TTL_S), HttpOnly, SameSite=Strict) that authenticates this "
                 "browser's requests from this site's pages, EventSource included. Without: sets nothing.")},
          description="The key goes in `Authorization: Bearer <key>` or `X-API-Key` (never the URL).")
@bp.post("/api/session")
def create() -> Response:
    """Start a browser session for the key in ``Authorization`` / ``X-API-Key``."""
    client = g.get("client")
    if client is None:  # no key configured: nothing to remember
        return jsonify({"client": None, "expires_in": None})
    session.clear()
    session["client"] = client.name
    session.permanent = True  # expires after SESSION_TTL_S (checked on every request, too)
    return jsonify({"client": client.name, "expires_in": int(current_app.config["SESSION_TTL_S"])})


@describe("End the browser session (sign out)", "auth", {"200": json_body(
    SessionInfo, "Clears the `streamapp_session` cookie; `client` and `expires_in` are null. "
                 "With keys configured the request is authenticated like any other (the cookie itself, "
                 "from this site's pages, or a key).")})
@bp.delete("/api/session")
def delete() -> Response:
    """Forget this browser's session: the cookie is cleared in the answer."""
    session.clear()  # an emptied session makes Flask delete the cookie
    return jsonify({"client": None, "expires_in": None})
