"""Finding the running lessons a teacher withdrew (`app.withdrawal`): their link revoked, their student archived
or deleted, or the lesson itself ended from the desk or the API.

The desk's request ends the lessons of its worker at once (`LiveLessons.withdraw`); the lesson may run on another
worker of the replica or on another instance sharing the database, so every worker also checks its own lessons
every `LINK_CHECK_SECONDS`: one query by primary keys for all of them (their links, and their
`end_requested_at`), nothing on the audio path. A check
the database does not answer is logged and tried again at the next interval, never taken for a withdrawal.

The same query covers the links of the ended lessons whose feedback this worker holds for their resumes
(`app.resume.RefusedResumes`): a withdrawn one's feedback is let go, so that a page coming back with its token is
refused as withdrawn, as a worker that reads the store refuses it.

A link that expires while its lesson runs lets that lesson finish: it was valid when the lesson started. Lessons
without a link (the open page) are checked only for a teacher's end: archiving the open page's student does not
stop its new lessons either.
"""

from __future__ import annotations

import asyncio
import time

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.live_lessons import LiveLessons
from app.resume import RefusedResumes
from app.store.database import error_reason
from app.store.queries import LOOKUP_TIMEOUT_S, withdrawn_lessons
from app.withdrawal import Withdrawal

log = structlog.get_logger("lesson_relay")


async def end_withdrawn_lessons(sessions: async_sessionmaker[AsyncSession], live: LiveLessons,
                                refused: RefusedResumes) -> int | None:
    """End this worker's lessons a teacher ended, and its link lessons whose link was revoked or whose student was
    archived or deleted; how many, or None when there was nothing to ask the database about. The feedback this
    worker holds of ended lessons of such links, for their resumes, is let go (`RefusedResumes.links_withdrawn`).
    Raises what the database raises (or `TimeoutError` past `LOOKUP_TIMEOUT_S`): then nothing is ended or let go."""
    lessons = live.running_lessons()
    held_links = refused.held_links(time.time())
    if not lessons and not held_links:
        return None
    async with asyncio.timeout(LOOKUP_TIMEOUT_S):
        withdrawn = await withdrawn_lessons(sessions, link_ids=live.running_links() | held_links, lesson_ids=lessons)
    refused.links_withdrawn(withdrawn.links)
    told = {lesson_id for link_id, withdrawal in withdrawn.links.items()
            for lesson_id in live.withdraw(withdrawal, link_id=link_id)}
    for lesson_id in withdrawn.ended_lessons - told:
        told.update(live.withdraw(Withdrawal.TEACHER_ENDED, lesson_id=lesson_id))
    return len(told)


async def check_withdrawn_links(sessions: async_sessionmaker[AsyncSession], live: LiveLessons,
                                refused: RefusedResumes, *, every_s: float) -> None:
    """Until cancelled: `end_withdrawn_lessons` every `every_s`. A check that fails (the database out of reach, or
    any error its driver raises) is logged once per outage, and the next one is tried all the same: a check that
    stopped would let every withdrawn lesson of this worker run to its own end."""
    failing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            ended = await end_withdrawn_lessons(sessions, live, refused)
        except Exception as exc:  # the driver's own errors too (asyncpg, sqlite3), not only SQLAlchemy's wrappers
            if not failing:
                log.warning("withdrawn_links_unchecked", error=error_reason(exc), retry_in_s=every_s)
            failing = True
            continue
        if ended is None:
            # The database was not asked (no lesson left to check): whether it answers again is not known yet.
            continue
        if failing:
            log.info("withdrawn_links_checked_again")
        failing = False
