"""The embedded provider: deterministic answers at a set pace, needs nothing."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

from ..events import Delta, Done, Event, Opened
from .base import ChatRequest, content_text

# A word with its leading space, or one CJK character, or one other symbol.
_WIDE = "\u3000-\u9fff\uac00-\ud7af\uff00-\uffef"
_TOKEN = re.compile(rf"\s*[{_WIDE}]|\s*[^\s{_WIDE}]+|\s+")


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


class DemoProvider:
    """Streams ``options['text']`` (or a reply to the messages) token by token."""

    name = "demo"

    def __init__(self, delay_ms: int = 40) -> None:
        self.delay_ms = delay_ms

    def stream(self, request: ChatRequest) -> Iterator[Event]:
        """Yield the tokens with ``delay_ms`` between them (a cooperative sleep)."""
        text = request.options.get("text") or answer_for(request.messages)
        delay = request.options.get("delay_ms", self.delay_ms) / 1000
        tokens = tokenize(text)
        yield Opened()
        for index, token in enumerate(tokens):
            if delay and index:  # the pace is between tokens; the first comes at once
                time.sleep(delay)  # gevent-patched in the server: yields to the hub
            yield Delta(token, index)
        prompt = sum(len(tokenize(content_text(m.get("content")))) for m in request.messages)
        yield Done("stop", {"prompt_tokens": prompt, "completion_tokens": len(tokens),
                            "total_tokens": prompt + len(tokens)})
