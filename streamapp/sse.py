"""Server-sent events: one encoder and one decoder. No I/O, no Flask.

Both follow the WHATWG HTML "Server-sent events" section
(https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end in CRLF, LF or a lone CR; ``:`` starts a comment; one space after the
colon is dropped; multi-line data is several ``data:`` lines; ``retry`` must be
all ASCII digits; an id containing NUL is ignored; an event not followed by a
blank line is dropped at the end of the stream.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_NEWLINES = re.compile(r"\r\n|\r|\n")
_FIELD_JUNK = re.compile(r"[\r\n\0]")


def clean_field(value: str) -> str:
    """Strip the characters that would break framing in ``id``/``event``."""
    return _FIELD_JUNK.sub("", value)


def encode(
    data: str | None = None,
    *,
    event: str | None = None,
    id: str | None = None,  # noqa: A002 - the SSE field name
    retry: int | None = None,
) -> bytes:
    """Encode one SSE event (terminated by a blank line) as UTF-8 bytes."""
    if retry is None and event is None and data is not None and "\n" not in data \
            and "\r" not in data and (id is None or not _FIELD_JUNK.search(id)):
        # The common case (a token with an id), without the general path's work.
        head = "" if id is None else f"id: {id}\n"
        return f"{head}data: {data}\n\n".encode()
    parts: list[str] = []
    if retry is not None:
        parts.append(f"retry: {int(retry)}\n")
    if id is not None:
        parts.append(f"id: {clean_field(id)}\n")
    if event is not None:
        parts.append(f"event: {clean_field(event)}\n")
    if data is not None:
        parts.extend(f"data: {line}\n" for line in _NEWLINES.split(data))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def comment(text: str = "") -> bytes:
    """An SSE comment line; clients ignore it, proxies see traffic."""
    return f": {_NEWLINES.sub(' ', text)}\n\n".encode()


@dataclass(slots=True)  # not frozen: that makes __init__ ~4x dearer, once per upstream event
class ServerSentEvent:
    """One decoded event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class LineSplitter:
    """Turns byte chunks into complete lines, whatever the chunk boundaries.

    Splitting happens on bytes, so a multi-byte UTF-8 character cut in two by
    the network is decoded only once its line is whole.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the lines they completed (without terminators)."""
        if not chunk:
            return []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two chunks
        self._pending_cr = False
        data = self._buf + chunk if self._buf else chunk
        if b"\r" not in data:  # the usual LF-only stream: split in C
            *lines, self._buf = data.split(b"\n")
            return [line.decode("utf-8", "replace") for line in lines]
        lines = data.splitlines(keepends=True)
        self._buf = b""
        out: list[str] = []
        for raw in lines:
            if raw.endswith((b"\r\n", b"\n")):
                out.append(raw.rstrip(b"\r\n").decode("utf-8", "replace"))
            elif raw.endswith(b"\r"):
                out.append(raw[:-1].decode("utf-8", "replace"))
            else:
                self._buf = raw
        # A CR that ends the data may be the first half of a CRLF.
        self._pending_cr = not self._buf and data.endswith(b"\r")
        return out

    @property
    def at_line_start(self) -> bool:
        """Whether no part of a line is pending (a chunk may be split on its own)."""
        return not (self._buf or self._pending_cr)

    def flush(self) -> list[str]:
        """Lines left when the stream ends (an unterminated last line)."""
        rest, self._buf = self._buf, b""
        return [rest.decode("utf-8", "replace")] if rest else []


class EventParser:
    """The WHATWG line-to-event state machine."""

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self.last_event_id: str | None = None  # the spec's "last event ID buffer": it persists
        self._retry: int | None = None
        self._first = True
        self.retry: int | None = None  # the last valid reconnection time seen

    def feed_line(self, line: str) -> ServerSentEvent | None:
        """Consume one line; return an event when a blank line dispatches one."""
        if self._first:
            self._first = False
            line = line.removeprefix("\ufeff")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self._retry = self.retry = int(value)
        return None

    @property
    def between_events(self) -> bool:
        """Whether a ``data:`` line followed by a blank one is, on its own, a whole default
        event (past the first line, nothing of an event pending)."""
        return not (self._first or self._data or self._event or self._retry is not None)

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._data:  # a block with no data (only retry:, say) dispatches nothing
            event = ServerSentEvent(
                data="\n".join(self._data),
                event=self._event or "message",
                id=self.last_event_id,
                retry=self._retry,
            )
        self._data, self._event, self._retry = [], "", None
        return event


def iter_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines of a byte stream, each handed over as soon as it is complete."""
    splitter = LineSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.flush()


def iter_events(chunks: Iterable[bytes]) -> Iterator[ServerSentEvent]:
    """Decode a byte stream into events (an unterminated last event is dropped).

    A chunk of whole ``data: ...`` events (LF endings, each one line, nothing pending)
    is decoded a block at a time: an upstream's usual chunk, and the same events as
    line by line (``EventParser``), which decodes everything else.
    """
    splitter = LineSplitter()
    parser = EventParser()
    feed_line = parser.feed_line
    for chunk in chunks:
        if chunk.endswith(b"\n\n") and splitter.at_line_start and parser.between_events \
                and b"\r" not in chunk:
            for block in chunk[:-2].split(b"\n\n"):
                if block.startswith(b"data: ") and b"\n" not in block:
                    data = block[6:].decode("utf-8", "replace")
                    yield ServerSentEvent(data, "message", parser.last_event_id)
                    continue
                for line in block.split(b"\n"):  # anything else: line by line
                    event = feed_line(line.decode("utf-8", "replace"))
                    if event is not None:
                        yield event
                event = feed_line("")
                if event is not None:
                    yield event
            continue
        for line in splitter.feed(chunk):
            event = feed_line(line)
            if event is not None:
                yield event
