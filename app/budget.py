"""A student's daily spending cap: a personal link starts no new lesson once the lessons its student started
in the last 24 hours cost `MAX_STUDENT_COST_USD_PER_DAY`.

Checked at a start, before the lesson takes a place (so a refused start never replaces the link's live
lesson) and before any upstream session is opened. A resume is never checked: the cap gates new starts,
and a running lesson is bounded by `MAX_LESSON_COST_USD`. Lessons nobody can be told apart in (the open
page) are not capped here: a new browser key is a new student.

The check comes before the start rates, so a script retrying a capped link is not throttled by them. Each
worker therefore remembers a student it found at or over the cap for `REMEMBER_CAPPED_S` and refuses their
starts from memory (`refuse_remembered`, as soon as the link's signature names the student, before even the
link's row is read): such an attempt reads nothing from the store and writes nothing to it. A student under
the cap is never remembered: their spending grows with every lesson, so each start is checked against the
store.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import DailyBudgetReached, StoreUnavailable
from app.store.database import STORE_ERRORS, error_reason
from app.store.queries import LOOKUP_TIMEOUT_S, student_cost_since
from app.students import LessonStudent

BUDGET_WINDOW = timedelta(hours=24)
# How long a student found at or over the cap is refused without asking the store again: a student whose
# oldest lesson of the day leaves the 24 hours may wait this much longer. The start that finds the cap is kept
# on the teacher's desk, so a link retried for hours is kept there once a minute, as other refusals are.
REMEMBER_CAPPED_S: Final = 60.0
# The most capped students a worker remembers (about 250 bytes each, 2.5 MB in all); past it the oldest verdict is
# dropped and that student is checked against the store again.
MAX_CAPPED_REMEMBERED: Final = 10_000


class DailyBudget:
    """The daily cap of one worker: `check` a start against the store, or against what this worker found
    at or over the cap in the last `remember_s`."""

    def __init__(self, cap_usd: float, *, remember_s: float = REMEMBER_CAPPED_S,
                 max_remembered: int = MAX_CAPPED_REMEMBERED) -> None:
        self.cap_usd = cap_usd
        self.remember_s = remember_s
        self.max_remembered = max_remembered
        # Student id → (monotonic time they were found at or over the cap, what they had spent), oldest first:
        # every verdict lives as long, so the first one expires first.
        self._capped: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def check(self, sessions: async_sessionmaker[AsyncSession], student: LessonStudent, *, now: datetime,
                    clock: float) -> None:
        """Return when the student may start a lesson; `DailyBudgetReached` at or over the cap, or
        `StoreUnavailable` when the store cannot say (a start is never let through unchecked). `now` places
        the 24 hours; `clock` (monotonic seconds) times what is remembered."""
        student_id = student.student_id
        if self.cap_usd == 0 or student_id is None:
            return
        self.refuse_remembered(student_id, clock)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                spent = await student_cost_since(sessions, student_id, now - BUDGET_WINDOW)
        except STORE_ERRORS as exc:
            raise StoreUnavailable(f"daily budget of student {student_id!r} not checked: the store did not "
                                   f"answer ({error_reason(exc)})") from exc
        if spent >= self.cap_usd:
            self._capped[student_id] = (clock, spent)
            if len(self._capped) > self.max_remembered:
                self._capped.popitem(last=False)
            raise self._reached(student_id, spent, "read from the store")

    def refuse_remembered(self, student_id: str, clock: float) -> None:
        """`DailyBudgetReached` when this worker found the student at or over the cap less than `remember_s`
        ago; nothing is read."""
        self._forget_expired(clock)
        verdict = self._capped.get(student_id)
        if verdict is not None:
            found_at, spent = verdict
            raise self._reached(student_id, spent, f"found {clock - found_at:.0f} s ago")

    def _forget_expired(self, clock: float) -> None:
        while self._capped:
            student_id, (found_at, _) = next(iter(self._capped.items()))
            if found_at > clock - self.remember_s:
                return
            del self._capped[student_id]

    def _reached(self, student_id: str, spent: float, source: str) -> DailyBudgetReached:
        return DailyBudgetReached(f"student {student_id!r} spent ${spent:.4f} on lessons started in the last 24 "
                                  f"hours ({source}); MAX_STUDENT_COST_USD_PER_DAY is {self.cap_usd:g}")
