"""Taking over a lesson another instance handed over (a redeploy): the lesson's row, claimed once, and its turns.

An instance that drains for a redeploy ends each lesson as `handed_off` (its usage and duration so far, its
turns written before it). The instance a page resumes on claims the row back in one conditional UPDATE, so
two resumes of one lesson never both take it over, and reads what the lesson needs to go on. The route calls
this under `LOOKUP_TIMEOUT_S` before the lesson's machine is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import ResumeElsewhere, ResumeNotYet, ResumeRefused
from app.store.models import Lesson, Turn

HANDED_OFF = "handed_off"


@dataclass(frozen=True)
class TakenOverLesson:
    lesson_id: str
    student_id: str | None
    link_id: str | None
    level: str
    started_at: datetime
    # The turns so far: (seq, role, text), in the order they began.
    turns: list[tuple[int, Literal["tutor", "student"], str]]
    tokens: dict[str, int]


async def take_over_lesson(sessions: async_sessionmaker[AsyncSession], lesson_id: str, *, grace_s: float,
                           now: datetime) -> TakenOverLesson:
    """Claim a lesson handed over no longer than `grace_s` ago, or say why not: `ResumeNotYet` while it has not
    been handed over yet (the page tries again), `ResumeRefused` when it ended or waited too long.

    The claim is the first statement, so it takes the database's write lock before anything is read: of two
    resumes at once, the second waits for the first and then finds the lesson open again."""
    async with sessions.begin() as session:
        claimed = cast(CursorResult[tuple[()]], await session.execute(
            update(Lesson).where(Lesson.id == lesson_id, Lesson.end_reason == HANDED_OFF,
                                 Lesson.ended_at >= now - timedelta(seconds=grace_s))
            .values(ended_at=None, end_reason=None)))
        lesson = await session.get(Lesson, lesson_id)
        if claimed.rowcount != 1 or lesson is None:
            raise _why_not(lesson, lesson_id, grace_s)
        turns = (await session.execute(
            select(Turn.seq, Turn.role, Turn.text).where(Turn.lesson_id == lesson_id).order_by(Turn.seq))).all()
        return TakenOverLesson(
            lesson_id=lesson.id, student_id=lesson.student_id, link_id=lesson.link_id, level=lesson.level,
            started_at=lesson.started_at,
            turns=[(seq, cast(Literal["tutor", "student"], role), text) for seq, role, text in turns],
            tokens={"audio_input_tokens": lesson.audio_input_tokens, "text_input_tokens": lesson.text_input_tokens,
                    "cached_tokens": lesson.cached_tokens, "audio_output_tokens": lesson.audio_output_tokens,
                    "text_output_tokens": lesson.text_output_tokens},
        )


def _why_not(lesson: Lesson | None, lesson_id: str, grace_s: float) -> ResumeNotYet | ResumeRefused:
    if lesson is None:
        # Its first record may still be on its way from the instance that started it.
        return ResumeNotYet(f"lesson {lesson_id!r} is not in the store (yet)")
    if lesson.ended_at is None:
        return ResumeElsewhere(f"lesson {lesson_id!r} is open on another instance, or was just taken over")
    if lesson.end_reason != HANDED_OFF:
        return ResumeRefused.ended(f"lesson {lesson_id!r} ended: {lesson.end_reason}")
    return ResumeRefused.expired(f"lesson {lesson_id!r} was handed off at {lesson.ended_at.isoformat()}, "
                                 f"more than {grace_s:g} s ago")
