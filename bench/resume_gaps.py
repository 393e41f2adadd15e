"""Resume gaps: how long a student waits when a connection of the lesson goes, over the Realtime simulator.

    .venv/bin/python -m bench.resume_gaps [--runs 20] [--audio-pace 0]

One relay (uvicorn, port 0) and one simulator, both in this process over real sockets. Each run opens a
lesson, hears the greeting, and then measures, on the page's side (`time.monotonic()` of this process):

- upstream drop: the simulator ends the upstream connection without a close frame (`connection.drop()`)
  → the page has `status` `listening` again, on a new upstream session told the conversation;
- upstream expiry: the simulator sends `session_expired` and closes 1001 (`connection.expire()`) → `listening`;
- page drop: the page's socket is cut without a close frame and a new one opens at once with the resume
  token → the page has `lesson` (`resumed`) and `status` `listening`. lesson.js waits 0.5 s before its first
  attempt, so a student waits that much longer;
- instance killed: the lesson runs on `python -m app` in its own process (with the same store as the relay
  here), which is killed (SIGKILL: nothing handed over) once the greeting's turn is stored; the page resumes on
  the relay here as lesson.js does (after 0.5, 1, 2, 4, 4 … s) → `lesson` (`resumed`) and `listening`. With
  the default INSTANCE_LOST_AFTER_SECONDS (15) each run takes about 20 s (`--killed-runs`);
- roll-over is not timed here: it happens at a turn boundary the student is not waiting at.

It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect

from app.logging import configure_logging
from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatedConnection, SimulatorBehaviour
from app.store.database import create_engine, database_url, session_factory
from app.store.models import Turn
from bench.processes import app_served_here, running, start_app

FAKE_KEY = "sk-bench-fake-key"
# lesson.js: the first attempt after 0.5 s, each next pause twice as long, at most 4 s.
RECONNECT_FIRST_S = 0.5
RECONNECT_LONGEST_S = 4.0


async def _until(ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            message: dict[str, Any] = json.loads(frame)
            if predicate(message):
                return message


def _status(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: m["type"] == "status" and m["state"] == state


async def _greeted(ws: ClientConnection) -> dict[str, Any]:
    """The lesson frame, once the greeting was played and reported as lesson.js does."""
    lesson = await _until(ws, lambda m: m["type"] == "lesson")
    done = await _until(ws, lambda m: m["type"] == "audio.done")
    await ws.send(json.dumps({"type": "playback", "item_id": done["item_id"], "played_ms": done["duration_ms"]}))
    await _until(ws, _status("listening"))
    return lesson


async def _listening_again(ws: ClientConnection, began: float, first: Callable[[dict[str, Any]], bool]) -> float:
    """Seconds from `began` until the page has `first`, then `status` `listening`; the lesson is then ended."""
    await _until(ws, first)
    return await _listening_and_end(ws, began)


async def _listening_and_end(ws: ClientConnection, began: float) -> float:
    """Seconds from `began` until the page has `status` `listening`; the lesson is then ended."""
    await _until(ws, _status("listening"))
    gap = time.monotonic() - began
    await ws.send(json.dumps({"type": "end"}))
    await _until(ws, _status("ended"))
    return gap


async def _upstream_gap(base: str, simulator: RealtimeSimulator,
                        end: Callable[[SimulatedConnection], Awaitable[None]]) -> float:
    async with connect(f"{base}/ws/lesson?name=Ana", max_size=None) as ws:
        await _greeted(ws)
        upstream = simulator.connections[-1]
        began = time.monotonic()
        await end(upstream)
        return await _listening_again(ws, began, _status("reconnecting"))


async def _page_gap(base: str) -> float:
    async with connect(f"{base}/ws/lesson?name=Ana", max_size=None) as ws:
        lesson = await _greeted(ws)
        began = time.monotonic()
        ws.transport.abort()
    async with connect(f"{base}/ws/lesson?{urlencode({'resume': lesson['resume_token']})}", max_size=None) as back:
        return await _listening_again(back, began, lambda m: m["type"] == "lesson" and m["resumed"])


async def _greeting_stored(database: str, lesson_id: str) -> None:
    """Return once the lesson's greeting turn is in the store (its instance writes it within a moment): the
    lesson taken over then goes on without greeting again."""
    engine = create_engine(database_url(database))
    try:
        while True:
            async with session_factory(engine)() as session:
                if await session.scalar(select(Turn.seq).where(Turn.lesson_id == lesson_id)) is not None:
                    return
            await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def _killed_instance_gap(base: str, simulator: RealtimeSimulator, database: str, folder: Path) -> float:
    """Seconds from the kill of the instance running the lesson until the page, resuming as lesson.js does on
    the relay at `base`, has its lesson back and `listening`."""
    environment = {"OPENAI_API_KEY": FAKE_KEY, "OPENAI_REALTIME_URL": simulator.url, "DATABASE_URL": database,
                   "LOG_LEVEL": "warning", "LESSON_STARTS_PER_MINUTE": "10000"}
    # Started from a thread: the relay here shares its store and must go on serving while it starts.
    started = await asyncio.to_thread(start_app, "killed-instance", environment=environment, log_directory=folder)
    with running(started) as instance:
        async with connect(f"ws://127.0.0.1:{instance.port}/ws/lesson?name=Ana", max_size=None) as ws:
            lesson = await _greeted(ws)
            await _greeting_stored(database, lesson["lesson_id"])
            instance.process.kill()
            began = time.monotonic()
    pause = RECONNECT_FIRST_S
    while True:
        await asyncio.sleep(pause)
        pause = min(pause * 2, RECONNECT_LONGEST_S)
        async with connect(f"{base}/ws/lesson?{urlencode({'resume': lesson['resume_token']})}",
                           max_size=None) as back:
            first = await _until(back, lambda m: m["type"] in ("lesson", "error"))
            if first["type"] == "lesson":
                return await _listening_and_end(back, began)
            if first["code"] != "resume_not_yet":
                raise RuntimeError(f"the resume was refused: {first}")


async def _drop(connection: SimulatedConnection) -> None:
    connection.drop()


async def run(runs: int, killed_runs: int, audio_pace: float) -> dict[str, list[float]]:
    configure_logging(Settings(log_level="warning", log_format="json"), io.StringIO())
    gaps: dict[str, list[float]] = {"upstream drop → listening": [], "upstream expiry → listening": [],
                                    "page drop → resumed, listening": [],
                                    "instance killed → taken over, listening": []}
    with tempfile.TemporaryDirectory() as folder:
        database = f"sqlite:///{Path(folder) / 'lessons.db'}"
        async with RealtimeSimulator(SimulatorBehaviour(audio_pace=audio_pace), keep_history=False) as simulator:
            settings = Settings(openai_api_key=FAKE_KEY, openai_realtime_url=simulator.url, database_url=database,
                                log_level="warning", log_format="json", lesson_starts_per_minute=10_000)
            async with app_served_here(settings) as port:
                base = f"ws://127.0.0.1:{port}"
                for _ in range(runs):
                    gaps["upstream drop → listening"].append(await _upstream_gap(base, simulator, _drop))
                    gaps["upstream expiry → listening"].append(
                        await _upstream_gap(base, simulator, lambda connection: connection.expire()))
                    gaps["page drop → resumed, listening"].append(await _page_gap(base))
                for _ in range(killed_runs):
                    gaps["instance killed → taken over, listening"].append(
                        await _killed_instance_gap(base, simulator, database, Path(folder)))
    return gaps


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resume_gaps", description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--killed-runs", type=int, default=3, help="runs of the killed-instance case (~20 s each)")
    parser.add_argument("--audio-pace", type=float, default=0.0, help="the simulator's audio pace (0 = at once)")
    args = parser.parse_args()
    gaps = asyncio.run(run(args.runs, args.killed_runs, args.audio_pace))
    print(f"{'gap (ms)':42} {'n':>3} {'median':>8} {'p95':>8} {'max':>8}")
    for name, values in gaps.items():
        if not values:
            continue
        ms = sorted(value * 1000 for value in values)
        p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
        print(f"{name:42} {len(ms):>3} {statistics.median(ms):>8.1f} {p95:>8.1f} {ms[-1]:>8.1f}")


if __name__ == "__main__":
    main()
