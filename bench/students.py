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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
import time
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect

from bench.markers import FRAME_BYTES, FRAME_MS, marked_frame, pcm_duration_ms, read_marker

FRAME_SECONDS: Final = FRAME_MS / 1000
PLAYBACK_REPORT_MS: Final = 100
GREETING_TIMEOUT_SECONDS: Final = 30.0


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


class Student:
    """The protocol-independent part: schedule, markers, echo bookkeeping. Subclasses speak a protocol."""

    def __init__(self, student_id: int, url: str, clock: LoadClock, *, compression: str | None) -> None:
        self.student_id = student_id
        self.url = url
        self.clock = clock
        self.compression = compression
        self.result = StudentResult(student_id)
        self.mic_open = asyncio.Event()
        self._connect_started = 0.0
        self._sent_at: list[float] = []  # perf_counter() of each frame sent, by sequence number
        self._echoed: bytearray = bytearray()  # 1 per sequence number already echoed
        self._echo_remainder = b""  # echo audio not yet forming a whole frame
        self._all_echoed = asyncio.Event()
        self._sending_done = False

    # -- to be provided by a protocol ---------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {}

    async def _start(self, ws: ClientConnection) -> None:
        """Anything to send right after the handshake."""

    async def _on_text(self, ws: ClientConnection, text: str, received_at: float) -> None:
        raise NotImplementedError

    async def _on_bytes(self, ws: ClientConnection, data: bytes, received_at: float) -> None:
        raise NotImplementedError

    def _encode_frame(self, frame: bytes) -> str | bytes:
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------------

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

    async def _receive(self, ws: ClientConnection) -> None:
        async for message in ws:
            received_at = time.perf_counter()
            if isinstance(message, bytes):
                await self._on_bytes(ws, message, received_at)
            else:
                await self._on_text(ws, message, received_at)

    async def _stream(self, ws: ClientConnection) -> None:
        """Send one marked frame every 20 ms, at this student's own phase, until the common stop."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(random.uniform(0, FRAME_SECONDS))
        next_send = loop.time()
        seq = 0
        while not self.clock.stream_stopped.is_set():
            delay = next_send - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
                if self.clock.stream_stopped.is_set():
                    break
            lag = loop.time() - next_send
            self.result.send_lag_ms.append(max(lag, 0.0) * 1000)
            message = self._encode_frame(marked_frame(self.student_id, seq))
            self.note_frame_sent(time.perf_counter())
            await ws.send(message)
            self.result.frames_sent += 1
            seq += 1
            # A sender that fell more than a frame behind does not burst to catch up, like a real
            # microphone after a stall; the lag it suffered is recorded above.
            next_send = max(next_send + FRAME_SECONDS, loop.time() - FRAME_SECONDS)
        self._sending_done = True
        if self.result.frames_echoed == self.result.frames_sent:
            self._all_echoed.set()

    async def run(self) -> StudentResult:
        """Connect, get through the greeting, stream while the clock says so, then close."""
        self._connect_started = time.perf_counter()
        try:
            async with connect(
                self.url,
                additional_headers=self._headers(),
                compression=self.compression,
                max_size=None,
                max_queue=None,
                proxy=None,
                ping_interval=None,
                open_timeout=GREETING_TIMEOUT_SECONDS,
                user_agent_header=None,
            ) as ws:
                receiver = asyncio.create_task(self._receive(ws))
                try:
                    await self._start(ws)
                    await asyncio.wait_for(self._ready_or_closed(receiver), GREETING_TIMEOUT_SECONDS)
                    if not self.mic_open.is_set():
                        self.result.errors.append("closed before the microphone opened")
                        return self.result
                    self.result.ready = True
                    await self.clock.stream_started.wait()
                    await self._stream(ws)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._all_echoed.wait(), self.clock.drain_seconds)
                finally:
                    receiver.cancel()
                    await asyncio.gather(receiver, return_exceptions=True)
        except Exception as exc:  # a student's failure is a measurement, not a crash of the bench
            self.result.errors.append(f"{type(exc).__name__}: {exc}")
        return self.result

    async def _ready_or_closed(self, receiver: asyncio.Task[None]) -> None:
        mic = asyncio.create_task(self.mic_open.wait())
        await asyncio.wait({mic, receiver}, return_when=asyncio.FIRST_COMPLETED)
        mic.cancel()
        failure = receiver.exception() if receiver.done() and not receiver.cancelled() else None
        if failure is not None:
            raise failure


class DirectStudent(Student):
    """Speaks the GA Realtime protocol straight to the echo upstream: the floor."""

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
    ).decode()

    def __init__(self, student_id: int, url: str, clock: LoadClock, *, compression: str | None) -> None:
        super().__init__(student_id, url, clock, compression=compression)
        self._greeting_response_id: str | None = None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": "Bearer sk-bench-fake"}

    def _encode_frame(self, frame: bytes) -> str:
        return orjson.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(frame).decode()}).decode()

    async def _on_text(self, ws: ClientConnection, text: str, received_at: float) -> None:
        event: dict[str, Any] = orjson.loads(text)
        match event["type"]:
            case "response.output_audio.delta":
                audio = base64.b64decode(event["delta"])
                if event["response_id"] == self._greeting_response_id:
                    self._greeting_audio_arrived(received_at)
                else:
                    self.echo_audio_arrived(audio, received_at)
            case "session.created":
                await ws.send(self.SESSION_UPDATE)
            case "session.updated":
                await ws.send('{"type":"response.create"}')
            case "response.created" if self._greeting_response_id is None:
                self._greeting_response_id = event["response"]["id"]
            case "response.done" if event["response"]["id"] == self._greeting_response_id:
                self.mic_open.set()
            case "error":
                self.result.errors.append(f"upstream error: {event['error'].get('code')}")
            case _:
                pass

    async def _on_bytes(self, ws: ClientConnection, data: bytes, received_at: float) -> None:
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

    async def _on_bytes(self, ws: ClientConnection, data: bytes, received_at: float) -> None:
        if not self.mic_open.is_set():
            self._greeting_audio_arrived(received_at)
            return
        self.echo_audio_arrived(data, received_at)
        self._item_bytes += len(data)
        played_ms = pcm_duration_ms(self._item_bytes)
        if played_ms - self._reported_ms >= PLAYBACK_REPORT_MS:  # "at least every 100 ms while an item plays"
            self._reported_ms = played_ms
            await _send_json(ws, {"type": "playback", "item_id": self._item_id, "played_ms": played_ms})

    async def _on_text(self, ws: ClientConnection, text: str, received_at: float) -> None:
        message: dict[str, Any] = orjson.loads(text)
        match message["type"]:
            case "audio.start":
                self._item_id = message["item_id"]
                self._item_bytes = self._reported_ms = 0
            case "audio.done" if not self.mic_open.is_set():
                # The greeting was "heard" in full: say so, and the relay opens the microphone.
                await _send_json(
                    ws,
                    {"type": "playback", "item_id": message["item_id"], "played_ms": message["duration_ms"]},
                )
                self.mic_open.set()
            case "error":
                self.result.errors.append(f"relay error: {message.get('code')} (fatal={message.get('fatal')})")
            case _:
                pass
