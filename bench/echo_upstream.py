"""An echo upstream: a local server speaking the GA OpenAI Realtime protocol over WebSocket.

It behaves like the real service where the relay can tell the difference, and echoes where the real
service would think:

- on connect: ``session.created``; a handshake with ``OpenAI-Beta: realtime=v1`` gets an ``error``
  (``beta_api_shape_disabled``) and close 4000, like the real service;
- ``session.update`` → ``session.updated`` with the whole effective session, or an ``error`` echoing the
  client ``event_id`` for a beta field name;
- ``response.create`` → a short greeting with the full GA event sequence (``response.created`` …
  interleaved ``response.output_audio.delta`` / ``response.output_audio_transcript.delta`` …
  ``response.done`` with usage); a second one while a response is active is refused
  (``conversation_already_has_active_response``);
- ``input_audio_buffer.append`` after that: the chunk comes straight back as a ``response.output_audio.delta``
  of one long-lived "echo" response (its ``response.created``, ``response.output_item.added``,
  ``conversation.item.added`` and ``response.content_part.added`` are sent once, before the first echo);
  the base64 is returned as received, never decoded, so the echo costs as little as possible;
- ``response.cancel`` ends the echo response (``response.done``, cancelled / client_cancelled).

`EchoSession` does no I/O (text in, texts out), so tests drive it without sockets; `serve_echo` puts it on
a socket. ``python -m bench.echo_upstream --port 0`` prints ``{"port": N}`` on stdout and serves until
SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, cast

import orjson
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from bench import flush, run_on_uvloop
from bench.markers import tone

REALTIME_PATH: Final = "/v1/realtime"
# A client event as it came off the socket: what `EchoSession.handle` parses.
ClientText = str | bytes | bytearray | memoryview
GREETING_CHUNK_MS: Final = 100
GREETING_CHUNKS: Final = 5  # 500 ms of greeting audio
GREETING_WORDS: Final = ("Hello! ", "I am ", "your bench ", "tutor. ", "Let's begin.")
GREETING_TRANSCRIPT: Final = "".join(GREETING_WORDS)
GREETING_AUDIO_B64: Final = base64.b64encode(tone(GREETING_CHUNK_MS)).decode("ascii")

# GA `session` fields a client may send; anything else (e.g. the beta `modalities`, `voice`,
# `input_audio_format`, `turn_detection` at the top level) is refused like the real service does.
SESSION_FIELDS: Final = frozenset(
    {
        "type", "model", "instructions", "output_modalities", "audio", "tools", "tool_choice",
        "max_output_tokens", "tracing", "prompt", "include", "truncation",
    }
)  # fmt: skip


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _dumps(event: dict[str, Any]) -> str:
    return orjson.dumps(event).decode()


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def default_session(model: str) -> dict[str, Any]:
    """The session the real service starts with: default instructions, voice alloy, server VAD."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": _new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "You are a helpful assistant.",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "idle_timeout_ms": None,
                    "create_response": True,
                    "interrupt_response": True,
                },
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
    }


class EchoSession:
    """One upstream connection's state: feed it client texts, send back what it returns, in order."""

    def __init__(self, *, model: str = "gpt-realtime-bench") -> None:
        self.session = default_session(model)
        self.conversation_id = _new_id("conv")
        self._event_ids: Iterator[int] = itertools.count(1)
        self._last_item_id: str | None = None
        self._active_response_id: str | None = None
        self.greeted = False
        self._echo_response_id: str | None = None
        self._echo_item_id: str | None = None
        self._echo_delta_prefix = ""
        self.echoed_chunks = 0

    # -- events out ---------------------------------------------------------------------------------

    def _event(self, event_type: str, **fields: Any) -> str:
        return _dumps({"type": event_type, "event_id": f"event_{next(self._event_ids)}", **fields})

    def error(self, code: str, message: str, *, client_event_id: str | None = None, param: str | None = None) -> str:
        """An ``error`` event; `client_event_id` echoes the ``event_id`` of the client event refused."""
        return self._event(
            "error",
            error={
                "type": "invalid_request_error",
                "code": code,
                "message": message,
                "param": param,
                "event_id": client_event_id,
            },
        )

    def created(self) -> str:
        """``session.created``: the first event on every connection."""
        return self._event("session.created", session=self.session)

    def _response(self, response_id: str, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        voice_output = self.session["audio"]["output"]
        return {
            "object": "realtime.response",
            "id": response_id,
            "status": status,
            "status_details": extra.pop("status_details", None),
            "output": output,
            "conversation_id": self.conversation_id,
            "output_modalities": self.session["output_modalities"],
            "max_output_tokens": "inf",
            "audio": {"output": {key: voice_output[key] for key in ("format", "voice") if key in voice_output}},
            "usage": extra.pop("usage", None),
            "metadata": None,
        }

    def _item(self, item_id: str, status: str, transcript: str | None) -> dict[str, Any]:
        content = [] if transcript is None else [{"type": "output_audio", "transcript": transcript}]
        return {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    def _open_response(self, response_id: str, item_id: str) -> list[str]:
        """Everything up to the first delta: response.created … response.content_part.added."""
        at = {"response_id": response_id, "output_index": 0}
        events = [
            self._event("response.created", response=self._response(response_id, "in_progress", [])),
            self._event(
                "rate_limits.updated",
                rate_limits=[
                    {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                    {"name": "tokens", "limit": 400000, "remaining": 399000, "reset_seconds": 0.15},
                ],
            ),
            self._event("response.output_item.added", **at, item=self._item(item_id, "in_progress", None)),
            self._event(
                "conversation.item.added",
                previous_item_id=self._last_item_id,
                item=self._item(item_id, "in_progress", None),
            ),
            self._event(
                "response.content_part.added",
                **at,
                item_id=item_id,
                content_index=0,
                part={"type": "audio", "transcript": ""},
            ),
        ]
        self._last_item_id = item_id
        return events

    def _greeting(self) -> list[str]:
        response_id, item_id = _new_id("resp"), _new_id("item")
        at = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        events = self._open_response(response_id, item_id)
        for word in GREETING_WORDS:
            events.append(self._event("response.output_audio.delta", **at, delta=GREETING_AUDIO_B64))
            events.append(self._event("response.output_audio_transcript.delta", **at, delta=word))
        item = self._item(item_id, "completed", GREETING_TRANSCRIPT)
        events += [
            self._event("response.output_audio.done", **at),
            self._event("response.output_audio_transcript.done", **at, transcript=GREETING_TRANSCRIPT),
            self._event("response.content_part.done", **at, part={"type": "audio", "transcript": GREETING_TRANSCRIPT}),
            self._event("response.output_item.done", response_id=response_id, output_index=0, item=item),
            self._event("conversation.item.done", previous_item_id=None, item=item),
            self._event(
                "response.done",
                response=self._response(
                    response_id,
                    "completed",
                    [item],
                    status_details={"type": "completed", "reason": None, "error": None},
                    usage={
                        "total_tokens": 180,
                        "input_tokens": 120,
                        "output_tokens": 60,
                        "input_token_details": {
                            "text_tokens": 120,
                            "audio_tokens": 0,
                            "cached_tokens": 0,
                            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
                        },
                        "output_token_details": {"text_tokens": 15, "audio_tokens": 45},
                    },
                ),
            ),
        ]
        self.greeted = True
        return events

    def _start_echo_response(self) -> list[str]:
        response_id, item_id = _new_id("resp"), _new_id("item")
        self._echo_response_id, self._echo_item_id = response_id, item_id
        self._active_response_id = response_id
        # Everything of an echo delta but its event_id and audio, serialised once.
        self._echo_delta_prefix = (
            f'"response_id":"{response_id}","item_id":"{item_id}","output_index":0,"content_index":0,"delta":"'
        )
        return self._open_response(response_id, item_id)

    def _echo(self, audio_b64: str) -> str:
        # The hot path: an f-string around the client's own base64, no dict, no decode.
        self.echoed_chunks += 1
        return (
            f'{{"type":"response.output_audio.delta","event_id":"event_{next(self._event_ids)}",'
            f'{self._echo_delta_prefix}{audio_b64}"}}'
        )

    def _cancel_echo(self) -> list[str]:
        assert self._echo_response_id is not None
        assert self._echo_item_id is not None
        response_id = self._echo_response_id
        item = self._item(self._echo_item_id, "incomplete", "")
        self._echo_response_id = self._echo_item_id = self._active_response_id = None
        return [
            self._event(
                "response.done",
                response=self._response(
                    response_id,
                    "cancelled",
                    [item],
                    status_details={"type": "cancelled", "reason": "client_cancelled", "error": None},
                ),
            )
        ]

    # -- events in ----------------------------------------------------------------------------------

    def handle(self, text: ClientText) -> list[str]:
        """The server events answering one client event, in the order they must be sent."""
        try:
            event = orjson.loads(text)
        except orjson.JSONDecodeError:
            return [self.error("invalid_json", "The client event is not valid JSON.")]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self.error("invalid_request", "The client event has no `type`.")]
        client_event_id = event.get("event_id")
        match event["type"]:
            case "input_audio_buffer.append":
                audio = event.get("audio")
                if not isinstance(audio, str) or '"' in audio or "\\" in audio:
                    return [self.error("invalid_value", "`audio` must be base64.", client_event_id=client_event_id)]
                if not self.greeted:  # the real service buffers it silently
                    return []
                opened = self._start_echo_response() if self._echo_response_id is None else []
                return [*opened, self._echo(audio)]
            case "session.update":
                return self._session_update(event.get("session"), client_event_id)
            case "response.create":
                if self._active_response_id is not None:
                    return [
                        self.error(
                            "conversation_already_has_active_response",
                            f"Conversation already has an active response: {self._active_response_id}.",
                            client_event_id=client_event_id,
                        )
                    ]
                return self._greeting()
            case "response.cancel":
                if self._echo_response_id is None:
                    return [self.error("response_cancel_not_active", "There is no active response to cancel.")]
                return self._cancel_echo()
            case "conversation.item.truncate":
                return [
                    self._event(
                        "conversation.item.truncated",
                        item_id=event.get("item_id"),
                        content_index=event.get("content_index", 0),
                        audio_end_ms=event.get("audio_end_ms", 0),
                    )
                ]
            case "input_audio_buffer.commit":
                return [self._event("input_audio_buffer.committed", previous_item_id=None, item_id=_new_id("item"))]
            case "input_audio_buffer.clear":
                return [self._event("input_audio_buffer.cleared")]
            case unknown:
                return [
                    self.error(
                        "invalid_request_error",
                        f"Invalid value: {unknown!r}.",
                        client_event_id=client_event_id,
                        param="type",
                    )
                ]

    def _session_update(self, session: object, client_event_id: str | None) -> list[str]:
        if not isinstance(session, dict):
            return [self.error("missing_required_parameter", "Missing `session`.", client_event_id=client_event_id)]
        unknown = sorted(set(session) - SESSION_FIELDS)
        if unknown:
            return [
                self.error(
                    "unknown_parameter",
                    f"Unknown parameter: 'session.{unknown[0]}'.",
                    client_event_id=client_event_id,
                    param=f"session.{unknown[0]}",
                )
            ]
        if session.get("type") != "realtime":
            return [
                self.error(
                    "missing_required_parameter",
                    "Missing required parameter: 'session.type'.",
                    client_event_id=client_event_id,
                    param="session.type",
                )
            ]
        self.session = _deep_merge(self.session, session)
        return [self._event("session.updated", session=self.session)]


def _refusal(protocol: ServerProtocol, request: Request) -> Response | None:
    """What the real service answers a handshake it will not upgrade; None when it upgrades it."""
    if request.path.split("?", 1)[0] != REALTIME_PATH:
        return protocol.reject(404, "Not Found\n")
    if "Authorization" not in request.headers and "api-key" not in request.headers:
        return protocol.reject(401, "Missing credentials\n")
    return None


class EchoConnection(asyncio.Protocol):
    """One client connection: websockets' sans-I/O server protocol, answered inside `data_received`.

    No task and no queue per connection, so that the harness, which shares one core with the students,
    spends as little as it can per echoed chunk.
    """

    def __init__(self) -> None:
        self.ws = ServerProtocol(max_size=None)
        self.session = EchoSession()
        self.transport: asyncio.Transport | None = None
        self._fragments: list[bytes | bytearray | memoryview] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if type(event) is Frame:
                self._frame_received(event)
            elif isinstance(event, Request):
                self._handshake(event)
        self._flush()

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent once closed

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        refusal = _refusal(ws, request)
        ws.send_response(refusal or ws.accept(request))
        if refusal is not None:
            return
        if "OpenAI-Beta" in request.headers:
            self._send(self.session.error("beta_api_shape_disabled",
                                          "The beta Realtime interface has been switched off."))
            ws.send_close(4000, "beta_api_shape_disabled")
            return
        self._send(self.session.created())

    def _frame_received(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            if not frame.fin:
                self._fragments.append(frame.data)
                return
            text = b"".join((*self._fragments, frame.data)) if self._fragments else frame.data
            self._fragments = []
            for reply in self.session.handle(text):
                self._send(reply)
        elif opcode is Opcode.BINARY:
            self._send(self.session.error("invalid_request_error", "Binary frames are not accepted."))

    def _send(self, event: str) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_text(event.encode())

    def _flush(self) -> None:
        flush(self.ws, self.transport)


@contextlib.asynccontextmanager
async def serve_echo(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[asyncio.Server]:
    """The echo upstream listening on `host`:`port` (0 = any free port) while the block runs."""
    server = await asyncio.get_running_loop().create_server(EchoConnection, host, port)
    async with server:
        yield server


def bound_port(server: asyncio.Server) -> int:
    """The TCP port `server` listens on (useful after binding port 0)."""
    return int(server.sockets[0].getsockname()[1])


async def _serve_until_terminated(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with serve_echo(host, port) as server:
        sys.stdout.write(orjson.dumps({"port": bound_port(server)}).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port; it is printed as JSON")
    arguments = parser.parse_args()
    run_on_uvloop(_serve_until_terminated(arguments.host, arguments.port))


if __name__ == "__main__":
    main()
