"""Where a request body ends, as `app.transport`'s request guard finds it (no sockets: bytes in, positions out)."""

from __future__ import annotations

import pytest

from app.transport import ChunkedBody, LengthBody

NEXT = b"GET /healthz HTTP/1.1\r\n"
CHUNKED = b"5;name=value\r\nhello\r\n1A\r\n" + b"z" * 26 + b"\r\n0\r\nX-Trailer: 1\r\nX-Other: 2\r\n\r\n"


def fed_in_pieces(body: ChunkedBody | LengthBody, data: bytes, piece: int) -> int | None:
    """Feed `data` `piece` bytes at a time; the position where the body ended, or None if it did not."""
    for start in range(0, len(data), piece):
        end, complete = body.feed(data[:start + piece], start)
        if complete:
            return end
    return None


@pytest.mark.parametrize("piece", [1, 2, 7, 1000])
def test_a_chunked_body_ends_after_its_trailers_however_it_is_split(piece: int) -> None:
    assert fed_in_pieces(ChunkedBody(), CHUNKED + NEXT, piece) == len(CHUNKED)


@pytest.mark.parametrize("piece", [1, 3, 1000])
def test_a_body_of_content_length_ends_after_that_many_bytes(piece: int) -> None:
    assert fed_in_pieces(LengthBody(11), b"hello there" + NEXT, piece) == 11


def test_a_chunked_body_not_split_at_all_ends_where_the_next_request_begins() -> None:
    assert ChunkedBody().feed(b"0\r\n\r\n" + NEXT, 0) == (5, True)


@pytest.mark.parametrize("data", [b"zz\r\n", b"\r\n", b"5" * 2000])
def test_a_chunked_body_that_is_not_http_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="chunk"):
        ChunkedBody().feed(data, 0)
