"""Lesson records written straight into the app's database, as the relay's writer would leave them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.models import Lesson, LessonEvent, Student, Turn

START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)

GREETING_FAILED = {
    "status": "failed",
    "status_details": {"type": "failed", "error": {"type": "server_error", "code": "rate_limit_exceeded",
                                                   "message": "Rate limit reached for audio output"}},
}


async def add_student(app: Any, name: str = "Ana", level: str = "A2") -> Student:
    sessions: async_sessionmaker[AsyncSession] = app.state.db
    async with sessions() as db, db.begin():
        student = Student(name=name, level=level)
        db.add(student)
    return student


async def add_lesson(app: Any, student_id: str | None, lesson_id: str, *, started_at: datetime = START,
                     turns: tuple[tuple[str, str], ...] = (), events: tuple[tuple[str, dict[str, Any]], ...] = (),
                     duration_s: float = 125.0, cost: float = 0.0123, audio_output_tokens: int = 1500,
                     heard_texts: dict[int, str] | None = None, end_reason: str = "student_ended") -> None:
    """Every tutor turn but the first is cut short after 1200 ms; `heard_texts` gives, by turn number, the words
    heard of those that keep them (the others are as cut turns were recorded before they were kept)."""
    sessions: async_sessionmaker[AsyncSession] = app.state.db
    async with sessions() as db, db.begin():
        db.add(Lesson(
            id=lesson_id, student_id=student_id, level="A2", started_at=started_at,
            ended_at=started_at + timedelta(seconds=duration_s), end_reason=end_reason, duration_s=duration_s,
            model="gpt-realtime-2.1", simulated=True, audio_input_tokens=400, text_input_tokens=900,
            cached_tokens=100, audio_output_tokens=audio_output_tokens, text_output_tokens=200,
            estimated_cost_usd=cost,
        ))
        await db.flush()
        for seq, (role, text) in enumerate(turns):
            at = started_at + timedelta(seconds=10 * seq)
            db.add(Turn(lesson_id=lesson_id, seq=seq, role=role, text=text, started_at=at,
                        ended_at=at + timedelta(seconds=5), interrupted=role == "tutor" and seq > 0,
                        heard_ms=1200 if role == "tutor" and seq > 0 else None,
                        heard_text=(heard_texts or {}).get(seq)))
        for index, (kind, detail) in enumerate(events):
            db.add(LessonEvent(lesson_id=lesson_id, at=started_at + timedelta(seconds=1 + index), kind=kind,
                               detail=detail))


async def count(app: Any, model: type[Any]) -> int:
    sessions: async_sessionmaker[AsyncSession] = app.state.db
    async with sessions() as db:
        return int((await db.execute(select(func.count()).select_from(model))).scalar_one())
