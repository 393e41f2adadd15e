"""Who a lesson is for, settled before the lesson is built: a personal link's student, or the open page's
browser.

A link (a `token`) is checked twice: its signature here, its row in the store (revoked, expired, student
archived or deleted) under `LOOKUP_TIMEOUT_S`. A link lesson whose student cannot be loaded because the
store is out of reach is refused in plain words (close 1013, try again): its name, level and whether it
was revoked are all in the store. Without a link (allowed only while LESSON_SECRET is unset) the page
sends its random `student_key`; only its sha256 is kept, and the record writer finds or makes the
student for it, so an open-page lesson never waits for the store and goes on when it is down.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import InvalidRequest, StoreUnavailable
from app.links import LinkClaim, LinkError, verify_lesson_token
from app.messages import LessonRequest
from app.store.database import STORE_ERRORS
from app.store.queries import LOOKUP_TIMEOUT_S, LinkedStudent, student_for_link


@dataclass(frozen=True)
class LessonStudent:
    """Whose lesson this is, for its records; all None for a lesson nobody can be told apart in."""

    student_id: str | None = None
    link_id: str | None = None
    browser_key_hash: str | None = None
    # The language the teacher set for the student; None = the app's TARGET_LANGUAGE.
    target_language: str | None = None


def browser_key_hash(student_key: str) -> str:
    return hashlib.sha256(student_key.encode()).hexdigest()


# Runs on a validly signed link's claim before its row is read; raises the `LessonError` that refuses it.
ClaimCheck = Callable[[LinkClaim], None]


def any_claim(claim: LinkClaim) -> None:
    """Every validly signed link goes on to have its row read."""


async def linked_student(token: str, *, link_secret: str, sessions: async_sessionmaker[AsyncSession],
                         check_claim: ClaimCheck = any_claim) -> LinkedStudent:
    """The student of a lesson link, or `InvalidRequest` (bad or withdrawn link) or `StoreUnavailable`, or what
    `check_claim` raises."""
    try:
        claim = verify_lesson_token(token, link_secret, now=time.time())
        check_claim(claim)
        async with asyncio.timeout(LOOKUP_TIMEOUT_S):
            return await student_for_link(sessions, claim, datetime.now(UTC))
    except LinkError as exc:
        raise InvalidRequest(str(exc), student_message=exc.student_message) from exc
    except STORE_ERRORS as exc:
        raise StoreUnavailable(f"lesson link not checked: the store did not answer ({type(exc).__name__}: "
                               f"{str(exc)[:200]})") from exc


async def student_for_request(request: LessonRequest, *, lesson_secret_set: bool, link_secret: str,
                              sessions: async_sessionmaker[AsyncSession],
                              check_claim: ClaimCheck = any_claim) -> tuple[LessonRequest, LessonStudent]:
    """The request as the lesson will run it (a link fixes name, level, topic and support language) and
    whose lesson it is; `InvalidRequest` when a link is needed and missing, bad or withdrawn."""
    if request.token:
        student = await linked_student(request.token, link_secret=link_secret, sessions=sessions,
                                       check_claim=check_claim)
        # Everything the instructions say about the lesson comes from the teacher's link, never the query.
        fixed = request.model_copy(update={
            "name": student.name, "level": student.level, "topic": student.topic, "support": student.support_language,
        })
        return fixed, LessonStudent(student_id=student.student_id, link_id=student.link_id,
                                    target_language=student.target_language)
    if lesson_secret_set:
        raise InvalidRequest("no lesson link token", student_message="This lesson needs a link from your teacher.")
    if request.student_key:
        return request, LessonStudent(browser_key_hash=browser_key_hash(request.student_key))
    return request, LessonStudent()
