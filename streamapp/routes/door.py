"""The Flask side of every front door's streams (not a blueprint): who is asking.

A door turns its request into a model (``routes.model.request_model``) and a chat request,
and :func:`answer` into the answer's events over the model's targets
(:class:`~streamapp.failover.Failover`). Starting the stream (:func:`launch`) admits it
(:func:`admit`: the key's token budget and the targets' circuits, refused at once, before any
slot), takes the current client's stream slot (waiting in the client's queue up to
``QUEUE_WAIT_S`` when its caps are full: :mod:`streamapp.queue`) and
records the client (an API key's name, never the key) and the request id in the
stream's metadata; resuming one (:func:`find`) checks that client owns it. The
lifecycle itself (``streams.lifecycle``) knows nothing of requests.
"""

from __future__ import annotations

from typing import Any, NoReturn

import gevent.event
from flask import current_app, g

from ..auth import require_owner_or_admin
from ..errors import ApiError, TooManyStreams
from ..failover import Failover, Settings
from ..limits import client_identity
from ..metrics import EXTENSION as METRICS
from ..metrics import count_rejection
from ..models import Resolved
from ..providers import ChatRequest
from ..queue import SlotQueue, Ticket
from ..slots import Slot
from ..streams import get_lifecycle
from ..streams.lifecycle import Resumable
from ..usage.service import release_budget, reserve_budget


class LeftQueue(ApiError):
    """The client left while its stream waited for a slot: nothing was started (its answer,
    499 as nginx logs a client that closed its request, reaches nobody)."""

    status = 499
    code = "client_left"


def client_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with the client starting the stream (resuming, inspecting and cancelling it
    then take the same client, or an admin key: ``auth.require_owner_or_admin``) and the
    request id, for the logs; and the request's W3C ``traceparent`` when tracing kept one
    (``streamapp.otel``)."""
    client = g.get("client")
    out = {**meta, "request_id": g.get("request_id")}
    if client is not None:
        out["client"] = client.name
    traceparent = g.get("traceparent")
    if traceparent is not None:
        out["traceparent"] = traceparent
    return out


def slot_queue() -> SlotQueue:
    """The app's stream caps with their queue (``QUEUE_WAIT_S``), made on first use."""
    ext = current_app.extensions
    queue = ext.get("streamapp.queue")
    if queue is None:
        queue = ext["streamapp.queue"] = SlotQueue(ext["streamapp.slots"], current_app.config["QUEUE_WAIT_S"])
        metrics = ext.get(METRICS)
        if metrics is not None:
            queue.observer = metrics.queue_waited
    return queue


def take_slot(on_disconnect: str = "cancel") -> Slot | Ticket:
    """A stream slot for the current client now, or its :class:`Ticket` in the queue; 429
    (``TooManyStreams``, counted) when full and ``QUEUE_WAIT_S`` is 0."""
    client = g.get("client")
    try:
        return slot_queue().acquire(client_identity(), getattr(client, "max_streams", None),
                                    detached=on_disconnect == "finish")
    except TooManyStreams:
        count_rejection("too_many_streams")
        raise


def give_up(ticket: Ticket, gone: gevent.event.Event | None) -> NoReturn:
    """End a wait that got no slot: ``LeftQueue`` when the client left, else the 429."""
    if gone is not None and gone.is_set():
        ticket.leave("left")
        raise LeftQueue("the client left while its stream waited for a slot")
    ticket.leave("timeout")
    count_rejection("too_many_streams")
    raise ticket.refusal()


def wait_slot(ticket: Ticket, gone: gevent.event.Event | None = None) -> Slot:
    """Wait the rest of ``ticket``'s wait for its slot; ``LeftQueue`` once ``gone`` is set,
    429 when the wait runs out."""
    slot = ticket.wait(ticket.queue.wait_s, gone)
    if slot is None:
        give_up(ticket, gone)
    return slot


def answer(resolved: Resolved, chat: ChatRequest) -> Failover:
    """The events of the answer to ``chat`` from ``resolved``'s targets, each asked for its own
    model, failing over before the first token (``streamapp.failover``): what every door starts."""
    ext = current_app.extensions
    metrics = ext.get(METRICS)
    return Failover(resolved.targets, resolved.strategy, ext["providers"], chat,
                    Settings.from_config(current_app.config), circuits=ext.get("circuits"),
                    observe=metrics.attempted if metrics is not None else None)


def admit(events: Failover, meta: dict[str, Any]) -> dict[str, Any]:
    """Admit a stream before it takes a slot or waits for one: ``meta`` with the current key's
    token budget reservation (429 ``budget_exceeded``) once the circuits of ``events``' targets
    let it start (503 ``UpstreamUnavailable`` when every one is open). A stream admitted but
    not started gives both back (:func:`refuse`)."""
    meta = reserve_budget(meta)  # 429 when the key's token budget cannot cover the stream
    try:
        events.admit()
    except BaseException:
        release_budget(meta)
        raise
    return meta


def refuse(events: Failover, meta: dict[str, Any]) -> None:
    """Give back what :func:`admit` took for a stream that did not start (no slot, the client
    left, a store error): its budget reservation and its probe's turn (idempotent)."""
    release_budget(meta)
    events.release()


def launch(events: Failover, meta: dict[str, Any], on_disconnect: str = "cancel", *,
           slot: Slot | None = None, gone: gevent.event.Event | None = None,
           admitted: bool = False) -> str:
    """Start a stream of ``events`` (:func:`answer`) for the current client in one of its
    stream slots (``slot`` when the caller took it); its id.

    Unless ``admitted`` (``meta`` then comes from :func:`admit`; the circuits looked at again:
    one may have opened while the stream waited for ``slot``), admitted first: 503
    (``UpstreamUnavailable``) at once when the circuit of every target is open, 429
    ``budget_exceeded`` when the key's token budget cannot cover it (``slot`` given back).
    Caps full: waits in the queue up to ``QUEUE_WAIT_S``, then 429
    (``TooManyStreams``); ``LeftQueue`` once ``gone`` is set while it waits. The slot is given
    back when the producer exits, however the stream ends. The upstream attempts go to the
    stream's metadata (``upstream``, ``attempts``) at its first token, or its end before one.
    A budget's reservation is settled when the stream ends (``usage.service``); the upstream is
    then asked for no more output than the reservation holds (``budget_output``). A stream that
    does not start gives the reservation back, and its probe's turn (:func:`refuse`)."""
    if not admitted:
        try:
            meta = admit(events, meta)  # before any slot or upstream request
        except BaseException:
            if slot is not None:
                slot.release()
            raise
    try:
        if slot is None:
            taken = take_slot(on_disconnect)
            slot = taken if isinstance(taken, Slot) else wait_slot(taken, gone)
        if admitted:
            try:
                events.recheck()  # a circuit that opened while the stream waited for its slot: 503
            except BaseException:
                slot.release()  # the stream's own until its producer has it
                raise
        events.cap_output(meta.get("budget_output"))  # a budget's reservation: no more output asked
        return get_lifecycle().start(events.events, client_meta(meta), on_disconnect, on_exit=slot.release,
                                     on_first=events.decided)
    except BaseException:
        refuse(events, meta)  # not started: nothing to settle
        raise


def find(sid: str, after: int, route: str | None = None) -> Resumable | None:
    """The stream ``sid`` to resume after ``after`` for the current client (403 when it is
    another client's and the caller is not admin), or ``None`` when there is nothing to resume
    (``Lifecycle.find``)."""
    return get_lifecycle().find(sid, after, check_owner=require_owner_or_admin, route=route)
