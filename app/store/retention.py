"""Retention: transcripts older than RETENTION_DAYS are deleted, once at start and then daily.

What goes is what was said, the personal part of a record: the turns, and the lesson's feedback (its corrections
quote the student); the lesson row (date, length, usage, cost) and its events stay, so a school's cost history
and failure history outlive the words. Deleting a student deletes everything of theirs at once, through ON DELETE
CASCADE.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import NamedTuple

import structlog
from sqlalchemy import delete, null, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.database import error_reason
from app.store.models import Lesson, Turn, utcnow

log = structlog.get_logger("lesson_relay")

SWEEP_INTERVAL_S = 24 * 3600


class Deleted(NamedTuple):
    turns: int
    feedback: int


async def delete_old_transcripts(sessions: async_sessionmaker[AsyncSession], *, older_than: datetime) -> Deleted:
    """Delete the turns and the feedback of lessons started before `older_than`; how many of each went."""
    async with sessions.begin() as session:
        turns = await session.execute(
            delete(Turn).where(Turn.lesson_id.in_(select(Lesson.id).where(Lesson.started_at < older_than))))
        feedback = await session.execute(
            update(Lesson).where(Lesson.started_at < older_than, Lesson.feedback.is_not(None)).values(feedback=null()))
    return Deleted(turns=int(getattr(turns, "rowcount", 0) or 0), feedback=int(getattr(feedback, "rowcount", 0) or 0))


async def sweep(sessions: async_sessionmaker[AsyncSession], retention_days: int) -> None:
    """One pass: delete what is past retention, logging what went; a failure is logged, not raised."""
    cutoff = utcnow() - timedelta(days=retention_days)
    try:
        deleted = await delete_old_transcripts(sessions, older_than=cutoff)
    except Exception as exc:  # the database is down or slow: the next pass tries again
        log.warning("retention_failed", error=error_reason(exc))
        return
    log.info("retention_swept", retention_days=retention_days, older_than=cutoff.isoformat(),
             turns_deleted=deleted.turns, feedback_deleted=deleted.feedback)


async def sweep_daily(sessions: async_sessionmaker[AsyncSession], retention_days: int) -> None:
    """Sweep every day until cancelled (the first sweep is the one at start)."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL_S)
        await sweep(sessions, retention_days)
