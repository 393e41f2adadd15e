"""RealtimeClient: one WebSocket session with the OpenAI Realtime API (GA interface).

It knows the URL, headers, frame limits, keepalive and timeouts, and translates every foreign failure
(websockets, OSError, timeouts) into the project's `UpstreamError` tree. It knows nothing of lessons.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State

from app.errors import UpstreamClosed, UpstreamRefused, UpstreamUnavailable

# Keepalive: a ping every 20 s keeps idle proxies from cutting a lesson during a long pause.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
# Unread server messages past which the socket stops being read (TCP then slows the server down).
INBOX_HIGH_WATER = 64
INBOX_LOW_WATER = 16
DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY, Opcode.CONT})


def realtime_url(base_url: str, model: str) -> str:
    """`base_url` with `model=` added to its query (Azure's deployment name goes there too)."""
    parts = urlsplit(base_url)
    query = f"{parts.query}&{urlencode({'model': model})}" if parts.query else urlencode({"model": model})
    return urlunsplit(parts._replace(query=query))


def auth_headers(api_key: str, scheme: Literal["bearer", "api-key"]) -> dict[str, str]:
    # GA interface: no OpenAI-Beta header (the beta shape is switched off and answers with close 4000).
    return {"api-key": api_key} if scheme == "api-key" else {"Authorization": f"Bearer {api_key}"}


class LessonConnection(ClientConnection):
    """websockets' client connection with a short path for the messages a lesson exchanges 50 times a second.

    A lesson has one reader, so complete messages go into a deque with one waiter instead of websockets'
    `Assembler` (locks, per-read futures, UTF-8 decoding orjson does anyway); a message is written the moment
    it is sent while the connection is open, and the sender waits only when the socket's buffer is full.
    Handshake, control frames, keepalive and the closing handshake stay websockets' own.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._inbox: deque[bytes] = deque()
        self._fragments: list[bytes] = []
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._reading_paused = False

    def process_event(self, event: Event) -> None:
        if not (isinstance(event, Frame) and event.opcode in DATA_OPCODES):
            super().process_event(event)
            return
        if not event.fin:
            self._fragments.append(bytes(event.data))
            return
        if self._fragments:
            self._inbox.append(b"".join((*self._fragments, event.data)))
            self._fragments.clear()
        else:
            self._inbox.append(bytes(event.data))
        self._wake_reader()
        if len(self._inbox) >= INBOX_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._wake_reader()

    def _wake_reader(self) -> None:
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next_message(self) -> bytes:
        """The next complete server message; `ConnectionClosed` once the connection is closed and all is read."""
        while not self._inbox:
            if self.protocol.state is State.CLOSED:
                raise self.close_exc
            self._inbox_waiter = self.loop.create_future()
            try:
                await self._inbox_waiter
            finally:
                self._inbox_waiter = None
        if self._reading_paused and len(self._inbox) <= INBOX_LOW_WATER:
            self._reading_paused = False
            self.transport.resume_reading()
        return self._inbox.popleft()

    async def send_text(self, message: bytes) -> None:
        """Send one UTF-8 text message; `ConnectionClosed` when the connection is (or ends up) closed."""
        if self.protocol.state is not State.OPEN or self.send_in_progress is not None:
            await self.send(message, text=True)  # websockets' own path raises or waits as it should
            return
        self.protocol.send_text(message)
        try:
            self.send_data()
        except OSError as exc:
            self.set_connection_exc(exc)
            self.transport.abort()
            await asyncio.shield(self.connection_lost_waiter)
            raise self.close_exc from exc
        if self.paused:
            await self.drain()


class RealtimeClient:
    """An open Realtime session: `messages()` yields server events as received; `send` serialised client events."""

    def __init__(self, connection: LessonConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(
        cls,
        *,
        url: str,
        api_key: str,
        auth_scheme: Literal["bearer", "api-key"],
        open_timeout_s: float,
    ) -> RealtimeClient:
        """Open the session or raise `UpstreamRefused` (HTTP status) / `UpstreamUnavailable`."""
        try:
            connection = await connect(
                url,
                additional_headers=auth_headers(api_key, auth_scheme),
                open_timeout=open_timeout_s,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                close_timeout=2,
                # Some server events (session.updated with long instructions, big deltas) exceed 1 MiB.
                max_size=None,
                compression=None,
                user_agent_header="lesson-relay",
                create_connection=LessonConnection,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            upstream_code, message = _error_body(exc.response.body)
            raise UpstreamRefused(
                f"upstream refused the handshake with HTTP {status}: {message or exc.response.reason_phrase!r}",
                status=status, upstream_code=upstream_code,
            ) from exc
        except InvalidURI as exc:
            raise UpstreamUnavailable(f"upstream URL {url!r} is not a WebSocket URL") from exc
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {_safe_origin(url)!r} unreachable: {type(exc).__name__}: {exc}") from exc
        return cls(cast(LessonConnection, connection))

    async def send(self, payload: bytes) -> None:
        """Send one client event, serialised as UTF-8 JSON."""
        try:
            await self._connection.send_text(payload)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def messages(self) -> AsyncIterator[bytes]:
        """Server messages (JSON, undecoded) until the session closes; an unexpected close raises `UpstreamClosed`."""
        next_message = self._connection.next_message
        try:
            while True:
                yield await next_message()
        except ConnectionClosedOK:
            return
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        return self._connection.close_reason or ""

    async def close(self) -> None:
        await self._connection.close()


def _closed(exc: ConnectionClosed) -> UpstreamClosed:
    received = exc.rcvd
    code = received.code if received else None
    reason = received.reason if received else "no close frame"
    return UpstreamClosed(f"upstream closed the session: code {code}, reason {reason!r}",
                          received_code=code, received_reason=reason)


def _error_body(body: bytes | bytearray | None) -> tuple[str | None, str | None]:
    """The `error.code` and `error.message` of an OpenAI-style JSON error body, when there is one."""
    try:
        error = orjson.loads(body or b"").get("error") or {}
        return error.get("code"), error.get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None


def _safe_origin(url: str) -> str:
    # Only scheme and host reach the log: an Azure URL may carry a key in its query.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
