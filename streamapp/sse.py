"""Server-sent events: one encoder and one decoder. No I/O, no Flask.

Both follow the WHATWG HTML "Server-sent events" section
(https://html.spec.whatwg.org/multipage/server-sent-events.html):
lines end in CRLF, LF or a lone CR; ``:`` starts a comment; one space after the
colon is dropped; multi-line data is several ``data:`` lines; ``retry`` must be
all ASCII digits; an id containing NUL is ignored; an event not followed by a
blank line is dropped at the end of the stream.

The decoders bound a line at ``MAX_LINE_BYTES`` (1 MiB): a longer one, finished or
not, raises ``LineTooLong`` (the providers make it an ``upstream_bad_response``), so
an upstream that sends one endless line holds at most that much of it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .pausing import PAUSE

# The longest line the decoders take from an upstream: past it, LineTooLong. An upstream's
# line is one event or NDJSON object; a line that never ends would otherwise grow forever.
MAX_LINE_BYTES = 1 << 20

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


@dataclass(slots=True)  # not frozen: a frozen one's __init__ goes through object.__setattr__ per field
class ServerSentEvent:
    """One decoded event."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class LineTooLong(ValueError):
    """A line passed the decoder's bound (``limit`` bytes) before it ended."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line is longer than {limit} bytes")
        self.limit = limit


class LineSplitter:
    """Turns byte chunks into complete lines, whatever the chunk boundaries.

    Splitting happens on bytes, so a multi-byte UTF-8 character cut in two by
    the network is decoded only once its line is whole. Each byte is searched for
    a line end once (``scanned`` counts them): the pieces of an unfinished line
    are kept as they came and joined once, when its end arrives. A line longer
    than ``max_line`` bytes (its line end not counted) raises :class:`LineTooLong`,
    at the latest when more than ``max_line`` bytes of it are held.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self.scanned = 0  # bytes searched for line ends so far
        self._parts: list[bytes] = []  # the unfinished line, as it came; no line end in it
        self._held = 0  # the bytes in _parts
        self._pending_cr = False  # the last chunk ended in CR: a LF first in the next is its CRLF

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the lines they completed (without terminators)."""
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk.startswith(b"\n"):
                chunk = chunk[1:]  # the LF of a CRLF split across two chunks
                if not chunk:
                    return []
        self.scanned += len(chunk)
        if b"\r" not in chunk:  # the usual LF-only stream: split in C
            lines = chunk.split(b"\n")
            rest = lines.pop()
        else:
            lines = chunk.splitlines()  # CRLF, LF and a lone CR (bytes split on nothing else)
            if chunk.endswith((b"\n", b"\r")):
                rest = b""
                self._pending_cr = chunk.endswith(b"\r")  # may be the first half of a CRLF
            else:
                rest = lines.pop()
        if self._parts and lines:  # the unfinished line ends in this chunk
            if self._held + len(lines[0]) > self.max_line:
                raise LineTooLong(self.max_line)
            self._parts.append(lines[0])
            lines[0] = b"".join(self._parts)
            self._parts, self._held = [], 0
        if rest:
            self._parts.append(rest)
            self._held += len(rest)
            if self._held > self.max_line:
                raise LineTooLong(self.max_line)
        if len(chunk) > self.max_line and any(len(line) > self.max_line for line in lines):
            raise LineTooLong(self.max_line)  # a whole line in one chunk past the bound
        return [line.decode("utf-8", "replace") for line in lines]

    @property
    def at_line_start(self) -> bool:
        """Whether no part of a line is pending (a chunk may be split on its own)."""
        return not (self._parts or self._pending_cr)

    def flush(self) -> list[str]:
        """Lines left when the stream ends (an unterminated last line)."""
        rest = b"".join(self._parts)
        self._parts, self._held = [], 0
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


def iter_lines(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[str]:
    """Lines of a byte stream, each handed over as soon as it is complete; a line
    longer than ``max_line`` bytes raises :class:`LineTooLong`. :data:`~streamapp.pausing.PAUSE`
    is handed on as it is."""
    splitter = LineSplitter(max_line)
    for chunk in chunks:
        if chunk is PAUSE:
            yield chunk  # type: ignore[misc]
            continue
        yield from splitter.feed(chunk)
    yield from splitter.flush()


def iter_events(chunks: Iterable[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[ServerSentEvent]:
    """Decode a byte stream into events (an unterminated last event is dropped); a line
    longer than ``max_line`` bytes raises :class:`LineTooLong`. :data:`~streamapp.pausing.PAUSE`
    is handed on as it is.

    The whole events of a chunk (LF endings, no longer than ``max_line``) are decoded a
    block at a time, each ``data: ...`` line a default event: an upstream's usual
    chunk, and the same events as line by line (``EventParser``), which decodes
    everything else: the end of an event begun in an earlier chunk, the start of one
    that a later chunk ends (a read of the socket ends anywhere), any other field.
    """
    splitter = LineSplitter(max_line)
    parser = EventParser()
    feed_line = parser.feed_line

    def by_line(data: bytes) -> Iterator[ServerSentEvent]:
        for line in splitter.feed(data):
            event = feed_line(line)
            if event is not None:
                yield event

    for chunk in chunks:
        if chunk is PAUSE:
            yield chunk  # type: ignore[misc]  # a pump stepped out: handed on as it is
            continue
        if b"\r" in chunk or len(chunk) > max_line:
            yield from by_line(chunk)
            continue
        start = 0
        if not (splitter.at_line_start and parser.between_events):
            start = chunk.find(b"\n\n") + 2  # the end of the event in progress
            if start == 1:
                yield from by_line(chunk)
                continue
            yield from by_line(chunk[:start])
            if not (splitter.at_line_start and parser.between_events):
                yield from by_line(chunk[start:])
                continue
        last = chunk.rfind(b"\n\n", start)  # whole events: chunk[start:last + 2]
        end = start
        if last >= 0:
            end = last + 2
            for block in chunk[start:last].split(b"\n\n"):
                if block.startswith(b"data: ") and b"\n" not in block:
                    yield ServerSentEvent(block[6:].decode("utf-8", "replace"), "message",
                                          parser.last_event_id)
                    continue
                for line in block.split(b"\n"):  # anything else: line by line
                    event = feed_line(line.decode("utf-8", "replace"))
                    if event is not None:
                        yield event
                event = feed_line("")
                if event is not None:
                    yield event
        if end < len(chunk):
            yield from by_line(chunk[end:])  # the start of an event a later chunk ends
