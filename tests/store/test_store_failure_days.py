"""The failures page's counts on SQLite and PostgreSQL: made by the database, by UTC day and kind, the same on both."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store.models import Lesson, LessonEvent
from app.teacher.queries import failures_since

MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)
SINCE = MIDNIGHT - timedelta(days=3)


async def _add_events(sessions: async_sessionmaker[AsyncSession], *events: tuple[datetime, str]) -> None:
    async with sessions() as db, db.begin():
        db.add(Lesson(id="lesson", level="A2", started_at=SINCE, model="m", simulated=True))
        await db.flush()
        db.add_all(LessonEvent(lesson_id="lesson", at=at, kind=kind, detail={}) for at, kind in events)


@contextmanager
def _statements(engine: AsyncEngine) -> Iterator[list[str]]:
    """Every SQL statement `engine` sends while the block runs."""
    sent: list[str] = []

    def record(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_failures_are_counted_by_their_utc_day_on_either_side_of_midnight(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    """A failure's day is its UTC day on both databases, whatever time zone the time was written in or the database
    session is in: the last microsecond before midnight UTC is the day before, midnight itself the day after."""
    await _add_events(
        sessions,
        (MIDNIGHT - timedelta(microseconds=1), "upstream_error"),
        (MIDNIGHT, "upstream_error"),
        (MIDNIGHT.astimezone(timezone(timedelta(hours=2))) - timedelta(minutes=1), "greeting_retry"),
        (MIDNIGHT.astimezone(timezone(timedelta(hours=-5))) + timedelta(minutes=30), "greeting_retry"),
        (MIDNIGHT + timedelta(minutes=1), "page_away"),  # no failure
        (SINCE - timedelta(microseconds=1), "upstream_error"),  # before the period
        (SINCE, "refused"),
    )
    async with sessions() as db:
        if engine.dialect.name == "postgresql":
            # A session far from UTC: its own days would put the evening failures on the next day.
            await db.execute(text("SET TIME ZONE 'Pacific/Kiritimati'"))
        days = await failures_since(db, SINCE, listed=10)

    assert [(day.day, day.by_kind) for day in days] == [
        (date(2026, 3, 2), {"greeting_retry": 1, "upstream_error": 1}),
        (date(2026, 3, 1), {"greeting_retry": 1, "upstream_error": 1}),
        (date(2026, 2, 27), {"refused": 1}),
    ]
    assert [[failure.event.at for failure in day.failures] for day in days] == [
        [MIDNIGHT + timedelta(minutes=30), MIDNIGHT],
        [MIDNIGHT - timedelta(microseconds=1), MIDNIGHT - timedelta(minutes=1)],
        [SINCE],
    ]


async def test_the_database_counts_the_failures_and_only_the_listed_ones_are_read(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    """Reading every failure of the period to count them took seconds with a hundred thousand of them: every read of
    the events is a count by day and kind, or of the listed ones alone."""
    await _add_events(sessions, *((MIDNIGHT + timedelta(seconds=second), "upstream_error") for second in range(30)))
    async with sessions() as db:
        with _statements(engine) as sent:
            days = await failures_since(db, SINCE, listed=5)

    assert [(day.count, len(day.failures)) for day in days] == [(30, 5)]
    reads = [statement for statement in sent if "FROM lesson_events" in statement]
    assert len(reads) == 2
    assert all("GROUP BY" in statement or "LIMIT" in statement for statement in reads), reads
