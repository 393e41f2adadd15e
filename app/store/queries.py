"""What the lesson path reads from (and `python -m app.links` writes to) the store.

Lessons never wait on these for long: the route calls them under `LOOKUP_TIMEOUT_S` before a lesson is
built. The teacher's desk has its own queries in app/teacher/.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, func, literal_column, select, union_all
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.links import EXPIRED_WORDS, LinkClaim, LinkError
from app.settings import Settings
from app.store.models import AppSecret, Lesson, Link, Student
from app.withdrawal import Withdrawal

LINK_SECRET_NAME = "lesson_link_secret"
# How long a lesson start waits for the store before going on without it (or refusing a link lesson).
LOOKUP_TIMEOUT_S = 3.0

_WITHDRAWN_WORDS = "This lesson link is no longer valid. Ask your teacher for a new one."


async def lesson_link_secret(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    """LESSON_SECRET, or the secret generated on the first start without it and kept in the database."""
    if settings.lesson_secret is not None:
        return settings.lesson_secret.get_secret_value()
    async with sessions() as session:
        kept = await session.get(AppSecret, LINK_SECRET_NAME)
    if kept is not None:
        return kept.value
    value = secrets.token_urlsafe(32)
    try:
        async with sessions.begin() as session:
            session.add(AppSecret(name=LINK_SECRET_NAME, value=value))
    except IntegrityError:
        # Another process started at the same moment and kept its own first: use that one.
        async with sessions() as session:
            return (await session.get_one(AppSecret, LINK_SECRET_NAME)).value
    return value


@dataclass(frozen=True)
class LinkedStudent:
    """The student a valid link belongs to, and what the link sets about its lessons."""

    student_id: str
    link_id: str
    name: str
    level: str
    target_language: str | None
    topic: str | None
    support_language: str | None


async def student_for_link(sessions: async_sessionmaker[AsyncSession], claim: LinkClaim,
                           now: datetime) -> LinkedStudent:
    """The link's student, or `LinkError` when the link was revoked, has expired or its student is gone."""
    async with sessions() as session:
        row = (await session.execute(
            select(Link, Student).join(Student, Link.student_id == Student.id)
            .where(Link.id == claim.link_id, Link.student_id == claim.student_id))).first()
    if row is None:
        raise LinkError(f"link {claim.link_id!r} of student {claim.student_id!r} is not in the store",
                        _WITHDRAWN_WORDS)
    link, student = row
    if link.revoked_at is not None:
        raise LinkError(f"link {link.id!r} was revoked at {link.revoked_at.isoformat()}", _WITHDRAWN_WORDS)
    if link.expires_at is not None and link.expires_at <= now:
        raise LinkError(f"link {link.id!r} expired at {link.expires_at.isoformat()}", EXPIRED_WORDS)
    if student.archived_at is not None:
        raise LinkError(f"student {student.id!r} was archived at {student.archived_at.isoformat()}",
                        _WITHDRAWN_WORDS)
    return LinkedStudent(student_id=student.id, link_id=link.id, name=student.name, level=student.level,
                         target_language=student.target_language, topic=link.topic,
                         support_language=link.support_language)


def link_states(link_ids: Collection[str]) -> Select[str, datetime | None, datetime | None]:
    """(link id, revoked at, its student archived at) of those of `link_ids` still in the store, by primary key."""
    return (select(Link.id, Link.revoked_at, Student.archived_at).join(Student, Link.student_id == Student.id)
            .where(Link.id.in_(link_ids)))


def withdrawals(link_ids: Collection[str],
                states: Iterable[tuple[str, datetime | None, datetime | None]]) -> dict[str, Withdrawal]:
    """Which of `link_ids` (links that opened a running lesson), given their `link_states`, the teacher withdrew, and
    how: revoked, or their student archived or deleted (which deletes the links too). Expiry is not a withdrawal."""
    withdrawn = dict.fromkeys(link_ids, Withdrawal.STUDENT_REMOVED)
    for link_id, revoked_at, archived_at in states:
        if archived_at is None and revoked_at is None:
            del withdrawn[link_id]
        elif archived_at is None:
            withdrawn[link_id] = Withdrawal.LINK_REVOKED
    return withdrawn


@dataclass(frozen=True)
class Withdrawn:
    """What a teacher withdrew of the lessons running on one worker: links (by id, and how), and lessons they
    ended (by id)."""

    links: dict[str, Withdrawal]
    ended_lessons: set[str]


async def withdrawn_lessons(sessions: async_sessionmaker[AsyncSession], *, link_ids: Collection[str],
                            lesson_ids: Collection[str]) -> Withdrawn:
    """`withdrawals` of `link_ids`, and which of `lesson_ids` a teacher ended (`end_requested_at`), read in one
    query by primary keys."""
    kind = literal_column("'link'", String).label("kind")
    links = link_states(link_ids).add_columns(kind)
    ended = (select(Lesson.id, Lesson.end_requested_at, Lesson.end_requested_at,
                    literal_column("'lesson'", String))
             .where(Lesson.id.in_(lesson_ids), Lesson.end_requested_at.is_not(None)))
    async with sessions() as session:
        rows = (await session.execute(union_all(links, ended))).all()
    states = [(row_id, revoked_at, archived_at) for row_id, revoked_at, archived_at, row_kind in rows
              if row_kind == "link"]
    return Withdrawn(links=withdrawals(link_ids, states),
                     ended_lessons={row_id for row_id, _, _, row_kind in rows if row_kind == "lesson"})


async def student_cost_since(sessions: async_sessionmaker[AsyncSession], student_id: str, since: datetime) -> float:
    """The estimated cost of the student's lessons started at or after `since`, open ones with their cost so
    far (the writer keeps an open lesson's usage after every response); 0 when there are none."""
    async with sessions() as session:
        spent = await session.scalar(
            select(func.coalesce(func.sum(Lesson.estimated_cost_usd), 0.0))
            .where(Lesson.student_id == student_id, Lesson.started_at >= since))
    return float(spent or 0.0)


async def create_student(sessions: async_sessionmaker[AsyncSession], *, name: str, level: str,
                         target_language: str | None = None) -> Student:
    async with sessions.begin() as session:
        student = Student(name=name, level=level, target_language=target_language)
        session.add(student)
    return student


async def create_link(sessions: async_sessionmaker[AsyncSession], *, student_id: str,
                      expires_at: datetime | None = None, topic: str | None = None,
                      support_language: str | None = None) -> Link:
    async with sessions.begin() as session:
        link = Link(student_id=student_id, expires_at=expires_at, topic=topic, support_language=support_language)
        session.add(link)
    return link


async def recent_feedback(sessions: async_sessionmaker[AsyncSession], *, student_id: str | None = None,
                          browser_key_hash: str | None = None,
                          limit: int) -> list[tuple[str, datetime, dict[str, Any]]]:
    """(lesson id, start, feedback) of the student's last `limit` lessons that have feedback, newest first; the
    student is a link's (`student_id`) or the open page's browser (`browser_key_hash`)."""
    query = select(Lesson.id, Lesson.started_at, Lesson.feedback).where(Lesson.feedback.is_not(None))
    if student_id is not None:
        query = query.where(Lesson.student_id == student_id)
    elif browser_key_hash is not None:
        query = query.join(Student, Lesson.student_id == Student.id).where(Student.browser_key_hash == browser_key_hash)
    else:
        return []
    async with sessions() as session:
        rows = await session.execute(query.order_by(Lesson.started_at.desc(), Lesson.id.desc()).limit(limit))
    return [(lesson_id, started_at, feedback) for lesson_id, started_at, feedback in rows if feedback is not None]
