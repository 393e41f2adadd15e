"""What the desk's read benchmarks share: a fresh database filled in batches, a read timed round by round with the
longest the event loop was held meanwhile (what every lesson's audio on the same worker would wait; a 1 ms
ticker's worst lateness), and the medians."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.store.database import create_engine, database_url, redact, session_factory

BATCH = 5000  # rows per INSERT while filling

# Reads what the desk reads in one session and says in a few words what it got.
Read = Callable[[AsyncSession], Awaitable[str]]


async def ticker(worst: list[float]) -> None:
    """Sleep 1 ms again and again, keeping in `worst[0]` the most a wake-up came late."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - asked - 0.001)


async def timed_rounds(url: str, read: Read, *, rounds: int) -> tuple[list[float], list[float]]:
    """`read` `rounds` times, each in a new session: each round's wall time and longest loop hold, printed."""
    engine = create_engine(database_url(url))
    sessions = session_factory(engine)
    timings: list[float] = []
    held: list[float] = []
    try:
        for _ in range(rounds):
            async with sessions() as db:
                worst = [0.0]
                ticking = asyncio.create_task(ticker(worst))
                await asyncio.sleep(0.01)
                began = time.perf_counter()
                got = await read(db)
                timings.append(time.perf_counter() - began)
                ticking.cancel()
                held.append(worst[0])
            print(f"  {timings[-1] * 1000:8.1f} ms, loop held at most {held[-1] * 1000:6.1f} ms  ({got})")
    finally:
        await engine.dispose()
    return timings, held


def run(given_url: str | None, fill: Callable[[str], Coroutine[Any, Any, None]], read: Read, *, what: str,
        rounds: int) -> None:
    """Fill `given_url` (default: a new SQLite file), then time `read` on it and print the medians."""
    with tempfile.TemporaryDirectory() as directory:
        url = given_url or f"sqlite:///{Path(directory) / 'bench.db'}"
        asyncio.run(fill(url))
        print(f"{what} on {redact(database_url(url))}:")
        timings, held = asyncio.run(timed_rounds(url, read, rounds=rounds))
        print(f"median {statistics.median(timings) * 1000:.1f} ms, loop held at most "
              f"{statistics.median(held) * 1000:.1f} ms (median of {len(timings)} rounds)")
