"""python -m bench.desk_failures — how long the desk's Failures page takes to read its period's failures.

Fills a fresh database with `--failures` failure events spread over the last `--days` days (on `--lessons`
lessons), then reads them as the page does (`queries.failures_since`, the newest 500 listed) `--rounds` times and
prints each round's wall time, the longest the event loop was held meanwhile (what every lesson's audio on the same
worker would wait; a 1 ms ticker's worst lateness), and the medians. A run measures; it asserts nothing.

    .venv/bin/python -m bench.desk_failures                       # SQLite file in a temporary directory
    .venv/bin/python -m bench.desk_failures --database-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert

from app.store.database import create_engine, database_url, migrate, redact, session_factory
from app.store.models import Lesson, LessonEvent
from app.teacher import pages, queries

KINDS = ("greeting_retry", "response_failed", "upstream_error", "refused")
BATCH = 5000


async def fill(url: str, *, failures: int, lessons: int, days: int, now: datetime) -> None:
    engine = create_engine(database_url(url))
    try:
        await migrate(engine)
        async with engine.begin() as connection:
            await connection.execute(insert(Lesson), [
                {"id": f"bench-{number}", "level": "A2", "started_at": now - timedelta(days=days), "model": "bench",
                 "simulated": True} for number in range(lessons)])
            step = timedelta(days=days) / failures
            rows = [{"lesson_id": f"bench-{number % lessons}", "at": now - step * number,
                     "kind": KINDS[number % len(KINDS)], "detail": {"message": f"failure {number}"}}
                    for number in range(failures)]
            for first in range(0, failures, BATCH):
                await connection.execute(insert(LessonEvent), rows[first:first + BATCH])
    finally:
        await engine.dispose()


async def ticker(worst: list[float]) -> None:
    """Sleep 1 ms again and again, keeping in `worst[0]` the most a wake-up came late."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(0.001)
        worst[0] = max(worst[0], time.perf_counter() - asked - 0.001)


async def measure(url: str, *, days: int, rounds: int, now: datetime) -> tuple[list[float], list[float]]:
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
                failure_days = await queries.failures_since(db, now - timedelta(days=days),
                                                            listed=pages.FAILURES_LISTED)
                timings.append(time.perf_counter() - began)
                ticking.cancel()
                held.append(worst[0])
            counted = sum(day.count for day in failure_days)
            listed = sum(len(day.failures) for day in failure_days)
            print(f"  {timings[-1] * 1000:8.1f} ms, loop held at most {held[-1] * 1000:6.1f} ms  "
                  f"({counted} failures on {len(failure_days)} days, {listed} listed)")
    finally:
        await engine.dispose()
    return timings, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an empty database to fill (default: a new SQLite file)")
    parser.add_argument("--failures", type=int, default=100_000)
    parser.add_argument("--lessons", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = arguments.database_url or f"sqlite:///{Path(directory) / 'bench.db'}"
        now = datetime.now(UTC)
        asyncio.run(fill(url, failures=arguments.failures, lessons=arguments.lessons, days=arguments.days, now=now))
        print(f"failures_since on {redact(database_url(url))}, {arguments.failures} failures in {arguments.days} days:")
        timings, held = asyncio.run(measure(url, days=arguments.days, rounds=arguments.rounds, now=now))
        print(f"median {statistics.median(timings) * 1000:.1f} ms, loop held at most "
              f"{statistics.median(held) * 1000:.1f} ms (median of {len(timings)} rounds)")


if __name__ == "__main__":
    main()
