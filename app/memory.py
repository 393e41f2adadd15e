"""What the tutor remembers about a returning student: their last lessons' feedback, read from the store
before the lesson is built and put into the tutor's instructions as `# What you remember about <name>`
(memory goes into the instructions, never as replayed conversation items).

A known student is a personal link's or the open page's browser's. The store gets `MEMORY_TIMEOUT_S`:
slow or down, the lesson starts without memory, as a first lesson would. A stored feedback that is no
longer the object the feedback module validates is skipped and logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

import structlog
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.feedback import Feedback, NewWord
from app.store.database import STORE_ERRORS
from app.store.queries import recent_feedback
from app.students import LessonStudent

log = structlog.get_logger("lesson_relay")

# How many of the last lessons the tutor remembers, and how long their start may wait for them.
MEMORY_LESSONS = 3
MEMORY_TIMEOUT_S = 1.5


@dataclass(frozen=True)
class RememberedLesson:
    lesson_id: str
    started_at: datetime
    feedback: Feedback


async def remembered_lessons(sessions: async_sessionmaker[AsyncSession], student: LessonStudent, *,
                             lesson_log: structlog.typing.FilteringBoundLogger = log,
                             limit: int = MEMORY_LESSONS) -> list[RememberedLesson]:
    """The student's last `limit` lessons with feedback, newest first (none for a student nobody knows)."""
    if student.student_id is None and student.browser_key_hash is None:
        return []
    rows = await recent_feedback(sessions, student_id=student.student_id,
                                 browser_key_hash=student.browser_key_hash, limit=limit)
    lessons: list[RememberedLesson] = []
    for lesson_id, started_at, stored in rows:
        try:
            lessons.append(RememberedLesson(lesson_id, started_at, Feedback.model_validate(stored)))
        except ValidationError as exc:
            # The lesson's own id is bound to `lesson_log`: the remembered one is named apart.
            lesson_log.warning("memory_feedback_skipped", remembered_lesson_id=lesson_id,
                               started_at=started_at.isoformat(), problem=str(exc.errors()[0]["msg"]))
    return lessons


async def load_memory(sessions: async_sessionmaker[AsyncSession], student: LessonStudent, *,
                      lesson_log: structlog.typing.FilteringBoundLogger = log,
                      timeout_s: float = MEMORY_TIMEOUT_S) -> list[RememberedLesson]:
    """`remembered_lessons`, or none when the store does not answer within `timeout_s`: the lesson goes on. What
    is logged goes to `lesson_log`, the lesson's logger (its id and client bound)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await remembered_lessons(sessions, student, lesson_log=lesson_log)
    except STORE_ERRORS as exc:
        lesson_log.warning("memory_unavailable", timeout_s=timeout_s, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return []


@dataclass(frozen=True)
class StudentHistory:
    """What a personal link's page shows before the lesson: the last feedback cards and the words met."""

    lessons: list[RememberedLesson]
    words: list[NewWord]


# The page shows this many cards, and the words of this many lessons.
HISTORY_CARDS = 3
HISTORY_WORD_LESSONS = 10


async def student_history(sessions: async_sessionmaker[AsyncSession], student_id: str, *,
                          timeout_s: float = MEMORY_TIMEOUT_S) -> StudentHistory:
    """The student's last feedback cards and their words (newest first, each word once); empty when the
    store does not answer within `timeout_s`: the page is served without them."""
    try:
        async with asyncio.timeout(timeout_s):
            lessons = await remembered_lessons(sessions, LessonStudent(student_id=student_id),
                                               limit=HISTORY_WORD_LESSONS)
    except STORE_ERRORS as exc:
        log.warning("history_unavailable", timeout_s=timeout_s, error=f"{type(exc).__name__}: {str(exc)[:200]}")
        return StudentHistory([], [])
    words: dict[str, NewWord] = {}
    for lesson in lessons:
        for word in lesson.feedback.new_words:
            words.setdefault(word.word.casefold(), word)
    return StudentHistory(lessons[:HISTORY_CARDS], list(words.values()))
