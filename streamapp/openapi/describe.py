"""How a view says what it takes and answers: ``@describe(...)`` on the view function.

The generator walks the app's ``url_map`` and reads each rule's view through
``app.view_functions``; a view without a description fails ``tests/test_openapi.py``
(and is logged at start-up). The only routes described here rather than on their view are
those whose view is not a function of ``routes/`` (``NOT_OURS``), and the only routes left out
of the document are in ``EXCLUDED``, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import BaseModel

from .parts import ANY_FILE, TEXT, errors, path_param, response

ATTRIBUTE = "openapi_doc"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Doc:
    """One view's description: what it takes (the models it validates with) and answers."""

    summary: str
    tag: str
    responses: dict[str, Any]
    description: str = ""
    query: tuple[type[BaseModel], ...] = ()
    body: type[BaseModel] | None = None
    headers: tuple[dict[str, Any], ...] = ()
    path_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    example: dict[str, Any] | None = None  # the body Swagger UI's "Try it out" starts from


def describe(summary: str, tag: str, responses: dict[str, Any], **options: Any) -> Callable[[F], F]:
    """Decorator: attach a :class:`Doc` to a view. It goes above ``@bp.get``/``@bp.post`` (they
    return the view they register) and below ``@sock.route`` (which returns None; its wrapper
    copies the attribute). ``body`` and ``query`` are the models the view validates with."""
    doc = Doc(summary, tag, responses, **options)

    def attach(view: F) -> F:
        setattr(view, ATTRIBUTE, doc)
        return view
    return attach


def doc_of(view: Callable[..., Any] | None) -> Doc | None:
    """The description attached to ``view`` or to a view it wraps (a rate limit's, say)."""
    while view is not None:
        doc = getattr(view, ATTRIBUTE, None)
        if doc is not None:
            return doc
        view = getattr(view, "__wrapped__", None)
    return None


# Views that are not functions of routes/, described by endpoint.
NOT_OURS: dict[str, Doc] = {
    "static": Doc("The demo page's assets", "pages",
                  {"200": response("The file.", ANY_FILE), **errors("404")},
                  path_params={"filename": path_param("a file under static/", "app.css")}),
    "metrics.metrics": Doc(
        "Prometheus metrics", "pages",
        {"200": response("Every worker's metrics (`streamapp_*`) in Prometheus' text format.", TEXT),
         **errors("403")},
        description="No API key needed; only the addresses of METRICS_ALLOW ({METRICS_ALLOW}) get an "
                    "answer, others a 403."),
}

# Endpoints deliberately left out of the document, with the reason. None today: every route is
# described.
EXCLUDED: dict[str, str] = {}
