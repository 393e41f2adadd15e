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
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.database import create_engine, database_url, migrate
from app.store.models import Lesson, LessonEvent
from app.teacher import pages, queries
from bench.desk_reads import BATCH, run

KINDS = ("greeting_retry", "response_failed", "upstream_error", "refused")


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an empty database to fill (default: a new SQLite file)")
    parser.add_argument("--failures", type=int, default=100_000)
    parser.add_argument("--lessons", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    now = datetime.now(UTC)

    async def read(db: AsyncSession) -> str:
        failure_days = await queries.failures_since(db, now - timedelta(days=arguments.days),
                                                    listed=pages.FAILURES_LISTED)
        counted = sum(day.count for day in failure_days)
        listed = sum(len(day.failures) for day in failure_days)
        return f"{counted} failures on {len(failure_days)} days, {listed} listed"

    run(arguments.database_url,
        lambda url: fill(url, failures=arguments.failures, lessons=arguments.lessons, days=arguments.days, now=now),
        read, what=f"failures_since, {arguments.failures} failures in {arguments.days} days", rounds=arguments.rounds)


if __name__ == "__main__":
    main()
