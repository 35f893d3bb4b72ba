"""OpenAI-compatible API: ``POST /v1/chat/completions``, ``GET /v1/models``.

The official SDKs (and what is built on them) use it unmodified: point their
``base_url`` at ``http://host:port/v1``. ``model`` picks the provider (``demo``,
``openai/<model>``, ``ollama/<model>``, or a bare name for the default provider), read
by the app's one resolver (``streamapp.models``): a model nobody here serves is a 404
``model_not_found``, and ``GET /v1/models`` lists what is served.

Streaming answers are ``chat.completion.chunk`` objects (``wire.OpenAIChunks``)
on the same stream lifecycle as every route: an ``X-Stream-Id`` header, an SSE id
on every chunk (resume by sending the same request with ``Last-Event-ID``, or
``GET /api/streams/<id>``), prompt cancel. Non-streaming answers are the same
stream collected into one ``chat.completion``. Errors are OpenAI's
``{"error": {"message", "type", "code", "param"}}`` (``errors.error_response``
gives that shape under ``/v1/``); an upstream's 404 (an unknown model) is a 404.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from ..errors import ApiError, error_response
from ..events import Failed
from ..limits import check_chat_input
from ..openapi import describe
from ..openapi.models import ModelCard, ModelList
from ..openapi.parts import LAST_EVENT_ID, NO_CONTENT, OPENAI_ANSWER, errors, json_body, path_param
from ..providers import ChatRequest
from ..schemas import V1ChatRequest, parse
from ..usage.record import usage_meta
from ..wire import completion
from .body import read_json_body
from .door import answer
from .model import request_model
from .streaming import collect_stream, failure_headers, resume_if_asked, start_stream

bp = Blueprint("v1", __name__, url_prefix="/v1")

def _fail(failed: Failed, headers: dict[str, str]) -> Response:
    """A failure before the first byte, OpenAI-shaped; an upstream 404 (its model is unknown) stays a 404."""
    if failed.upstream_status == 404:
        return error_response(404, "model_not_found", failed.message, "model", headers=headers)
    return error_response(failed.status, failed.code, failed.message, headers=headers)


@describe("OpenAI-compatible chat completion", "openai",
          {"200": OPENAI_ANSWER, "204": NO_CONTENT,
           **errors("400", "404", "408", "413", "415", "429", "502", "503", "504", openai=True)},
          description="`model` picks the provider: `demo`, `openai/<model>`, `ollama/<model>`, or a bare "
                      "name for the default provider; with an upstreams file, a route's name or `demo`. With "
                      "`Last-Event-ID` it resumes a `/v1` stream. Errors are in OpenAI's shape.",
          body=V1ChatRequest, headers=(LAST_EVENT_ID,),
          example={"model": "demo", "messages": [{"role": "user", "content": "Hi there"}], "stream": True})
@bp.post("/chat/completions")
def chat_completions() -> Response:
    """A chat completion, streamed (``stream: true``) or whole."""
    resumed = resume_if_asked("v1")
    if resumed is not None:
        return resumed
    body = parse(V1ChatRequest, read_json_body())
    resolved = request_model(body.model)
    name, model = resolved.provider, resolved.model
    check_chat_input("messages", [(f"messages.{i}.content", m.content) for i, m in enumerate(body.messages)],
                     name, model, {"max_tokens": body.max_tokens,
                                   "max_completion_tokens": body.max_completion_tokens})
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    chat = ChatRequest(messages, model=model, params=body.upstream_params())
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    meta: dict[str, Any] = {"route": "v1", "provider": name, "model": body.model,
                            "created": int(time.time()), "include_usage": include_usage,
                            **usage_meta(messages, chat.params)}
    if body.stream:
        return start_stream(answer(resolved, chat), "openai", meta, body.on_disconnect, fail=_fail)
    sid, events = collect_stream(answer(resolved, chat), {**meta, "format": "openai"}, body.on_disconnect)
    end = events[-1] if events else Failed("client_gone", "the client left", 499)
    if isinstance(end, Failed):
        return _fail(end, failure_headers(sid, end))
    resp = jsonify(completion(sid, meta, events))
    resp.headers["X-Stream-Id"] = sid
    return resp


def _models() -> list[dict[str, Any]]:
    return [{"id": m.public_name, "object": "model", "created": 0,
             "owned_by": "streamapp" if m.provider == "demo" else m.provider}
            for m in current_app.extensions["models"].servable()]


@describe("The models a client may name", "openai",
          {"200": json_body(ModelList, "OpenAI's model list of what is served: `demo`, and each configured "
                                       "upstream's allowed models (ALLOWED_MODELS) or default model.")})
@bp.get("/models")
def models() -> Response:
    """The models this service serves: ``demo``, and each configured upstream's allowed or default model."""
    return jsonify({"object": "list", "data": _models()})


@describe("One model", "openai",
          {"200": json_body(ModelCard, "The model."), **errors("404", openai=True)},
          path_params={"model": path_param("a model id of `GET /v1/models` (it may hold a `/`)",
                                           "demo")})
@bp.get("/models/<path:model>")
def model(model: str) -> Response:
    """One model of :func:`models`, or 404."""
    for entry in _models():
        if entry["id"] == model:
            return jsonify(entry)
    raise ApiError(f"the model '{model}' does not exist", code="model_not_found", status=404,
                   field="model")

