"""Whole messages framed and split here: the same frames websockets writes, the same stream websockets would read.

Streams of every kind of frame (whole messages, fragments, pings, pongs, closes, and frames websockets refuses), cut
into reads at random, are read twice: by websockets alone, and split by `split_frames` with websockets given every
frame but the whole messages. Both must hear the same messages and end in the same state.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import struct
from collections.abc import Callable
from typing import Any, cast

import pytest
from websockets.client import ClientProtocol
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app.upstream import UpstreamConnection
from app.ws_frames import WHOLE_BINARY, WHOLE_TEXT, client_frame, server_frame, split_frames

MAX_SIZE = 1000


def opened(max_size: int | None = MAX_SIZE) -> tuple[ClientProtocol, ServerProtocol]:
    """A client and a server protocol through their handshake."""
    client = ClientProtocol(parse_uri("ws://relay.test/"), max_size=max_size)
    server = ServerProtocol(max_size=max_size)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    request = server.events_received()[0]
    server.send_response(server.accept(request))
    client.receive_data(b"".join(server.data_to_send()))
    client.events_received()
    assert client.state is State.OPEN
    assert server.state is State.OPEN
    return client, server


class Reader:
    """A connection's reading side as the page's and the upstream's are: whole messages split off, or not."""

    def __init__(self, protocol: Protocol, *, split: bool) -> None:
        self.protocol = protocol
        self.splitting = split
        self.unsplit = b""
        self.fragments: list[bytes] = []
        self.fragments_text = False
        self.heard: list[tuple[Any, ...]] = []

    def data_received(self, data: bytes) -> None:
        if self.splitting:
            masked = self.protocol.side.name == "SERVER"
            self.unsplit = split_frames(self, self.unsplit + data, masked=masked, max_size=MAX_SIZE)
        else:
            self.parse_frames(data)

    def between_messages(self) -> bool:
        return self.protocol.state is State.OPEN and not self.fragments

    def whole_message(self, text: bool, payload: bytes) -> bool:
        self.heard.append(("text" if text else "binary", payload))
        return True

    def parse_frames(self, data: bytes) -> bool:
        self.protocol.receive_data(data)
        for frame in self.protocol.events_received():
            assert isinstance(frame, Frame)
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                self.fragments, self.fragments_text = [bytes(frame.data)], frame.opcode is Opcode.TEXT
            elif frame.opcode is Opcode.CONT:
                self.fragments.append(bytes(frame.data))
            else:
                self.heard.append((frame.opcode.name, bytes(frame.data)))
                continue
            if frame.fin:
                self.heard.append(("text" if self.fragments_text else "binary", b"".join(self.fragments)))
                self.fragments = []
        return self.protocol.parser_exc is None

    def stop_splitting(self) -> None:
        self.splitting = False

    def outcome(self) -> tuple[Any, ...]:
        protocol = self.protocol
        sent = protocol.close_sent
        return (self.heard, protocol.state, repr(protocol.parser_exc),
                None if sent is None else (sent.code, sent.reason), self.unsplit)


def raw_frame(rng: random.Random, first: int, payload: bytes, *, masked: bool) -> bytes:
    """Any frame, valid or not, as bytes on the wire."""
    length, mask_bit = len(payload), 0x80 if masked else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, length)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, length)
    if not masked:
        return head + payload
    mask = rng.randbytes(4)
    return head + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def random_stream(rng: random.Random, *, masked: bool) -> bytes:
    """A few frames of every kind a peer may send, the ones websockets refuses among them."""
    def payload(most: int) -> bytes:
        small, large = rng.randrange(min(126, most + 1)), rng.randrange(min(126, most), most + 1)
        return rng.randbytes(rng.choice([0, 1, small, large]))

    def frame(first: int, data: bytes, *, wrong_mask: bool = False) -> bytes:
        return raw_frame(rng, first, data, masked=masked != wrong_mask)

    kinds: list[Callable[[], bytes]] = [
        lambda: frame(WHOLE_BINARY, payload(MAX_SIZE)),
        lambda: frame(WHOLE_TEXT, "é€ text".encode() * rng.randrange(1, 60)),
        lambda: frame(WHOLE_TEXT, b"\xff not utf-8"),
        lambda: frame(0x02, payload(300)) + frame(0x00, payload(300)) + frame(0x80, payload(300)),
        lambda: frame(0x01, b"frag") + frame(0x89, b"ping between fragments") + frame(0x80, b"mented"),
        lambda: frame(0x89, rng.randbytes(rng.randrange(126))),
        lambda: frame(0x8A, rng.randbytes(rng.randrange(126))),
        lambda: frame(0x88, struct.pack("!H", 1000) + b"bye"),
        lambda: frame(WHOLE_BINARY | 0x40, payload(100)),  # a reserved bit set
        lambda: frame(WHOLE_BINARY, payload(100), wrong_mask=True),
        lambda: frame(0x80, b"a continuation with no message"),
        lambda: frame(0x02, b"a fragment") + frame(WHOLE_BINARY, b"a new message before its end"),
        lambda: frame(WHOLE_BINARY, rng.randbytes(MAX_SIZE + 1)),
        lambda: frame(0x89, rng.randbytes(200)),  # a control frame over 125 bytes
        lambda: frame(0x83, b"an unknown opcode"),
    ]
    return b"".join(rng.choice(kinds)() for _ in range(rng.randrange(1, 9)))


def cut(rng: random.Random, stream: bytes) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randrange(6)))) if len(stream) > 1 else []
    bounds = [0, *cuts, len(stream)]
    return [stream[start:end] for start, end in itertools.pairwise(bounds)]


@pytest.mark.parametrize("side", ["server", "client"])
def test_split_streams_are_heard_as_websockets_hears_them(side: str) -> None:
    rng = random.Random(20261127)
    for _ in range(600):
        stream = random_stream(rng, masked=side == "server")
        reads = cut(rng, stream)
        readers = []
        for split in (False, True):
            client, server = opened()
            reader = Reader(server if side == "server" else client, split=split)
            for data in reads:
                reader.data_received(data)
            readers.append(reader)
        unsplit, split_ = readers
        assert split_.outcome() == unsplit.outcome(), stream
        if side == "server":  # a server's frames are unmasked: its pongs and close frames byte for byte
            assert split_.protocol.data_to_send() == unsplit.protocol.data_to_send()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_written_here_are_read_by_websockets_as_the_message_sent(size: int) -> None:
    _, server = opened(max_size=None)
    payload = random.Random(size).randbytes(size)
    server.send_binary(payload)
    assert server_frame(WHOLE_BINARY, payload) == b"".join(server.data_to_send())

    server.receive_data(client_frame(WHOLE_TEXT, payload))
    [frame] = server.events_received()
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (Opcode.TEXT, True, payload)
    assert client_frame(WHOLE_TEXT, payload) != client_frame(WHOLE_TEXT, payload)  # a fresh mask each


class Transport:
    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def answered_upstream(answer: Callable[[ServerProtocol, Request], None]) -> tuple[UpstreamConnection, bytes]:
    """An upstream connection that has sent its handshake, and the bytes of a server's `answer` to it."""
    connection = UpstreamConnection(ClientProtocol(parse_uri("ws://upstream.test/"), max_size=None))
    connection.connection_made(cast(asyncio.Transport, Transport()))
    connection.protocol.send_request(connection.protocol.connect())
    server = ServerProtocol()
    server.receive_data(b"".join(connection.protocol.data_to_send()))
    [request] = server.events_received()
    answer(server, cast(Request, request))
    return connection, b"".join(server.data_to_send())


async def test_frames_read_with_the_handshake_s_answer_are_delivered_wherever_the_reads_end() -> None:
    messages = [b'{"type":"session.created"}', b"x" * 300, b'{"type":"fragmented"}']

    def accept_and_send(server: ServerProtocol, request: Request) -> None:
        server.send_response(server.accept(request))
        server.send_text(messages[0])
        server.send_text(messages[1])
        server.send_text(messages[2][:9], fin=False)
        server.send_continuation(messages[2][9:], fin=True)

    _, stream = answered_upstream(accept_and_send)
    head_end = stream.index(b"\r\n\r\n") + 4
    for position in [*range(1, head_end + 40), len(stream) - 1]:
        connection, stream = answered_upstream(accept_and_send)
        connection.data_received(stream[:position])
        connection.data_received(stream[position:])
        assert connection.response_received.done(), position
        assert list(connection.inbox) == messages, position


async def test_a_refused_handshake_s_body_is_websockets_to_read_not_split() -> None:
    def refuse(server: ServerProtocol, request: Request) -> None:
        body = b'{"error":{"code":"invalid_api_key"}}' + server_frame(WHOLE_TEXT, b"not a frame")
        server.send_response(Response(401, "Unauthorized", Headers({"Content-Length": str(len(body))}), body))

    connection, answer = answered_upstream(refuse)
    connection.data_received(answer)
    assert connection.response_received.done()
    assert connection.protocol.handshake_exc is not None
    assert not connection.inbox
