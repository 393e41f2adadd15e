"""Resume flood: what repeated resumes of one lesson that ended with its feedback cost a worker.

    .venv/bin/python -m bench.resume_flood [--attempts 500] [--concurrency 1] [--no-memory]

One relay (uvicorn, port 0, SQLite in a temporary folder) and the Realtime simulator, both in this process over
real sockets. A lesson hears its greeting and ends with End, so it ends with its feedback; its records are
written. Then its resume token is sent `--attempts` times (`--concurrency` at once), as a student reloading, a
second device, or a script repeating its token would. It prints the attempts per second, how many got the
feedback and how many a plain refusal, how many take-over attempts reached the store (each a write transaction)
and how many SQL statements of each kind the app ran during the flood (its heartbeat included). `--no-memory`:
the worker remembers no refusal (each resume goes to the store), for comparison.

It measures and prints; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app import routes
from app.main import create_app
from app.resume import RefusedResumes
from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatorBehaviour
from bench.processes import serving_here

FAKE_KEY = "sk-bench-fake-key"


async def _until(ws: ClientConnection, wanted: str, **fields: Any) -> dict[str, Any]:
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            message: dict[str, Any] = json.loads(frame)
            if message["type"] == wanted and all(message.get(k) == v for k, v in fields.items()):
                return message


async def _lesson_ended_with_feedback(base: str) -> str:
    """Run a lesson to its End and its feedback: its resume token."""
    async with connect(f"{base}/ws/lesson?name=Ana", max_size=None) as ws:
        lesson = await _until(ws, "lesson")
        done = await _until(ws, "audio.done")
        await ws.send(json.dumps({"type": "playback", "item_id": done["item_id"], "played_ms": done["duration_ms"]}))
        await _until(ws, "status", state="listening")
        await ws.send(json.dumps({"type": "end"}))
        await _until(ws, "feedback")
        await _until(ws, "status", state="ended")
    token: str = lesson["resume_token"]
    return token


async def _resume(url: str) -> str:
    """One resume: the type of its first frame (`feedback`, or `error` for a plain refusal)."""
    async with connect(url, max_size=None) as ws:
        first = json.loads(await ws.recv())
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass
    kind: str = first["type"] if first["type"] != "error" else f"error:{first['code']}"
    return kind


async def run(attempts: int, concurrency: int, *, memory: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        database = f"sqlite:///{Path(folder) / 'lessons.db'}"
        async with RealtimeSimulator(SimulatorBehaviour(audio_pace=0), keep_history=False) as simulator:
            settings = Settings(openai_api_key=FAKE_KEY, openai_realtime_url=simulator.url, database_url=database,
                                log_level="warning", log_format="json", lesson_starts_per_minute=10_000)
            app = create_app(settings, log_stream=io.StringIO())
            async with serving_here(app, settings, backlog=512) as port:
                base = f"ws://127.0.0.1:{port}"
                token = await _lesson_ended_with_feedback(base)
                await app.state.records.flushed()
                if not memory:
                    app.state.refused_resumes = RefusedResumes(max_remembered=0)
                await _flood(app, f"{base}/ws/lesson?{urlencode({'resume': token})}", attempts, concurrency)


async def _flood(app: Any, url: str, attempts: int, concurrency: int) -> None:
    engine: AsyncEngine = app.state.db.kw["bind"]
    statements: collections.Counter[str] = collections.Counter()

    def counted(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements[statement.split(None, 1)[0].upper()] += 1

    take_overs = 0
    take_over = getattr(routes, "take_over_lesson")  # noqa: B009 (not exported: replaced for the count)

    async def take_over_counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal take_overs
        take_overs += 1
        return await take_over(*args, **kwargs)

    setattr(routes, "take_over_lesson", take_over_counted)  # noqa: B010
    event.listen(engine.sync_engine, "before_cursor_execute", counted)
    answers: collections.Counter[str] = collections.Counter()
    left = attempts

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            answers[await _resume(url)] += 1

    began = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as tasks:
            for _ in range(concurrency):
                tasks.create_task(client())
    finally:
        took = time.perf_counter() - began
        event.remove(engine.sync_engine, "before_cursor_execute", counted)
        setattr(routes, "take_over_lesson", take_over)  # noqa: B010
    print(f"attempts {attempts}, concurrency {concurrency}: {attempts / took:.0f} attempts/s over {took:.2f} s")
    print(f"answers: {dict(answers)}")
    print(f"take-over attempts reaching the store: {take_overs}")
    print(f"SQL statements during the flood: {dict(statements)} (total {sum(statements.values())})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.resume_flood", description=__doc__.split("\n")[0])
    parser.add_argument("--attempts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--no-memory", action="store_true", help="remember no refusal: each resume asks the store")
    args = parser.parse_args()
    asyncio.run(run(args.attempts, args.concurrency, memory=not args.no_memory))


if __name__ == "__main__":
    main()
