"""Retention: old transcripts go (at start, then daily), lesson rows stay; a deleted student takes everything."""

from __future__ import annotations

import io
from datetime import timedelta

import httpx
from harness import serve_app
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.settings import Settings
from app.store.models import Lesson, LessonEvent, Student, Turn, utcnow
from app.store.retention import delete_old_transcripts

FEEDBACK = {"summary": "We talked about markets.", "new_words": [], "next_step": "Practise the past.",
            "corrections": [{"said": "I goed", "better": "I went", "why": "past"}]}


async def a_lesson_with_turns(sessions: async_sessionmaker[AsyncSession], lesson_id: str, days_ago: float) -> None:
    started = utcnow() - timedelta(days=days_ago)
    async with sessions.begin() as session:
        session.add(Lesson(id=lesson_id, level="A1", started_at=started, model="m", simulated=True,
                           feedback=FEEDBACK))
        for seq in (1, 2):
            session.add(Turn(lesson_id=lesson_id, seq=seq, role="tutor", text="Hello", started_at=started,
                             ended_at=started))
        session.add(LessonEvent(lesson_id=lesson_id, at=started, kind="greeting_retry", detail={}))


async def turns_of(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    async with sessions() as session:
        rows = await session.execute(select(Turn.lesson_id, func.count()).group_by(Turn.lesson_id))
        return {lesson_id: count for lesson_id, count in rows}


async def test_transcripts_older_than_the_cutoff_are_deleted_and_the_lessons_stay(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    await a_lesson_with_turns(sessions, "old", days_ago=400)
    await a_lesson_with_turns(sessions, "recent", days_ago=10)
    deleted = await delete_old_transcripts(sessions, older_than=utcnow() - timedelta(days=365))
    assert deleted == (2, 1)
    assert await turns_of(sessions) == {"recent": 2}
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Lesson)) == 2
        assert await session.scalar(select(func.count()).select_from(LessonEvent)) == 2
        # The feedback's corrections quote the student: they go with the transcript.
        feedback = {lesson_id: kept for lesson_id, kept in await session.execute(select(Lesson.id, Lesson.feedback))}
    assert feedback == {"old": None, "recent": FEEDBACK}


async def test_the_app_sweeps_at_start_with_retention_days(store_url: str,
                                                           sessions: async_sessionmaker[AsyncSession]) -> None:
    await a_lesson_with_turns(sessions, "month_old", days_ago=31)
    await a_lesson_with_turns(sessions, "week_old", days_ago=7)
    log_stream = io.StringIO()
    settings = Settings(database_url=store_url, retention_days=30, log_format="json")
    async with serve_app(settings, log_stream) as server, httpx.AsyncClient() as http:
        assert (await http.get(f"{server.base_url}/healthz")).status_code == 200
    assert await turns_of(sessions) == {"week_old": 2}
    assert '"turns_deleted": 2, "feedback_deleted": 1' in log_stream.getvalue()


async def test_deleting_a_student_deletes_their_lessons_turns_and_events(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    await a_lesson_with_turns(sessions, "theirs", days_ago=1)
    async with sessions.begin() as session:
        session.add(Student(id="s1", name="Ana", level="A1"))
        await session.flush()
        (await session.get_one(Lesson, "theirs")).student_id = "s1"
    async with sessions.begin() as session:
        await session.delete(await session.get_one(Student, "s1"))
    async with sessions() as session:
        for model in (Lesson, Turn, LessonEvent):
            assert await session.scalar(select(func.count()).select_from(model)) == 0
