"""``POST /v1/embeddings``: OpenAI's embeddings over every provider, answered whole (no stream).

An application that points one OpenAI ``base_url`` here for chat and retrieval needs both
doors. ``model`` is read by the app's one resolver as on ``/v1/chat/completions`` (``demo``,
``openai/<model>``, ``ollama/<model>``, a bare name for the default provider), with the same
keys, model lists and ``ALLOWED_MODELS``; the same shared rate limit counts it
(``limits.STREAM_ENDPOINTS``); its own input caps are ``MAX_EMBED_INPUTS`` and
``MAX_EMBED_CHARS`` (``embeddings.check_embed_input``). The provider answers OpenAI's
embedding list (``Provider.embed``): the OpenAI-compatible upstream gets the request as is,
Ollama ``/api/embed``, the demo makes deterministic vectors from the text. Errors are
OpenAI's shape; an upstream failure is a 502 (504 on a timeout) with the upstream's own
message at most, and an upstream's 404 (an unknown model) a 404 ``model_not_found``.
"""

from __future__ import annotations

import logging

import orjson
from flask import Blueprint, Response, current_app, g

from ..embeddings import EmbeddingList, EmbeddingsRequest, check_embed_input
from ..errors import ApiError, UpstreamError
from ..openapi import describe
from ..openapi.parts import errors, json_body
from ..providers.base import EmbedRequest
from ..schemas import parse
from .body import read_json_body
from .model import request_model

logger = logging.getLogger(__name__)

bp = Blueprint("embeddings", __name__, url_prefix="/v1")


@describe("OpenAI-compatible embeddings", "openai",
          {"200": json_body(EmbeddingList, "OpenAI's embedding list: one vector per input, in order "
                                           "(`index`); `usage` only when the upstream counted the tokens."),
           **errors("400", "404", "408", "413", "415", "429", "502", "504", openai=True)},
          description="Not streamed. `model` picks the provider as on `/v1/chat/completions`: `demo` "
                      "(deterministic vectors made from the words of the text, 128 floats unless "
                      "`dimensions` says otherwise: retrieval works with nothing configured), "
                      "`openai/<model>` (the request passed on as is), `ollama/<model>` (`/api/embed`; "
                      "text only, token ids are a 400); with an upstreams file, a route's name. "
                      "At most {MAX_EMBED_INPUTS} inputs "
                      "(MAX_EMBED_INPUTS) of at most {MAX_EMBED_CHARS} characters in all "
                      "(MAX_EMBED_CHARS; a token id counts as one), else a 400 naming the setting. "
                      "Errors are in OpenAI's shape.",
          body=EmbeddingsRequest,
          example={"model": "demo", "input": ["The cat sat on the mat", "A dog barked in the fog"]})
@bp.post("/embeddings")
def embeddings() -> Response:
    """The vectors of ``input``, from the provider ``model`` names."""
    body = parse(EmbeddingsRequest, read_json_body())
    resolved = request_model(body.model)
    request = EmbedRequest(body.input, resolved.model, body.upstream_params())
    check_embed_input(request.inputs, current_app.config)
    provider = current_app.extensions["providers"][resolved.provider]
    try:
        answer = provider.embed(request)
    except UpstreamError as exc:  # the detail (hosts, raw bodies) is for the log only
        logger.warning("embeddings: %s: %s", exc.code, exc.detail,
                       extra={"request_id": g.get("request_id"), "provider": resolved.provider})
        if exc.upstream_status == 404:
            raise ApiError(exc.message, code="model_not_found", status=404, field="model") from None
        raise
    answer["model"] = body.model
    # orjson: a large list of floats is written in C, not by the json module.
    return Response(orjson.dumps(answer), mimetype="application/json")
