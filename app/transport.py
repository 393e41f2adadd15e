"""The server's end of every client connection: the bounds uvicorn leaves open, and what it does not give the app.

uvicorn parses HTTP (httptools) but bounds neither the time a client takes to send a request nor what the
server owes a client that stops reading. Once uvicorn has read a WebSocket's upgrade request, the connection
is the project's own `app.page_protocol.PageProtocol` (websockets' sans-I/O `ServerProtocol` serving ASGI). Two
asyncio protocols wrap these, by composition, and see every byte and every flow-control call first:

- `GuardedHTTP`: a request's head (request line and headers) and its body must arrive within
  `request_timeout_s`, the head must fit in `max_head_bytes`, the request line in `max_url_bytes` and each
  header line in `max_header_line_bytes`, each line counted with its CRLF; otherwise the client gets 408, 414
  (the request line) or 431 (the head or a header line) and the connection is closed. At `max_connections`
  open connections, a new one takes the place of the connection that has waited longest for its request to
  arrive (a half-sent request loses to a real one); when none is waiting, the new one gets 503.
- `GuardedWebSocket`: what the server owes a peer and cannot send (pongs to pings it never reads) is capped
  at `max_unsent_bytes`; past that the connection is dropped. The kernel's send buffer is fixed at
  `send_buffer_bytes` (seconds of a lesson's audio) instead of growing to megabytes for a peer that does
  not read. It is also the lesson's `PageConnection`: the app can see when a send would wait, drop the
  connection, or close it on a deadline, and take the page's data messages in the socket's callback
  (`deliver_messages`, `hold_messages`) and write its own without waiting (`send_now`): the short path that
  spares each frame of the page's audio a task's wake-up.

The app reaches its page's `PageConnection` through `current_page_connection()`: the wrapper sets a context
variable while uvicorn creates the connection's ASGI task, and the task keeps a copy of that context.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.pacing import LogThrottles
from app.page_protocol import PageProtocol
from app.security_headers import SECURITY_HEADERS

log = structlog.get_logger("lesson_relay")

_HEAD_END = b"\r\n\r\n"
# The refusals written here never reach the app's middleware: they carry its headers themselves.
_REFUSAL_HEADERS = "".join(f"{name.lower()}: {value}\r\n" for name, value in SECURITY_HEADERS)
_REASONS = {400: "Bad Request", 408: "Request Timeout", 414: "URI Too Long",
            431: "Request Header Fields Too Large", 503: "Service Unavailable"}
# After the server's half of a WebSocket closes, what the peer still sends is read (and dropped) this long:
# closing with unread bytes would reset the connection, and a reset can destroy the page's last frames.
_LINGER_S = 2.0
# ... or until this much has been read: a page's microphone sends about 100 kB in that time, a flood far more.
_LINGER_MAX_BYTES = 262_144
# A chunk-size line or a trailer line longer than this is not HTTP.
_MAX_CHUNK_LINE_BYTES = 1024
# A Content-Length longer than this is no length a body can have (2**64 has 20 digits); past 4300 digits
# int() itself refuses it.
_MAX_LENGTH_DIGITS = 20


@dataclass(frozen=True)
class TransportLimits:
    request_timeout_s: float = 10.0
    max_connections: int = 500
    max_head_bytes: int = 16_384
    max_url_bytes: int = 8_192
    # websockets' own limit on a handshake's header line: past it, it answers 431 into a buffer uvicorn never
    # writes, and the connection hangs unanswered, holding its place. Refused here first, for every request.
    max_header_line_bytes: int = 8_192
    # Far above what a lesson leaves unsent (its sends wait at the transport's 64 KiB high-water mark): only
    # bytes the server writes without waiting, pongs, can pile up this far.
    max_unsent_bytes: int = 1_048_576
    # About 2.5 s of the tutor's audio (48 kB/s) in flight to a page, far more than any network path holds.
    send_buffer_bytes: int = 131_072


class PageConnection(Protocol):
    """What the lesson's shell may do to its page's connection, beneath the ASGI messages."""

    @property
    def write_paused(self) -> bool:
        """True while the transport's buffer is over its high-water mark: the next send would wait."""

    def abort(self) -> None:
        """Drop the connection now; nothing more is sent."""

    def deliver_messages(self, on_message: Callable[[bytes | str], None] | None) -> None:
        """From now on give each data message (bytes, or text as `str`) to `on_message` as it is read, in the
        socket's callback, instead of queueing it for the ASGI `receive`; None queues them again. The disconnect
        still comes through `receive`."""

    def hold_messages(self, held: bool) -> None:
        """Stop (True) or resume (False) reading the socket while delivered messages cannot be carried out."""

    def send_now(self, message: bytes | str) -> bool:
        """Write one data message at once when the transport takes it without waiting; False, and nothing sent,
        when the send must be awaited (writes paused) or the socket is not open: the caller sends it through
        ASGI then."""

    def close_within(self, grace_s: float) -> None:
        """The close frame is sent: end the connection if the peer has not closed it within `grace_s`. Ending
        it (at once for 0) sends FIN when everything was sent and reads what the peer still sends for a
        moment, so a reset cannot destroy the page's last frames; else it drops the connection."""


_current_page: contextvars.ContextVar[PageConnection | None] = contextvars.ContextVar("page_connection",
                                                                                      default=None)


def current_page_connection() -> PageConnection | None:
    """The connection of the WebSocket whose ASGI task this is; None when served without `protocol_options`."""
    return _current_page.get()


def protocol_options(limits: TransportLimits) -> dict[str, Any]:
    """uvicorn `Config` options that put the guards in front of its HTTP and WebSocket protocols."""
    # The connection cap is kept here, when a connection is accepted, rather than with uvicorn's
    # `limit_concurrency`, which counts only once a request's head has arrived and never for a WebSocket.
    shared = _Shared(limits)
    return {
        "http": functools.partial(GuardedHTTP, shared=shared),
        "ws": functools.partial(GuardedWebSocket, shared=shared),
    }


@dataclass
class _Shared:
    """What every connection of one server shares: the limits, the waiting connections, the log's pace."""

    limits: TransportLimits
    # Connections whose request has not fully arrived, oldest first (a dict keeps insertion order).
    waiting: dict[GuardedHTTP, None] = field(default_factory=dict)
    _log_throttles: LogThrottles = field(default_factory=LogThrottles)

    def warn(self, event: str, kind: str, **fields: Any) -> None:
        """Log `event` at most once per interval for each `kind`, with how many were not logged."""
        not_logged = self._log_throttles.allow(f"{event}:{kind}", time.monotonic())
        if not_logged is not None:
            log.warning(event, **fields, not_logged_since=not_logged)


class GuardedHTTP(asyncio.Protocol):
    """uvicorn's httptools protocol behind a request size and time guard and a connection cap.

    The guard follows request boundaries on a keep-alive connection without parsing HTTP beyond what it
    needs: a head ends at the first blank line, a body is `Content-Length` bytes or chunked (RFC 9112 §7.1).
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, shared: _Shared) -> None:
        self._inner = HttpToolsProtocol(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        self._connections = server_state.connections
        self._shared = shared
        self._limits = shared.limits
        self._loop = _loop or asyncio.get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._attached = False
        self._refused = False
        self._head = bytearray()
        self._body: LengthBody | ChunkedBody | None = None
        self._requests = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if len(self._connections) >= self._limits.max_connections:
            oldest = next(iter(self._shared.waiting), None)
            if oldest is None:
                self._refuse(503, "connections at MAX_CONNECTIONS, none waiting for its request")
                return
            oldest._refuse(408, "its place was needed: connections at MAX_CONNECTIONS")
        self._attached = True
        self._inner.connection_made(self._transport)
        self._wait_for_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._request_arrived()
        if self._attached:
            self._inner.connection_lost(exc)

    def eof_received(self) -> None:
        if self._attached:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        if self._attached:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._attached:
            self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        position, size = 0, len(data)
        while position < size and not self._refused:
            if self._body is not None:
                try:
                    end, complete = self._body.feed(data, position)
                except ValueError as exc:
                    self._refuse(400, f"request body: {exc}")
                    return
                if complete:
                    self._body = None
                    self._request_arrived()
                self._inner.data_received(data[position:end])
                position = end
                continue
            end = self._take_head(data, position)
            if self._refused:
                return
            self._inner.data_received(data[position:end])
            position = end
            if transport.get_protocol() is not self:
                # Upgraded to WebSocket: what follows the handshake belongs to the new protocol.
                if position < size:
                    transport.get_protocol().data_received(data[position:])  # type: ignore[attr-defined]
                return

    def _take_head(self, data: bytes, position: int) -> int:
        """Add head bytes from `data[position:]`; where in `data` they stop (the head's end, or the data's)."""
        limits, head = self._limits, self._head
        self._wait_for_request()
        before = len(head)
        head += data[position:position + limits.max_head_bytes + 1 - before]
        end = head.find(_HEAD_END, max(0, before - 3))
        # Lines are counted with their CRLF, as websockets counts a handshake's (the request line too).
        line_end = head.find(b"\r\n")
        if line_end + 2 > limits.max_url_bytes or (line_end < 0 and len(head) > limits.max_url_bytes):
            self._refuse(414, f"request line over {limits.max_url_bytes} bytes")
            return position
        if end < 0:
            if len(head) > limits.max_head_bytes:
                self._refuse(431, f"request head over {limits.max_head_bytes} bytes")
                return position
            return position + len(head) - before
        # The header lines only: the request line is the URL's, judged above.
        header_lines = head[line_end + 2:end].split(b"\r\n")
        longest_line = max(map(len, header_lines)) + 2 if end > limits.max_header_line_bytes else 0
        if longest_line > limits.max_header_line_bytes:
            self._refuse(431, f"a header line over {limits.max_header_line_bytes} bytes")
            return position
        self._requests += 1
        self._body = _body_of(bytes(head[:end]))
        head.clear()
        if self._body is None:
            self._request_arrived()
        return position + end + len(_HEAD_END) - before

    def _wait_for_request(self) -> None:
        """A request is due: it must have fully arrived within the request timeout."""
        if self._timer is None:
            self._timer = self._loop.call_later(self._limits.request_timeout_s, self._on_timeout)
            self._shared.waiting[self] = None

    def _request_arrived(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._shared.waiting.pop(self, None)

    def _on_timeout(self) -> None:
        self._timer = None
        self._refuse(408, f"request not received within {self._limits.request_timeout_s} s")

    def _refuse(self, status: int, detail: str) -> None:
        transport = self._transport
        assert transport is not None
        self._refused = True
        self._request_arrived()
        self._shared.warn("request_refused", str(status), status=status, detail=detail, client=_peer(transport))
        # An answer only when no earlier request's response could be in flight on this connection.
        if self._requests == 0:
            reason = _REASONS[status]
            transport.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
                            f"{_REFUSAL_HEADERS}content-length: {len(reason)}\r\nconnection: close\r\n\r\n"
                            f"{reason}".encode())
            transport.close()
        else:
            transport.abort()


def _body_of(head: bytes) -> LengthBody | ChunkedBody | None:
    """How the body that follows this request head is framed; None when there is none."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            return ChunkedBody()
        if name == b"content-length":
            # A malformed or impossible length is left to the parser, which answers 400.
            digits = value.strip()
            length = int(digits) if digits.isdigit() and len(digits) <= _MAX_LENGTH_DIGITS else 0
    return LengthBody(length) if length else None


class LengthBody:
    """A body of `Content-Length` bytes."""

    def __init__(self, length: int) -> None:
        self._left = length

    def feed(self, data: bytes, position: int) -> tuple[int, bool]:
        """Take this body's bytes from `data[position:]`: where they stop, and whether the body is complete."""
        taken = min(self._left, len(data) - position)
        self._left -= taken
        return position + taken, not self._left


class ChunkedBody:
    """A chunked body: size lines, chunks (each with its CRLF), the last chunk, trailers, a blank line."""

    def __init__(self) -> None:
        self._line = bytearray()
        self._chunk_left = 0
        self._in_trailers = False

    def feed(self, data: bytes, position: int) -> tuple[int, bool]:
        """Take this body's bytes from `data[position:]`: where they stop, and whether the body is complete;
        `ValueError` when it is not chunked HTTP."""
        size = len(data)
        while position < size:
            if self._chunk_left:
                taken = min(self._chunk_left, size - position)
                self._chunk_left -= taken
                position += taken
                continue
            line_end = data.find(b"\n", position)
            self._line += data[position:size if line_end < 0 else line_end]
            if len(self._line) > _MAX_CHUNK_LINE_BYTES:
                raise ValueError(f"a chunked line over {_MAX_CHUNK_LINE_BYTES} bytes")
            if line_end < 0:
                return size, False
            position = line_end + 1
            line = bytes(self._line).rstrip(b"\r")
            self._line.clear()
            if self._in_trailers:
                if not line:
                    return position, True
                continue
            digits = line.partition(b";")[0].strip()
            if not digits or digits.strip(b"0123456789abcdefABCDEF"):
                raise ValueError(f"chunk size {digits[:20]!r} is not hexadecimal")
            chunk = int(digits, 16)
            # A chunk's data is followed by its own CRLF; the last (empty) chunk by the trailers.
            self._chunk_left = chunk + 2 if chunk else 0
            self._in_trailers = not chunk
        return position, False


class GuardedWebSocket(asyncio.Protocol):
    """The page's `PageProtocol` with a cap on unsent bytes; the page's `PageConnection`.

    websockets answers every ping with a pong written straight to the transport, with no backpressure: a
    client that floods pings and reads nothing would grow the server's write buffer without bound.
    """

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None, *, shared: _Shared) -> None:
        self._inner = inner = PageProtocol(config, server_state, app_state, _loop)
        # The lesson's short path is the page protocol's own: no call through this wrapper per message.
        self.deliver_messages = inner.deliver_messages
        self.hold_messages = inner.hold_messages
        self.send_now = inner.send_now
        self._shared = shared
        self._loop = _loop or asyncio.get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self._lingering = False
        self._lingered_bytes = 0
        self._close_timer: asyncio.TimerHandle | None = None

    @property
    def write_paused(self) -> bool:
        return self._inner.write_paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A fixed size also stops the kernel growing it (to 4 MB on Linux) for a peer that reads nothing.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._shared.limits.send_buffer_bytes)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                # Small frames go at once: with Nagle a frame sent right after another waits for the page's
                # delayed ACK (40 ms on Linux). asyncio sets this only on sockets made with IPPROTO_TCP, and
                # uvicorn's listening socket is not.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._inner.connection_lost(exc)

    def eof_received(self) -> None:
        # Returning None closes the transport: after the peer's FIN there is nothing more to wait for.
        if not self._lingering:
            self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > _LINGER_MAX_BYTES:
                transport.abort()
            return
        inner = self._inner
        if inner.app_started:
            inner.data_received(data)
        else:
            # The handshake creates the connection's ASGI task, which copies this context.
            token = _current_page.set(self)
            try:
                inner.data_received(data)
            finally:
                _current_page.reset(token)
        unsent = transport.get_write_buffer_size()
        if unsent > self._shared.limits.max_unsent_bytes and not self._lost:
            self._shared.warn("connection_dropped", "not_reading", why="the peer reads nothing it asked for",
                              unsent_bytes=unsent, client=_peer(transport))
            self.abort()

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
        elif transport.can_write_eof() and not self._lingering:
            # FIN after the close frame: the page has all it was sent; its own last bytes are read and dropped.
            self._lingering = True
            transport.write_eof()
            self._close_timer = self._loop.call_later(_LINGER_S, transport.close)
        else:
            transport.close()


def _peer(transport: asyncio.BaseTransport) -> str | None:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) else None
