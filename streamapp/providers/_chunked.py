"""HTTP/1.1 chunked transfer decoding, a read of the socket at a time (RFC 9112 §7.1).

urllib3's ``read_chunked`` costs a ``readline``, two reads and a decode call per HTTP
chunk, and streaming upstreams send one chunk per event. :func:`dechunk` reads the
connection's buffered socket reader with ``read1`` (what one ``recv`` gave, or what
was buffered) and hands over the data of every chunk that read brought, joined: one
block per read, however many chunks it held, and a chunk's data as soon as it
arrives, whole or not. A malformed or cut body raises urllib3's ``ProtocolError``,
which ``_http.translate_errors`` maps like urllib3's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from urllib3.exceptions import ProtocolError

from .. import pausing
from ..pausing import PAUSE

MAX_HEAD_BYTES = 65536  # the longest chunk-size line (with extensions) or trailer section taken


def _size(line: bytes) -> int:
    """The chunk size of a size line (its extensions ignored)."""
    try:
        size = int(line.split(b";", 1)[0], 16)
    except ValueError:
        raise ProtocolError(f"invalid chunk size line {line[:40]!r}") from None
    if size < 0:
        raise ProtocolError(f"invalid chunk size line {line[:40]!r}")
    return size


def dechunk(read1: Callable[[int], bytes], read_size: int, timeout: float | None = None) -> Iterator[bytes]:
    """The data of a chunked body read by ``read1``, one block per read; returns after the
    last chunk and its trailer section, which is left read to its end. Each read of a body
    chunk is a pause point (:mod:`streamapp.pausing`): :data:`PAUSE` where a pump steps out;
    ``timeout`` is the socket's read timeout (kept across pauses)."""
    read = pausing.read
    left = 0  # data bytes of the current chunk still to come
    head = b""  # the start of a size line (or of the CRLF before it) not yet whole
    first = True  # no CRLF precedes the first size line
    while True:
        data = read(read1, read_size, timeout)
        if data is None:
            yield PAUSE  # type: ignore[misc]  # handed up as it is; read again when pulled
            continue
        if not data:
            raise ProtocolError("Response ended prematurely")
        if head:
            data, head = head + data, b""
        n = len(data)
        if left >= n:  # all of it data of the current chunk: the common case of a long chunk
            left -= n
            yield data
            continue
        out = []
        pos = left
        if left:
            out.append(data[:left])
            left = 0
        while pos < n:
            start = pos if first else pos + 2
            nl = data.find(b"\r\n", start)
            if nl < 0:
                if n - pos > MAX_HEAD_BYTES:
                    raise ProtocolError("chunk size line too long")
                head = data[pos:]
                break
            if not first and data[pos:start] != b"\r\n":
                raise ProtocolError("chunk data not followed by CRLF")
            try:  # a bare hex size: the usual line, without a call
                size = int(data[start:nl], 16)
            except ValueError:
                size = _size(data[start:nl])  # extensions, or no size at all
            if size < 0:
                raise ProtocolError(f"invalid chunk size line {data[start:nl][:40]!r}")
            first = False
            pos = nl + 2
            if size == 0:
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
                _trailers(read1, data[pos:])
                return
            end = pos + size
            out.append(data[pos:end])
            if end > n:
                left = end - n
            pos = end
        if out:
            yield out[0] if len(out) == 1 else b"".join(out)


def _trailers(read1: Callable[[int], bytes], rest: bytes) -> None:
    """Read the trailer section after the last chunk, to its blank line (or the
    connection's end, which urllib3 tolerates too)."""
    pos = 0
    while True:
        if rest.startswith(b"\r\n", pos):
            return
        nl = rest.find(b"\r\n", pos)
        if nl >= 0:
            pos = nl + 2
        elif len(rest) > MAX_HEAD_BYTES:
            raise ProtocolError("chunked trailer section too long")
        else:
            more = read1(MAX_HEAD_BYTES)
            if not more:
                return
            rest += more
        if pos > MAX_HEAD_BYTES:
            raise ProtocolError("chunked trailer section too long")
