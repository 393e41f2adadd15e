"""A relay whose audio path runs in the sockets' callbacks: how low a relay's CPU per frame goes in Python.

Target ``callback``. Both legs are websockets' sans-I/O protocols on asyncio protocols, with no ASGI, no
task and no queue between the two sockets: a page's binary frame becomes an ``input_audio_buffer.append``
written upstream inside the page socket's ``data_received``, and an upstream audio delta is decoded and
written to the page inside the upstream socket's. Every message is framed, parsed, JSON-decoded and
base64-coded as in the product, so its CPU per frame round trip is what that work costs on this event loop
and kernel — a lower bound for a Python relay doing the product's work, which the product (served
through ASGI, with its deadlines, pacing, records and lesson logic) cannot go below. It speaks just enough
of the browser protocol for the bench's students (a greeting with ``audio.start`` and ``audio.done``, the
microphone opened by the greeting's ``playback`` report) and leaves out what a product needs: flow
control, limits, errors, logs.

``python -m bench.callback_relay --upstream-port N --port 0`` prints ``{"port": M}`` on stdout and relays
every connection to the echo upstream at 127.0.0.1:N until SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from app import protocol as realtime
from bench import listener_main

SESSION_UPDATE = orjson.dumps({"type": "session.update", "session": {
    "type": "realtime", "instructions": "Greet the student.", "output_modalities": ["audio"],
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
              "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"}}}})
RESPONSE_CREATE = orjson.dumps({"type": "response.create"})
PCM_BYTES_PER_MS = 48  # 24 kHz, 16-bit mono


def _write(transport: asyncio.Transport | None, protocol: ServerProtocol | ClientProtocol) -> None:
    if transport is not None and not transport.is_closing():
        transport.writelines(protocol.data_to_send())


class PageLeg(asyncio.Protocol):
    """The student's socket: its handshake opens the lesson's upstream leg."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self.ws = ServerProtocol(max_size=65_536)
        self.transport: asyncio.Transport | None = None
        self.upstream: UpstreamLeg | None = None
        self.microphone_open = False
        self.greeting_item: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if type(event) is Frame:
                if event.opcode is Opcode.BINARY:
                    upstream = self.upstream
                    if self.microphone_open and upstream is not None:
                        upstream.send(realtime.audio_append(event.data))
                elif event.opcode is Opcode.TEXT:
                    self._page_message(orjson.loads(event.data))
            elif isinstance(event, Request):
                ws.send_response(ws.accept(event))
                asyncio.get_running_loop().create_task(self._open_upstream())
        _write(self.transport, ws)

    def _page_message(self, message: dict[str, object]) -> None:
        if message.get("type") == "playback" and message.get("item_id") == self.greeting_item:
            self.microphone_open = True

    def send_binary(self, pcm: bytes) -> None:
        self.ws.send_binary(pcm)
        _write(self.transport, self.ws)

    def send_json(self, message: dict[str, object]) -> None:
        self.ws.send_text(orjson.dumps(message))
        _write(self.transport, self.ws)

    async def _open_upstream(self) -> None:
        uri = parse_uri(self.upstream_url)
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: UpstreamLeg(self, ClientProtocol(uri)), uri.host, uri.port)
        except OSError:
            if self.transport is not None:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.transport is not None:
            with contextlib.suppress(InvalidState):  # the session is closing already
                upstream.ws.send_close(CloseCode.NORMAL_CLOSURE)
            _write(upstream.transport, upstream.ws)
            upstream.transport.close()


class UpstreamLeg(asyncio.Protocol):
    """The lesson's Realtime session: set up, greeted, then every audio delta straight to the page."""

    def __init__(self, page: PageLeg, ws: ClientProtocol) -> None:
        self.page = page
        self.ws = ws
        self.transport: asyncio.Transport | None = None
        self.greeting_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.page.upstream = self
        request = self.ws.connect()
        request.headers["Authorization"] = "Bearer sk-bench-fake"
        self.ws.send_request(request)
        _write(self.transport, self.ws)

    def send(self, message: bytes) -> None:
        self.ws.send_text(message)
        _write(self.transport, self.ws)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if type(event) is Frame:
                if event.opcode is Opcode.TEXT:
                    self._server_event(orjson.loads(event.data))
            elif isinstance(event, Response):
                self.send(SESSION_UPDATE)
        _write(self.transport, ws)

    def _server_event(self, event: dict[str, str]) -> None:
        page = self.page
        kind = event["type"]
        if kind == "response.output_audio.delta":
            pcm = realtime.decode_audio(event["delta"])
            if not page.microphone_open:
                if page.greeting_item is None:
                    page.greeting_item = event["item_id"]
                    page.send_json({"type": "audio.start", "item_id": event["item_id"]})
                self.greeting_bytes += len(pcm)
            page.send_binary(pcm)
        elif kind == "session.updated":
            self.send(RESPONSE_CREATE)
        elif kind == "response.output_audio.done" and event["item_id"] == page.greeting_item:
            page.send_json({"type": "audio.done", "item_id": event["item_id"],
                            "duration_ms": self.greeting_bytes // PCM_BYTES_PER_MS})

    def connection_lost(self, exc: Exception | None) -> None:
        if self.page.transport is not None:
            self.page.transport.close()


async def open_callback_relay(upstream_port: int, port: int = 0) -> asyncio.Server:
    """A listening callback relay to the echo upstream at 127.0.0.1:`upstream_port` (`port` 0: any free port)."""
    upstream_url = f"ws://127.0.0.1:{upstream_port}/v1/realtime?model=gpt-realtime-bench"
    return await asyncio.get_running_loop().create_server(lambda: PageLeg(upstream_url), "127.0.0.1", port)


def main() -> None:
    listener_main("python -m bench.callback_relay", __doc__, open_callback_relay)


if __name__ == "__main__":
    main()
