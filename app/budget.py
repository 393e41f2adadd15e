"""A student's daily spending cap: a personal link starts no new lesson once the lessons its student started
in the last 24 hours cost `MAX_STUDENT_COST_USD_PER_DAY`.

Checked at a start, before the lesson takes a place (so a refused start never replaces the link's live
lesson) and before any upstream session is opened. A resume is never checked: the cap gates new starts,
and a running lesson is bounded by `MAX_LESSON_COST_USD`. Lessons nobody can be told apart in (the open
page) are not capped here: a new browser key is a new student.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DailyBudgetReached, StoreUnavailable
from app.store.database import error_reason
from app.store.queries import LOOKUP_TIMEOUT_S, student_cost_since
from app.students import LessonStudent

BUDGET_WINDOW = timedelta(hours=24)


async def check_daily_budget(sessions: async_sessionmaker[AsyncSession], student: LessonStudent, *,
                             cap_usd: float, now: datetime) -> None:
    """Return when the student may start a lesson; `DailyBudgetReached` at or over the cap, or
    `StoreUnavailable` when the store cannot say (a start is never let through unchecked)."""
    if cap_usd == 0 or student.student_id is None:
        return
    try:
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            spent = await student_cost_since(sessions, student.student_id, now - BUDGET_WINDOW)
    except (TimeoutError, OSError, SQLAlchemyError) as exc:
        raise StoreUnavailable(f"daily budget of student {student.student_id!r} not checked: the store did not "
                               f"answer ({error_reason(exc)})") from exc
    if spent >= cap_usd:
        raise DailyBudgetReached(f"student {student.student_id!r} spent ${spent:.4f} on lessons started in the last "
                                 f"24 hours; MAX_STUDENT_COST_USD_PER_DAY is {cap_usd:g}")
