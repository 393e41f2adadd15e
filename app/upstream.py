"""RealtimeClient: one WebSocket session with the OpenAI Realtime API (GA interface).

It knows the URL, headers, frame limits, keepalive and timeouts, and translates every foreign failure
(picows, OSError, timeouts) into the project's `UpstreamError` tree. It knows nothing of lessons.

The connection is picows' (a WebSocket client whose framing and masking are compiled): frames arrive in
`UpstreamListener.on_ws_frame` on the event loop, and complete messages wait in a deque for the lesson's
one reader, which stops the socket being read while too many are unread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSInvalidURL,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from app.errors import UpstreamClosed, UpstreamRefused, UpstreamUnavailable

# Keepalive: a ping after 20 s without a byte from the upstream keeps idle proxies from cutting a lesson
# during a long pause; no pong within 20 s more and the connection is given up.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
# Unread server messages past which the socket stops being read (TCP then slows the server down).
INBOX_HIGH_WATER = 64
INBOX_LOW_WATER = 16
# Some server events (session.updated with long instructions, big deltas) exceed 1 MiB.
MAX_FRAME_BYTES = 64 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
NORMAL_CLOSE_CODES = frozenset({1000, 1001})
NO_STATUS_RECEIVED = 1005  # a close frame without a code (RFC 6455 7.4.1)
# picows says "Disconnected" at info for every connection: the lesson's own lines say it better.
logging.getLogger("picows").setLevel(logging.WARNING)


def realtime_url(base_url: str, model: str) -> str:
    """`base_url` with `model=` added to its query (Azure's deployment name goes there too)."""
    parts = urlsplit(base_url)
    query = f"{parts.query}&{urlencode({'model': model})}" if parts.query else urlencode({"model": model})
    return urlunsplit(parts._replace(query=query))


def auth_headers(api_key: str, scheme: Literal["bearer", "api-key"]) -> dict[str, str]:
    # GA interface: no OpenAI-Beta header (the beta shape is switched off and answers with close 4000).
    return {"api-key": api_key} if scheme == "api-key" else {"Authorization": f"Bearer {api_key}"}


class UpstreamListener(WSListener):
    """The lesson's side of one picows connection: messages whole into an inbox, the closing handshake answered."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.inbox: deque[bytes] = deque()
        self.reading_paused = False
        self.received_close: tuple[int, str] | None = None
        self.disconnected = False
        self._fragments: list[bytes] = []
        self._reader_waiter: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if frame.fin:
                self._deliver(frame.get_payload_as_bytes())
            else:
                self._fragments = [frame.get_payload_as_bytes()]
        elif kind is WSMsgType.CONTINUATION:
            self._fragments.append(frame.get_payload_as_bytes())
            if frame.fin:
                self._deliver(b"".join(self._fragments))
                self._fragments = []
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            received = NO_STATUS_RECEIVED if code is WSCloseCode.NO_INFO else code.value
            self.received_close = (received, frame.get_close_reason() or "")
            # Answer, then let the server close TCP (RFC 6455 7.1.1); `close()` bounds the wait.
            transport.send_close(WSCloseCode.OK if code is WSCloseCode.NO_INFO else code)
            self._wake_reader()

    def _deliver(self, message: bytes) -> None:
        self.inbox.append(message)
        self._wake_reader()
        if len(self.inbox) >= INBOX_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.underlying_transport.pause_reading()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.disconnected = True
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def _wake_reader(self) -> None:
        waiter = self._reader_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        """No more messages will come: the server sent its close frame, or the connection is gone."""
        return self.received_close is not None or self.disconnected

    async def next_message(self) -> bytes | None:
        """The next complete server message; None once the connection is closed and all is read."""
        while not self.inbox:
            if self.closed:
                return None
            self._reader_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._reader_waiter
            finally:
                self._reader_waiter = None
        if self.reading_paused and len(self.inbox) <= INBOX_LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.transport.underlying_transport.resume_reading()
        return self.inbox.popleft()

    async def until_writable(self) -> None:
        """Return once the socket's send buffer has room again (at once when it has)."""
        if self._writable is not None:
            await self._writable


class RealtimeClient:
    """An open Realtime session: `messages()` yields server events as received; `send` serialised client events."""

    def __init__(self, transport: WSTransport, listener: UpstreamListener) -> None:
        self._transport = transport
        self._listener = listener

    @classmethod
    async def connect(
        cls,
        *,
        url: str,
        api_key: str,
        auth_scheme: Literal["bearer", "api-key"],
        open_timeout_s: float,
        ping_interval_s: float = PING_INTERVAL_S,
        ping_timeout_s: float = PING_TIMEOUT_S,
    ) -> RealtimeClient:
        """Open the session or raise `UpstreamRefused` (HTTP status) / `UpstreamUnavailable`."""
        try:
            async with asyncio.timeout(open_timeout_s):
                transport, listener = await ws_connect(
                    UpstreamListener,
                    url,
                    extra_headers={**auth_headers(api_key, auth_scheme), "User-Agent": "lesson-relay"},
                    websocket_handshake_timeout=open_timeout_s,
                    enable_auto_ping=True,
                    auto_ping_idle_timeout=ping_interval_s,
                    auto_ping_reply_timeout=min(ping_timeout_s, ping_interval_s),
                    auto_ping_strategy=WSAutoPingStrategy.PING_WHEN_IDLE,
                    max_frame_size=MAX_FRAME_BYTES,
                    # A redirect would carry the key to another host: the Realtime endpoint never sends one.
                    max_redirects=0,
                    logger_name="upstream",
                )
        except WSHandshakeError as exc:
            status = int(exc.response.status) if exc.response is not None else None
            if status is None or status == 101:
                raise UpstreamUnavailable(
                    f"upstream {_safe_origin(url)!r} answered the handshake wrongly: {exc}") from exc
            upstream_code, message = _error_body(exc.raw_body)
            reason = exc.response.status.phrase if exc.response is not None else ""
            raise UpstreamRefused(
                f"upstream refused the handshake with HTTP {status}: {message or reason!r}",
                status=status, upstream_code=upstream_code,
            ) from exc
        except WSInvalidURL as exc:
            raise UpstreamUnavailable(f"upstream URL {url!r} is not a WebSocket URL") from exc
        except (WSError, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {_safe_origin(url)!r} unreachable: {type(exc).__name__}: {exc}") from exc
        assert isinstance(listener, UpstreamListener)
        return cls(transport, listener)

    async def send(self, payload: bytes) -> None:
        """Send one client event, serialised as UTF-8 JSON; `UpstreamClosed` once the session is closed."""
        listener = self._listener
        if listener.closed or self._transport.is_close_frame_sent:
            raise self._closed()
        self._transport.send(WSMsgType.TEXT, payload)
        await listener.until_writable()

    async def messages(self) -> AsyncIterator[bytes]:
        """Server messages (JSON, undecoded) until the session closes; an unexpected close raises `UpstreamClosed`."""
        next_message = self._listener.next_message
        while (message := await next_message()) is not None:
            yield message
        received = self._listener.received_close
        if received is None or received[0] not in NORMAL_CLOSE_CODES:
            raise self._closed()

    def _closed(self) -> UpstreamClosed:
        received = self._listener.received_close
        code, reason = received if received is not None else (None, "no close frame")
        return UpstreamClosed(f"upstream closed the session: code {code}, reason {reason!r}",
                              received_code=code, received_reason=reason)

    @property
    def close_code(self) -> int | None:
        received = self._listener.received_close
        return received[0] if received is not None else None

    @property
    def close_reason(self) -> str:
        received = self._listener.received_close
        return received[1] if received is not None else ""

    async def close(self) -> None:
        """Close the session (code 1000) and wait up to 2 s for the server to finish the closing handshake."""
        transport = self._transport
        if transport.is_disconnected:
            return
        if not transport.is_close_frame_sent:
            transport.send_close(WSCloseCode.OK)
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await transport.wait_disconnected()
        except TimeoutError:
            transport.disconnect(graceful=False)
        except WSError:
            pass  # a protocol failure already logged by picows; the connection is gone either way


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
