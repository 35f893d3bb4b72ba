"""The provider interface: a chat request in, an iterator of events out; an embedding
request in, OpenAI's embedding list out (:class:`EmbedRequest`, not streamed).

Every provider yields ``Opened`` once the upstream accepted the request, then
``Delta``, ``Reasoning`` and ``ToolCall`` events as the upstream sends them, then
exactly one ``Done``; any upstream failure raises ``UpstreamError``. Providers
know nothing of Flask or of stream lifecycles; closing the returned iterator
closes the upstream connection.

Every text a provider yields is valid Unicode, so any store and encoder can
write it as UTF-8: bytes that are not UTF-8 are decoded with U+FFFD in their
place, and lone surrogates (which JSON lets an upstream, or a client, write as
``"\ud83d"``) are replaced by :func:`well_formed`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import Event


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What a provider needs: messages, a model (or ``None``), options, upstream params.

    ``messages`` are OpenAI chat messages: ``role`` and ``content`` (a string, a
    list of content parts such as ``{"type": "text", "text": ...}``, or ``None``),
    and where they apply ``name``, ``tool_calls`` (assistant) and ``tool_call_id``
    (role ``tool``). ``params`` are the OpenAI request fields the client sent,
    under OpenAI's names (``temperature``, ``max_tokens``, ``tools``,
    ``response_format``, ``reasoning_effort`` ...): each provider passes or
    translates them. ``options`` are streamapp's own (the demo's ``text``, say).
    """

    messages: list[dict[str, Any]]
    model: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    """What a provider needs to embed: the input, a model, OpenAI's other request fields.

    ``input`` is OpenAI's, as the client sent it: a string, a list of strings, a list of
    token ids or a list of token-id lists (``inputs`` has it as a list, one entry per vector).
    ``params`` are the OpenAI request fields the client sent (``encoding_format``,
    ``dimensions``, ``user``), each provider passing or translating them.
    """

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def inputs(self) -> list[str] | list[list[int]]:
        """One entry per vector asked for: a string, or one token-id list."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and isinstance(self.input[0], int):
            return [self.input]  # type: ignore[list-item]  # one text as token ids
        return self.input  # type: ignore[return-value]


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string as is, the ``text`` parts of
    a list of content parts joined by newlines, ``""`` for ``None`` or anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part["text"] for part in content
                         if isinstance(part, dict) and part.get("type") == "text"
                         and isinstance(part.get("text"), str))
    return ""


def has_surrogate_escape(text: str) -> bool:
    """Whether JSON ``text`` may decode to a lone surrogate (a cheap test for the hot path)."""
    return "\\ud" in text or "\\uD" in text


def well_formed(value: Any) -> Any:
    """``value`` (decoded JSON) with each lone surrogate in its strings replaced by U+FFFD.

    A round trip through UTF-16 joins what pairs up and replaces the rest.
    """
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, list):
        return [well_formed(item) for item in value]
    if isinstance(value, dict):
        return {well_formed(key): well_formed(item) for key, item in value.items()}
    return value


class Provider(Protocol):
    """Anything with ``stream``, ``embed`` and ``check`` methods of these shapes."""

    name: str

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield ``Opened``, the answer's events and a final ``Done``; raise ``UpstreamError``."""
        ...

    def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """OpenAI's embedding list (``object``, ``data``, ``model``, ``usage`` when known) for
        ``request``; raise ``UpstreamError``, or ``ApiError`` for input it cannot take."""
        ...

    def check(self) -> str | None:
        """``None`` when the provider can serve (its upstream answers), else why not."""
        ...
