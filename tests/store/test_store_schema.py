"""The store's schema: migrations at start on SQLite and PostgreSQL, and what the models promise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store.database import (
    DatabaseUnavailable,
    alembic_config,
    create_engine,
    database_url,
    migrate,
    session_factory,
)
from app.store.handover import take_over_lesson
from app.store.instances import InstanceTiming
from app.store.models import Base, Lesson, LessonEvent, Link, Student, Turn
from app.teacher.queries import failure_counts
from app.usage import LessonUsage

TABLES = {"students", "links", "lessons", "turns", "lesson_events", "instances", "app_secrets", "sign_in_failures",
          "teacher_sessions", "alembic_version"}


async def test_migrations_create_exactly_the_models_schema(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        differences = await connection.run_sync(lambda sync: compare_metadata(
            MigrationContext.configure(sync, opts={"compare_type": True}), Base.metadata))
    assert tables == TABLES
    assert differences == []


async def test_migrating_an_up_to_date_database_again_changes_nothing(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:
        session.add(Student(name="Ana", level="A2"))
    await migrate(engine)
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Student)) == 1


async def test_a_migration_that_fails_leaves_the_schema_as_it_was(store_url: str) -> None:
    # 0001 creates students and links before lessons: on SQLite each used to be committed by itself.
    engine = create_engine(database_url(store_url))
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE lessons (id INTEGER)"))
        with pytest.raises(DatabaseUnavailable, match="lessons"):
            await migrate(engine)
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    finally:
        await engine.dispose()
    assert tables == {"lessons"}


async def test_times_come_back_timezone_aware_in_utc(sessions: async_sessionmaker[AsyncSession]) -> None:
    lisbon_noon = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=1)))
    async with sessions.begin() as session:
        session.add(Student(id="s1", name="Ana", level="A2", created_at=lisbon_noon))
    async with sessions() as session:
        student = await session.get_one(Student, "s1")
    assert student.created_at == lisbon_noon
    assert student.created_at.tzinfo == UTC


async def test_a_naive_time_is_refused(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(StatementError, match="naive datetime"):
        async with sessions.begin() as session:
            session.add(Student(name="Ana", level="A2", created_at=datetime(2025, 3, 1, 12, 0)))


async def test_deleting_a_student_deletes_everything_of_theirs(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        for student_id in ("gone", "kept"):
            session.add(Student(id=student_id, name=student_id, level="B1"))
            session.add(Link(id=f"link-{student_id}", student_id=student_id))
            session.add(Lesson(id=f"lesson-{student_id}", student_id=student_id, level="B1", started_at=now,
                               model="m", simulated=True))
            session.add(Turn(lesson_id=f"lesson-{student_id}", seq=0, role="tutor", text="Hello!", started_at=now,
                             ended_at=now))
            session.add(LessonEvent(lesson_id=f"lesson-{student_id}", at=now, kind="greeting_retry",
                                    detail={"status": "failed"}))
    # A plain SQL delete, as the desk issues it: the database's ON DELETE CASCADE does the rest.
    async with sessions.begin() as session:
        await session.execute(Student.__table__.delete().where(Student.id == "gone"))
    async with sessions() as session:
        for model in (Student, Link, Lesson, Turn, LessonEvent):
            kept = await session.scalar(select(func.count()).select_from(model))
            assert kept == 1, model.__tablename__
        assert await session.scalar(select(Lesson.student_id)) == "kept"


async def test_a_turn_order_is_unique_within_its_lesson(sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    async with sessions.begin() as session:
        session.add(Lesson(id="l1", level="A1", started_at=now, model="m", simulated=True))
        session.add(Turn(lesson_id="l1", seq=0, role="tutor", text="Hi", started_at=now, ended_at=now))
    with pytest.raises(IntegrityError):
        async with sessions.begin() as session:
            session.add(Turn(lesson_id="l1", seq=0, role="student", text="Hello", started_at=now, ended_at=now))


async def test_a_lesson_recorded_before_the_heard_words_and_cached_split_were_kept_still_loads_and_goes_on(
        store_url: str) -> None:
    engine = create_engine(database_url(store_url))
    now = datetime.now(UTC)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "0004"))
            await connection.execute(text(
                "INSERT INTO lessons (id, level, started_at, model, simulated, audio_input_tokens, text_input_tokens, "
                "cached_tokens, audio_output_tokens, text_output_tokens, estimated_cost_usd, ended_at, end_reason) "
                "VALUES ('old', 'A2', :now, 'm', true, 100, 20, 5, 300, 40, 0.02, :now, 'handed_off')"), {"now": now})
            await connection.execute(text(
                "INSERT INTO turns (lesson_id, seq, role, text, started_at, ended_at, interrupted, heard_ms) "
                "VALUES ('old', 1, 'tutor', 'Hello Ana! How are you?', :now, :now, true, 700)"), {"now": now})
        await migrate(engine)
        taken = await take_over_lesson(session_factory(engine), "old", instance_id="B", now=now,
                                       timing=InstanceTiming(lost_after_s=15, resume_grace_s=30, max_lesson_s=3600))
    finally:
        await engine.dispose()
    # All its text, the only text there is, marked cut as it was; its cached tokens off the cheaper text input.
    assert taken.turns == [(1, "tutor", "Hello Ana! How are you?", True)]
    usage = LessonUsage()
    usage.carry(taken.tokens)
    assert (usage.cached_text_tokens, usage.cached_audio_tokens) == (5, 0)


async def test_the_failures_of_the_last_days_are_found_by_the_index_on_event_times(engine: AsyncEngine) -> None:
    """The failures page counts those of its period: without an index on `lesson_events.at` it read every event ever
    recorded (seconds, with a hundred thousand failures)."""
    statement = failure_counts(datetime(2026, 3, 1, tzinfo=UTC))
    compiled = statement.compile(engine, compile_kwargs={"literal_binds": True})
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as connection:
        if not sqlite:  # an empty table is read whole, index or not, unless reading it whole is ruled out
            await connection.execute(text("SET enable_seqscan = off"))
        explained = await connection.execute(text(f"EXPLAIN {'QUERY PLAN ' if sqlite else ''}{compiled}"))
        plan = " ".join(str(row[-1]) for row in explained)
    assert "ix_lesson_events_at" in plan
