"""The page's WebSocket served to the app over ASGI: websockets' sans-I/O `ServerProtocol` on uvicorn's transport.

uvicorn parses an upgrade request's head and hands the connection to its `ws` protocol class; from there
`PageProtocol` owns it, driving `websockets.server.ServerProtocol` through its public API (`receive_data`,
`events_received`, `data_to_send`, `accept`, `reject`, `send_*`), as `app.upstream` drives the client's; a whole
text or binary message is framed and parsed by `app.ws_frames` instead, every other frame still by websockets. It
keeps what uvicorn's own websockets-sansio protocol does wherever the app or an operator sees it:

- the ASGI scope as uvicorn builds it (addresses, scheme, root path, path, query, headers, subprotocols, the
  lifespan state, the `websocket.http.response` extension), run through uvicorn's loaded app (its proxy
  headers middleware included);
- the handshake's answer: 101 with the app's headers and subprotocol on `websocket.accept`, 403 on
  `websocket.close` before it, the app's own response on `websocket.http.response.*`, 500 when the app fails
  or returns before answering (and where uvicorn's drops the socket of an app that fails after the accept,
  a close 1011, so the page can tell a server fault from a lost network);
- uvicorn's log lines for a handshake's answer and a failing app, on its logger;
- flow control: reading pauses while a data message waits for `receive`, and `send` waits while the
  transport's buffer is over its high-water mark;
- `ws_max_size` (close 1009), protocol errors (1002), invalid UTF-8 (1007), keepalive pings every
  `ws_ping_interval` with `ws_ping_timeout` to answer (else close 1011), permessage-deflate only when
  `ws_per_message_deflate` asks for it;
- the closing handshake from either side, and the ASGI `websocket.disconnect` codes uvicorn gives;
- uvicorn's bookkeeping (`server_state.connections` and `tasks`) and `shutdown()`: an open socket is closed
  with 1012 (service restart), one still opening is answered 500.

Beyond ASGI it offers the lesson a short path (`deliver_messages`, `hold_messages`, `send_now`): data messages
handed to a callback as they are read, the socket held (not read) while the lesson cannot take more, and data
written at once when the transport takes it without waiting. The disconnect still comes through `receive`.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import struct
from collections import deque
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import quote, unquote

from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.datastructures import Headers
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from app.ws_frames import WHOLE_BINARY, WHOLE_TEXT, server_frame, split_frames

# uvicorn's own logger: the app's logging set-up filters and formats its lines (app.logging).
_server_log = logging.getLogger("uvicorn.error")
# How long the peer has to answer the server's close frame before the connection is closed.
CLOSE_TIMEOUT_S = 10.0
# Compared with every frame's opcode and state: an enum member read from its class takes ~0.1 µs on Python 3.11.
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY
_OPEN = State.OPEN

Message = dict[str, Any]


class PageDisconnected(OSError):
    """`send` on a connection that has ended (ASGI: a server-specific subclass of OSError)."""


class PageProtocol(asyncio.Protocol):
    """One WebSocket connection served to the ASGI app; built by uvicorn as its `ws` protocol."""

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        if not config.loaded:
            config.load()
        self._app = config.loaded_app
        self._root_path = config.root_path
        self._asgi_version = config.asgi_version
        self._ping_interval_s = config.ws_ping_interval
        self._ping_timeout_s = config.ws_ping_timeout
        self._app_state = app_state
        # uvicorn's server calls `shutdown()` on each and waits for the set to empty; its type names only its own.
        self._connections = cast(set[Any], server_state.connections)
        self._tasks = server_state.tasks
        self._default_headers = server_state.default_headers
        self._loop = _loop or asyncio.get_event_loop()
        extensions = [ServerPerMessageDeflateFactory(server_max_window_bits=12, client_max_window_bits=12,
                                                     compress_settings={"memLevel": 5})
                      ] if config.ws_per_message_deflate else []
        self.protocol = ServerProtocol(extensions=extensions, max_size=config.ws_max_size, logger=_server_log)
        self._max_size = config.ws_max_size
        # Whole messages framed and parsed by `app.ws_frames` (no extension can be in use); `_splitting` from the
        # end of the upgrade request on, `_unsplit` the incomplete frame read so far.
        self._frames_here = not extensions
        self._splitting = False
        self._unsplit = b""
        self.transport: asyncio.Transport | None = None
        self._server: tuple[str, int | None] | None = None
        self._client: tuple[str, int] | None = None
        self._scheme = "ws"
        self._scope: Message = {}
        # The 101 answer, sent when the app accepts.
        self._response: Response | None = None
        # The app's own answer (`websocket.http.response.start`): status, headers, body so far.
        self._denial: tuple[int, list[tuple[str, str]], bytes] | None = None
        self._answered = False
        self._close_sent = False
        self._disconnected = False
        self._inbox: deque[Message] = deque()
        self._reader: asyncio.Future[None] | None = None
        self._read_paused = False
        # True while the transport's buffer is over its high-water mark; `send` then waits on `_writable`, made
        # only when one has to wait (an idle socket keeps no future).
        self.write_paused = False
        self._writable: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Keepalive: the next ping, or the deadline of the one in flight (its payload in `_ping_payload`).
        self._keepalive: asyncio.TimerHandle | None = None
        self._ping_payload: bytes | None = None
        # A fragmented message's frames so far (empty between messages), and whether it is text.
        self._fragments: list[bytes] = []
        self._fragments_text = False
        # The app's task has started: the handshake is behind and the scope built.
        self.app_started = False
        # Where data messages go instead of `receive` (`deliver_messages`), and whether reading is held for it.
        self._on_message: Callable[[bytes | str], None] | None = None
        self._held = False

    # asyncio's callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)
        self._connections.add(self)
        self._server = _local_address(transport)
        self._client = _remote_address(transport)
        self._scheme = "wss" if transport.get_extra_info("sslcontext") else "ws"

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_keepalive()
        self._put({"type": "websocket.disconnect", "code": 1005 if self._answered else 1006})
        self._connections.discard(self)
        self._answered = True
        self._disconnected = True
        # A transport lost while paused never resumes writing: a waiting `send` must wake to fail.
        self.resume_writing()
        self._cancel_close_timer()
        if exc is None and self.transport is not None:
            self.transport.close()

    def eof_received(self) -> None:
        """Returning None closes the transport."""

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        writable, self._writable = self._writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._splitting:
            unsplit = self._unsplit
            self._unsplit = split_frames(self, unsplit + data if unsplit else data, masked=True,
                                         max_size=self._max_size)
        else:
            self.parse_frames(data)

    # Frames: whole messages here, the rest through websockets (app.ws_frames)

    def between_messages(self) -> bool:
        return self.protocol.state is _OPEN and not self._fragments

    def whole_message(self, text: bool, payload: bytes) -> bool:
        self._fragments_text = text
        return self._message(payload)

    def parse_frames(self, data: bytes) -> bool:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if not self._frame(event):
                    return False
            elif isinstance(event, Request):
                self._open(event)
        if protocol.parser_exc is not None:
            self._failed()
            return False
        if protocol.handshake_exc is not None and not self._answered:
            # A request websockets could not parse: its refusal is queued, and the connection ends.
            self._answered = self._close_sent = True
            self._flush()
            self.transport.close()  # type: ignore[union-attr]
            return False
        self._flush()
        return True

    def stop_splitting(self) -> None:
        self._splitting = False

    # uvicorn's server

    def shutdown(self) -> None:
        """The server is stopping: close an open socket with 1012, answer one still opening with 500."""
        self._stop_keepalive()
        transport = self.transport
        assert transport is not None
        if self._close_sent:
            self._cancel_close_timer()
        elif self._answered:
            self._put({"type": "websocket.disconnect", "code": 1012})
            self.protocol.send_close(1012)
            self._flush()
        else:
            self._answer_500()
        transport.close()

    # ASGI

    async def receive(self) -> Message:
        while not self._inbox:
            self._reader = self._loop.create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        message = self._inbox.popleft()
        if self._read_paused and not self._inbox:
            self._read_paused = False
            self._update_reading()
        return message

    async def send(self, message: Message) -> None:
        if self.write_paused:
            if self._writable is None:
                self._writable = self._loop.create_future()
            # Shielded: a sender cancelled (its deadline) must not cancel the future other senders wait on.
            await asyncio.shield(self._writable)
        if self._disconnected:
            raise PageDisconnected
        kind = message["type"]
        if self._denial is not None:
            self._send_denial_body(message)
        elif not self._answered:
            if kind == "websocket.accept":
                self._accept(message)
            elif kind == "websocket.close":
                self._refuse()
            elif kind == "websocket.http.response.start":
                self._start_denial(message)
            else:
                raise RuntimeError("Expected ASGI message 'websocket.accept', 'websocket.close' or "
                                   f"'websocket.http.response.start' but got '{kind}'.")
        elif not self._close_sent:
            try:
                if kind == "websocket.send":
                    self._send_data(message)
                elif kind == "websocket.close":
                    self._close(message.get("code", 1000), message.get("reason") or "")
                else:
                    raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', "
                                       f"but got '{kind}'.")
            except InvalidState as exc:
                raise PageDisconnected from exc
        else:
            raise RuntimeError(f"Unexpected ASGI message '{kind}', after sending 'websocket.close'.")

    async def _run_asgi(self) -> None:
        try:
            result = await self._app(self._scope, self.receive, self.send)
        except PageDisconnected:
            pass
        except BaseException:
            _server_log.exception("Exception in ASGI application\n")
            self._answer_crash()
        else:
            if not self._answered:
                _server_log.error("ASGI callable returned without completing handshake.")
                self._answer_500()
            elif result is not None:
                _server_log.error("ASGI callable should return None, but returned '%s'.", result)
        if self._close_timer is None and self.transport is not None:
            self.transport.close()

    # The handshake

    def _open(self, request: Request) -> None:
        transport = self.transport
        assert transport is not None
        response = self.protocol.accept(request)
        if response.status_code != 101:
            # Not a WebSocket handshake websockets can answer: its own refusal, and the connection ends.
            self._answered = self._close_sent = True
            self.protocol.send_response(response)
            self._flush()
            transport.close()
            return
        self._response = response
        raw_path, _, query = request.path.partition("?")
        subprotocols = [token.strip() for header in request.headers.get_all("Sec-WebSocket-Protocol")
                        for token in header.split(",")]
        self._scope = {
            "type": "websocket",
            "asgi": {"version": self._asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self._scheme,
            "server": self._server,
            "client": self._client,
            "root_path": self._root_path,
            "path": self._root_path + unquote(raw_path),
            "raw_path": self._root_path.encode("ascii") + raw_path.encode("ascii"),
            "query_string": query.encode("ascii"),
            # websockets decodes header values as ISO-8859-1.
            "headers": [(name.encode("ascii"), value.encode("latin-1"))
                        for name, value in request.headers.raw_items()],
            "subprotocols": subprotocols,
            "state": self._app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self._put({"type": "websocket.connect"})
        self.app_started = True
        # uvicorn handed over the request's bytes and nothing more: websockets holds no byte of a frame.
        self._splitting = self._frames_here
        task = self._loop.create_task(self._run_asgi())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self, message: Message) -> None:
        transport, response = self.transport, self._response
        assert transport is not None
        assert response is not None
        _server_log.info('%s - "WebSocket %s" [accepted]', *self._log_args())
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1"))
                   for name, value in [*self._default_headers, *message.get("headers", [])]]
        if subprotocol := message.get("subprotocol"):
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        del response.headers["Date"]
        response.headers.update(headers)
        if not transport.is_closing():
            self._answered = True
            self.protocol.send_response(response)
            self._flush()
            self._schedule_ping()

    def _refuse(self) -> None:
        """`websocket.close` before the accept: 403."""
        transport = self.transport
        assert transport is not None
        self._put({"type": "websocket.disconnect", "code": 1006})
        _server_log.info('%s - "WebSocket %s" 403', *self._log_args())
        self.protocol.send_response(self.protocol.reject(HTTPStatus.FORBIDDEN, ""))
        self._answered = self._close_sent = True
        self._flush()
        transport.close()

    def _start_denial(self, message: Message) -> None:
        status = message["status"]
        if not 100 <= status < 600:
            raise RuntimeError(f"Invalid HTTP status code '{status}' in response.")
        _server_log.info('%s - "WebSocket %s" %d', *self._log_args(), status)
        headers = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in message.get("headers", [])]
        self._denial = (status, headers, b"")

    def _send_denial_body(self, message: Message) -> None:
        transport, denial = self.transport, self._denial
        assert transport is not None
        assert denial is not None
        if self._close_sent:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}', after the response's body.")
        if message["type"] != "websocket.http.response.body":
            raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body' but got '{message['type']}'.")
        status, header_list, body = denial
        body += message["body"]
        self._denial = (status, header_list, body)
        if message.get("more_body", False):
            return
        headers = Headers(header_list)
        headers.setdefault("Date", email.utils.formatdate(usegmt=True))
        headers.setdefault("Connection", "close")
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("Content-Type", "text/plain; charset=utf-8")
        self._put({"type": "websocket.disconnect", "code": 1006})
        self.protocol.send_response(Response(status, _phrase(status), headers, body))
        self._close_sent = True
        self._flush()
        transport.close()

    def _answer_500(self) -> None:
        if self._denial is not None or self._answered:
            return
        self.protocol.send_response(self.protocol.reject(500, "Internal Server Error"))
        self._flush()

    def _answer_crash(self) -> None:
        """The app raised: a 500 before the handshake's answer, a 1011 close frame after it, so the page learns
        that the server failed rather than the network (a socket closed without a close frame reads 1006)."""
        if not self._answered:
            self._answer_500()
        elif not self._close_sent and self.protocol.state is State.OPEN:
            self.protocol.send_close(1011, "internal error")
            self._flush()
            self._close_sent = True

    # The short path: data messages in the socket's callback, data written at once

    def deliver_messages(self, on_message: Callable[[bytes | str], None] | None) -> None:
        """From now on give each data message (bytes, or text as `str`) to `on_message` as it is read, in the
        socket's callback, instead of queueing it for `receive`; None queues them again (and ends a hold). The
        disconnect, and what was queued before, still come through `receive`."""
        self._on_message = on_message
        if on_message is None:
            self.hold_messages(False)

    def hold_messages(self, held: bool) -> None:
        """Stop (True) or resume (False) reading the socket while delivered messages cannot be carried out."""
        if held is not self._held:
            self._held = held
            self._update_reading()

    def send_now(self, message: bytes | str) -> bool:
        """Write one data message at once if the transport takes it without waiting; False, and nothing sent,
        when a send would wait (writes paused) or the socket is not open: the caller awaits `send` then."""
        transport = self.transport
        if self.write_paused or self._close_sent or transport is None or transport.is_closing():
            return False
        if type(message) is bytes:
            return self._write_data(message, False)
        return self._write_data(cast(str, message).encode(), True)

    def _write_data(self, data: bytes, text: bool) -> bool:
        """Frame and write one data message; False, and nothing framed, unless the connection is open."""
        protocol = self.protocol
        if self._frames_here:
            if protocol.state is not _OPEN:
                return False
            self.transport.write(server_frame(WHOLE_TEXT if text else WHOLE_BINARY, data))  # type: ignore[union-attr]
            return True
        try:
            if text:
                protocol.send_text(data)
            else:
                protocol.send_binary(data)
        except InvalidState:  # not open (a close frame sent or received)
            return False
        self._flush()
        return True

    # Messages

    def _frame(self, frame: Frame) -> bool:
        """Take one frame; False when the connection failed on it."""
        opcode, payload = frame.opcode, bytes(frame.data)
        if opcode is _BINARY or opcode is _TEXT:
            self._fragments_text = opcode is _TEXT
            if not frame.fin:
                self._fragments = [payload]
                return True
            data = payload  # nearly every message: one frame, no list built
        elif opcode is Opcode.CONT:
            self._fragments.append(payload)
            if not frame.fin:
                return True
            data = b"".join(self._fragments)
            self._fragments = []
        elif opcode is Opcode.PONG:
            self._pong(payload)
            return True
        elif opcode is Opcode.CLOSE:
            self._peer_closed()
            return True
        else:
            return True  # a ping: websockets has queued its pong
        return self._message(data)

    def _message(self, data: bytes) -> bool:
        """A whole data message (text when `_fragments_text`); False when the connection failed on it."""
        if self._close_sent:
            # Past the app's close: dropped, and the socket is read on until the peer's close arrives.
            return True
        message: bytes | str = data
        if self._fragments_text:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                _server_log.exception("Invalid UTF-8 sequence received from client.")
                self.protocol.fail(1007, "invalid UTF-8")
                self._failed()
                return False
        on_message = self._on_message
        if on_message is not None:
            on_message(message)
            return True
        self._put({"type": "websocket.receive", "text" if self._fragments_text else "bytes": message})
        if not self._read_paused:
            self._read_paused = True
            self._update_reading()
        return True

    def _send_data(self, message: Message) -> None:
        data, text = message.get("bytes"), message.get("text")
        sent = True
        if data is not None:
            sent = self._write_data(data, False)
        elif text is not None:
            sent = self._write_data(text.encode(), True)
        if not sent:
            raise PageDisconnected

    def _close(self, code: int, reason: str) -> None:
        """The app's `websocket.close`: the close frame, then the peer has `CLOSE_TIMEOUT_S` to answer it."""
        transport = self.transport
        assert transport is not None
        if transport.is_closing():
            return
        self._put({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.protocol.send_close(code, reason)
        self._flush()
        self._close_sent = True
        # Read on whatever waits, so the peer's answering close frame is seen.
        self._update_reading()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_S, transport.close)

    def _peer_closed(self) -> None:
        transport = self.transport
        assert transport is not None
        if self._close_sent:
            # The answer to the app's close frame: the closing handshake is complete.
            if self._close_timer is not None:
                self._cancel_close_timer()
                transport.close()
            return
        if transport.is_closing():
            return
        received = self.protocol.close_rcvd
        assert received is not None
        self._put({"type": "websocket.disconnect", "code": received.code, "reason": received.reason})
        self._flush()  # websockets' answering close frame
        transport.close()

    def _failed(self) -> None:
        """websockets failed the connection (a protocol error, a message too big, invalid UTF-8)."""
        transport = self.transport
        assert transport is not None
        sent = self.protocol.close_sent
        if sent is not None:
            self._put({"type": "websocket.disconnect", "code": sent.code, "reason": sent.reason})
        self._flush()
        self._close_sent = True
        transport.close()

    # Keepalive

    def _schedule_ping(self) -> None:
        if self._ping_interval_s:
            self._keepalive = self._loop.call_later(self._ping_interval_s, self._ping)

    def _ping(self) -> None:
        self._keepalive = None
        transport = self.transport
        if self._close_sent or transport is None or transport.is_closing():
            return
        # A random payload tells this ping's pong from stale or unsolicited ones.
        self._ping_payload = struct.pack("!I", random.getrandbits(32))
        self.protocol.send_ping(self._ping_payload)
        self._flush()
        if self._ping_timeout_s is None:
            self._schedule_ping()
        else:
            self._keepalive = self._loop.call_later(self._ping_timeout_s, self._ping_unanswered)

    def _pong(self, payload: bytes) -> None:
        if self._ping_payload is None or payload != self._ping_payload:
            return
        self._ping_payload = None
        if self._ping_timeout_s is not None:
            self._stop_keepalive()
            self._schedule_ping()

    def _ping_unanswered(self) -> None:
        self._keepalive = None
        self._ping_payload = None
        transport = self.transport
        if self._close_sent or transport is None or transport.is_closing():
            return
        self.protocol.fail(1011, "keepalive ping timeout")
        self._flush()
        self._close_sent = True
        transport.close()

    def _stop_keepalive(self) -> None:
        if self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None
        self._ping_payload = None

    # Plumbing

    def _put(self, message: Message) -> None:
        self._inbox.append(message)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def _flush(self) -> None:
        transport = self.transport
        assert transport is not None
        # The end of the stream (an empty write) is the transport's close, which the callers do.
        data = b"".join(self.protocol.data_to_send())
        if data:
            transport.write(data)

    def _update_reading(self) -> None:
        """Read the socket unless a message waits for `receive` or the app holds it; past the close, read on."""
        transport = self.transport
        if transport is None:
            return
        if (self._read_paused or self._held) and not self._close_sent:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _cancel_close_timer(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _log_args(self) -> tuple[str, str]:
        """The client (after proxy headers) and the path with its query, as uvicorn's log lines print them."""
        client = self._scope.get("client")
        path = quote(self._scope.get("path", ""))
        query = self._scope.get("query_string", b"")
        return f"{client[0]}:{client[1]}" if client else "", f"{path}?{query.decode('ascii')}" if query else path


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _local_address(transport: asyncio.Transport) -> tuple[str, int | None] | None:
    address = transport.get_extra_info("sockname")
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return (address, None) if isinstance(address, str) else None


def _remote_address(transport: asyncio.Transport) -> tuple[str, int] | None:
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None
