"""End → feedback: how long a student waits for the lesson's feedback card after pressing End.

    .venv/bin/python -m bench.feedback_latency [--lessons 20] [--turns 2] [--audio-pace 4]

Lessons one after another against the Realtime simulator, both served in this process over real sockets
(relay on uvicorn, port 0). Each lesson hears the greeting, has `--turns` spoken exchanges (0.6 s of loud
frames then 1 s of silence, at real-time pace, so server VAD ends the turn and the simulator answers with
its next line), then sends `end`.
It measures, with this process's `time.monotonic()`:

- End → `status` `feedback` (the page starts saying "Preparing your feedback…");
- End → the `feedback` frame (the page shows the card);
- End → the socket closed.

The simulator's out-of-band text response streams as fast as it can, so this is the relay's own share of
the wait plus the loopback; a real model adds its generation time (bounded by FEEDBACK_TIMEOUT_SECONDS).
It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatorBehaviour
from bench.processes import app_served_here

FRAME_SAMPLES = 480  # 20 ms at 24 kHz
LOUD = b"".join(int(12_000 * math.sin(2 * math.pi * 300 * n / 24_000)).to_bytes(2, "little", signed=True)
                for n in range(FRAME_SAMPLES))
SILENCE = bytes(2 * FRAME_SAMPLES)
SPOKEN_FRAMES = 30  # 0.6 s of speech
END_OF_TURN_FRAMES = 50  # 1 s of silence: more than the relay's 700 ms server-VAD silence


@dataclass(frozen=True)
class Ending:
    to_pending_ms: float
    to_feedback_ms: float
    to_closed_ms: float
    summary_chars: int


async def _until(ws: ClientConnection, message_type: str, **fields: Any) -> dict[str, Any]:
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            message: dict[str, Any] = json.loads(frame)
            if message["type"] == message_type and all(message.get(k) == v for k, v in fields.items()):
                return message


async def _speak(ws: ClientConnection) -> None:
    """One spoken turn, sent as a microphone does: a 20 ms frame every 20 ms (the relay paces faster audio)."""
    frames = [LOUD] * SPOKEN_FRAMES + [SILENCE] * END_OF_TURN_FRAMES
    started = time.monotonic()
    for index, frame in enumerate(frames):
        await ws.send(frame)
        await asyncio.sleep(max(0.0, started + (index + 1) * FRAME_SAMPLES / 24_000 - time.monotonic()))


async def _lesson(url: str, turns: int) -> Ending:
    async with connect(url, max_size=None) as ws:
        for turn in range(turns + 1):
            done = await _until(ws, "audio.done")
            await ws.send(json.dumps({"type": "playback", "item_id": done["item_id"],
                                      "played_ms": done["duration_ms"]}))
            await _until(ws, "status", state="listening")
            if turn < turns:
                await _speak(ws)
        ended_at = time.monotonic()
        await ws.send(json.dumps({"type": "end"}))
        await _until(ws, "status", state="feedback")
        pending_at = time.monotonic()
        feedback = await _until(ws, "feedback")
        feedback_at = time.monotonic()
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            closed_at = time.monotonic()
    return Ending((pending_at - ended_at) * 1000, (feedback_at - ended_at) * 1000, (closed_at - ended_at) * 1000,
                  len(feedback["summary"]))


async def run(lessons: int, turns: int, audio_pace: float) -> list[Ending]:
    async with RealtimeSimulator(SimulatorBehaviour(audio_pace=audio_pace)) as simulator:
        settings = Settings(openai_api_key="sk-bench-fake-key", openai_realtime_url=simulator.url,
                            log_level="warning", lesson_starts_per_minute=10_000)
        async with app_served_here(settings) as port:
            results = []
            for index in range(lessons):
                query = urlencode({"name": "Ana", "level": "A2", "student_key": f"bench-student-{index:08d}"})
                results.append(await _lesson(f"ws://127.0.0.1:{port}/ws/lesson?{query}", turns))
    return results


def _row(name: str, values: Sequence[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return (f"{name:<34} median {statistics.median(ordered):7.1f}  p90 {p90:7.1f}  "
            f"min {ordered[0]:7.1f}  max {ordered[-1]:7.1f}")


def report(results: Sequence[Ending], *, turns: int, audio_pace: float) -> str:
    return "\n".join([
        f"End → feedback: {len(results)} lessons, {turns} spoken turns each, simulator audio pace {audio_pace}x (ms)",
        _row("End → status feedback", [r.to_pending_ms for r in results]),
        _row("End → feedback frame (the card)", [r.to_feedback_ms for r in results]),
        _row("End → socket closed", [r.to_closed_ms for r in results]),
    ])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.feedback_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", type=int, default=20, help="lessons to measure, one after another")
    parser.add_argument("--turns", type=int, default=2, help="spoken exchanges before End")
    parser.add_argument("--audio-pace", type=float, default=4.0, help="simulator audio speed vs real time")
    arguments = parser.parse_args(argv)
    results = asyncio.run(run(arguments.lessons, arguments.turns, arguments.audio_pace))
    print(report(results, turns=arguments.turns, audio_pace=arguments.audio_pace))


if __name__ == "__main__":
    main()
