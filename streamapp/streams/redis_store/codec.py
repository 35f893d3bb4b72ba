"""Key names, and events and metadata as Redis holds them."""

from __future__ import annotations

import json
from typing import Any

import orjson

from ...events import Event, from_dict, to_dict


class Keys:
    """Key names under one prefix: ``keys("log", sid)`` is ``<prefix>:log:<sid>``."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __call__(self, kind: str, sid: str) -> str:
        """The key of ``kind`` (log, meta, readers, cancel, owner, bell, ctl) for ``sid``."""
        return f"{self.prefix}:{kind}:{sid}"


def encode(event: Event) -> bytes:
    """An event's JSON, UTF-8 (orjson); what orjson refuses (a lone surrogate, a provider's
    bad text; an integer past 64 bits) json writes, escaped."""
    obj = to_dict(event)
    try:
        return orjson.dumps(obj)
    except TypeError:
        return json.dumps(obj).encode()


def decode(raw: bytes) -> Event:
    """Inverse of :func:`encode`."""
    try:
        return from_dict(orjson.loads(raw))
    except orjson.JSONDecodeError:  # an escaped lone surrogate
        return from_dict(json.loads(raw))


def meta_fields(meta: dict[str, Any], owner: str | None = None) -> list[str]:
    """A stream's metadata (with its ``owner``, when given) as the flat field, JSON value
    list of its meta hash."""
    fields = [x for k, v in meta.items() for x in (k, json.dumps(v))]
    if owner is not None:
        fields += ("owner", json.dumps(owner))
    return fields


def decode_meta(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """A meta hash read back; a value that is not JSON is kept as text."""
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k.decode()] = json.loads(v)
        except ValueError:
            out[k.decode()] = v.decode(errors="replace")
    return out
