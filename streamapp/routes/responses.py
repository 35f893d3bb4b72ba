"""OpenAI's Responses API: ``POST /v1/responses``, ``GET|DELETE /v1/responses/<id>``, ``POST .../cancel``.

One more front door on the stream lifecycle: the request is mapped onto the one
``ChatRequest`` (``responses.mapper``), the model resolved, the input checked and the
stream started, capped and rate limited as on ``/v1/chat/completions``; the log is
written as Responses events (``responses.encoder``) or collected into the ``response``
object (``responses.objects``). A response id is ``resp_<stream id>``: retrieving,
resuming (``?stream=true&starting_after=N``, on any worker or host sharing Redis) and
cancelling it are the stream API's, owner (or an admin key) checked first, until the stream's retention
(RESUME_TTL_S) ends or it is deleted (a running one is cancelled first, then forgotten
on every instance: ``Lifecycle.forget``). ``background: true`` generates to the end
with nobody reading (``on_disconnect: finish``); ``previous_response_id`` puts an
earlier response's input and output before the new input, and an ``item_reference``
input item stands for the output item it names, while that response is kept (not with
``store: false``): deleting and continuing a response are its owner's only, admin or not.
Errors are OpenAI's shape (``errors.error_response`` under ``/v1/``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import gevent
from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from ..auth import require_owner, require_owner_or_admin
from ..errors import ApiError, error_response
from ..events import Event, Failed, Opened
from ..limits import check_chat_input
from ..openapi import describe
from ..openapi.models import OpenAIError
from ..openapi.parts import LAST_EVENT_ID, NO_CONTENT, errors, json_body, path_param, response
from ..providers import ChatRequest
from ..responses.docs import STREAM_EVENT
from ..responses.encoder import ResponsesSSE
from ..responses.mapper import Resolver, chat_params, echo, input_messages, items_to_messages
from ..responses.objects import build_response, item_stream, response_id, stream_of
from ..responses.schemas import ResponseDeleted, ResponseObject, ResponsesRequest
from ..schemas import MAX_UID, parse
from ..streams import get_lifecycle
from ..usage.record import usage_meta
from .body import read_json_body
from .door import answer, find, launch
from .model import request_model
from .streaming import (
    SSE_TYPE,
    collect_stream,
    failure_headers,
    resume_if_asked,
    start_stream,
    stream_response,
)

bp = Blueprint("responses", __name__, url_prefix="/v1")
ROUTE = "responses"
CANCEL_WAIT_S = 5.0  # a cancel answers once the stream ended, or after this long as it stands


class RetrieveQuery(BaseModel):
    """Query of ``GET /v1/responses/<id>``."""

    model_config = ConfigDict(extra="ignore")
    stream: bool = False
    starting_after: Annotated[int, Field(ge=0, le=MAX_UID, description=(
        "with `stream=true`: the events after this sequence number"))] | None = None


def _fail(failed: Failed, headers: dict[str, str]) -> Response:
    """A failure before the first byte, OpenAI-shaped; an upstream 404 (its model is unknown) stays a 404."""
    if failed.upstream_status == 404:
        return error_response(404, "model_not_found", failed.message, "model", headers=headers)
    return error_response(failed.status, failed.code, failed.message, headers=headers)


def _not_found(rid: str, field: str | None = None, kind: str = "response") -> ApiError:
    return ApiError(f"no {kind} with id '{rid}'", code="not_found", status=404, field=field)


def _kept(rid: str, field: str | None = None, shown: tuple[str, str] | None = None,
          check: Callable[[dict[str, Any]], None] = require_owner) -> tuple[str, dict[str, Any]]:
    """The stream id and metadata of response ``rid`` of the current client, or 404 (403: another's).

    ``shown``: the kind and id a 404 names (an item of ``rid``), instead of the response;
    ``check``: who may have it (its owner; ``require_owner_or_admin`` where reading or stopping)."""
    sid = stream_of(rid)
    meta = get_lifecycle().manager.store.meta(sid) if sid else None
    kind, name = shown or ("response", rid)
    if meta is None:
        raise _not_found(name, field, kind)
    check(meta)
    if meta.get("route") != ROUTE:
        raise _not_found(name, field, kind)
    return sid, meta


def _log(sid: str) -> list[Event]:
    return [event for _, event in get_lifecycle().manager.store.read(sid, 0)]


def _stored(rid: str, field: str, shown: tuple[str, str] | None = None) -> tuple[dict[str, Any], list[Any]]:
    """The metadata and output items of response ``rid``, ended and stored (``store: true``), or an error."""
    sid, meta = _kept(rid, field, shown)
    if meta.get("context") is None:
        raise ApiError(f"response '{rid}' was created with store: false and cannot be referenced",
                       code="invalid_field", field=field)
    if meta.get("state") != "finished":
        raise ApiError(f"response '{rid}' is still in progress", code="invalid_field", field=field)
    return meta, build_response(sid, meta, _log(sid))["output"]


def _previous(rid: str) -> list[dict[str, Any]]:
    """The context a response continuing ``rid`` starts with: its input and its output."""
    meta, output = _stored(rid, "previous_response_id")
    return [*meta["context"], *items_to_messages(output, "previous_response_id")]


def _references() -> Resolver:
    """Finds the output items ``item_reference`` input items name (each response read once)."""
    outputs: dict[str, dict[str, dict[str, Any]]] = {}

    def resolve(item_id: str, field: str) -> dict[str, Any]:
        sid = item_stream(item_id)
        if sid is None:
            raise _not_found(item_id, field, "item")
        if sid not in outputs:
            _, output = _stored(response_id(sid), field, ("item", item_id))
            outputs[sid] = {item["id"]: item for item in output}
        item = outputs[sid].get(item_id)
        if item is None:
            raise _not_found(item_id, field, "item")
        return item
    return resolve


@describe("Create a model response (OpenAI Responses API)", "openai",
          {"200": response("`\"stream\": true`: Responses events as SSE (`event: <type>`, `data:` one event, "
                           "no SSE id: resume with `GET /v1/responses/{id}?stream=true&starting_after=N`). "
                           "Otherwise the `response` object (with `background: true`, at once: `queued`).",
                           {SSE_TYPE.split(";")[0]: {"schema": STREAM_EVENT},
                            "application/json": {"schema": ResponseObject}}),
           "204": NO_CONTENT,
           **errors("400", "403", "404", "408", "413", "415", "429", "502", "503", "504", openai=True)},
          description="`model` picks the provider as on `/v1/chat/completions`. Built-in tools, images and "
                      "files are refused (400 naming the field). A request with `Last-Event-ID` starts "
                      "nothing: it resumes a stream of this route after that event, or is a 204.",
          body=ResponsesRequest, headers=(LAST_EVENT_ID,),
          example={"model": "demo", "input": "Hi there", "stream": True})
@bp.post("/responses")
def create() -> Response:
    """A model response, streamed (``stream: true``), whole, or in the background."""
    resumed = resume_if_asked(ROUTE)  # the resume rule: a request with Last-Event-ID starts nothing
    if resumed is not None:
        return resumed
    data = read_json_body()
    if not isinstance(data, dict):
        raise ApiError("the body must be a JSON object", code="invalid_body")
    body = parse(ResponsesRequest, data)
    resolved = request_model(body.model)
    name, model = resolved.provider, resolved.model
    context = _previous(body.previous_response_id) if body.previous_response_id else []
    new = input_messages(body, _references())
    head = [{"role": "system", "content": body.instructions}] if body.instructions else []
    check_chat_input("input", [*(("instructions", m["content"]) for m in head),
                               *(("previous_response_id", m.get("content")) for m in context),
                               *((f"input.{i}", m.get("content")) for i, m in enumerate(new))],
                     name, model, {"max_output_tokens": body.max_output_tokens})
    chat = ChatRequest([*head, *context, *new], model=model, params=chat_params(body))
    meta: dict[str, Any] = {"route": ROUTE, "provider": name, "model": body.model,
                            "created": int(time.time()), "echo": echo(body),
                            **usage_meta(chat.messages, chat.params)}
    if body.store:
        meta["context"] = [*context, *new]
    on_disconnect = "finish" if body.background else "cancel"
    if body.stream:
        return start_stream(answer(resolved, chat), ROUTE, meta, on_disconnect, fail=_fail)
    meta["format"] = ROUTE
    if body.background:
        sid = launch(answer(resolved, chat), {**meta, "stream": False}, on_disconnect)
        get_lifecycle().publish(sid)
        return _answer(sid, build_response(sid, meta, []))
    sid, events = collect_stream(answer(resolved, chat), meta, on_disconnect)
    end = events[-1] if events else Failed("client_gone", "the client left", 499)
    if isinstance(end, Failed) and all(isinstance(e, (Opened, Failed)) for e in events):
        return _fail(end, failure_headers(sid, end))  # nothing was generated: an HTTP error
    return _answer(sid, build_response(sid, meta, events))


def _answer(sid: str, obj: dict[str, Any]) -> Response:
    resp = jsonify(obj)
    resp.headers["X-Stream-Id"] = sid
    return resp


RID = {"response_id": path_param("a response id (`resp_<stream id>`)", "resp_abc123")}


@describe("A response as it stands, or its events", "openai",
          {"200": response("The `response` object (`queued`, `in_progress`, `completed`, `incomplete`, "
                           "`failed` or `cancelled`); with `stream=true`, its events after `starting_after` "
                           "then the live tail.",
                           {SSE_TYPE.split(";")[0]: {"schema": STREAM_EVENT},
                            "application/json": {"schema": ResponseObject}}),
           **errors("400", "403", "404", "503", openai=True)},
          query=(RetrieveQuery,), path_params=RID)
@bp.get("/responses/<response_id>")
def retrieve(response_id: str) -> Response:
    """The response object, or (``stream=true``) its events after ``starting_after``."""
    query = parse(RetrieveQuery, request.args.to_dict())
    if query.stream:
        sid = stream_of(response_id)
        found = find(sid, 0, route=ROUTE) if sid else None
        if found is None:
            raise _not_found(response_id)
        after = -1 if query.starting_after is None else query.starting_after
        return stream_response(sid, 0, ResponsesSSE(0, found.meta, starting_after=after))
    sid, meta = _kept(response_id, check=require_owner_or_admin)
    return _answer(sid, build_response(sid, meta, _log(sid)))


@describe("Cancel a response", "openai",
          {"200": json_body(ResponseObject, "The response once it stopped (`cancelled`), or as it stands "
                                            "when it had ended already."),
           **errors("403", "404", "503", openai=True)}, path_params=RID)
@bp.post("/responses/<response_id>/cancel")
def cancel(response_id: str) -> Response:
    """Stop a response's generation wherever it runs; the response object after it stopped."""
    sid, meta = _kept(response_id, check=require_owner_or_admin)
    _stop(sid)
    return _answer(sid, build_response(sid, get_lifecycle().manager.store.meta(sid) or meta, _log(sid)))


def _stop(sid: str) -> None:
    """Cancel stream ``sid`` and wait until it ended, at most ``CANCEL_WAIT_S``."""
    lifecycle = get_lifecycle()
    if lifecycle.cancel(sid) == "cancelling":
        reader = lifecycle.follow(sid, 0, resumable=False)
        try:
            with gevent.Timeout(CANCEL_WAIT_S, False):
                for _ in reader:
                    pass  # the reader ends with the stream
        finally:
            reader.close()


@describe("Delete a response", "openai",
          {"200": json_body(ResponseDeleted, "The response is gone on every instance: retrieving, "
                                             "resuming, cancelling or continuing it (`previous_response_id`) "
                                             "is a 404."),
           "409": json_body(OpenAIError, "It was still running, was cancelled, and had not stopped within "
                                         f"{CANCEL_WAIT_S:g} s (`response_running`): try again."),
           **errors("403", "404", "503", openai=True)}, path_params=RID,
          description="A response still in progress is cancelled first (as `POST .../cancel`), then deleted.")
@bp.delete("/responses/<response_id>")
def delete(response_id: str) -> Response:
    """Remove a response (cancelled first if it runs) for every instance; OpenAI's deletion object."""
    sid, _ = _kept(response_id)
    lifecycle = get_lifecycle()
    outcome = lifecycle.forget(sid)
    if outcome == "running":
        _stop(sid)
        outcome = lifecycle.forget(sid)
    if outcome is None:
        raise _not_found(response_id)
    if outcome == "running":
        raise ApiError(f"response '{response_id}' is still stopping; try again", code="response_running",
                       status=409)
    return jsonify({"id": response_id, "object": "response.deleted", "deleted": True})

