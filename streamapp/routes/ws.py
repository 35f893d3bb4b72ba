"""``GET /ws``: chat over a WebSocket (flask-sock's route on simple-websocket).

Until the upgrade the handshake is an ordinary request: the app's authentication hook,
the Origin rule and the socket's set-up run before it, so a refusal is an HTTP 401 or 403
with a JSON body, never a socket closed after the upgrade. A request to ``/ws`` that is
not a WebSocket handshake gets 400. The conversation is :class:`.ws_session.WsSession`.
"""

from __future__ import annotations

from typing import Any

import gevent.lock
from flask import Blueprint, Flask, current_app, g, request
from flask_sock import Sock

from ..auth import require_allowed_origin
from ..openapi import describe
from ..openapi.parts import errors, response
from .ws_session import FrameSocket, WsSession

bp = Blueprint("ws", __name__)
sock = Sock()  # with a blueprint given, it only registers routes: no state


@bp.before_request
def _before_upgrade() -> None:
    """The Origin rule, then the socket's write timeout and whole, serialised frames."""
    require_allowed_origin()
    raw = request.environ.get("gunicorn.socket")
    if raw is not None:
        g.ws_lock = gevent.lock.RLock()
        raw.settimeout(current_app.config["WRITE_TIMEOUT_S"] or None)  # no progress this long: gone
        request.environ["gunicorn.socket"] = FrameSocket(raw, g.ws_lock)


@sock.route("/ws", bp=bp)  # registers a wrapper of the view and returns None: describe goes below
@describe("Chat over a WebSocket", "streams", {
    "101": response("Switching Protocols: the socket speaks the JSON messages of the README's \"WebSocket\" "
                    "section."), **errors("400")},
    description="A WebSocket handshake (`Upgrade: websocket`); any other request gets 400. Client messages: "
                "`chat` (the fields of `POST /api/chat`, with its limits), `stop`, `resume` (`stream_id`, "
                "`last_seq`), `ping`. Server messages: `start`, `delta`, `reasoning`, `tool_call`, `end`, "
                "`error`, `pong`. A message over {MAX_BODY_BYTES} bytes (MAX_BODY_BYTES) gets an `error` "
                "(`message_too_large`); a frame over {WS_MAX_FRAME_BYTES} bytes (WS_MAX_FRAME_BYTES) closes "
                "the socket (1009). Authentication and the `Origin` rule are checked before the upgrade "
                "(401 / 403). Swagger UI cannot open a WebSocket.")
def ws(connection: Any) -> None:
    """Chat over a WebSocket: ``chat``, ``stop``, ``resume`` and ``ping`` messages."""
    g.ws_upgraded = True
    WsSession(connection, g.get("ws_lock")).run()


def init_app(app: Flask) -> None:
    """Register ``/ws`` with simple-websocket's options from the settings."""
    config = app.config
    # Protocol pings (answered by browsers by themselves); a peer silent until the next one is
    # dropped. A frame over the hard limit closes the socket with 1009.
    config["SOCK_SERVER_OPTIONS"] = {"ping_interval": config["WS_PING_S"],
                                     "max_message_size": config["WS_MAX_FRAME_BYTES"]}
    app.register_blueprint(bp)
