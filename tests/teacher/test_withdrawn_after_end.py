"""A lesson that ended with its feedback, whose link a teacher then revokes (or whose student they archive or
delete): a page coming back with its resume token is refused in the withdrawal's plain words and gets neither the
feedback nor anything else of the lesson, whether the worker reads the store or remembers the lesson. Lessons run
against the simulator; every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from harness import AppServer, open_lesson
from sqlalchemy import update
from test_withdrawn_lessons import desk_app, lesson_under_way, personal_link

from app.link_check import end_withdrawn_lessons
from app.simulator import RealtimeSimulator
from app.store.models import Link, Student
from app.withdrawal import Withdrawal


async def resumed(server: AppServer, resume_token: str) -> list[dict[str, Any]]:
    """Every JSON frame a page coming back with `resume_token` gets, up to the close."""
    async with open_lesson(f"{server.ws_url}/ws/lesson?resume={resume_token}&replay=1") as back:
        await back.drain_until_closed()
    return back.messages


async def withdraw(state: Any, how: str, *, student_id: str, link_id: str) -> None:
    """As a desk of another worker does: in the store alone."""
    now = datetime.now(UTC)
    async with state.db.begin() as session:
        if how == "revoke":
            await session.execute(update(Link).where(Link.id == link_id).values(revoked_at=now))
        else:
            await session.execute(update(Student).where(Student.id == student_id).values(archived_at=now))


@pytest.mark.parametrize("how", ["revoke", "archive"])
async def test_a_lesson_that_ended_with_its_feedback_gives_none_of_it_to_a_resume_once_its_link_is_withdrawn(
        simulator: RealtimeSimulator, store_url: str, log_stream: Any, how: str) -> None:
    withdrawal = Withdrawal.LINK_REVOKED if how == "revoke" else Withdrawal.STUDENT_REMOVED
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        student_id, link_id, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            await lesson.send_json({"type": "end"})
            await lesson.until_type("feedback")
            await lesson.drain_until_closed()
        await state.records.flushed()
        before = await resumed(desk.server, started["resume_token"])  # read from the store, then remembered
        await withdraw(state, how, student_id=student_id, link_id=link_id)
        remembered = await resumed(desk.server, started["resume_token"])
        # This worker's check finds the withdrawn link of the lesson it remembers.
        await end_withdrawn_lessons(state.db, state.live_lessons, state.refused_resumes)
        after_check = await resumed(desk.server, started["resume_token"])
    async with desk_app(simulator, store_url, log_stream) as other:
        # A worker that never saw the lesson reads the store.
        from_store = await resumed(other.server, started["resume_token"])
    assert [frame["type"] for frame in before] == ["feedback", "status"]
    # Until the check, the worker remembers the lesson as it ended.
    assert [frame["type"] for frame in remembered] == ["feedback", "status"]
    for refused in (after_check, from_store):
        assert [frame["type"] for frame in refused] == ["error", "status"]
        assert (refused[0]["code"], refused[0]["message"], refused[1]["reason"]) == (
            withdrawal.value, withdrawal.student_message, withdrawal.value)
