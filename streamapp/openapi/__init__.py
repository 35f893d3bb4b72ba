"""The OpenAPI 3.1 document of the running app, generated from its routes, models and config.

- **Routes**: the app's own ``url_map`` is the one list. Each view carries its description,
  ``@describe(...)`` (:mod:`.describe`) just above its ``@bp.get``/``@bp.post`` line, naming the
  models it validates with (``schemas.py``) and its responses built from :mod:`.parts`. A route
  without a description is logged at start-up and fails ``tests/test_openapi.py``; routes left
  out on purpose are listed, with the reason, in ``describe.EXCLUDED``.
- **Schemas**: pydantic's own JSON Schema of those request models and of the response models
  (:mod:`.models`: what ``errors.py``, the views and ``wire.py``'s encoders write), moved to
  ``components/schemas`` (``models_json_schema``). No library was needed for more: the ones
  that generate from pydantic (flask-openapi3, spectree) validate requests themselves and
  describe no event stream, and apispec would only add a registry around the same schemas.
- **Streams**: a ``text/event-stream`` media type's ``schema`` describes **one event** of the
  encoder's wire format (``parts.event_schemas``): its ``event`` name, ``id``, ``retry`` and
  ``data``, JSON data with ``contentMediaType: application/json`` and its schema in
  ``contentSchema`` (3.2's ``itemSchema`` reading, which schemathesis checks each event against).
- **Limits**: the running app's config fills every ``{SETTING}`` of the descriptions and
  tightens the request schemas (:mod:`.bounds`), so the document states this server's limits.

``GET /api.json`` serves :func:`document`; ``GET /swagger/`` shows it.
"""

from .describe import EXCLUDED, Doc, describe
from .generator import build, document, openapi_path, routes, undocumented

__all__ = ["EXCLUDED", "Doc", "build", "describe", "document", "openapi_path", "routes", "undocumented"]
