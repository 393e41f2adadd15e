"""RealtimeClient: one WebSocket session with the OpenAI Realtime API (GA interface).

It knows the URL, headers, frame limits, keepalive and timeouts, and translates every foreign failure
(websockets, OSError, timeouts) into the project's `UpstreamError` tree. It knows nothing of lessons.

The connection is websockets' sans-I/O client protocol (`websockets.client.ClientProtocol`, its public
API for bringing one's own I/O) driven by `UpstreamConnection`, an asyncio protocol with a lesson's short
path: complete messages are given to the lesson's callback as they are read (`deliver_messages`), or wait in a
deque for the lesson's one reader, which stops the socket being read while too many are unread; a message is
written the moment it is sent. Whole text messages are framed and parsed by `app.ws_frames`; every other frame,
control frames and the closing handshake are the sans-I/O protocol's; keepalive pings are sent from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Literal, cast
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidState, InvalidStatus, InvalidURI
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from app.errors import UpstreamClosed, UpstreamRefused, UpstreamUnavailable
from app.ws_frames import WHOLE_TEXT, client_frame, split_frames

# Keepalive: a ping every 20 s keeps idle proxies from cutting a lesson during a long pause; no pong
# within 20 s and the connection is given up.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0
# A server that takes nothing of what is waiting to be sent for this long has stopped reading: the lesson
# would hear nothing of the student meanwhile, so the session is given up (and the lesson opens another).
SEND_TIMEOUT_S = 10.0
# Unread server messages past which the socket stops being read (TCP then slows the server down).
INBOX_HIGH_WATER = 64
INBOX_LOW_WATER = 16
# How long the server gets to close TCP once the closing handshake is under way.
CLOSE_TIMEOUT_S = 2.0
NORMAL_CLOSE_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY})
DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY})
# Reading an enum member from its class takes ~0.1 µs on Python 3.11: the flush of every read uses this one.
_OPEN = State.OPEN
# The largest frame split here (`app.ws_frames`): a larger one, and everything after it, websockets parses.
SPLIT_MAX_BYTES = 16 * 2**20
_HEAD_END = b"\r\n\r\n"


def realtime_url(base_url: str, model: str) -> str:
    """`base_url` with `model=` added to its query (Azure's deployment name goes there too)."""
    parts = urlsplit(base_url)
    query = f"{parts.query}&{urlencode({'model': model})}" if parts.query else urlencode({"model": model})
    return urlunsplit(parts._replace(query=query))


def auth_headers(api_key: str, scheme: Literal["bearer", "api-key"]) -> dict[str, str]:
    # GA interface: no OpenAI-Beta header (the beta shape is switched off and answers with close 4000).
    return {"api-key": api_key} if scheme == "api-key" else {"Authorization": f"Bearer {api_key}"}


class UpstreamConnection(asyncio.Protocol):
    """A `ClientProtocol` on an asyncio transport: handshake, one-reader inbox, direct sends, keepalive, close."""

    def __init__(self, protocol: ClientProtocol) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = protocol
        self.transport: asyncio.Transport | None = None
        # Whole messages are split here (`app.ws_frames`) once websockets has read the handshake's answer and no
        # byte more (`_head_tail`: the answer's last bytes read so far, where its end may begin); `_unsplit` is the
        # incomplete frame read since.
        self._head_tail = b""
        self._splitting = False
        self._unsplit = b""
        self.inbox: deque[bytes] = deque()
        self.reading_paused = False
        self.on_message: Callable[[bytes], None] | None = None
        self._held = False
        self.response_received: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._fragments: list[bytes] = []
        self._reader: asyncio.Future[None] | None = None
        # True while the transport's buffer is over its high-water mark: a send then waits on `_writable`, made
        # only when one has to wait.
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Keepalive on the loop's timers, not a task: the next ping, or the deadline of the one unanswered.
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_interval_s = 0.0
        self._pong_timeout_s = 0.0
        self._ping_payload: bytes | None = None
        # Why this side gave the connection up, when it did (a server that stopped answering or reading).
        self.failure: str | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._splitting:
            unsplit = self._unsplit
            self._unsplit = split_frames(self, unsplit + data if unsplit else data, masked=False,
                                         max_size=SPLIT_MAX_BYTES)
        elif self.response_received.done():
            self.parse_frames(data)
        else:
            self._take_head(data)

    def _take_head(self, data: bytes) -> None:
        """The handshake's answer: websockets is given its bytes and no more, and what follows a 101 is split."""
        tail = self._head_tail
        end = (tail + data).find(_HEAD_END)
        if end < 0:
            self._head_tail = (tail + data)[-(len(_HEAD_END) - 1):]
            self.parse_frames(data)
            return
        self._head_tail = b""
        cut = end + len(_HEAD_END) - len(tail)
        self.parse_frames(data[:cut])
        rest = data[cut:]
        if self.protocol.state is _OPEN:
            self._splitting = True
            self._unsplit = split_frames(self, rest, masked=False, max_size=SPLIT_MAX_BYTES)
        elif rest:
            self.parse_frames(rest)

    # -- frames: whole messages here, the rest through websockets (app.ws_frames) ---------------------------------

    def between_messages(self) -> bool:
        return self.protocol.state is _OPEN and not self._fragments

    def whole_message(self, text: bool, payload: bytes) -> bool:
        self._deliver(payload)
        return True

    def parse_frames(self, data: bytes) -> bool:
        protocol = self.protocol
        protocol.receive_data(data)
        events = protocol.events_received()
        self.flush()  # automatic replies: pongs, the close frame echoed
        for event in events:
            if type(event) is Frame:
                self._frame_received(event)
            elif isinstance(event, Response) and not self.response_received.done():
                self.response_received.set_result(None)
        return True

    def stop_splitting(self) -> None:
        self._splitting = False

    def eof_received(self) -> None:
        self.protocol.receive_eof()
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the protocol's state is now CLOSED
        for future in (self.response_received, self.lost):
            if not future.done():
                future.set_result(None)
        for timer in (self._close_timer, self._keepalive):
            if timer is not None:
                timer.cancel()
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    # -- frames in, bytes out -----------------------------------------------------------------------

    def _frame_received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode in DATA_OPCODES:
            if frame.fin:
                self._deliver(bytes(frame.data))
            else:
                self._fragments = [bytes(frame.data)]
        elif opcode is Opcode.CONT:
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                self._deliver(b"".join(self._fragments))
                self._fragments = []
        elif opcode is Opcode.PONG:
            if self._ping_payload is not None and frame.data == self._ping_payload:
                self._ping_payload = None
                self._schedule_ping()
        elif opcode is Opcode.CLOSE:
            self._wake_reader()

    def _deliver(self, message: bytes) -> None:
        on_message = self.on_message
        if on_message is not None:
            on_message(message)
            return
        self.inbox.append(message)
        self._wake_reader()
        if len(self.inbox) >= INBOX_HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def flush(self) -> None:
        """Write what the protocol has to send; once it expects TCP to close, give the server a deadline."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    transport.write_eof()
            else:
                transport.close()
        # An open connection expects no close: `close_expected` is asked only once it is not.
        if self._close_timer is None and self.protocol.state is not _OPEN and self.protocol.close_expected():
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, transport.abort)

    def send_text(self, payload: bytes) -> None:
        """Frame one text message and write it; `InvalidState` unless the connection is open. A data frame starts
        no closing handshake, so unlike `flush` this sets no close deadline."""
        protocol = self.protocol
        if protocol.state is not _OPEN:
            raise InvalidState(f"connection is {protocol.state.name.lower()}")
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(client_frame(WHOLE_TEXT, payload))

    # -- the lesson's side --------------------------------------------------------------------------

    def hold(self, held: bool) -> None:
        """Stop (True) or resume (False) reading the socket while delivered messages cannot be carried out."""
        transport = self.transport
        if held is self._held or transport is None or transport.is_closing():
            return
        self._held = held
        if held:
            transport.pause_reading()
        elif not self.reading_paused:
            transport.resume_reading()

    @property
    def receiving(self) -> bool:
        """More messages may come: no close frame received and the connection is there."""
        return self.protocol.close_rcvd is None and not self.lost.done()

    async def next_message(self) -> bytes | None:
        """The next complete server message; None once the connection is closing and all is read."""
        while not self.inbox:
            if not self.receiving:
                return None
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        if self.reading_paused and len(self.inbox) <= INBOX_LOW_WATER and self.transport is not None:
            self.reading_paused = False
            if not self._held:  # the lesson's hold outlasts the inbox's
                self.transport.resume_reading()
        return self.inbox.popleft()

    async def until_writable(self, timeout_s: float) -> None:
        """Return once the socket's send buffer has room again (at once when it has); a server that takes
        nothing for `timeout_s` is given up."""
        if not self.write_paused:
            return
        writable = self._writable
        if writable is None:
            writable = self._writable = asyncio.get_running_loop().create_future()
        # Not cancelled on time-out: other senders may wait on the same future.
        done, _ = await asyncio.wait((writable,), timeout=timeout_s)
        if not done:
            unsent = self.transport.get_write_buffer_size() if self.transport is not None else 0
            self.give_up(f"the server read nothing for {timeout_s:g} s ({unsent} bytes unsent)")

    def give_up(self, why: str) -> None:
        """End the connection now, for `why` (what the reader's `UpstreamClosed` then says)."""
        if self.failure is None:
            self.failure = why
        self.protocol.fail(CloseCode.INTERNAL_ERROR, why[:120])
        self.flush()
        if self.transport is not None:
            self.transport.abort()

    def start_keepalive(self, interval_s: float, timeout_s: float) -> None:
        """Ping `interval_s` after the last pong; a ping unanswered for `timeout_s` gives the server up."""
        self._ping_interval_s = interval_s
        self._pong_timeout_s = timeout_s
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
        self._keepalive = asyncio.get_running_loop().call_later(self._ping_interval_s, self._ping)

    def _ping(self) -> None:
        if self.protocol.state is not State.OPEN:
            return
        self._ping_payload = os.urandom(4)
        self.protocol.send_ping(self._ping_payload)
        self.flush()
        self._keepalive = asyncio.get_running_loop().call_later(self._pong_timeout_s, self._pong_overdue)

    def _pong_overdue(self) -> None:
        # A server that does not answer is gone: the reader learns it as a close without a frame.
        self.give_up(f"keepalive ping unanswered for {self._pong_timeout_s:g} s")


class RealtimeClient:
    """An open Realtime session: `messages()` yields server events as received; `send` serialised client events."""

    def __init__(self, connection: UpstreamConnection, send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self._connection = connection
        self._send_timeout_s = send_timeout_s

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
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> RealtimeClient:
        """Open the session or raise `UpstreamRefused` (HTTP status) / `UpstreamUnavailable`."""
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise UpstreamUnavailable(f"upstream URL {url!r} is not a WebSocket URL") from exc
        # Some server events (session.updated with long instructions, big deltas) exceed 1 MiB.
        protocol = ClientProtocol(uri, max_size=None)
        connection: UpstreamConnection | None = None
        try:
            async with asyncio.timeout(open_timeout_s):
                _, connection = await asyncio.get_running_loop().create_connection(
                    lambda: UpstreamConnection(protocol), uri.host, uri.port,
                    ssl=ssl.create_default_context() if uri.secure else None,
                    server_hostname=uri.host if uri.secure else None,
                )
                request = protocol.connect()
                request.headers.update(auth_headers(api_key, auth_scheme))
                request.headers["User-Agent"] = "lesson-relay"
                protocol.send_request(request)
                connection.flush()
                await connection.response_received
            if protocol.handshake_exc is not None:
                raise protocol.handshake_exc
        except InvalidStatus as exc:
            _abort(connection)
            status = exc.response.status_code
            upstream_code, message = _error_body(exc.response.body)
            raise UpstreamRefused(
                f"upstream refused the handshake with HTTP {status}: {message or exc.response.reason_phrase!r}",
                status=status, upstream_code=upstream_code,
            ) from exc
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            _abort(connection)
            raise UpstreamUnavailable(
                f"upstream {_safe_origin(url)!r} unreachable: {type(exc).__name__}: {exc}") from exc
        connection.start_keepalive(ping_interval_s, ping_timeout_s)
        return cls(connection, send_timeout_s)

    async def send(self, payload: bytes) -> None:
        """Send one client event, serialised as UTF-8 JSON; `UpstreamClosed` once the session is closing."""
        self._write(payload)
        connection = self._connection
        await connection.until_writable(self._send_timeout_s)
        if connection.failure is not None:
            raise self._closed()

    def deliver_messages(self, on_message: Callable[[bytes], None] | None) -> None:
        """From now on give each server message to `on_message` as it is read, in the socket's callback; `messages()`
        then yields only what was read before, and still ends (or raises) when the session closes."""
        self._connection.on_message = on_message
        if on_message is None:
            self._connection.hold(False)

    def hold_messages(self, held: bool) -> None:
        """Stop (True) or resume (False) reading while the delivered messages cannot be carried out."""
        self._connection.hold(held)

    def send_now(self, payload: bytes) -> bool:
        """`send` without waiting: False, and nothing sent, while the socket's send buffer is full (then `send`
        it); `UpstreamClosed` once the session is closing."""
        if self._connection.write_paused:
            return False
        self._write(payload)
        return True

    def _write(self, payload: bytes) -> None:
        connection = self._connection
        if connection.lost.done():
            raise self._closed()
        try:
            connection.send_text(payload)
        except InvalidState:  # the closing handshake has begun
            raise self._closed() from None

    async def messages(self) -> AsyncIterator[bytes]:
        """Server messages (JSON, undecoded) until the session closes; an unexpected close raises `UpstreamClosed`."""
        next_message = self._connection.next_message
        while (message := await next_message()) is not None:
            yield message
            del message  # not held while the next is awaited
        received = self._connection.protocol.close_rcvd
        if received is None or received.code not in NORMAL_CLOSE_CODES:
            raise self._closed()

    def _closed(self) -> UpstreamClosed:
        connection = self._connection
        received = connection.protocol.close_rcvd
        if received is not None:
            code, reason = received.code, received.reason
        else:
            code, reason = None, connection.failure or "no close frame"
        return UpstreamClosed(f"upstream closed the session: code {code}, reason {reason!r}",
                              received_code=code, received_reason=reason)

    @property
    def close_code(self) -> int | None:
        received = self._connection.protocol.close_rcvd
        return received.code if received is not None else None

    @property
    def close_reason(self) -> str:
        received = self._connection.protocol.close_rcvd
        return received.reason if received is not None else ""

    async def close(self) -> None:
        """Close the session (code 1000) and wait up to 2 s for the server to close the connection."""
        connection = self._connection
        if connection.protocol.state is State.OPEN:
            connection.protocol.send_close(CloseCode.NORMAL_CLOSURE)
            connection.flush()
        if connection.transport is not None and not connection.lost.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await connection.lost
            except TimeoutError:
                connection.transport.abort()


def _abort(connection: UpstreamConnection | None) -> None:
    if connection is not None and connection.transport is not None:
        connection.transport.abort()


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
