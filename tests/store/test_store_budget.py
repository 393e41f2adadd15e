"""What a student spent in a day, read from the store (SQLite and PostgreSQL): only that student's lessons,
only those started in the last 24 hours, an open lesson with its cost so far; the daily cap refuses a start at
or over it, and cannot be checked without the store. A student found at or over it is refused from memory for
REMEMBER_CAPPED_S without another read; a student under it is read at every start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from databases import CuttableProxy, statements_run
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.budget import REMEMBER_CAPPED_S, DailyBudget
from app.errors import DailyBudgetReached, StoreUnavailable
from app.records import LessonStarted, UsageSoFar
from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import Lesson, Student
from app.store.queries import student_cost_since
from app.store.writer import RecordWriter
from app.students import LessonStudent

NOW = datetime(2025, 6, 2, 12, 0, tzinfo=UTC)
DAY_AGO = NOW - timedelta(hours=24)
CLOCK = 1000.0  # the worker's monotonic clock at NOW
REFUSAL_WORDS = "You have had all the lesson time for today. Please ask your teacher."


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
        await DailyBudget(5.0).check(sessions, ana, now=NOW, clock=CLOCK)
    assert "'ana'" in refused.value.detail
    assert "MAX_STUDENT_COST_USD_PER_DAY is 5" in refused.value.detail
    assert refused.value.student_message == REFUSAL_WORDS
    await DailyBudget(5.01).check(sessions, ana, now=NOW, clock=CLOCK)
    await DailyBudget(0).check(sessions, ana, now=NOW, clock=CLOCK)
    # Twenty hours on, the lesson of five hours before has left the day.
    await DailyBudget(5.0).check(sessions, ana, now=NOW + timedelta(hours=20), clock=CLOCK + 20 * 3600)


def budget_reads(statements: list[str]) -> int:
    return sum("sum(lessons.estimated_cost_usd)" in statement.lower() for statement in statements)


async def test_a_student_found_at_the_cap_is_refused_from_memory_until_the_verdict_expires(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    # The older lesson leaves the 24 hours 30 s after NOW, while the verdict is still remembered.
    await lessons_of(sessions, "ana", [(timedelta(hours=23, minutes=59, seconds=30), 3.0),
                                       (timedelta(hours=1), 2.0)])
    ana = LessonStudent(student_id="ana", link_id="link-of-ana")
    budget = DailyBudget(5.0)
    refusals = []
    with statements_run(engine) as statements:
        for later_s in (0.0, 1.0, 45.0, REMEMBER_CAPPED_S - 0.5):
            with pytest.raises(DailyBudgetReached) as refused:
                await budget.check(sessions, ana, now=NOW + timedelta(seconds=later_s), clock=CLOCK + later_s)
            refusals.append(refused.value)
        reads_while_remembered = budget_reads(statements)
        await budget.check(sessions, ana, now=NOW + timedelta(seconds=REMEMBER_CAPPED_S),
                           clock=CLOCK + REMEMBER_CAPPED_S)
    assert reads_while_remembered == 1
    assert budget_reads(statements) == 2  # the verdict expired: read again, and the day now holds $2
    assert {(r.code, r.close_code, r.student_message) for r in refusals} == {
        ("daily_budget_reached", 1008, REFUSAL_WORDS)}
    assert "spent $5.0000 on lessons started in the last 24 hours (read from the store)" in refusals[0].detail
    assert "spent $5.0000 on lessons started in the last 24 hours (found 45 s ago)" in refusals[2].detail
    assert all("MAX_STUDENT_COST_USD_PER_DAY is 5" in refusal.detail for refusal in refusals)


async def test_a_student_under_the_cap_is_read_at_every_start_until_found_at_it(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    await lessons_of(sessions, "ana", [(timedelta(hours=1), 4.0)])
    ana = LessonStudent(student_id="ana", link_id="link-of-ana")
    budget = DailyBudget(5.0)
    with statements_run(engine) as statements:
        await budget.check(sessions, ana, now=NOW, clock=CLOCK)
        await budget.check(sessions, ana, now=NOW, clock=CLOCK + 1)
        assert budget_reads(statements) == 2
        # A lesson that ends within the same minute brings the day to the cap: the next start sees it.
        await lessons_of(sessions, "ana", [(timedelta(minutes=30), 1.0)])
        for later_s in (2.0, 3.0):
            with pytest.raises(DailyBudgetReached):
                await budget.check(sessions, ana, now=NOW, clock=CLOCK + later_s)
    assert budget_reads(statements) == 3


async def test_a_worker_remembers_at_most_its_bound_of_capped_students_dropping_the_oldest(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    for student_id in ("ana", "ben", "cy"):
        await lessons_of(sessions, student_id, [(timedelta(hours=1), 2.0)])
    budget = DailyBudget(1.0, max_remembered=2)
    with statements_run(engine) as statements:
        for number, student_id in enumerate(["ana", "ben", "cy", "cy", "ben", "ana"]):
            with pytest.raises(DailyBudgetReached):
                await budget.check(sessions, LessonStudent(student_id=student_id), now=NOW, clock=CLOCK + number)
    # ana, ben, cy read; cy and ben remembered; ana, the oldest verdict, was dropped for cy and is read again.
    assert budget_reads(statements) == 4


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
        await DailyBudget(20.0).check(sessions, LessonStudent(student_id="ana"), now=NOW, clock=CLOCK)
    assert unchecked.value.code == "link_unchecked"
    assert "daily budget of student 'ana' not checked" in unchecked.value.detail
    assert proxy.refused.is_set()
