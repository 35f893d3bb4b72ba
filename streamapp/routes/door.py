"""The Flask side of every front door's streams (not a blueprint): who is asking.

Starting a stream (:func:`launch`) takes the current client's stream slot and
records the client (an API key's name, never the key) and the request id in the
stream's metadata; resuming one (:func:`find`) checks that client owns it. The
lifecycle itself (``streams.lifecycle``) knows nothing of requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import g

from ..auth import require_owner
from ..events import Event
from ..limits import acquire_slot
from ..streams import get_lifecycle
from ..streams.lifecycle import Resumable


def client_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the client starting the stream (resuming, inspecting and cancelling it
    then take the same client: ``auth.require_owner``) and the request id, for the logs."""
    client = g.get("client")
    out = {**meta, "request_id": g.get("request_id")}
    if client is not None:
        out["client"] = client.name
    return out


def launch(events: Iterator[Event], meta: dict[str, Any], on_disconnect: str = "cancel") -> str:
    """Start a stream for the current client in one of its stream slots; its id.

    429 (``TooManyStreams``) over a concurrent-stream cap; the slot is given back when the
    producer exits, however the stream ends."""
    slot = acquire_slot(on_disconnect)
    return get_lifecycle().start(events, client_meta(meta), on_disconnect, on_exit=slot.release)


def find(sid: str, after: int, route: str | None = None) -> Resumable | None:
    """The stream ``sid`` to resume after ``after`` for the current client (403 when it is
    another client's), or ``None`` when there is nothing to resume (``Lifecycle.find``)."""
    return get_lifecycle().find(sid, after, check_owner=require_owner, route=route)
