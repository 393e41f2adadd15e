"""A page's messages delivered in its socket's callback (`PageConnection.deliver_messages`) and written without
waiting (`send_now`), served by uvicorn behind `app.transport`'s guard on a real port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from harness import bound_socket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from app.transport import PageConnection, TransportLimits, current_page_connection, protocol_options


async def accepted_page(scope: dict[str, Any], receive: Any, send: Any) -> PageConnection | None:
    """Accept a WebSocket scope and return its page connection; None for any other scope."""
    if scope["type"] != "websocket":
        return None
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    page = current_page_connection()
    assert page is not None
    return page


class DeliveringApp:
    """A WebSocket route that takes its messages in the socket's callback and answers each at once."""

    def __init__(self) -> None:
        self.delivered: list[bytes | str] = []
        self.disconnect: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = await accepted_page(scope, receive, send)
        if page is None:
            return

        def on_message(message: bytes | str) -> None:
            self.delivered.append(message)
            assert page.send_now(message[::-1])

        page.deliver_messages(on_message)
        message = await receive()  # only the disconnect comes this way now
        self.disconnect.set_result(message)


@asynccontextmanager
async def served_with_server(app: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """The ASGI `app` served by uvicorn behind the guard on a free port: its URL and the server."""
    sock = bound_socket(None)
    config = uvicorn.Config(app, log_config=None, lifespan="off", ws_per_message_deflate=False,
                            **protocol_options(TransportLimits()))
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}/", server
    finally:
        server.should_exit = True
        await task
        sock.close()


@asynccontextmanager
async def served(app: DeliveringApp) -> AsyncIterator[str]:
    async with served_with_server(app) as (url, _):
        yield url


async def test_data_messages_go_to_the_callback_in_order_and_the_close_still_reaches_receive() -> None:
    app = DeliveringApp()
    async with served(app) as url, connect(url, compression=None) as client:
        await client.send(b"\x01\x02")
        await client.send("hello")
        await client.send([b"ab", b"cd"])  # one message in fragments
        await client.ping()
        await client.send("héllo")
        answers = [await client.recv() for _ in range(4)]
        await client.close(1000, "bye")
        disconnect = await app.disconnect
    assert app.delivered == [b"\x01\x02", "hello", b"abcd", "héllo"]
    assert answers == [b"\x02\x01", "olleh", b"dcba", "olléh"]
    assert disconnect["type"] == "websocket.disconnect"
    assert disconnect["code"] == 1000


async def test_a_text_message_that_is_not_utf8_closes_1007_and_is_not_delivered() -> None:
    app = DeliveringApp()
    async with served(app) as url, connect(url, compression=None) as client:
        await client.send("first")
        assert await client.recv() == "tsrif"
        # Sent as a raw frame: the client's own send would refuse to encode it.
        client.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe"))
        client.send_data()
        disconnect = await app.disconnect
    assert app.delivered == ["first"]
    assert disconnect["code"] == 1007


async def test_a_held_socket_is_not_read_until_released_and_then_delivers_in_order() -> None:
    delivered: list[bytes | str] = []
    released = asyncio.Event()
    pages: list[Any] = []

    async def holding(scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = await accepted_page(scope, receive, send)
        if page is None:
            return
        pages.append(page)

        def on_message(message: bytes | str) -> None:
            delivered.append(message)
            page.hold_messages(True)  # as the lesson does while a send must wait

        page.deliver_messages(on_message)
        await released.wait()
        delivered.append("released")
        page.hold_messages(False)
        await receive()

    try:
        async with served_with_server(holding) as (url, server), connect(url, compression=None) as client:
            [socket_protocol] = server.server_state.connections
            await client.send("one")
            async with asyncio.timeout(30):
                while True:
                    if delivered and not socket_protocol.transport.is_reading():
                        break
                    await asyncio.sleep(0.01)  # a poll with a deadline: the transport tells only its protocol
            # Sent while the socket is held: it waits in the kernel until the app lets go.
            await client.send("two")
            released.set()
            async with asyncio.timeout(30):
                while True:
                    if len(delivered) == 3:
                        break
                    await asyncio.sleep(0.01)  # a poll with a deadline: delivery happens in the server's callback
    finally:
        released.set()
    assert delivered == ["one", "released", "two"]


async def test_send_now_after_the_apps_close_sends_nothing_and_says_so() -> None:
    answers: list[bool] = []

    async def closing(scope: dict[str, Any], receive: Any, send: Any) -> None:
        page = await accepted_page(scope, receive, send)
        if page is None:
            return
        answers.append(page.send_now(b"before"))
        await send({"type": "websocket.close", "code": 4000})
        answers.append(page.send_now(b"after"))
        answers.append(page.send_now("after"))
        await receive()

    async with served_with_server(closing) as (url, _), connect(url, compression=None) as client:
        assert await client.recv() == b"before"
        with pytest.raises(ConnectionClosed):
            await client.recv()
        assert client.close_code == 4000
    assert answers == [True, False, False]
