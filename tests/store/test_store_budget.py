"""What a student spent in a day, read from the store (SQLite and PostgreSQL): only that student's lessons,
only those started in the last 24 hours, an open lesson with its cost so far; the daily cap refuses a start at
or over it, and cannot be checked without the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from databases import CuttableProxy
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.budget import check_daily_budget
from app.errors import DailyBudgetReached, StoreUnavailable
from app.records import LessonStarted, UsageSoFar
from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import Lesson, Student
from app.store.queries import student_cost_since
from app.store.writer import RecordWriter
from app.students import LessonStudent

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
DAY_AGO = NOW - timedelta(hours=24)


async def lessons_of(sessions: async_sessionmaker[AsyncSession], student_id: str,
                     lessons: list[tuple[timedelta, float]]) -> None:
    """The student (made if new) with lessons started that long before NOW, ended, each of that cost."""
    async with sessions.begin() as session:
        if await session.get(Student, student_id) is None:
            session.add(Student(id=student_id, name="Ana", level="A2"))
            await session.flush()
        for number, (before, cost) in enumerate(lessons):
            session.add(Lesson(id=f"{student_id}-{number}-{before.total_seconds():.0f}", student_id=student_id,
                               level="A2", started_at=NOW - before, ended_at=NOW - before + timedelta(minutes=20),
                               end_reason="student_ended", model="gpt-realtime-2.1", simulated=True,
                               estimated_cost_usd=cost))


async def test_only_the_students_lessons_of_the_last_24_hours_count(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    await lessons_of(sessions, "ana", [(timedelta(hours=1), 1.25), (timedelta(hours=23, minutes=59), 2.5),
                                       (timedelta(hours=24), 0.125), (timedelta(hours=24, seconds=1), 7.0),
                                       (timedelta(days=3), 9.0)])
    await lessons_of(sessions, "ben", [(timedelta(hours=1), 4.0)])
    assert await student_cost_since(sessions, "ana", DAY_AGO) == pytest.approx(1.25 + 2.5 + 0.125)
    assert await student_cost_since(sessions, "ben", DAY_AGO) == pytest.approx(4.0)
    assert await student_cost_since(sessions, "nobody", DAY_AGO) == 0.0


async def test_an_open_lesson_counts_with_its_cost_so_far(engine: AsyncEngine,
                                                           sessions: async_sessionmaker[AsyncSession]) -> None:
    await lessons_of(sessions, "ana", [(timedelta(hours=2), 1.0)])
    writer = RecordWriter(engine)
    writer.start()
    try:
        # As a running lesson leaves it: started, then its usage after each response, not ended.
        writer.put(LessonStarted(lesson_id="open", started_at=NOW - timedelta(minutes=5), level="A2",
                                 model="gpt-realtime-2.1", simulated=True, student_id="ana", student_name="Ana"))
        for cost in (0.25, 0.75):
            writer.put(UsageSoFar(lesson_id="open", audio_input_tokens=1000, text_input_tokens=0, cached_tokens=0,
                                  audio_output_tokens=2000, text_output_tokens=0, estimated_cost_usd=cost))
        await writer.flushed()
    finally:
        await writer.stop(grace_s=5)
    async with sessions() as session:
        assert (await session.get_one(Lesson, "open")).ended_at is None
    assert await student_cost_since(sessions, "ana", DAY_AGO) == pytest.approx(1.75)


async def test_a_start_at_or_over_the_cap_is_refused_and_under_it_or_with_no_cap_goes_on(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    await lessons_of(sessions, "ana", [(timedelta(hours=1), 3.0), (timedelta(hours=5), 2.0)])
    ana = LessonStudent(student_id="ana", link_id="link-of-ana")
    with pytest.raises(DailyBudgetReached) as refused:
        await check_daily_budget(sessions, ana, cap_usd=5.0, now=NOW)
    assert "'ana'" in refused.value.detail
    assert "MAX_STUDENT_COST_USD_PER_DAY is 5" in refused.value.detail
    assert refused.value.student_message == "You have had all the lesson time for today. Please ask your teacher."
    await check_daily_budget(sessions, ana, cap_usd=5.01, now=NOW)
    await check_daily_budget(sessions, ana, cap_usd=0, now=NOW)
    # Twenty hours on, the lesson of five hours before has left the day.
    await check_daily_budget(sessions, ana, cap_usd=5.0, now=NOW + timedelta(hours=20))


@pytest.fixture
async def cut_store(postgres_behind_proxy: tuple[str, CuttableProxy]) -> AsyncIterator[
        tuple[async_sessionmaker[AsyncSession], CuttableProxy]]:
    url, proxy = postgres_behind_proxy
    engine = create_engine(database_url(url))
    await migrate(engine)
    yield session_factory(engine), proxy
    await engine.dispose()


async def test_a_store_out_of_reach_refuses_the_start_unchecked(
        cut_store: tuple[async_sessionmaker[AsyncSession], CuttableProxy]) -> None:
    sessions, proxy = cut_store
    proxy.cut()
    with pytest.raises(StoreUnavailable) as unchecked:
        await check_daily_budget(sessions, LessonStudent(student_id="ana"), cap_usd=20.0, now=NOW)
    assert unchecked.value.code == "link_unchecked"
    assert "daily budget of student 'ana' not checked" in unchecked.value.detail
    assert proxy.refused.is_set()
