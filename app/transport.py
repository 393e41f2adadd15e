"""The server's end of every client connection: what uvicorn's protocols do not give the app.

uvicorn's WebSocket protocol (websockets' sans-I/O one) lets an ASGI app send and close, but a send to a
peer that stops reading waits forever, and so does closing. `GuardedWebSocket` wraps uvicorn's protocol,
by composition, and sees every byte and every flow-control call first. It is the lesson's
`PageConnection`: the app can see when a send would wait, drop the connection, or close it on a deadline.

The app reaches its page's `PageConnection` through `current_page_connection()`: the wrapper sets a context
variable while uvicorn creates the connection's ASGI task, and the task keeps a copy of that context.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Protocol, cast

from uvicorn.config import Config
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState


class PageConnection(Protocol):
    """What the lesson's shell may do to its page's connection, beneath the ASGI messages."""

    @property
    def write_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark: the next send would wait."""

    def abort(self) -> None:
        """Drop the connection now; nothing more is sent."""

    def close_within(self, grace_s: float) -> None:
        """The close frame is sent: drop the connection if the peer has not closed it within `grace_s`
        (0: close it now, cleanly when everything was sent, else by dropping it)."""


_current_page: contextvars.ContextVar[PageConnection | None] = contextvars.ContextVar("page_connection",
                                                                                      default=None)


def current_page_connection() -> PageConnection | None:
    """The connection of the WebSocket whose ASGI task this is; None when served without `protocol_options`."""
    return _current_page.get()


def protocol_options() -> dict[str, Any]:
    """uvicorn `Config` options that put the guard in front of its WebSocket protocol."""
    return {"ws": GuardedWebSocket}


class GuardedWebSocket(asyncio.Protocol):
    """uvicorn's websockets-sansio protocol, and the page's `PageConnection`."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._inner = WebSocketsSansIOProtocol(config=config, server_state=server_state, app_state=app_state,
                                               _loop=_loop)
        self._loop = _loop or asyncio.get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._lost = False
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._inner.connection_lost(exc)

    def eof_received(self) -> None:
        self._inner.eof_received()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        # The handshake creates the connection's ASGI task, which copies this context.
        token = _current_page.set(self)
        try:
            self._inner.data_received(data)
        finally:
            _current_page.reset(token)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def close_within(self, grace_s: float) -> None:
        transport = self._transport
        if transport is None or self._lost:
            return
        if grace_s > 0:
            if self._close_timer is None:
                self._close_timer = self._loop.call_later(grace_s, self.close_within, 0)
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
