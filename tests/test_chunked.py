"""Chunked transfer decoding (``streamapp.providers._chunked``): pure tests on byte pieces.

The provider tests (``test_providers.py``, ``test_upstream_failures.py``) read real chunked
bodies from the fake upstream through it; here every split of the framing is fed by hand.
"""

from __future__ import annotations

import itertools

import pytest
from urllib3.exceptions import ProtocolError

from streamapp.providers._chunked import MAX_HEAD_BYTES, dechunk

BODY = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nw\xc3\xb6rld\r\n0\r\n\r\n"
DATA = b"hello w\xc3\xb6rld"


def reader(pieces: list[bytes]):
    """A ``read1`` that returns ``pieces`` one per call, then b"" (the connection's end)."""
    it = iter(pieces)
    calls = []

    def read1(n: int) -> bytes:
        piece = next(it, b"")
        calls.append(piece)
        return piece
    read1.calls = calls
    return read1


def test_every_split_in_two_or_three_gives_the_data() -> None:
    for i, j in itertools.combinations_with_replacement(range(1, len(BODY)), 2):
        pieces = [p for p in (BODY[:i], BODY[i:j], BODY[j:]) if p]
        assert b"".join(dechunk(reader(pieces), 65536)) == DATA, pieces


def test_one_read_of_many_chunks_is_one_block() -> None:
    assert list(dechunk(reader([BODY]), 65536)) == [DATA]


def test_a_chunk_is_handed_over_as_it_arrives_before_it_is_whole() -> None:
    read1 = reader([b"a\r\n01234", b"56789\r\n0\r\n\r\n"])
    blocks = dechunk(read1, 65536)
    assert next(blocks) == b"01234"
    assert len(read1.calls) == 1  # not waiting for the rest of the chunk
    assert list(blocks) == [b"56789"]


def test_trailers_are_read_to_their_blank_line() -> None:
    read1 = reader([b"2\r\nok\r\n0\r\nX-A: 1\r\n", b"X-B: 2\r\n\r", b"\n"])
    assert list(dechunk(read1, 65536)) == [b"ok"]
    assert len(read1.calls) == 3


def test_the_body_ends_at_its_last_chunk_without_reading_on() -> None:
    read1 = reader([b"2\r\nok\r\n0\r\n\r\n", b"never read"])
    assert list(dechunk(read1, 65536)) == [b"ok"]
    assert read1.calls == [b"2\r\nok\r\n0\r\n\r\n"]


@pytest.mark.parametrize("pieces", [
    [b"zz\r\nhi\r\n0\r\n\r\n"],  # not hex
    [b"-2\r\nhi\r\n0\r\n\r\n"],  # negative
    [b"2\r\nhiXX1\r\na\r\n0\r\n\r\n"],  # data not followed by CRLF
    [b"2\r\nhi\r\n\r\n"],  # an empty size line
    [b"5\r\nhel"],  # cut inside a chunk
    [b"5\r\nhello\r\n3"],  # cut inside a size line
    [b""],  # no body at all
    [b"1" * (MAX_HEAD_BYTES + 1)],  # a size line that never ends
    [b"1\r\na\r\n0\r\n" + b"X-A: 1\r\n" * (MAX_HEAD_BYTES // 8 + 1) + b"\r\n"],  # endless trailers
    [b"1\r\na\r\n0\r\nX-A:" + b"x" * MAX_HEAD_BYTES],
], ids=["not-hex", "negative", "no-crlf", "empty-size", "cut-data", "cut-size", "empty", "long-size",
        "long-trailers", "long-trailer-line"])
def test_a_malformed_or_cut_body_raises_protocol_error(pieces) -> None:
    with pytest.raises(ProtocolError):
        list(dechunk(reader(pieces), 65536))


def test_trailers_cut_by_the_connections_end_still_end_the_body() -> None:
    """As urllib3: some servers close without the final CRLF."""
    assert list(dechunk(reader([b"2\r\nok\r\n0\r\n"]), 65536)) == [b"ok"]
