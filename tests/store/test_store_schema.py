"""The store's schema: migrations at start on SQLite and PostgreSQL, and what the models promise."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store.database import DatabaseUnavailable, create_engine, database_url, migrate
from app.store.models import Base, Lesson, LessonEvent, Link, Student, Turn

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
