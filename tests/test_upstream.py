"""RealtimeClient's own connection: messages whole and in order, fragments joined, reading paused when unread."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import cast

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app.errors import UpstreamClosed
from app.upstream import INBOX_HIGH_WATER, INBOX_LOW_WATER, PING_INTERVAL_S, RealtimeClient, UpstreamConnection

Handler = Callable[[ServerConnection], Awaitable[None]]


@contextlib.asynccontextmanager
async def client_of(handler: Handler) -> AsyncIterator[RealtimeClient]:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        client = await RealtimeClient.connect(url=f"ws://127.0.0.1:{port}/v1/realtime", api_key="sk-test",
                                              auth_scheme="bearer", open_timeout_s=5)
        try:
            yield client
        finally:
            await client.close()


async def read_all(client: RealtimeClient) -> list[bytes]:
    return [message async for message in client.messages()]


async def test_messages_arrive_whole_and_in_order_and_a_normal_close_ends_them() -> None:
    async def server(connection: ServerConnection) -> None:
        await connection.send('{"type":"a"}')
        await connection.send(["{\"type\":", "\"fragmented\"", "}"])  # one message in three frames
        await connection.send(b'{"type":"binary"}')
        await connection.close()

    async with client_of(server) as client:
        assert await read_all(client) == [b'{"type":"a"}', b'{"type":"fragmented"}', b'{"type":"binary"}']


async def test_an_abnormal_close_is_raised_with_its_code_after_the_messages_before_it() -> None:
    async def server(connection: ServerConnection) -> None:
        await connection.send('{"type":"last"}')
        await connection.close(4000, "bye")

    received: list[bytes] = []

    async def read_into_received(client: RealtimeClient) -> None:
        async for message in client.messages():
            received.append(message)

    async with client_of(server) as client:
        with pytest.raises(UpstreamClosed) as closed:
            await read_into_received(client)
    assert received == [b'{"type":"last"}']
    assert (closed.value.received_code, closed.value.received_reason) == (4000, "bye")


async def test_a_reader_waiting_for_the_next_message_holds_none_of_the_last() -> None:
    # An idle lesson waits on its upstream for minutes: the last server event must not be kept meanwhile.
    sent = asyncio.Event()
    release = asyncio.Event()

    async def server(connection: ServerConnection) -> None:
        await connection.send('{"type":"response.done"}')
        sent.set()
        await release.wait()

    async with client_of(server) as client:
        messages = client.messages()
        assert await anext(messages) == b'{"type":"response.done"}'
        waiting = asyncio.ensure_future(anext(messages))
        try:
            await sent.wait()
            await asyncio.sleep(0)  # one turn of the loop: the reader is now suspended on the next message
            assert not waiting.done()
            assert messages.ag_frame is not None
            assert "message" not in messages.ag_frame.f_locals
        finally:
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            release.set()


async def test_a_reader_that_falls_behind_pauses_the_socket_and_loses_nothing() -> None:
    count = INBOX_HIGH_WATER * 4
    all_sent = asyncio.Event()

    async def server(connection: ServerConnection) -> None:
        for number in range(count):
            await connection.send(f'{{"n":{number}}}')
        all_sent.set()
        await connection.wait_closed()

    async with client_of(server) as client:
        listener = client._connection
        assert isinstance(listener, UpstreamConnection)
        async with asyncio.timeout(5):
            # The server writes, nobody reads yet; the inbox filling up is seen only by looking.
            while len(listener.inbox) < INBOX_HIGH_WATER:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert listener.reading_paused
        received = []
        async with asyncio.timeout(5):  # a socket never resumed would stall here
            async for message in client.messages():
                received.append(message)
                if len(received) == count:
                    break
        assert not listener.reading_paused
        await all_sent.wait()
    assert received == [f'{{"n":{number}}}'.encode() for number in range(count)]


async def test_sending_after_the_server_closed_raises_upstream_closed() -> None:
    async def server(connection: ServerConnection) -> None:
        await connection.close(1011, "gone")

    async with client_of(server) as client:
        with pytest.raises(UpstreamClosed):
            await read_all(client)
        with pytest.raises(UpstreamClosed) as closed:
            await client.send(b'{"type":"input_audio_buffer.clear"}')
    assert closed.value.received_code == 1011


class HandshakeServer(asyncio.Protocol):
    """Accepts the WebSocket handshake, then reads everything and queues the pings' payloads; answers them
    only when `answer_pings`; with `deaf`, reads nothing after the handshake, so that what the client sends
    piles up."""

    def __init__(self, *, answer_pings: bool = False, deaf: bool = False) -> None:
        self.protocol = ServerProtocol()
        self.answer_pings = answer_pings
        self.deaf = deaf
        self.pings: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self.protocol.send_response(self.protocol.accept(event))
                self.transport.writelines(self.protocol.data_to_send())
            elif isinstance(event, Frame) and event.opcode is Opcode.PING:
                self.pings.put_nowait(bytes(event.data))
        pongs = self.protocol.data_to_send()
        if self.answer_pings:
            self.transport.writelines(pongs)
        if self.deaf:
            self.transport.pause_reading()


@contextlib.asynccontextmanager
async def client_of_protocol(server_side: HandshakeServer, **options: float) -> AsyncIterator[RealtimeClient]:
    """A client connected to `server_side` (the only connection it serves), with `RealtimeClient.connect`'s
    `options`."""
    server = await asyncio.get_running_loop().create_server(lambda: server_side, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = await RealtimeClient.connect(url=f"ws://127.0.0.1:{port}/v1/realtime", api_key="sk-test",
                                              auth_scheme="bearer", open_timeout_s=5, **options)
        try:
            yield client
        finally:
            await client.close()


async def test_a_quiet_upstream_is_pinged_and_given_up_when_no_pong_comes() -> None:
    assert 0 < PING_INTERVAL_S <= 30  # well under the usual 60 s idle timeout of proxies
    silent = HandshakeServer()
    async with client_of_protocol(silent, ping_interval_s=0.05, ping_timeout_s=0.05) as client:
        with pytest.raises(UpstreamClosed) as closed:
            await asyncio.wait_for(read_all(client), 5)
    assert silent.pings.qsize() == 1
    assert closed.value.received_reason == "keepalive ping unanswered for 0.05 s"


async def test_an_upstream_that_answers_its_pings_keeps_the_session_through_many_of_them() -> None:
    answering = HandshakeServer(answer_pings=True)
    async with client_of_protocol(answering, ping_interval_s=0.01, ping_timeout_s=0.05) as client:
        async with asyncio.timeout(5):
            for _ in range(10):
                await answering.pings.get()
        await client.send(b'{"type":"input_audio_buffer.clear"}')
        assert client.close_code is None


async def test_an_upstream_that_stops_reading_is_given_up_at_the_send_deadline_saying_why() -> None:
    append = b'{"type":"input_audio_buffer.append","audio":"' + b"A" * 1_000_000 + b'"}'
    async with client_of_protocol(HandshakeServer(deaf=True), send_timeout_s=0.2, ping_interval_s=3600) as client:

        async def send_until_refused() -> None:
            async with asyncio.timeout(10):  # the kernel's buffers take a few MB first
                while True:
                    await client.send(append)

        with pytest.raises(UpstreamClosed) as refused:
            await send_until_refused()
        with pytest.raises(UpstreamClosed) as closed:
            await asyncio.wait_for(read_all(client), 5)
    for given_up in (refused.value, closed.value):
        assert given_up.received_code is None
        assert given_up.received_reason.startswith("the server read nothing for 0.2 s (")


async def test_delivered_messages_go_to_the_callback_in_order_and_the_close_still_ends_messages() -> None:
    async def server(connection: ServerConnection) -> None:
        await connection.recv()  # the client delivers from now on
        await connection.send('{"type":"a"}')
        await connection.send(["{\"type\":", "\"fragmented\"", "}"])
        await connection.recv()  # the client's answer to both
        await connection.close(4000, "bye")

    delivered: list[bytes] = []

    async with client_of(server) as client:
        def on_message(message: bytes) -> None:
            delivered.append(message)
            if len(delivered) == 2:
                assert client.send_now(b'{"type":"answer"}')

        client.deliver_messages(on_message)
        assert client.send_now(b'{"type":"ready"}')
        with pytest.raises(UpstreamClosed) as closed:
            assert await read_all(client) == []
    assert delivered == [b'{"type":"a"}', b'{"type":"fragmented"}']
    assert closed.value.received_code == 4000


async def test_the_lesson_s_hold_outlasts_the_inbox_s_pause() -> None:
    class Transport:
        reading = False

        def pause_reading(self) -> None:
            self.reading = False

        def resume_reading(self) -> None:
            self.reading = True

        def is_closing(self) -> bool:
            return False

    transport = Transport()
    connection = UpstreamConnection(ClientProtocol(parse_uri("ws://upstream.test/")))
    connection.transport = cast(asyncio.Transport, transport)
    # Read before delivery began: the inbox is full and paused reading, then the lesson holds the socket.
    connection.inbox.extend([b"{}"] * INBOX_HIGH_WATER)
    connection.reading_paused = True
    connection.hold(True)
    while connection.reading_paused:  # the inbox's own pause ends once it is down to its low-water mark
        await connection.next_message()
    assert len(connection.inbox) <= INBOX_LOW_WATER
    assert not transport.reading
    connection.hold(False)
    assert transport.reading
