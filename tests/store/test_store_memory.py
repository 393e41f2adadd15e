"""What the tutor remembers, read from the store (SQLite and PostgreSQL): a known student's last lessons
with feedback, newest first; nothing for anyone else; no memory, not a failed lesson, when the store is down."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from harness import logged
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.memory import load_memory, remembered_lessons, student_history
from app.store.models import Lesson, Student
from app.students import LessonStudent, browser_key_hash

T0 = datetime(2025, 5, 1, 9, 0, tzinfo=UTC)


def feedback(topic: str) -> dict[str, Any]:
    return {"summary": f"We talked about {topic}.", "corrections": [],
            "new_words": [{"word": topic, "meaning": f"the word {topic}"}], "next_step": f"Say more about {topic}."}


async def student_with_lessons(sessions: async_sessionmaker[AsyncSession], *, key: str | None = None,
                               lessons: list[dict[str, Any] | None]) -> str:
    """A student whose lessons started a day apart, in the order given, with those feedbacks (None: none)."""
    async with sessions.begin() as session:
        student = Student(name="Ana", level="A2", browser_key_hash=browser_key_hash(key) if key else None)
        session.add(student)
        await session.flush()
        for day, given in enumerate(lessons):
            lesson = Lesson(id=f"{student.id[:8]}-{day}", student_id=student.id, level="A2",
                            started_at=T0 + timedelta(days=day), model="gpt-realtime-2.1", simulated=True)
            if given is not None:  # as the record writer leaves it: the column untouched, NULL
                lesson.feedback = given
            session.add(lesson)
    return student.id


async def test_the_last_three_lessons_with_feedback_newest_first(sessions: async_sessionmaker[AsyncSession]) -> None:
    student_id = await student_with_lessons(sessions, lessons=[
        feedback("dogs"), feedback("food"), None, feedback("school"), feedback("music"), None])
    await student_with_lessons(sessions, lessons=[feedback("someone else")])
    remembered = await remembered_lessons(sessions, LessonStudent(student_id=student_id))
    assert [lesson.feedback.new_words[0].word for lesson in remembered] == ["music", "school", "food"]
    assert [lesson.started_at for lesson in remembered] == [T0 + timedelta(days=n) for n in (4, 3, 1)]


async def test_the_open_pages_browser_is_remembered_by_its_key(sessions: async_sessionmaker[AsyncSession]) -> None:
    await student_with_lessons(sessions, key="browser-key-of-ana-0001", lessons=[feedback("dogs")])
    remembered = await remembered_lessons(sessions, LessonStudent(browser_key_hash=browser_key_hash(
        "browser-key-of-ana-0001")))
    assert [lesson.feedback.summary for lesson in remembered] == ["We talked about dogs."]
    assert await remembered_lessons(sessions, LessonStudent(browser_key_hash=browser_key_hash(
        "another-browser-key-0002"))) == []


async def test_nobody_known_has_no_memory(sessions: async_sessionmaker[AsyncSession]) -> None:
    await student_with_lessons(sessions, lessons=[feedback("dogs")])
    assert await remembered_lessons(sessions, LessonStudent()) == []


async def test_a_stored_feedback_that_is_no_longer_valid_is_skipped_and_logged(
        sessions: async_sessionmaker[AsyncSession], store_log: io.StringIO) -> None:
    student_id = await student_with_lessons(sessions, lessons=[feedback("dogs"), {"summary": "no other fields"}])
    lesson_log = structlog.get_logger("lesson_relay").bind(lesson_id="lesson-starting-now")
    remembered = await remembered_lessons(sessions, LessonStudent(student_id=student_id), lesson_log=lesson_log)
    assert [lesson.feedback.summary for lesson in remembered] == ["We talked about dogs."]
    [skipped] = logged(store_log, "memory_feedback_skipped")
    # Logged as a line of the lesson starting, naming the remembered lesson apart.
    assert skipped["lesson_id"] == "lesson-starting-now"
    async with sessions() as session:
        assert await session.get(Lesson, skipped["remembered_lesson_id"]) is not None


class UnreachableStore:
    """A session factory whose database refuses every connection."""

    def __call__(self) -> Any:
        raise OSError("connection refused")


class SilentStore:
    """A session factory whose database never answers."""

    def __call__(self) -> Any:
        return self

    async def __aenter__(self) -> Any:
        await asyncio.Event().wait()

    async def __aexit__(self, *exc: object) -> None:
        return None


@pytest.mark.parametrize("store", [UnreachableStore(), SilentStore()], ids=["down", "silent"])
async def test_a_store_that_is_down_or_silent_means_no_memory_and_says_so(store: Any, store_log: io.StringIO) -> None:
    assert await load_memory(store, LessonStudent(student_id="s1"), timeout_s=0.2) == []
    [line] = logged(store_log, "memory_unavailable")
    assert line["error"].split(":")[0] in ("OSError", "TimeoutError")


async def test_a_personal_pages_history_is_the_last_cards_and_each_word_once(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    topics = ["dogs", "food", "Dogs", "school", "music"]
    student_id = await student_with_lessons(sessions, lessons=[feedback(topic) for topic in topics])
    history = await student_history(sessions, student_id)
    assert [lesson.feedback.summary for lesson in history.lessons] == [
        "We talked about music.", "We talked about school.", "We talked about Dogs."]
    assert [word.word for word in history.words] == ["music", "school", "Dogs", "food"]


async def test_a_silent_store_leaves_the_personal_page_without_history(store_log: io.StringIO) -> None:
    history = await student_history(SilentStore(), "s1", timeout_s=0.2)
    assert (history.lessons, history.words) == ([], [])
    assert len(logged(store_log, "history_unavailable")) == 1
