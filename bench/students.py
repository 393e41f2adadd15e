"""The load generator: simulated students that stream marked 20 ms frames and time each one's echo.

Two kinds of student speak two protocols to reach the same echo upstream:

- `DirectStudent` speaks the GA Realtime protocol straight to the echo upstream (``session.update``,
  ``response.create``, base64 ``input_audio_buffer.append`` out, ``response.output_audio.delta`` in).
  Nothing sits between it and the upstream: its round trip is the floor.
- `BrowserStudent` speaks the browser protocol of ``docs/protocol.md`` to a relay's ``/ws/lesson``
  (binary PCM16 frames both ways, JSON control messages), exactly as the lesson page does: it reports
  ``playback`` for the greeting once its ``audio.done`` arrived (the relay holds the microphone until
  then) and at least every 100 ms while the echo plays.

A student's life is driven by a shared `LoadClock`: connect (staggered by the caller), get through the
greeting, report ready, wait for the common start, stream in real time at its own phase within the 20 ms
frame period until the common stop, wait for the last echoes, close.

Each student's socket is websockets' sans-I/O client protocol on an asyncio protocol (`StudentSocket`):
messages are handled inside the socket's callback and frames are sent from the loop's timer, so a frame
costs the harness no task wake-up. The harness (students and echo upstream) shares one core, and what it
spends there makes every target's round trip later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final, cast

import orjson
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from bench import flush
from bench.markers import FRAME_BYTES, FRAME_MS, marked_frame, pcm_duration_ms, read_marker

FRAME_SECONDS: Final = FRAME_MS / 1000
PLAYBACK_REPORT_MS: Final = 100
GREETING_TIMEOUT_SECONDS: Final = 30.0
CLOSE_TIMEOUT_SECONDS: Final = 2.0


def next_frame_time(scheduled: float, now: float) -> float:
    """When a sender whose frame was due at `scheduled` sends its next one, it being `now`.

    A sender that fell behind skips the frames it missed and keeps its own phase: it neither bursts to catch
    up nor starts a new phase at `now`. A stall of the harness would otherwise give every student the same
    phase, and from then on the relay would get all their frames in one burst every 20 ms.
    """
    missed = max(0, math.floor((now - scheduled) / FRAME_SECONDS))
    return scheduled + (missed + 1) * FRAME_SECONDS


async def _send_json(ws: ClientConnection, message: dict[str, Any]) -> None:
    """A JSON control message, as a text frame (a binary frame would be taken for audio)."""
    await ws.send(orjson.dumps(message).decode())


async def past_the_greeting(page: ClientConnection) -> None:
    """Read until the microphone is open, reporting the greeting's playback as the lesson page does."""
    async for frame in page:
        if isinstance(frame, bytes):
            continue
        message = orjson.loads(frame)
        if message["type"] == "audio.done":
            await _send_json(page, {"type": "playback", "item_id": message["item_id"],
                                    "played_ms": message["duration_ms"]})
        elif message["type"] == "status" and message["state"] == "listening":
            return
    raise RuntimeError(f"the lesson closed before its greeting was heard: {page.close_code} {page.close_reason}")


@dataclass
class LoadClock:
    """What all students of one run share: when streaming starts and stops."""

    stream_started: asyncio.Event = field(default_factory=asyncio.Event)
    stream_stopped: asyncio.Event = field(default_factory=asyncio.Event)
    drain_seconds: float = 2.0


@dataclass
class StudentResult:
    """What one student measured. Times are in milliseconds."""

    student_id: int
    ready: bool = False
    greeting_ms: float | None = None  # connect started → first greeting audio byte
    frames_sent: int = 0
    frames_echoed: int = 0
    round_trips_ms: list[float] = field(default_factory=list)
    send_lag_ms: list[float] = field(default_factory=list)  # how late the sender was on its schedule
    misrouted_frames: int = 0  # echoes carrying another student's marker (must stay 0)
    duplicate_frames: int = 0
    unmarked_frames: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def frames_lost(self) -> int:
        return self.frames_sent - self.frames_echoed


class StudentSocket(asyncio.Protocol):
    """A student's WebSocket: websockets' sans-I/O client protocol, each message handed to the student inside
    the socket's callback. No task, queue or sleep per frame: the harness shares one core with the upstream."""

    def __init__(self, ws: ClientProtocol, student: Student) -> None:
        loop = asyncio.get_running_loop()
        self.ws = ws
        self.student = student
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.lost: asyncio.Future[None] = loop.create_future()
        self._fragments: list[bytes | bytearray | memoryview] = []
        self._binary = False  # the kind of the fragmented message being received

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's
        # The student answers from now on: its first event may come with the handshake's response.
        self.student.socket = self
        request = self.ws.connect()
        request.headers.update(self.student.headers())
        self.ws.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        received_at = time.perf_counter()
        ws = self.ws
        ws.receive_data(data)
        for event in ws.events_received():
            if type(event) is Frame:
                self._frame_received(event, received_at)
            elif isinstance(event, Response) and not self.opened.done():
                if ws.handshake_exc is None:
                    self.opened.set_result(None)
                else:
                    self.opened.set_exception(ws.handshake_exc)
        self._flush()

    def _frame_received(self, frame: Frame, received_at: float) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if not frame.fin:
                self._binary = opcode is Opcode.BINARY
                self._fragments = [frame.data]
                return
            binary, data = opcode is Opcode.BINARY, frame.data
        elif opcode is Opcode.CONT:
            self._fragments.append(frame.data)
            if not frame.fin:
                return
            binary, data = self._binary, b"".join(self._fragments)
            self._fragments = []
        else:
            return  # pings are answered by the protocol; a close is seen when the connection is lost
        if binary:
            self.student.on_bytes(bytes(data), received_at)
        else:
            self.student.on_text(data, received_at)

    def eof_received(self) -> None:
        self.ws.receive_eof()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ws.receive_eof()  # idempotent once closed
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("the connection closed during the handshake"))
        if not self.lost.done():
            self.lost.set_result(None)

    def send_text(self, message: bytes) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_text(message)
            self._flush()

    def send_binary(self, message: bytes) -> None:
        if self.ws.state is State.OPEN:
            self.ws.send_binary(message)
            self._flush()

    async def close(self) -> None:
        """Close the WebSocket and wait, briefly, for the server to close the connection."""
        if self.ws.state is State.OPEN:
            self.ws.send_close()
            self._flush()
        if self.transport is not None and not self.lost.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
                    await self.lost
            except TimeoutError:
                self.transport.abort()

    @property
    def close_description(self) -> str:
        received = self.ws.close_rcvd
        return "no close frame" if received is None else f"close {received.code} {received.reason!r}"

    def _flush(self) -> None:
        flush(self.ws, self.transport)


class Student:
    """The protocol-independent part: schedule, markers, echo bookkeeping. Subclasses speak a protocol."""

    # How the frames go: text (base64 JSON) or binary.
    FRAMES_AS_TEXT = False

    def __init__(self, student_id: int, url: str, clock: LoadClock, *, compression: str | None) -> None:
        self.student_id = student_id
        self.url = url
        self.clock = clock
        self.compression = compression
        self.result = StudentResult(student_id)
        self.mic_open = asyncio.Event()
        self.socket: StudentSocket | None = None
        self._connect_started = 0.0
        self._sent_at: list[float] = []  # perf_counter() of each frame sent, by sequence number
        self._echoed: bytearray = bytearray()  # 1 per sequence number already echoed
        self._echo_remainder = b""  # echo audio not yet forming a whole frame
        self._all_echoed = asyncio.Event()
        self._sending_done = False

    # -- to be provided by a protocol ---------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """Headers of the handshake beyond the WebSocket ones."""
        return {}

    def on_text(self, text: bytes | bytearray | memoryview, received_at: float) -> None:
        raise NotImplementedError

    def on_bytes(self, data: bytes, received_at: float) -> None:
        raise NotImplementedError

    def _encode_frame(self, frame: bytes) -> bytes:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------

    def _send_json(self, message: dict[str, Any]) -> None:
        """A JSON message, as a text frame (a binary frame would be taken for audio)."""
        assert self.socket is not None
        self.socket.send_text(orjson.dumps(message))

    def _greeting_audio_arrived(self, received_at: float) -> None:
        if self.result.greeting_ms is None:
            self.result.greeting_ms = (received_at - self._connect_started) * 1000

    def note_frame_sent(self, sent_at: float) -> int:
        """Remember when the next frame was sent; returns its sequence number."""
        self._sent_at.append(sent_at)
        self._echoed.append(0)
        return len(self._sent_at) - 1

    def echo_audio_arrived(self, pcm: bytes, received_at: float) -> None:
        """Account for echoed audio; it may arrive split or merged, but always in 960-byte frame order."""
        if self._echo_remainder:
            pcm = self._echo_remainder + pcm
            self._echo_remainder = b""
        whole = len(pcm) - len(pcm) % FRAME_BYTES
        if whole != len(pcm):
            self._echo_remainder = pcm[whole:]
        view = memoryview(pcm)
        for offset in range(0, whole, FRAME_BYTES):
            marker = read_marker(view[offset : offset + FRAME_BYTES])
            if marker is None:
                self.result.unmarked_frames += 1
                continue
            student_id, seq = marker
            if student_id != self.student_id or seq >= len(self._sent_at):
                self.result.misrouted_frames += 1
                continue
            if self._echoed[seq]:
                self.result.duplicate_frames += 1
                continue
            self._echoed[seq] = 1
            self.result.frames_echoed += 1
            self.result.round_trips_ms.append((received_at - self._sent_at[seq]) * 1000)
        if self._sending_done and self.result.frames_echoed == self.result.frames_sent:
            self._all_echoed.set()

    async def _stream(self, socket: StudentSocket) -> None:
        """Send one marked frame every 20 ms, at this student's own phase, until the common stop: each on the
        loop's timer, so that a frame costs the harness no task wake-up."""
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        next_send = loop.time() + random.uniform(0, FRAME_SECONDS)
        send = socket.send_text if self.FRAMES_AS_TEXT else socket.send_binary

        def send_frame() -> None:
            nonlocal next_send
            if self.clock.stream_stopped.is_set() or socket.lost.done():
                stopped.set_result(None)
                return
            now = loop.time()
            self.result.send_lag_ms.append(max(now - next_send, 0.0) * 1000)
            seq = self.result.frames_sent
            message = self._encode_frame(marked_frame(self.student_id, seq))
            self.note_frame_sent(time.perf_counter())
            send(message)
            self.result.frames_sent += 1
            next_send = next_frame_time(next_send, now)
            loop.call_at(next_send, send_frame)

        loop.call_at(next_send, send_frame)
        await stopped
        self._sending_done = True
        if self.result.frames_echoed == self.result.frames_sent:
            self._all_echoed.set()

    async def _connect(self) -> StudentSocket:
        uri = parse_uri(self.url)
        extensions = enable_client_permessage_deflate(None) if self.compression == "deflate" else None
        protocol = ClientProtocol(uri, extensions=extensions, max_size=None)
        _, socket = await asyncio.get_running_loop().create_connection(
            lambda: StudentSocket(protocol, self), uri.host, uri.port)
        await socket.opened
        return socket

    async def run(self) -> StudentResult:
        """Connect, get through the greeting, stream while the clock says so, then close."""
        self._connect_started = time.perf_counter()
        socket: StudentSocket | None = None
        try:
            async with asyncio.timeout(GREETING_TIMEOUT_SECONDS):
                socket = await self._connect()
                await self._ready_or_closed(socket)
            if not self.mic_open.is_set():
                self.result.errors.append(f"closed before the microphone opened ({socket.close_description})")
                return self.result
            self.result.ready = True
            await self.clock.stream_started.wait()
            await self._stream(socket)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_echoed.wait(), self.clock.drain_seconds)
        except Exception as exc:  # a student's failure is a measurement, not a crash of the bench
            self.result.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if socket is not None:
                await socket.close()
        return self.result

    async def _ready_or_closed(self, socket: StudentSocket) -> None:
        mic = asyncio.create_task(self.mic_open.wait())
        waiting: set[asyncio.Future[Any]] = {mic, socket.lost}
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        mic.cancel()


class DirectStudent(Student):
    """Speaks the GA Realtime protocol straight to the echo upstream: the floor."""

    FRAMES_AS_TEXT = True
    SESSION_UPDATE: Final = orjson.dumps(
        {
            "type": "session.update",
            "event_id": "bench_session_update",
            "session": {
                "type": "realtime",
                "instructions": "You are a patient English tutor for the bench student.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None},
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
                },
            },
        }
    )

    def __init__(self, student_id: int, url: str, clock: LoadClock, *, compression: str | None) -> None:
        super().__init__(student_id, url, clock, compression=compression)
        self._greeting_response_id: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer sk-bench-fake"}

    def _encode_frame(self, frame: bytes) -> bytes:
        return orjson.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()})

    def on_text(self, text: bytes | bytearray | memoryview, received_at: float) -> None:
        assert self.socket is not None
        event: dict[str, Any] = orjson.loads(text)
        match event["type"]:
            case "response.output_audio.delta":
                audio = base64.b64decode(event["delta"])
                if event["response_id"] == self._greeting_response_id:
                    self._greeting_audio_arrived(received_at)
                else:
                    self.echo_audio_arrived(audio, received_at)
            case "session.created":
                self.socket.send_text(self.SESSION_UPDATE)
            case "session.updated":
                self.socket.send_text(b'{"type":"response.create"}')
            case "response.created" if self._greeting_response_id is None:
                self._greeting_response_id = event["response"]["id"]
            case "response.done" if event["response"]["id"] == self._greeting_response_id:
                self.mic_open.set()
            case "error":
                self.result.errors.append(f"upstream error: {event['error'].get('code')}")
            case _:
                pass

    def on_bytes(self, data: bytes, received_at: float) -> None:
        self.result.errors.append("binary frame from the Realtime upstream")


class BrowserStudent(Student):
    """Speaks the browser protocol to a relay's /ws/lesson, as the lesson page does."""

    def __init__(self, student_id: int, url: str, clock: LoadClock, *, compression: str | None) -> None:
        super().__init__(student_id, url, clock, compression=compression)
        self._item_id: str | None = None  # the item of the last audio.start
        self._item_bytes = 0
        self._reported_ms = 0

    def _encode_frame(self, frame: bytes) -> bytes:
        return frame

    def on_bytes(self, data: bytes, received_at: float) -> None:
        if not self.mic_open.is_set():
            self._greeting_audio_arrived(received_at)
            return
        self.echo_audio_arrived(data, received_at)
        self._item_bytes += len(data)
        played_ms = pcm_duration_ms(self._item_bytes)
        if played_ms - self._reported_ms >= PLAYBACK_REPORT_MS:  # "at least every 100 ms while an item plays"
            self._reported_ms = played_ms
            self._send_json({"type": "playback", "item_id": self._item_id, "played_ms": played_ms})

    def on_text(self, text: bytes | bytearray | memoryview, received_at: float) -> None:
        message: dict[str, Any] = orjson.loads(text)
        match message["type"]:
            case "audio.start":
                self._item_id = message["item_id"]
                self._item_bytes = self._reported_ms = 0
            case "audio.done" if not self.mic_open.is_set():
                # The greeting was "heard" in full: say so, and the relay opens the microphone.
                self._send_json({"type": "playback", "item_id": message["item_id"],
                                 "played_ms": message["duration_ms"]})
                self.mic_open.set()
            case "error":
                self.result.errors.append(f"relay error: {message.get('code')} (fatal={message.get('fatal')})")
            case _:
                pass
