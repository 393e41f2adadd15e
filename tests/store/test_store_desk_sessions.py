"""Desk sessions kept in the store, on SQLite and PostgreSQL: open until signed out or expired, expired ones
pruned at the next sign-in, and a store that does not answer refuses rather than opens."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pytest
from harness import logged
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.database import create_engine, database_url, session_factory
from app.store.models import TeacherSession
from app.teacher import desk_sessions
from app.teacher.auth import SESSION_MAX_AGE_S

T0 = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
MAX_AGE = timedelta(seconds=SESSION_MAX_AGE_S)


async def recorded(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as db:
        return int(await db.scalar(select(func.count()).select_from(TeacherSession)) or 0)


async def test_a_session_is_open_until_it_is_ended_and_ending_it_leaves_the_others(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    await desk_sessions.start(sessions, "laptop", T0)
    await desk_sessions.start(sessions, "phone", T0)

    await desk_sessions.end(sessions, "laptop")
    await desk_sessions.end(sessions, "laptop")  # a second sign-out of the same session is harmless

    assert not await desk_sessions.is_open(sessions, "laptop", T0)
    assert await desk_sessions.is_open(sessions, "phone", T0)
    assert not await desk_sessions.is_open(sessions, "never-started", T0)


async def test_ending_them_all_closes_every_session(sessions: async_sessionmaker[AsyncSession]) -> None:
    for name in ("laptop", "phone", "school-computer"):
        await desk_sessions.start(sessions, name, T0)

    assert await desk_sessions.end_all(sessions) == 3

    assert not await desk_sessions.is_open(sessions, "school-computer", T0)
    assert await recorded(sessions) == 0


async def test_a_session_closes_at_its_max_age(sessions: async_sessionmaker[AsyncSession]) -> None:
    await desk_sessions.start(sessions, "laptop", T0)

    assert await desk_sessions.is_open(sessions, "laptop", T0 + MAX_AGE - timedelta(seconds=1))
    assert not await desk_sessions.is_open(sessions, "laptop", T0 + MAX_AGE)


async def test_the_store_keeps_only_a_digest_of_the_id(sessions: async_sessionmaker[AsyncSession]) -> None:
    await desk_sessions.start(sessions, "the-cookie-id", T0)

    async with sessions() as db:
        [row] = (await db.scalars(select(TeacherSession))).all()
    assert "the-cookie-id" not in row.id_digest
    assert len(row.id_digest) == 64


async def test_each_sign_in_deletes_the_sessions_that_have_expired(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    for index in range(30):  # a day of sign-ins never signed out
        await desk_sessions.start(sessions, f"old-{index}", T0 + timedelta(minutes=index))
    await desk_sessions.start(sessions, "recent", T0 + MAX_AGE - timedelta(minutes=1))
    assert await recorded(sessions) == 31

    await desk_sessions.start(sessions, "new", T0 + MAX_AGE + timedelta(minutes=15))

    # old-0 … old-15 have expired; old-16 … old-29, "recent" and "new" are still open.
    assert await recorded(sessions) == 16
    assert not await desk_sessions.is_open(sessions, "old-15", T0 + MAX_AGE + timedelta(minutes=15))
    assert await desk_sessions.is_open(sessions, "old-16", T0 + MAX_AGE + timedelta(minutes=15))


async def test_a_store_that_cannot_be_used_refuses_and_logs_why(store_url: str, store_log: io.StringIO) -> None:
    engine = create_engine(database_url(store_url))  # never migrated: no teacher_sessions table
    try:
        with pytest.raises(desk_sessions.DeskSessionsUnavailable, match="could not be read or written"):
            await desk_sessions.is_open(session_factory(engine), "laptop", T0)
        with pytest.raises(desk_sessions.DeskSessionsUnavailable):
            await desk_sessions.start(session_factory(engine), "laptop", T0)
    finally:
        await engine.dispose()
    lines = logged(store_log, "desk_session_unavailable")
    assert [(line["level"], line["action"]) for line in lines] == [("error", "check"), ("error", "start")]
    assert all("teacher_sessions" in line["error"] for line in lines)
