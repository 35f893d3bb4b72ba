"""The configured input limits, written into the request schemas of the running app.

The request models (``schemas.py``) carry the fixed bounds pydantic checks; the views then
apply the configured ones (``limits.check_chat_input``, ``GET /stream``'s text length). Here
each configured limit tightens the JSON Schema of the field it applies to (``maxLength``,
``maxItems``, ``maximum``, ``enum``), never loosening what the model already says, and names
its setting in the field's description. A limit switched off (0 or "") leaves the model's bound.
Limits no JSON Schema keyword can state (body size, rates, stream caps) are in the responses'
descriptions (``parts.ERRORS``, ``parts.EVENT_DESCRIPTION``), filled from the same config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from ..config import PROVIDERS
from ..limits import parse_allowed_models
from ..messages.schemas import MessagesRequest
from ..schemas import ChatBody, Message, StreamQuery, V1ChatRequest, V1Message

_TYPE_OF = {"maxLength": "string", "maxItems": "array", "maximum": "integer"}

# (model, field, keyword, setting, offset): the field's ``keyword`` is at most the setting's
# value plus ``offset``. What ``check_chat_input`` and the views enforce, field by field.
FIELD_LIMITS: tuple[tuple[type[BaseModel], str, str, str, int], ...] = (
    (ChatBody, "message", "maxLength", "MAX_MESSAGE_CHARS", 0),
    (Message, "content", "maxLength", "MAX_MESSAGE_CHARS", 0),
    (ChatBody, "history", "maxItems", "MAX_MESSAGES", -1),  # the new message is one of them
    (V1Message, "content", "maxLength", "MAX_MESSAGE_CHARS", 0),
    (V1ChatRequest, "messages", "maxItems", "MAX_MESSAGES", 0),
    (V1ChatRequest, "max_tokens", "maximum", "MAX_TOKENS_CEILING", 0),
    (V1ChatRequest, "max_completion_tokens", "maximum", "MAX_TOKENS_CEILING", 0),
    (MessagesRequest, "max_tokens", "maximum", "MAX_TOKENS_CEILING", 0),
    (StreamQuery, "text", "maxLength", "STREAM_MAX_TEXT", 0),
)
# Settings that are a limit even at 0 (the others switch off at 0).
_ZERO_IS_A_LIMIT = frozenset({"STREAM_MAX_TEXT"})


def _note(prop: dict[str, Any], text: str) -> None:
    before = prop.get("description", "").rstrip()
    prop["description"] = f"{before}{' ' if before.endswith('.') else '; '}{text}" if before else text


def _cap(prop: dict[str, Any], keyword: str, value: int) -> bool:
    """Lower ``keyword`` to ``value`` in ``prop`` or in its branch of the right type."""
    kind = _TYPE_OF[keyword]
    branches = prop.get("anyOf", [prop])
    done = False
    for branch in branches:
        if branch.get("type") == kind or (kind == "integer" and branch.get("type") == "number"):
            branch[keyword] = min(branch.get(keyword, value), value)
            done = True
    return done


def apply(defs: dict[str, Any], config: Mapping[str, Any]) -> None:
    """Tighten the component schemas ``defs`` (by model name) with ``config``'s limits."""
    for model, field, keyword, setting, offset in FIELD_LIMITS:
        schema = defs.get(model.__name__)
        value = config[setting]
        if schema is None or (not value and setting not in _ZERO_IS_A_LIMIT):
            continue
        prop = schema["properties"][field]
        if not _cap(prop, keyword, max(0, value + offset)):
            raise ValueError(f"{model.__name__}.{field} has no {_TYPE_OF[keyword]} to bound with {setting}")
        _note(prop, f"{setting}: {value}{' (with the new message)' if offset else ''}.")
    for name in ("ChatBody", "V1ChatRequest"):
        if name in defs and config["MAX_INPUT_CHARS"]:
            _note(defs[name], f"All the messages' text together: at most {config['MAX_INPUT_CHARS']} "
                              f"characters (MAX_INPUT_CHARS).")
    if "StreamQuery" in defs:
        delay = defs["StreamQuery"]["properties"]["delay_ms"]
        delay["default"] = config["STREAM_DEFAULT_DELAY_MS"]
        cap = config["STREAM_MAX_DELAY_MS"]
        _note(delay, f"values above {cap} are taken as {cap} (STREAM_MAX_DELAY_MS); unset: "
                     f"STREAM_DEFAULT_DELAY_MS.")
    allowed = parse_allowed_models(config["ALLOWED_MODELS"])
    if allowed:
        if "ChatBody" in defs:
            _chat_models(defs["ChatBody"], allowed, config)
        if "V1ChatRequest" in defs:
            _v1_models(defs["V1ChatRequest"]["properties"]["model"], allowed, config)


Allowed = dict[str, frozenset[str]]


def _chat_models(schema: dict[str, Any], allowed: Allowed, config: Mapping[str, Any]) -> None:
    """``POST /api/chat``: ``model`` (or, absent, the provider's default) is one the provider allows."""
    rules = []
    for provider, names in sorted(allowed.items()):
        if provider not in PROVIDERS or provider == "demo":
            continue  # the demo spends nothing: never checked
        if provider == config["DEFAULT_PROVIDER"]:
            when: dict[str, Any] = {"properties": {"provider": {"enum": [provider, None]}}}
        else:
            when = {"required": ["provider"], "properties": {"provider": {"const": provider}}}
        choices: list[Any] = sorted(names)
        then: dict[str, Any] = {"properties": {"model": {"enum": choices}}}
        if config.get(f"{provider.upper()}_MODEL") in names:
            choices.append(None)  # absent or null: the provider's default, which is allowed
        else:
            then["required"] = ["model"]
        rules.append({"if": when, "then": then})
    if rules:
        schema["allOf"] = rules
        _note(schema, "ALLOWED_MODELS: " + "; ".join(f"{p}: {', '.join(sorted(n))}"
                                                      for p, n in sorted(allowed.items())) + ".")


def _v1_models(prop: dict[str, Any], allowed: Allowed, config: Mapping[str, Any]) -> None:
    """``/v1``: ``<provider>/<model>`` and bare names (the default provider's) as ALLOWED_MODELS says."""
    prefixed = tuple(p for p in PROVIDERS if p != "demo")
    rules = [{"if": {"pattern": f"^{p}/"}, "then": {"enum": sorted(f"{p}/{m}" for m in allowed[p])}}
             for p in prefixed if p in allowed]
    default = config["DEFAULT_PROVIDER"]
    if default != "demo" and default in allowed:
        bare = "^(demo$|demo/|" + "|".join(f"{p}/" for p in prefixed) + ")"
        rules.append({"if": {"not": {"pattern": bare}}, "then": {"enum": sorted(allowed[default])}})
    if rules:
        prop["allOf"] = rules
        _note(prop, "Narrowed by ALLOWED_MODELS.")
