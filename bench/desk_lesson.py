"""python -m bench.desk_lesson — how long the API takes to read and answer one lesson with many turns and events.

Fills a fresh database with one lesson of `--turns` turns and `--events` events, then reads it as
`GET /api/lessons/{id}` does (`queries.lesson_record`, then the lesson's JSON) `--rounds` times, and prints each
round's wall time, the longest the event loop was held meanwhile, and what the answer holds. A run measures; it
asserts nothing.

    .venv/bin/python -m bench.desk_lesson                       # SQLite file in a temporary directory
    .venv/bin/python -m bench.desk_lesson --database-url postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta

import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.database import create_engine, database_url, migrate
from app.store.models import Lesson, LessonEvent, Turn
from app.teacher import exports, queries
from bench.desk_reads import BATCH, run

LESSON_ID = "bench-lesson"


async def fill(url: str, *, turns: int, events: int, now: datetime) -> None:
    engine = create_engine(database_url(url))
    try:
        await migrate(engine)
        async with engine.begin() as connection:
            await connection.execute(insert(Lesson), [{"id": LESSON_ID, "level": "A2", "started_at": now,
                                                       "model": "bench", "simulated": True}])
            turn_rows = [{"lesson_id": LESSON_ID, "seq": seq, "role": "tutor" if seq % 2 == 0 else "student",
                          "text": f"turn {seq}: a sentence of about the length a tutor says at a time.",
                          "started_at": now + timedelta(seconds=seq), "ended_at": now + timedelta(seconds=seq + 1)}
                         for seq in range(turns)]
            event_rows = [{"lesson_id": LESSON_ID, "at": now + timedelta(milliseconds=number), "kind": "page_away",
                           "detail": {"reason": "reload", "number": number}} for number in range(events)]
            for model, rows in ((Turn, turn_rows), (LessonEvent, event_rows)):
                for first in range(0, len(rows), BATCH):
                    await connection.execute(insert(model), rows[first:first + BATCH])
    finally:
        await engine.dispose()


async def read(db: AsyncSession) -> str:
    """The lesson as `GET /api/lessons/{id}` answers it."""
    record = await queries.lesson_record(db, LESSON_ID)
    assert record is not None
    answer = orjson.dumps(exports.lesson_json(record.lesson, events_left_out=record.events_left_out,
                                              turns_left_out=record.turns_left_out))
    return (f"{len(record.lesson.turns)} turns and {len(record.lesson.events)} events answered, "
            f"{len(answer)} bytes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", help="an empty database to fill (default: a new SQLite file)")
    parser.add_argument("--turns", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    arguments = parser.parse_args()
    run(arguments.database_url,
        lambda url: fill(url, turns=arguments.turns, events=arguments.events, now=datetime.now(UTC)),
        read, what=f"GET /api/lessons/{{id}}, {arguments.turns} turns, {arguments.events} events",
        rounds=arguments.rounds)


if __name__ == "__main__":
    main()
