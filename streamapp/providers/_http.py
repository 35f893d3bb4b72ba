"""HTTP plumbing shared by the upstream providers (``requests`` streaming).

One choke point, :func:`translate_errors`, maps every ``requests``/``urllib3``
failure to ``UpstreamError``, around both the request and the body iteration,
so a failure mid-stream is mapped the same way as one before it. The messages
name the upstream by its role; hosts, ports and exception reprs go only to
``UpstreamError.detail``. Redirects are not followed: a 3xx is an error.

Upstream JSON is checked where it is used: :func:`parse_object` (an object,
text repaired to valid Unicode) and :func:`bad_shape`/:func:`token_count` for
members of the wrong type, all ``upstream_bad_response``; so is a line longer
than ``streamapp.sse.MAX_LINE_BYTES`` (1 MiB), and the upstream connection is
closed at once.

Of an upstream's error, clients see only its own message, read from its JSON
error (OpenAI's ``{"error": {"message"}}``, Ollama's ``{"error": "..."}``), at most
``MESSAGE_CHARS`` characters; any other body (a proxy's HTML page, say) only as
its status. The raw body's start goes to ``UpstreamError.detail``, for the log.

A whole JSON answer (embeddings: not streamed) is read by :func:`post_json`, through the
same choke point, at most ``MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import requests
import urllib3

from ..errors import UpstreamError
from ..events import Done, Event, Opened
from ..sse import LineTooLong
from ._chunked import dechunk
from .base import has_surrogate_escape, well_formed

# The most one read of an upstream body takes. A stream waiting on a silent upstream holds a
# buffer of this size for as long as it waits (read1 allocates it before the socket read), so
# it is the socket reader's own buffer size rather than more: a burst costs a few more reads.
READ_SIZE = 8192
MESSAGE_CHARS = 500  # the longest upstream error message relayed to clients
MAX_ANSWER_BYTES = 256 << 20  # a whole JSON answer larger than this is refused


def new_session(base_url: str, pool_size: int = 10000) -> requests.Session:
    """A session for one upstream, with a pool as large as the streams a worker holds.

    The environment (proxies, CA bundle) is read once here rather than on every
    request, which ``trust_env`` would do (a stat of ``~/.netrc`` included).
    """
    session = requests.Session()
    session.trust_env = False
    session.proxies = requests.utils.get_environ_proxies(base_url)
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _mapped(what: str, problem: str, code: str, exc: BaseException) -> UpstreamError:
    message = f"{what} {problem}"
    return UpstreamError(message, code=code, detail=f"{message}: {exc!r}")


@contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Raise ``UpstreamError`` for any transport failure inside the block."""
    try:
        yield
    except UpstreamError:
        raise
    except (requests.ConnectTimeout, requests.ReadTimeout,
            urllib3.exceptions.ReadTimeoutError, TimeoutError) as exc:
        raise _mapped(what, "timed out", "upstream_timeout", exc) from exc
    except (urllib3.exceptions.DecodeError, requests.exceptions.ContentDecodingError) as exc:
        raise _mapped(what, "sent a body that could not be decoded", "upstream_bad_response",
                      exc) from exc
    except (requests.exceptions.ChunkedEncodingError, urllib3.exceptions.ProtocolError,
            ConnectionResetError) as exc:
        raise _mapped(what, "closed the connection mid-stream", "upstream_cut", exc) from exc
    except requests.ConnectionError as exc:
        raise _mapped(what, "is unreachable", "upstream_unreachable", exc) from exc
    except requests.RequestException as exc:
        raise _mapped(what, "request failed", "upstream_bad_response", exc) from exc


def post_stream(session: requests.Session, what: str, url: str, payload: dict[str, Any],
                headers: dict[str, str], timeouts: tuple[float, float]) -> requests.Response:
    """POST and return the open streaming response, or raise ``UpstreamError``.

    A non-2xx status raises with the upstream's own message read from its body;
    a redirect is not followed (it could lead anywhere, our key in hand).
    """
    with translate_errors(what):
        resp = session.post(url, json=payload, headers=headers, stream=True, timeout=timeouts,
                            allow_redirects=False)
        if 200 <= resp.status_code < 300:
            return _streaming(resp)
        try:
            body = resp.raw.read(65536, decode_content=True) or b""
        finally:
            resp.close()
    status = resp.status_code
    if 300 <= status < 400:
        message = f"{what} answered {status}, a redirect, which is not followed"
        raise UpstreamError(message, code="upstream_http_error", upstream_status=status,
                            detail=f"{message}: POST {url} -> {resp.headers.get('Location')!r}")
    message = status_message(what, status, body)
    code = "upstream_auth" if status in (401, 403) else "upstream_http_error"
    raise UpstreamError(message, code=code, upstream_status=status,
                        detail=f"{message} (POST {url}: {body[:500]!r})",
                        retry_after=retry_after(resp.headers.get("Retry-After")))


def _streaming(resp: requests.Response) -> requests.Response:
    """``resp`` without what only its start needed, as an answer may stream for minutes: the
    request that was sent (its headers, JSON body and cookie jar) and the answer's cookie jar.
    Nothing reads them afterwards."""
    resp.request = None  # type: ignore[assignment]
    resp.cookies = None  # type: ignore[assignment]
    return resp


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (RFC 9110 10.2.3: delay-seconds or an HTTP-date);
    ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def post_json(session: requests.Session, what: str, url: str, payload: dict[str, Any],
              headers: dict[str, str], timeouts: tuple[float, float],
              limit: int = MAX_ANSWER_BYTES) -> tuple[dict[str, Any], str]:
    """POST and return the upstream's whole JSON object and its text, or raise ``UpstreamError``
    (as :func:`post_stream` for a failed request; as :func:`parse_object` for an answer that is
    not a JSON object or holds an ``error``; ``upstream_bad_response`` over ``limit`` bytes).

    Read to its end, the response's connection goes back to the pool.
    """
    resp = post_stream(session, what, url, payload, {"Accept": "application/json", **headers}, timeouts)
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in iter_chunks(resp, what):
            size += len(chunk)
            if size > limit:
                message = f"{what} sent an answer larger than {limit} bytes"
                raise UpstreamError(message, code="upstream_bad_response", detail=f"{message} (POST {url})")
            parts.append(chunk)
    finally:
        resp.close()
    text = b"".join(parts).decode("utf-8", "replace")
    return parse_object(text, what), text


def status_message(what: str, status: int, body: bytes) -> str:
    """What clients are told of an upstream's error answer: its status, and the upstream's
    own message when the body is its JSON error (valid Unicode, bounded), never the body."""
    try:
        data = _loads(body.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return f"{what} answered {status} with a non-JSON body"
    message = error_text(data["error"]) if isinstance(data, dict) and "error" in data else None
    if not message:
        return f"{what} answered {status} without an error message"
    return f"{what} answered {status}: {message}"


def error_text(err: Any) -> str | None:
    """The message of an ``error`` member: OpenAI's ``{"message"}`` (else its ``type``),
    Ollama's string; at most ``MESSAGE_CHARS`` characters; ``None`` if it has no text."""
    if isinstance(err, dict):
        err = err.get("message") or err.get("type")
    return err[:MESSAGE_CHARS] if isinstance(err, str) else None


def _loads(text: str) -> Any:
    """orjson for the hot path; what orjson refuses (a lone surrogate escape, NaN...)
    json's rules decide, its strings then made valid Unicode."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    obj = json.loads(text)
    return well_formed(obj) if has_surrogate_escape(text) else obj  # rare: only then walk it


def parse_object(text: str, what: str) -> dict[str, Any]:
    """One JSON object of a stream (an SSE ``data:`` or an NDJSON line), its
    strings valid Unicode.

    Raises ``UpstreamError`` for text that is not a JSON object and for an
    in-band ``{"error": ...}``.
    """
    try:
        obj = _loads(text)
    except (ValueError, RecursionError):  # RecursionError: nested past the parser's depth
        message = f"{what} sent a line that is not JSON"
        raise UpstreamError(message, code="upstream_bad_response",
                            detail=f"{message}: {text[:200]!r}") from None
    if not isinstance(obj, dict):
        raise bad_shape(what, "not an object", text)
    if "error" in obj:
        message = error_text(obj["error"])
        message = f"{what} reported an error: {message}" if message else f"{what} reported an error"
        raise UpstreamError(message, code="upstream_error", detail=f"{message} ({text[:500]!r})")
    return obj


def bad_shape(what: str, problem: str, text: str) -> UpstreamError:
    """The error for upstream JSON whose ``problem`` is a member of the wrong type."""
    message = f"{what} sent JSON of the wrong shape ({problem})"
    return UpstreamError(message, code="upstream_bad_response", detail=f"{message}: {text[:300]!r}")


def token_count(obj: dict[str, Any], key: str, what: str, text: str) -> int | None:
    """Member ``key``, a token count: ``None`` when absent, else a non-negative int."""
    if key not in obj:
        return None
    value = obj[key]
    if type(value) is not int or value < 0:  # not isinstance: a bool is an int too
        raise bad_shape(what, f"{key} is not a token count", text)
    return value


def release(resp: requests.Response, reuse: bool, rest: Iterator[bytes] | None = None) -> None:
    """Close ``resp``; with ``reuse``, first read the end of the body (``rest``: the
    :func:`iter_chunks` it was read with) so that its connection returns to the pool
    (urllib3 releases it at the end of the body)."""
    if reuse and rest is not None:
        try:
            for _ in range(8):  # the terminating chunk follows [DONE] / done: true
                if next(rest, None) is None:
                    break
        except (UpstreamError, requests.RequestException, urllib3.exceptions.HTTPError, OSError):
            pass  # then the connection is simply closed below
    resp.close()


def iter_chunks(resp: requests.Response, what: str) -> Iterator[bytes]:
    """The body's bytes as they arrive, no line waiting for a buffer to fill (requests
    #3577, #5536).

    A chunked body without a content coding (what streaming upstreams send) is read
    off the connection's buffered socket reader by :func:`._chunked.dechunk`: one
    block per read of the socket, however many HTTP chunks it held; at its end the
    connection goes back to the pool as urllib3 would put it. A compressed chunked
    body goes through urllib3's ``read_chunked``, which decodes it; any other body
    through ``read1``, what one read gave.
    """
    raw = resp.raw
    decode = bool(resp.headers.get("Content-Encoding"))  # skip the decoder when there is none
    reader = None if decode or not raw.chunked else _socket_reader(raw)
    with translate_errors(what):
        if reader is not None:
            yield from dechunk(reader.read1, READ_SIZE, _read_timeout(reader))
            raw._original_response.close()  # http.client's end of body: the socket stays open
            raw.release_conn()
            return
        if raw.chunked and raw.supports_chunked_reads():
            yield from raw.read_chunked(READ_SIZE, decode_content=decode)  # a huge chunk in pieces
            return
        while True:
            chunk = raw.read1(READ_SIZE, decode_content=decode)
            if not chunk:
                return
            yield chunk


def _read_timeout(reader: Any) -> float | None:
    """The read timeout of the socket under http.client's buffered reader (``None``: none known)."""
    sock = getattr(getattr(reader, "raw", None), "_sock", None)
    try:
        return sock.gettimeout() if sock is not None else None
    except OSError:
        return None


def _socket_reader(raw: urllib3.HTTPResponse) -> Any:
    """The buffered socket reader under urllib3's response (http.client's ``fp``), if it
    has not been read from yet and offers ``read1``; else ``None``."""
    original = getattr(raw, "_original_response", None)
    fp = getattr(original, "fp", None)
    if fp is None or not hasattr(fp, "read1") or getattr(raw, "chunk_left", None) is not None:
        return None
    return fp


def stream_response(resp: requests.Response, what: str,
                    parse: Callable[[Iterator[bytes]], Iterator[Event]]) -> Iterator[Event]:
    """``Opened``, then the events ``parse`` makes of the body's bytes.

    However the stream ends (done, error, the reader left) the response is
    closed; after a complete answer its connection goes back to the pool.
    """
    complete = False
    chunks = iter_chunks(resp, what)
    try:
        yield Opened()
        for event in parse(chunks):
            complete = isinstance(event, Done)
            yield event
    except LineTooLong as exc:
        message = f"{what} sent a line longer than {exc.limit} bytes"
        raise UpstreamError(message, code="upstream_bad_response", detail=message) from None
    finally:
        release(resp, reuse=complete, rest=chunks)


def probe(session: requests.Session, url: str, headers: dict[str, str] | None = None,
          timeout: float = 2.0) -> str | None:
    """``None`` if a ``GET url`` answers 2xx within ``timeout``, else what went wrong, in words
    that name no host (``/readyz`` is public)."""
    try:
        resp = session.get(url, headers=headers, timeout=(timeout, timeout), allow_redirects=False)
        resp.close()
    except requests.Timeout:
        return "no answer in time"
    except requests.RequestException:
        return "unreachable"
    if resp.status_code in (401, 403):
        return f"refused our credentials (HTTP {resp.status_code})"
    return None if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"
