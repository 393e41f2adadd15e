"""Finding the running lessons a teacher withdrew (`app.withdrawal`): their link revoked, their student archived
or deleted.

The desk's request ends the lessons of its worker at once (`LiveLessons.withdraw`); the lesson may run on another
worker of the replica or on another instance sharing the database, so every worker also checks its own link
lessons every `LINK_CHECK_SECONDS`: one query by primary key for all of them, nothing on the audio path. A check
the database does not answer is logged and tried again at the next interval, never taken for a withdrawal.

A link that expires while its lesson runs lets that lesson finish: it was valid when the lesson started. Lessons
without a link (the open page) are never checked: archiving the open page's student does not stop its new
lessons either.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.live_lessons import LiveLessons
from app.store.database import error_reason
from app.store.queries import LOOKUP_TIMEOUT_S, withdrawn_links

log = structlog.get_logger("lesson_relay")


async def end_withdrawn_lessons(sessions: async_sessionmaker[AsyncSession], live: LiveLessons) -> int:
    """End this worker's link lessons whose link was revoked or whose student was archived or deleted; how many.
    Raises what the database raises (or `TimeoutError` past `LOOKUP_TIMEOUT_S`): then nothing is ended."""
    links = live.running_links()
    if not links:
        return 0
    async with asyncio.timeout(LOOKUP_TIMEOUT_S):
        withdrawn = await withdrawn_links(sessions, links)
    return sum(len(live.withdraw(withdrawal, link_id=link_id)) for link_id, withdrawal in withdrawn.items())


async def check_withdrawn_links(sessions: async_sessionmaker[AsyncSession], live: LiveLessons, *,
                                every_s: float) -> None:
    """Until cancelled: `end_withdrawn_lessons` every `every_s`. A database out of reach is logged once per
    outage."""
    failing = False
    while True:
        await asyncio.sleep(every_s)
        try:
            await end_withdrawn_lessons(sessions, live)
        except (TimeoutError, OSError, SQLAlchemyError) as exc:
            if not failing:
                log.warning("withdrawn_links_unchecked", error=error_reason(exc), retry_in_s=every_s)
            failing = True
            continue
        if failing:
            log.info("withdrawn_links_checked_again")
        failing = False
