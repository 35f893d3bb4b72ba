"""The embedded provider: deterministic answers at a set pace, and deterministic embeddings;
needs nothing.

Its embeddings (:func:`demo_vector`) are a hashed bag of words: each word (lower-cased; each
CJK character; each token id) adds ±1 at a place picked by its hash, and the vector is scaled
to length 1. Texts sharing words point the same way, so a retrieval demo ranks sensibly with
nothing configured; it knows no meaning (synonyms are strangers).
"""

from __future__ import annotations

import hashlib
import math
import re
from array import array
from collections.abc import Iterator
from typing import Any

from .. import pausing
from ..errors import ApiError
from ..events import Delta, Done, Event, Opened
from .base import ChatRequest, EmbedRequest, content_text
from .embedding import embedding_list

# A word with its leading space, or one CJK character, or one other symbol.
_WIDE = "\u3000-\u9fff\uac00-\ud7af\uff00-\uffef"
_TOKEN = re.compile(rf"\s*[{_WIDE}]|\s*[^\s{_WIDE}]+|\s+")


_FEATURE = re.compile(rf"[{_WIDE}]|[^\W{_WIDE}]+")  # a word, or one CJK character
DEMO_DIMENSIONS = 128  # the demo's vectors unless ``dimensions`` asks for others
MAX_DEMO_DIMENSIONS = 4096


def tokenize(text: str) -> list[str]:
    """Split text into tokens whose concatenation is the text."""
    return _TOKEN.findall(text)


def answer_for(messages: list[dict[str, Any]]) -> str:
    """The demo's deterministic reply to the last user message (its text parts)."""
    last = next((content_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    turns = sum(1 for m in messages if m.get("role") == "user")
    return (f"You said: \u201c{last.strip()}\u201d. This answer streams from the embedded "
            f"demo provider, one token at a time (turn {turns}). "
            "流式输出让回答逐字出现。Set OPENAI_API_KEY or OLLAMA_HOST for a real model.")


def demo_vector(item: str | list[int], dimensions: int = DEMO_DIMENSIONS) -> list[float]:
    """The demo's embedding of a text (or of token ids): unit length, float32 values."""
    features = _FEATURE.findall(item.lower()) if isinstance(item, str) else [f"#{t}" for t in item]
    vector = [0.0] * dimensions
    for feature in features or [item if isinstance(item, str) else ""]:
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        vector[int.from_bytes(digest[:4], "little") % dimensions] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return array("f", [v / norm for v in vector] if norm else vector).tolist()


class DemoProvider:
    """Streams ``options['text']`` (or a reply to the messages) token by token."""

    name = "demo"

    def __init__(self, delay_ms: int = 40) -> None:
        self.delay_ms = delay_ms

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield the tokens with ``delay_ms`` between them (a cooperative sleep); at most the
        request's ``max_completion_tokens`` (else ``max_tokens``) of them, then ``length``."""
        text = request.options.get("text") or answer_for(request.messages)
        delay = request.options.get("delay_ms", self.delay_ms) / 1000
        tokens = tokenize(text)
        limit = request.params.get("max_completion_tokens")
        if limit is None:
            limit = request.params.get("max_tokens")
        reason = "stop"
        if limit is not None and len(tokens) > limit:
            tokens, reason = tokens[:limit], "length"
        yield Opened()
        for index, token in enumerate(tokens):
            if delay and index:  # the pace is between tokens; the first comes at once
                yield from pausing.sleep(delay)  # a pause point (streamapp.pausing)
            yield Delta(token, index)
        prompt = sum(len(tokenize(content_text(m.get("content")))) for m in request.messages)
        yield Done(reason, {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                            "total_tokens": prompt + len(tokens)})

    def embed(self, request: EmbedRequest) -> dict[str, Any]:
        """Deterministic vectors (:func:`demo_vector`), ``dimensions`` long (default 128); usage
        counts the demo's tokens (a token id is one)."""
        dimensions = request.params.get("dimensions") or DEMO_DIMENSIONS
        if dimensions > MAX_DEMO_DIMENSIONS:
            raise ApiError(f"dimensions must be at most {MAX_DEMO_DIMENSIONS} for the demo",
                           field="dimensions", code="invalid_field")
        inputs = request.inputs
        vectors = [demo_vector(item, dimensions) for item in inputs]
        tokens = sum(len(tokenize(item)) if isinstance(item, str) else len(item) for item in inputs)
        return embedding_list(vectors, "demo", {"prompt_tokens": tokens, "total_tokens": tokens},
                              request.params.get("encoding_format"))
