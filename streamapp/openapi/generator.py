"""The OpenAPI document of an app, from its ``url_map``, its views' descriptions and its config."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .. import auth
from . import bounds
from .describe import EXCLUDED, NOT_OURS, Doc, doc_of
from .parts import event_schemas, is_model, ref, shared_responses

OPENAPI_VERSION = "3.1.0"
SKIPPED_METHODS = frozenset({"HEAD", "OPTIONS"})  # werkzeug adds them to every GET and every route


def openapi_path(rule: str) -> str:
    """A werkzeug rule in OpenAPI form: ``<path:name>`` -> ``{name}``."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def routes(app: Flask) -> Iterator[tuple[str, str, str, Doc | None]]:
    """``(METHOD, OpenAPI path, endpoint, description or None)`` of every route the app serves,
    but the ``EXCLUDED`` ones."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in EXCLUDED:
            continue
        doc = doc_of(app.view_functions.get(rule.endpoint)) or NOT_OURS.get(rule.endpoint)
        for method in sorted((rule.methods or set()) - SKIPPED_METHODS):
            yield method, openapi_path(rule.rule), rule.endpoint, doc


def undocumented(app: Flask) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of the routes that have no description (and are not excluded)."""
    return {(method, path) for method, path, _, doc in routes(app) if doc is None}


def document(app: Flask) -> dict[str, Any]:
    """The document of ``app`` (built once per app)."""
    doc = app.extensions.get("openapi")
    if doc is None:
        doc = app.extensions["openapi"] = build(app)
    return doc


# -- Building ---------------------------------------------------------------------------------

def _walk(node: Any, models: list[type[BaseModel]]) -> Any:
    """``node`` with every model class replaced by its ``$ref`` (and recorded in ``models``)."""
    if is_model(node):
        if node not in models:
            models.append(node)
        return ref(node.__name__)
    if isinstance(node, dict):
        return {k: _walk(v, models) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_walk(v, models) for v in node]
    return node


def _clean(schema: Any) -> Any:
    """pydantic's JSON Schema made plain: ``title`` goes (the names say it)."""
    if isinstance(schema, dict):
        return {key: _clean(value) for key, value in schema.items()
                if not (key == "title" and isinstance(value, str))}
    if isinstance(schema, list):
        return [_clean(v) for v in schema]
    return schema


_SETTING = re.compile(r"\{([A-Z][A-Z0-9_]*)\}")


def fill(node: Any, config: Mapping[str, Any]) -> Any:
    """``node`` with each ``{SETTING}`` replaced by ``config``'s value: a string that is only a
    placeholder becomes the value itself; in text, 0 or "" (a limit switched off) reads "off"."""
    if isinstance(node, dict):
        return {k: fill(v, config) for k, v in node.items()}
    if isinstance(node, list):
        return [fill(v, config) for v in node]
    if not isinstance(node, str) or "{" not in node:
        return node
    whole = _SETTING.fullmatch(node)
    if whole and whole.group(1) in config:
        return config[whole.group(1)]

    def text(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in config:
            return match.group(0)
        value = config[name]
        if isinstance(value, bool) or value in (0, "", None):
            return "off" if not value else str(value)
        return f"{value:g}" if isinstance(value, float) else str(value)
    return _SETTING.sub(text, node)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query value is never JSON null (an absent parameter is): drop the null branch."""
    branches = schema.get("anyOf")
    if branches:
        rest = [b for b in branches if b != {"type": "null"}]
        if len(rest) == 1:
            merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
            if schema.get("default") is not None:
                merged["default"] = schema["default"]
            return {**rest[0], **merged}
    return schema


def _query_params(model: type[BaseModel], defs: dict[str, Any]) -> list[dict[str, Any]]:
    schema = defs[model.__name__]
    required = set(schema.get("required", ()))
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(_not_null(prop))  # a copy: the model's own schema stays whole in components
        param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
        if "description" in prop:
            param["description"] = prop.pop("description")
        param["schema"] = prop
        params.append(param)
    return params


def _is_public(endpoint: str) -> bool:
    """Whether the auth hook lets ``endpoint`` through without a key (auth's own lists)."""
    return endpoint in auth.PUBLIC_ENDPOINTS or endpoint.partition(".")[0] in auth.PUBLIC_BLUEPRINTS


def _operation(method: str, path: str, endpoint: str, doc: Doc,
               models: list[type[BaseModel]]) -> dict[str, Any]:
    responses = dict(doc.responses)
    if not _is_public(endpoint):  # 401 and 403 when keys are configured
        prefix = "OpenAIError" if path.startswith("/v1/") else "Error"
        responses = {s: {"$ref": f"#/components/responses/{prefix}{s}"} for s in ("401", "403")} | responses
    words = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_") or "root"
    operation_id = f"{method.lower()}_{words}"
    entry: dict[str, Any] = {"summary": doc.summary, "tags": [doc.tag], "operationId": operation_id,
                             "responses": _walk(responses, models)}
    if doc.description:
        entry["description"] = doc.description
    if doc.body is not None:
        media: dict[str, Any] = {"schema": _walk(doc.body, models)}
        if doc.example is not None:
            media["example"] = doc.example
        entry["requestBody"] = {"required": True, "content": {"application/json": media},
                                "description": "At most {MAX_BODY_BYTES} bytes (MAX_BODY_BYTES), else 413."}
    for model in doc.query:
        _walk(model, models)
    return entry


def build(app: Flask) -> dict[str, Any]:
    """The OpenAPI document of the routes ``app`` serves, with its configured limits."""
    models: list[type[BaseModel]] = []
    ops = [(method, path, endpoint, doc) for method, path, endpoint, doc in routes(app) if doc is not None]
    entries = [(method, path, doc, _operation(method, path, endpoint, doc, models))
               for method, path, endpoint, doc in ops]
    events = _walk(event_schemas(), models)
    responses = _walk(shared_responses(), models)
    _, top = models_json_schema([(m, "validation") for m in models],
                                ref_template="#/components/schemas/{model}")
    defs = _clean(top.get("$defs", {}))
    bounds.apply(defs, app.config)
    paths: dict[str, dict[str, Any]] = {}
    for method, path, doc, entry in entries:
        params: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, **spec} for name, spec in doc.path_params.items()]
        for model in doc.query:
            params.extend(_query_params(model, defs))
        params.extend(doc.headers)
        if params:
            entry["parameters"] = params
        paths.setdefault(path, {})[method.lower()] = entry
    return fill({
        "openapi": OPENAPI_VERSION,
        "info": {"title": "streamapp", "version": "0.1.0", "description": INFO},
        "tags": [{"name": t} for t in dict.fromkeys(doc.tag for _, _, _, doc in ops)],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": {**defs, **events}, "responses": responses,
                       "securitySchemes": SECURITY_SCHEMES},
        # Keys are optional (none configured: the API is open), hence the empty alternative.
        "security": [{"bearer": []}, {"apiKey": []}, {"session": []}, {}],
    }, app.config)


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer",
               "description": "An API key (STREAMAPP_API_KEYS / STREAMAPP_API_KEYS_FILE)."},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The same key."},
    "session": {"type": "apiKey", "in": "cookie", "name": "streamapp_session",
                "description": "Set by `POST /api/session`; accepted only from this site's pages "
                               "(`Origin` or `Sec-Fetch-Site: same-origin`)."},
}

INFO = """Streams AI chat answers token by token over Server-Sent Events or chunked HTTP.

**Errors** before a stream's first byte are JSON `{"error": {"code", "message", "field"}}` with the status
(`/v1`: OpenAI's `{"error": {"message", "type", "code", "param"}}`); after it, a last `event: error`
(`{"code", "message"}`; chunked text: a last `[error CODE: message]` line). A method a route does not take
is a 405 with `Allow` (see `components/responses/Error405`); a request line over 8190 bytes is gunicorn's
414 (HTML).

**Streams** (`text/event-stream; charset=utf-8`, `Cache-Control: no-cache`, `X-Accel-Buffering: no`,
`X-Stream-Id`) open with a comment, then `event: stream` (`{"stream_id"}`) carrying `retry:`; every event
has the id `<stream_id>-<seq>`, so `Last-Event-ID` resumes it. The `schema` of an event-stream media
type describes one event, not the stream.

**Limits**: every limit of this server's configuration is in this document, with its setting's name:
the request schemas' `maxLength`, `maxItems`, `maximum` and `enum` (MAX_MESSAGE_CHARS, MAX_MESSAGES,
MAX_TOKENS_CEILING, ALLOWED_MODELS, STREAM_MAX_TEXT), and the responses' descriptions (MAX_BODY_BYTES: 413,
BODY_TIMEOUT_S: 408, RATE_LIMIT and the stream caps: 429, the stream maxima: each stream's 200).
"""
