"""Pure tests of the SSE encoder and decoder (WHATWG rules)."""

from __future__ import annotations

import pytest

from streamapp import sse
from streamapp.wire import parse_event_id


def decode(chunks: list[bytes]) -> list[sse.ServerSentEvent]:
    return list(sse.iter_events(chunks))


def every_split(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:]] for i in range(1, len(data))]


def test_encode_fields_and_multiline_data() -> None:
    assert sse.encode("a\nb\r\nc\rd", id="s-1", event="x", retry=1500) == (
        b"retry: 1500\nid: s-1\nevent: x\ndata: a\ndata: b\ndata: c\ndata: d\n\n")


def test_encode_strips_framing_characters_from_id_and_event() -> None:
    assert sse.encode("x", id="a\r\nb\0c", event="e\nf") == b"id: abc\nevent: ef\ndata: x\n\n"


def test_comment_is_one_line() -> None:
    assert sse.comment("a\nb") == b": a b\n\n"


@pytest.mark.parametrize("text", ["", " lead", "trail ", "\n", "你好，世界", "a\n\nb", "data: x"])
def test_round_trip_at_every_split_point(text: str) -> None:
    data = sse.encode(text, id="s-7", event="m")
    for chunks in every_split(data):
        assert decode(chunks) == [sse.ServerSentEvent(text, "m", "s-7")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_decoder_accepts_every_line_ending(newline: bytes) -> None:
    data = newline.join([b"data: one", b"data: two", b"", b"event: e", b"data: 3", b"", b""])
    for chunks in every_split(data) + [[data]]:
        assert [(e.data, e.event) for e in decode(chunks)] == [("one\ntwo", "message"), ("3", "e")]


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    assert decode([b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n"]) == [
        sse.ServerSentEvent("a"), sse.ServerSentEvent("b")]


def test_comments_bom_and_space_rules() -> None:
    data = "\ufeff: comment\ndata:no space\n\ndata:  two spaces\n\n".encode()
    assert [e.data for e in decode([data])] == ["no space", " two spaces"]


def test_id_persists_and_nul_id_is_ignored() -> None:
    events = decode([b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n"])
    assert [e.id for e in events] == ["1", "1", "1", ""]


def test_retry_only_digits_and_retry_only_block_dispatches_nothing() -> None:
    parser = sse.EventParser()
    for line in ["retry: 12a", "", "retry: 300", ""]:
        assert parser.feed_line(line) is None
    assert parser.retry == 300


def test_unterminated_last_event_is_dropped() -> None:
    assert decode([b"data: a\n\ndata: b"]) == [sse.ServerSentEvent("a")]


def test_multibyte_character_split_across_chunks() -> None:
    data = "data: 你好\n\n".encode()
    cut = data.index("你".encode()) + 1
    assert decode([data[:cut], data[cut:]])[0].data == "你好"


def test_event_id_parsing() -> None:
    assert parse_event_id("abc-12") == ("abc", 12)
    assert parse_event_id("a-b-3") is None  # stream ids have no dash
    for bad in ["", "abc", "abc-", "-3", "abc-x"]:
        assert parse_event_id(bad) is None


def test_stream_ids_are_letters_and_digits_only() -> None:
    from streamapp.wire import is_stream_id

    assert is_stream_id("abc123XYZ")
    for bad in ["", "a:b", "a b", "a-b", "x" * 65, "ab\n"]:
        assert not is_stream_id(bad)
    assert parse_event_id("a:b-3") is None


def test_cr_inside_a_chunk_does_not_swallow_the_next_chunks_lf() -> None:
    splitter = sse.LineSplitter()
    assert splitter.feed(b"a\rb") == ["a"]
    assert splitter.feed(b"\nc\n") == ["b", "c"]
    assert decode([b"data: x\rdata: y", b"\n\ndata: z\n\n"]) == [
        sse.ServerSentEvent("x\ny"), sse.ServerSentEvent("z")]


def test_an_empty_chunk_keeps_a_pending_cr() -> None:
    splitter = sse.LineSplitter()
    assert splitter.feed(b"a\r") == ["a"]
    assert splitter.feed(b"") == []
    assert splitter.feed(b"\nb\n") == ["b"]


@pytest.mark.parametrize("bad", ["abc-\u00b2", "abc-" + "9" * 5000, "abc-\u0663"])
def test_event_ids_with_odd_digits_are_not_ours(bad) -> None:
    assert parse_event_id(bad) is None


def _line_by_line(chunks: list[bytes]) -> list[sse.ServerSentEvent]:
    """The decoder without its block-at-a-time path: every line through ``EventParser``."""
    splitter, parser, out = sse.LineSplitter(), sse.EventParser(), []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            event = parser.feed_line(line)
            if event is not None:
                out.append(event)
    return out


def test_whole_event_chunks_decode_as_line_by_line() -> None:
    import random

    rng = random.Random(12)
    pieces = [
        b"data: plain\n\n", b'data: {"a": "\xc3\xa9"}\n\n', b"id: 7\ndata: with id\n\n",
        b": comment\n\n", b"event: x\ndata: named\n\n", b"data: two\ndata: lines\n\n",
        b"retry: 300\ndata: r\n\n", b"data:\n\n", b"data: after\n\n", b"data: cr\r\n\r\n",
        b"\xef\xbb\xbfdata: bom\n\n", b"id\n\n",
    ]
    for _ in range(1000):
        events = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
        if rng.random() < 0.5:  # as an upstream sends them: whole events, one or several a chunk
            cuts = sorted(rng.sample(range(1, len(events) + 1), rng.randint(1, len(events))))
            chunks = [b"".join(events[a:b]) for a, b in zip([0, *cuts], cuts, strict=False)]
            chunks += [b"".join(events[cuts[-1]:])] if cuts[-1] < len(events) else []
        else:  # cut anywhere
            stream = b"".join(events)
            cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 4))))
            chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        assert decode(chunks) == _line_by_line(chunks), chunks


# -- a line is bounded, and split in linear time --------------------------------------------------

def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 7, 100, 1000, 5000])
@pytest.mark.parametrize("end", [b"\n", b"\r\n", b"\r"])
def test_a_line_up_to_the_bound_passes_and_one_byte_more_raises(size, end) -> None:
    at_bound = b"x" * 1000
    splitter = sse.LineSplitter(max_line=1000)
    lines = [line for chunk in chunked(b"a" + end + at_bound + end + b"b" + end, size)
             for line in splitter.feed(chunk)]
    assert lines == ["a", at_bound.decode(), "b"]

    splitter = sse.LineSplitter(max_line=1000)
    with pytest.raises(sse.LineTooLong) as info:
        for chunk in chunked(b"a" + end + at_bound + b"y" + end, size):
            splitter.feed(chunk)
    assert info.value.limit == 1000


def test_an_endless_line_raises_once_the_bound_is_held() -> None:
    splitter = sse.LineSplitter(max_line=1000)
    for _ in range(10):
        assert splitter.feed(b"x" * 100) == []
    with pytest.raises(sse.LineTooLong):
        splitter.feed(b"x")  # never a newline: the splitter holds no more than its bound


@pytest.mark.parametrize("decode", [sse.iter_lines, sse.iter_events])
@pytest.mark.parametrize("chunk", [65536, sse.MAX_LINE_BYTES + 100])
def test_the_decoders_bound_a_line_at_max_line_bytes(decode, chunk) -> None:
    fits = b"data: " + b"x" * (sse.MAX_LINE_BYTES - 6) + b"\n\n"
    assert len(list(decode(chunked(fits, chunk)))) >= 1
    too_long = b"data: " + b"x" * (sse.MAX_LINE_BYTES - 5) + b"\n\n"
    with pytest.raises(sse.LineTooLong):
        list(decode(chunked(too_long, chunk)))


@pytest.mark.parametrize("end", [b"\n", b"\r"])
def test_a_long_line_in_many_chunks_is_scanned_once(end) -> None:
    """Each byte fed is searched for a line end once: an unfinished line is not searched
    again when more of it arrives (a quadratic cost for a line in many chunks)."""
    splitter = sse.LineSplitter()
    fed = 0
    for chunk in [b"a" + end] + [b"x" * 100] * 5000 + [end + b"b" + end]:
        lines = splitter.feed(chunk)
        fed += len(chunk)
        assert splitter.scanned <= fed
    assert lines == ["x" * 500_000, "b"]
    assert splitter.scanned == fed
