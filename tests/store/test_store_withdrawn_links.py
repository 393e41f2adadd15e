"""Which running lessons' links a teacher withdrew, and which lessons they ended
(`app.store.queries.withdrawn_lessons`), on SQLite and PostgreSQL: one query for all of them, by primary keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from databases import statements_run
from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store import queries
from app.store.models import Lesson, Link, Student
from app.withdrawal import Withdrawal


async def test_revoked_archived_and_deleted_links_are_withdrawn_and_an_expired_or_untouched_one_is_not(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    links = {}
    for case in ("untouched", "expired", "revoked", "archived", "deleted", "revoked_and_archived"):
        student = await queries.create_student(sessions, name="Ana", level="A1")
        link = await queries.create_link(sessions, student_id=student.id)
        links[case] = (student.id, link.id)
    async with sessions.begin() as session:
        await session.execute(update(Link).where(Link.id == links["expired"][1])
                              .values(expires_at=now - timedelta(minutes=1)))
        for case in ("revoked", "revoked_and_archived"):
            await session.execute(update(Link).where(Link.id == links[case][1]).values(revoked_at=now))
        for case in ("archived", "revoked_and_archived"):
            await session.execute(update(Student).where(Student.id == links[case][0]).values(archived_at=now))
        await session.execute(delete(Student).where(Student.id == links["deleted"][0]))
    with statements_run(engine) as statements:
        withdrawn = await queries.withdrawn_lessons(sessions, link_ids=[link_id for _, link_id in links.values()],
                                                    lesson_ids=[])
    assert withdrawn.links == {
        links["revoked"][1]: Withdrawal.LINK_REVOKED,
        links["archived"][1]: Withdrawal.STUDENT_REMOVED,
        links["deleted"][1]: Withdrawal.STUDENT_REMOVED,
        links["revoked_and_archived"][1]: Withdrawal.STUDENT_REMOVED,
    }
    assert len(statements) == 1


async def test_the_lessons_a_teacher_ended_come_with_the_withdrawn_links_in_the_same_one_query(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    now = datetime.now(UTC)
    student = await queries.create_student(sessions, name="Ana", level="A1")
    revoked = await queries.create_link(sessions, student_id=student.id)
    kept = await queries.create_link(sessions, student_id=student.id)
    async with sessions.begin() as session:
        await session.execute(update(Link).where(Link.id == revoked.id).values(revoked_at=now))
        for lesson_id, end_requested_at in (("ended", now), ("running", None)):
            session.add(Lesson(id=lesson_id, level="A1", started_at=now, model="m", simulated=True,
                               end_requested_at=end_requested_at))
    with statements_run(engine) as statements:
        withdrawn = await queries.withdrawn_lessons(sessions, link_ids=[revoked.id, kept.id],
                                                    lesson_ids=["ended", "running", "not-written-yet"])
    assert withdrawn.links == {revoked.id: Withdrawal.LINK_REVOKED}
    assert withdrawn.ended_lessons == {"ended"}
    assert len(statements) == 1
