"""Resume burst: what N sockets opened at once with one ended lesson's resume token cost the records' database.

    .venv/bin/python bench/resume_burst.py [--sockets 200] [--runs 3]
    git archive <ref> app | tar -x -C /tmp/before && PYTHONPATH=/tmp/before .venv/bin/python bench/resume_burst.py

Run as a file, it imports `app` from PYTHONPATH, so the second line measures the relay at `<ref>`. One relay
(uvicorn, a loopback port, SQLite in a temporary directory) and the Realtime simulator, both in this process. A
lesson is started and ended (End before its greeting is heard: no feedback), its records flushed; then, each run,
N sockets open at once with its resume token and each reads its answer until the server closes it. Printed per
run: the answers (error code, close code), the SQL statements the store executed and how many were writes
(a take-over attempt is three: two claims, UPDATE, and a SELECT), and the seconds from the first connect to the
last close.
The worker forgets the lesson's end first, as one that did not run it: the first run is the burst that reaches the
store; the runs after it find the refusal remembered.

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
from sqlalchemy.engine import Engine
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.main import create_app
from app.resume import RefusedResumes
from app.settings import Settings
from app.simulator import RealtimeSimulator, SimulatorBehaviour
from bench.processes import serving_here

FAKE_KEY = "sk-bench-fake-key"


class Statements:
    """Every SQL statement any engine of this process executes, counted by its first two words."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        event.listen(Engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        self.counts[" ".join(statement.split()[:3]).upper()] += 1

    def taken(self) -> collections.Counter[str]:
        counts, self.counts = self.counts, collections.Counter()
        return counts


async def _answer(ws: ClientConnection) -> tuple[str, int | None]:
    code = ""
    with contextlib.suppress(ConnectionClosed):  # a refusal closes 1008 or 1013: the answer is read by then
        async for frame in ws:
            if isinstance(frame, str) and (message := json.loads(frame))["type"] == "error":
                code = message["code"]
    return code, ws.close_code


async def _resume(url: str) -> tuple[str, int | None]:
    async with connect(url, max_size=None, open_timeout=60) as ws:
        return await _answer(ws)


async def _ended_lesson(ws_url: str) -> str:
    """A lesson started and ended by its student before the greeting was heard: its resume token."""
    async with connect(f"{ws_url}/ws/lesson?{urlencode({'name': 'Ana', 'level': 'A1'})}", max_size=None) as ws:
        token = ""
        async for frame in ws:
            if not isinstance(frame, str):
                continue
            message = json.loads(frame)
            if message["type"] == "lesson":
                token = message["resume_token"]
            elif message["type"] == "audio.start":
                await ws.send(json.dumps({"type": "end"}))
    return token


async def main(sockets: int, runs: int) -> None:
    statements = Statements()
    with tempfile.TemporaryDirectory() as directory:
        async with RealtimeSimulator(SimulatorBehaviour(audio_pace=0)) as simulator:
            settings = Settings(openai_api_key=FAKE_KEY, openai_realtime_url=simulator.url, log_level="warning",
                                database_url=f"sqlite:///{Path(directory) / 'lessons.db'}")
            app = create_app(settings, log_stream=io.StringIO())
            # Every connect of the burst is queued: none waits for a SYN retry.
            async with serving_here(app, settings, backlog=sockets * 2) as port:
                ws_url = f"ws://127.0.0.1:{port}"
                token = await _ended_lesson(ws_url)
                await app.state.records.flushed()
                # As a worker that did not run the lesson (the one that ran it remembers its end): asked of the store.
                app.state.refused_resumes = RefusedResumes()
                statements.taken()
                url = f"{ws_url}/ws/lesson?{urlencode({'resume': token})}"
                for run in range(1, runs + 1):
                    began = time.perf_counter()
                    answers = await asyncio.gather(*(_resume(url) for _ in range(sockets)))
                    elapsed = time.perf_counter() - began
                    counts = statements.taken()
                    writes = sum(n for words, n in counts.items() if words.startswith("UPDATE"))
                    print(f"run {run}: {sockets} sockets, answers {dict(collections.Counter(answers))}, "
                          f"{sum(counts.values())} SQL statements ({writes} of them UPDATE), "
                          f"all answered in {elapsed:.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.sockets, arguments.runs))
