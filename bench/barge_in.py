"""Barge-in: how fast the page is told to stop, and how well the truncate matches what was heard.

    .venv/bin/python -m bench.barge_in [--cycles 20] [--report-ms 100] [--audio-pace 4]

One lesson against the Realtime simulator, both served in this process over real sockets (relay on
uvicorn, port 0). The page side plays each tutor reply in real time from its `audio.start`, reports
`playback` every `--report-ms` as lesson.js does, and the student talks over the tutor at a different
point of each reply. For every barge-in it measures:

- reaction: the relay receiving `input_audio_buffer.speech_started` (the `now` handed to
  `LessonSession.handle_upstream`) → the page receiving `audio.interrupt` (where lesson.js flushes);
- truncate accuracy: the `audio_end_ms` the upstream received in `conversation.item.truncate`, minus the
  page's real played position at the relay's speech_started (what the relay could know), and minus the
  position at the flush (what the student actually heard before the audio stopped).

Both clocks are `time.monotonic()` of this process. It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import statistics
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from app import protocol
from app.actions import Action
from app.logging import configure_logging
from app.session import LessonSession
from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatorBehaviour
from bench.processes import app_served_here

FRAME_SAMPLES = 480  # 20 ms at 24 kHz
SILENCE = bytes(2 * FRAME_SAMPLES)
END_OF_TURN_FRAMES = 50  # 1 s of silence: more than the relay's 700 ms server-VAD silence


def _loud_frame(index: int) -> bytes:
    start = index * FRAME_SAMPLES
    return struct.pack(
        f"<{FRAME_SAMPLES}h",
        *(round(20_000 * math.sin(2 * math.pi * 300 * (start + n) / 24_000)) for n in range(FRAME_SAMPLES)),
    )


LOUD = [_loud_frame(i) for i in range(30)]


@dataclass
class BargeIn:
    barge_at_ms: int  # when the student started talking, counted from the reply's audio.start
    reaction_ms: float  # relay speech_started → page audio.interrupt
    audio_end_ms: int  # what the relay truncated the item to
    played_at_speech_ms: float  # the page's real position when the relay got speech_started
    played_at_flush_ms: float  # the page's real position when it got audio.interrupt
    received_ms: int  # the item's audio the page had received by the flush


@dataclass
class _Page:
    """The page side: reads every frame, keeps the current item's playback clock, reports playback."""

    ws: ClientConnection
    item_id: str | None = None
    started_at: float = 0.0
    received_bytes: int = 0
    playing: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    last: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    at: dict[str, float] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def played_ms(self, now: float) -> float:
        if self.item_id is None:
            return 0.0
        return max(0.0, min((now - self.started_at) * 1000, self.received_bytes / protocol.BYTES_PER_MS))

    async def read(self) -> None:
        async for frame in self.ws:
            now = time.monotonic()
            if isinstance(frame, bytes):
                if self.playing:
                    self.received_bytes += len(frame)
                continue
            message = json.loads(frame)
            kind = message["type"]
            if kind == "audio.start":
                self.item_id, self.started_at, self.received_bytes, self.playing = message["item_id"], now, 0, True
            elif kind == "audio.interrupt":
                self.playing = False  # lesson.js drops its queue here
            elif kind == "status":
                kind = f"status.{message['state']}"
            self.last[kind], self.at[kind] = message, now
            self.counts[kind] = self.counts.get(kind, 0) + 1
            async with self.changed:
                self.changed.notify_all()

    def seen(self, kind: str) -> int:
        """How many `kind` messages have arrived so far: pass it to `wait` to wait for the next one."""
        return self.counts.get(kind, 0)

    async def wait(self, kind: str, seen: int) -> Mapping[str, Any]:
        """The latest `kind` message, once more than `seen` of them have arrived."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.counts.get(kind, 0) > seen)
        return self.last[kind]

    async def report_playback(self, every_s: float) -> None:
        while True:
            if self.item_id is not None and self.playing:
                played = int(self.played_ms(time.monotonic()))
                await self.ws.send(json.dumps({"type": "playback", "item_id": self.item_id, "played_ms": played}))
            await asyncio.sleep(every_s)


async def _send(ws: ClientConnection, frames: Sequence[bytes]) -> None:
    """Send microphone frames at the pace they are spoken (the relay drops audio far ahead of real time)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for index, frame in enumerate(frames):
        await asyncio.sleep(max(0.0, start + index * FRAME_SAMPLES / 24_000 - loop.time()))
        await ws.send(frame)


def _truncate_of(item_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    def received(events: list[dict[str, Any]]) -> bool:
        return any(e["type"] == "conversation.item.truncate" and e["item_id"] == item_id for e in events)

    return received


async def run(cycles: int, report_ms: int, audio_pace: float) -> list[BargeIn]:
    speech_started_at: list[float] = []
    handle_upstream = LessonSession.handle_upstream

    def timed(self: LessonSession, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        if event.get("type") == protocol.SPEECH_STARTED:
            speech_started_at.append(now)
        return handle_upstream(self, event, now)

    LessonSession.handle_upstream = timed  # type: ignore[method-assign,assignment]
    configure_logging(Settings(log_level="warning", log_format="json"), io.StringIO())  # numbers only on stdout
    results: list[BargeIn] = []
    async with RealtimeSimulator(SimulatorBehaviour(audio_pace=audio_pace)) as simulator:
        settings = Settings(
            openai_api_key="sk-bench-fake-key",
            openai_realtime_url=simulator.url,
            log_level="warning",
            log_format="json",
            lesson_starts_per_minute=1000,
        )
        try:
            async with app_served_here(settings) as port, \
                    connect(f"ws://127.0.0.1:{port}/ws/lesson?name=Ana", max_size=None) as ws:
                page = _Page(ws)
                reader = asyncio.create_task(page.read())
                reporter = asyncio.create_task(page.report_playback(report_ms / 1000))
                upstream = await simulator.next_connection()
                await page.wait("status.listening", 0)  # the greeting, heard (playback reports or elapsed)
                starts = page.seen("audio.start")
                await _send(ws, LOUD + [SILENCE] * END_OF_TURN_FRAMES)  # the student answers
                for cycle in range(cycles):
                    await page.wait("audio.start", starts)
                    barge_at_ms = 200 + (cycle * 137) % 1800
                    await asyncio.sleep(max(0.0, page.started_at + barge_at_ms / 1000 - time.monotonic()))
                    spoke_at, interrupts = time.monotonic(), page.seen("audio.interrupt")
                    await _send(ws, LOUD[:10])  # the student talks over the tutor
                    interrupt = await page.wait("audio.interrupt", interrupts)
                    flushed_at = page.at["audio.interrupt"]
                    await upstream.wait_for(_truncate_of(interrupt["item_id"]))
                    truncate = next(e for e in reversed(upstream.received) if e["type"] == "conversation.item.truncate")
                    speech_at = next(t for t in reversed(speech_started_at) if spoke_at <= t <= flushed_at)
                    results.append(
                        BargeIn(
                            barge_at_ms=barge_at_ms,
                            reaction_ms=(flushed_at - speech_at) * 1000,
                            audio_end_ms=truncate["audio_end_ms"],
                            played_at_speech_ms=(speech_at - page.started_at) * 1000,
                            played_at_flush_ms=page.played_ms(flushed_at),
                            received_ms=page.received_bytes // protocol.BYTES_PER_MS,
                        )
                    )
                    starts = page.seen("audio.start")
                    await _send(ws, [SILENCE] * END_OF_TURN_FRAMES)  # the student finishes the sentence
                reporter.cancel()
                await ws.send(json.dumps({"type": "end"}))
                await reader
        finally:
            LessonSession.handle_upstream = handle_upstream  # type: ignore[method-assign]
    return results


def _row(name: str, values: Sequence[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return (
        f"{name:<44} median {statistics.median(ordered):7.2f}  p90 {p90:7.2f}  "
        f"min {ordered[0]:7.2f}  max {ordered[-1]:7.2f}"
    )


def report(results: Sequence[BargeIn], *, report_ms: int, audio_pace: float, verbose: bool) -> str:
    lines = [
        f"barge-in: {len(results)} interruptions in one lesson; page reports playback every {report_ms} ms; "
        f"simulator audio pace {audio_pace:g}x real time; {os.cpu_count()} CPUs",
    ]
    if verbose:
        lines.append("barge_at  reaction  audio_end  played@speech  played@flush  received")
        lines += [
            f"{r.barge_at_ms:8d}  {r.reaction_ms:8.2f}  {r.audio_end_ms:9d}  {r.played_at_speech_ms:13.1f}  "
            f"{r.played_at_flush_ms:12.1f}  {r.received_ms:8d}"
            for r in results
        ]
    lines += [
        _row("reaction ms (relay speech_started → page)", [r.reaction_ms for r in results]),
        _row("truncate - played at speech_started, ms", [r.audio_end_ms - r.played_at_speech_ms for r in results]),
        _row("truncate - played at page flush, ms", [r.audio_end_ms - r.played_at_flush_ms for r in results]),
        f"truncates beyond the audio received: {sum(r.audio_end_ms > r.received_ms for r in results)}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.barge_in", description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="barge-ins to measure (one lesson)")
    parser.add_argument("--report-ms", type=int, default=100, help="the page's playback report interval")
    parser.add_argument("--audio-pace", type=float, default=4.0, help="simulator audio speed vs real time")
    parser.add_argument("--verbose", action="store_true", help="print every barge-in")
    arguments = parser.parse_args(argv)
    results = asyncio.run(run(arguments.cycles, arguments.report_ms, arguments.audio_pace))
    print(report(results, report_ms=arguments.report_ms, audio_pace=arguments.audio_pace, verbose=arguments.verbose))


if __name__ == "__main__":
    main()
