"""PageProtocol: an ASGI WebSocket server on websockets' sans-I/O ServerProtocol, served by uvicorn."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from harness import bound_socket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.page_protocol import PageProtocol

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
App = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]


@contextlib.asynccontextmanager
async def served(app: App, **options: Any) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """`app` served by uvicorn with `PageProtocol` as its WebSocket protocol; yields the base ws:// URL."""
    sock = bound_socket()
    config = uvicorn.Config(app, ws=PageProtocol, lifespan="off", log_config=None, **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"ws://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        await task
        sock.close()


class Recorder:
    """An app that accepts, echoes every message and records what it received, scope first."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.received: list[dict[str, Any]] = []
        self.ended = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        self.scope = scope
        assert (await receive())["type"] == "websocket.connect"
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept", "subprotocol": offered[0] if offered else None,
                    "headers": [(b"x-served-by", b"page")]})
        try:
            while True:
                message = await receive()
                self.received.append(message)
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") == "close me":
                    await send({"type": "websocket.close", "code": 4001, "reason": "asked to"})
                    continue
                await send({"type": "websocket.send", **{k: v for k, v in message.items() if k != "type"}})
        finally:
            self.ended.set()


async def close_after_sending(url: str, text: str) -> tuple[int, str]:
    """Send `text`, then read until the server closes: the code and reason of its close frame."""
    async with connect(url) as ws:
        await ws.send(text)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_the_scope_is_uvicorn_s_and_the_accept_carries_the_app_s_subprotocol_and_headers() -> None:
    app = Recorder()
    async with served(app, root_path="/relay") as (url, _), connect(
            f"{url}/ws/lesson%20a?name=Ana", subprotocols=["lesson.v1", "other"],  # type: ignore[list-item]
            additional_headers={"X-Custom": "é"}) as ws:
        assert ws.subprotocol == "lesson.v1"
        assert ws.response.headers["x-served-by"] == "page"
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.recv() == b"\x00\x01"
    await app.ended.wait()
    scope = app.scope
    assert scope["type"] == "websocket"
    assert scope["asgi"]["spec_version"] == "2.4"
    assert scope["scheme"] == "ws"
    assert scope["server"][0] == "127.0.0.1"
    assert scope["client"][0] == "127.0.0.1"
    assert scope["root_path"] == "/relay"
    assert scope["path"] == "/relay/ws/lesson a"
    assert scope["raw_path"] == b"/relay/ws/lesson%20a"
    assert scope["query_string"] == b"name=Ana"
    assert (b"x-custom", "é".encode("latin-1")) in scope["headers"]
    assert scope["subprotocols"] == ["lesson.v1", "other"]
    assert "websocket.http.response" in scope["extensions"]
    assert app.received == [{"type": "websocket.receive", "text": "hello"},
                            {"type": "websocket.receive", "bytes": b"\x00\x01"},
                            {"type": "websocket.disconnect", "code": 1000, "reason": ""}]


async def test_a_fragmented_message_reaches_the_app_whole() -> None:
    app = Recorder()
    async with served(app) as (url, _), connect(url) as ws:
        await ws.send(iter([b"ab", b"cd", b"ef"]))
        assert await ws.recv() == b"abcdef"


async def test_the_app_s_close_reaches_the_page_and_the_app_hears_its_own_disconnect() -> None:
    app = Recorder()
    async with served(app) as (url, _):
        assert await close_after_sending(url, "close me") == (4001, "asked to")
    await app.ended.wait()
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 4001, "reason": "asked to"}


async def test_a_close_before_the_accept_is_a_403_and_the_app_hears_1006() -> None:
    heard: list[dict[str, Any]] = []

    async def refuse(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.close", "code": 1008})
        heard.append(await receive())

    async with served(refuse) as (url, _):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
    assert refused.value.response.status_code == 403
    assert heard == [{"type": "websocket.disconnect", "code": 1006}]


async def test_the_app_s_own_http_response_is_sent_in_place_of_the_handshake() -> None:
    async def deny(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.http.response.start", "status": 429, "headers": [(b"retry-after", b"5")]})
        await send({"type": "websocket.http.response.body", "body": b"too ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"many"})

    async with served(deny) as (url, _):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
    response = refused.value.response
    assert (response.status_code, response.headers["retry-after"], response.body) == (429, "5", b"too many")


async def test_an_app_that_fails_before_accepting_is_a_500() -> None:
    async def fail(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        raise RuntimeError("broken")

    async with served(fail) as (url, _):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
    assert refused.value.response.status_code == 500


async def test_an_app_that_fails_after_accepting_closes_with_1011() -> None:
    async def fail_after_accepting(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("broken")

    async with served(fail_after_accepting) as (url, _):
        assert await close_after_sending(url, "anything") == (1011, "internal error")


@pytest.mark.parametrize(("send", "code"), [
    (lambda ws: ws.send(b"x" * 2000), 1009),
    (lambda ws: ws.send(b"\xff\xfe", text=True), 1007),
])
async def test_a_message_over_the_size_limit_or_text_that_is_not_utf8_closes_the_socket(
        send: Callable[[Any], Awaitable[None]], code: int) -> None:
    app = Recorder()
    async with served(app, ws_max_size=1000) as (url, _), connect(url) as ws:
        await send(ws)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == code
    await app.ended.wait()
    assert app.received[-1]["code"] == code


async def test_keepalive_pings_go_on_while_answered_and_an_unanswered_one_closes_with_1011() -> None:
    async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
        head = await reader.readexactly(2)
        return head[0] & 0x0F, await reader.readexactly(head[1])

    app = Recorder()
    async with served(app, ws_ping_interval=0.01, ws_ping_timeout=0.01) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        opcode, payload = await read_frame(reader)
        assert opcode == 0x9
        mask = os.urandom(4)
        writer.write(bytes([0x8A, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
        # Answered, the next ping comes; this one is not answered.
        assert (await read_frame(reader))[0] == 0x9
        opcode, payload = await read_frame(reader)
        writer.close()
    assert opcode == 0x8
    assert struct.unpack("!H", payload[:2])[0] == 1011
    await app.ended.wait()


async def test_shutdown_closes_an_open_socket_with_1012() -> None:
    app = Recorder()
    async with served(app) as (url, server), connect(url) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        server.should_exit = True
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1012
    await app.ended.wait()
    assert app.received[-1] == {"type": "websocket.disconnect", "code": 1012}


async def test_reading_pauses_while_a_message_waits_for_the_app() -> None:
    go_on = asyncio.Event()
    heard: list[dict[str, Any]] = []

    async def slow(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await go_on.wait()
        heard.append(await receive())
        await send({"type": "websocket.send", "text": "read"})
        heard.append(await receive())

    async with served(slow) as (url, server), connect(url) as ws:
        [page] = server.server_state.connections
        await ws.send("first")
        async with asyncio.timeout(30):
            while True:
                if not page.transport.is_reading():
                    break
                await asyncio.sleep(0.01)  # a poll with a deadline: the transport tells only its protocol
        go_on.set()
        assert await ws.recv() == "read"
        assert page.transport.is_reading()
    assert heard[0] == {"type": "websocket.receive", "text": "first"}


async def test_sends_wait_while_writes_are_paused_and_one_sender_given_up_leaves_the_others_waiting() -> None:
    senders: list[asyncio.Task[None]] = []
    accepted = asyncio.Event()

    async def sending(scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        accepted.set()
        await receive()

    async with served(sending) as (url, server), connect(url) as ws:
        await accepted.wait()
        [page] = server.server_state.connections
        page.pause_writing()  # as the transport does over its high-water mark
        for text in ("given up", "kept"):
            senders.append(asyncio.create_task(page.send({"type": "websocket.send", "text": text})))
        await asyncio.sleep(0)  # a yield: both senders run up to their wait
        assert not any(sender.done() for sender in senders)
        senders[0].cancel()
        with pytest.raises(asyncio.CancelledError):
            await senders[0]
        assert not senders[1].done()
        page.resume_writing()
        await senders[1]
        assert await ws.recv() == "kept"
