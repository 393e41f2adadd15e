"""A teacher revokes a link, or archives or deletes a student, while a lesson of it runs: the lesson ends, its page
is told in plain words, its record and the log say why, and its resume is refused. On the worker the desk's
request reaches, at once; on any other (another app on the same database here), at its next check. Lessons run
against the simulator; every store-backed test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from databases import CuttableProxy, statements_run
from desk_client import PASSWORD, Desk
from harness import AppServer, LessonClient, logged, open_lesson, relay_settings, serve_app
from sqlalchemy import update

from app.link_check import end_withdrawn_lessons
from app.links import make_lesson_token
from app.main import drain_lessons
from app.outcomes import END_REASONS
from app.simulator import RealtimeSimulator
from app.store import queries
from app.store.models import Lesson, Link
from app.withdrawal import Withdrawal

SECRET = "test-lesson-secret-not-real-0123456789"


@contextlib.asynccontextmanager
async def desk_app(simulator: RealtimeSimulator, database_url: str, log: io.StringIO,
                   **overrides: Any) -> AsyncIterator[Desk]:
    """An app with the desk on and lesson links required, signed in; its periodic check is far off unless
    `overrides` set `link_check_seconds`, so that only the desk's own request can end a lesson."""
    settings = relay_settings(simulator.url, lesson_secret=SECRET, database_url=database_url,
                              teacher_password=PASSWORD, **({"link_check_seconds": 300} | overrides))
    async with serve_app(settings, log) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        desk = Desk(server, client, log)
        await desk.sign_in()
        yield desk


async def personal_link(state: Any) -> tuple[str, str, str]:
    """A student and their link made in the running app's store: (student id, link id, token)."""
    student = await queries.create_student(state.db, name="Ana", level="B1")
    link = await queries.create_link(state.db, student_id=student.id)
    return student.id, link.id, make_lesson_token(state.link_secret, student_id=student.id, link_id=link.id,
                                                  expires_at=None)


@contextlib.asynccontextmanager
async def lesson_under_way(server: AppServer, token: str) -> AsyncIterator[tuple[LessonClient, dict[str, Any]]]:
    """A link lesson whose greeting was heard: (its page, its `lesson` frame)."""
    async with open_lesson(server.lesson_url(name="Ana", token=token)) as lesson:
        started = await lesson.until_type("lesson")
        await lesson.hear_greeting()
        yield lesson, started


async def ended_as(lesson: LessonClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's fatal `error` frame and its `status` `ended`, read until the socket closes (within 10 s: a lesson
    not ended fails rather than waits for its own end)."""
    async with asyncio.timeout(10):
        error = await lesson.until_type("error")
        ended = await lesson.until(lambda m: m["type"] == "status" and m["state"] == "ended")
        await lesson.drain_until_closed()
    return error, ended


async def stored(state: Any, lesson_id: str) -> Lesson | None:
    await state.records.flushed()
    async with state.db() as session:
        return await session.get(Lesson, lesson_id)


async def resume_refusal(server: AppServer, resume_token: str) -> tuple[dict[str, Any], int | None]:
    async with open_lesson(f"{server.ws_url}/ws/lesson?resume={resume_token}") as back:
        error = await back.until_type("error")
        await back.drain_until_closed()
    return error, back.ws.close_code


async def until_logged(log: io.StringIO, event: str) -> None:
    """Return once the app has logged `event` (the periodic check runs on its own clock)."""
    async with asyncio.timeout(10):
        while True:
            if logged(log, event):
                return
            await asyncio.sleep(0.05)


def assert_told(error: dict[str, Any], ended: dict[str, Any], lesson: LessonClient, withdrawal: Withdrawal) -> None:
    assert (error["code"], error["fatal"], error["message"]) == (withdrawal.value, True, withdrawal.student_message)
    assert ended["reason"] == withdrawal.value
    assert lesson.ws.close_code == 1000


async def test_revoking_the_link_on_the_desk_ends_its_lesson_at_once(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        student_id, link_id, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            revoked = await desk.submit(f"/teacher/students/{student_id}/links/{link_id}/revoke",
                                        page=f"/teacher/students/{student_id}")
            error, ended = await ended_as(lesson)
        row = await stored(state, started["lesson_id"])
        lesson_page = await desk.client.get(f"/teacher/lessons/{started['lesson_id']}")
        refusal, close_code = await resume_refusal(desk.server, started["resume_token"])
    assert revoked.status_code == 303
    assert_told(error, ended, lesson, Withdrawal.LINK_REVOKED)
    assert "Your teacher has withdrawn this lesson link" in error["message"]
    assert row is not None
    assert (row.end_reason, row.ended_at is not None) == ("link_revoked", True)
    assert END_REASONS["link_revoked"] in lesson_page.text
    [withdrawn] = logged(log_stream, "lesson_withdrawn")
    assert (withdrawn["lesson_id"], withdrawn["link_id"], withdrawn["student_id"], withdrawn["reason"]) == (
        started["lesson_id"], link_id, student_id, "link_revoked")
    assert (refusal["code"], refusal["message"], refusal["fatal"], close_code) == (
        "link_revoked", Withdrawal.LINK_REVOKED.student_message, True, 1008)
    # Only the lesson's own session was opened: the tutor was not asked for feedback on a withdrawn link.
    [connection] = simulator.connections
    assert not [event for event in connection.received if event["type"] == "response.create"
                and (event.get("response") or {}).get("metadata", {}).get("purpose") == "feedback"]


@pytest.mark.parametrize("action", ["archive", "delete"])
async def test_archiving_or_deleting_the_student_on_the_desk_ends_their_lesson_at_once(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO, action: str) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        student_id, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            answer = await desk.submit(f"/teacher/students/{student_id}/{action}",
                                       {"confirm": "yes"} if action == "delete" else None,
                                       page=f"/teacher/students/{student_id}")
            error, ended = await ended_as(lesson)
        row = await stored(state, started["lesson_id"])
    assert answer.status_code == 303
    assert_told(error, ended, lesson, Withdrawal.STUDENT_REMOVED)
    if action == "archive":
        assert row is not None
        assert row.end_reason == "student_removed"
    else:
        assert row is None  # deleted with everything of the student's
    [withdrawn] = logged(log_stream, "lesson_withdrawn")
    assert (withdrawn["lesson_id"], withdrawn["student_id"]) == (started["lesson_id"], student_id)


@pytest.mark.parametrize("action", ["revoke", "archive"])
async def test_revoking_the_link_or_archiving_the_student_through_the_api_ends_the_lesson_at_once(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO, action: str) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        student_id, link_id, token = await personal_link(state)
        bearer = {"Authorization": f"Bearer {PASSWORD}"}
        async with lesson_under_way(desk.server, token) as (lesson, started):
            if action == "revoke":
                answer = await desk.client.post(f"/api/students/{student_id}/links/{link_id}/revoke", headers=bearer)
            else:
                answer = await desk.client.patch(f"/api/students/{student_id}", json={"archived": True},
                                                 headers=bearer)
            error, ended = await ended_as(lesson)
        row = await stored(state, started["lesson_id"])
    assert answer.status_code == 200, answer.text
    withdrawal = Withdrawal.LINK_REVOKED if action == "revoke" else Withdrawal.STUDENT_REMOVED
    assert_told(error, ended, lesson, withdrawal)
    assert row is not None
    assert row.end_reason == withdrawal.value


async def test_a_lesson_on_another_app_of_the_same_database_ends_at_its_next_check(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream, link_check_seconds=1) as running, \
            desk_app(simulator, store_url, log_stream) as desk:
        student_id, link_id, token = await personal_link(running.app.state)
        async with lesson_under_way(running.server, token) as (lesson, started):
            # The desk's request lands on an app that does not run the lesson: only the check can end it.
            assert desk.app.state.live_lessons.running_links() == set()
            assert running.app.state.live_lessons.running_links() == {link_id}
            await desk.submit(f"/teacher/students/{student_id}/links/{link_id}/revoke",
                              page=f"/teacher/students/{student_id}")
            error, ended = await ended_as(lesson)
        row = await stored(running.app.state, started["lesson_id"])
    assert_told(error, ended, lesson, Withdrawal.LINK_REVOKED)
    assert row is not None
    assert row.end_reason == "link_revoked"
    [withdrawn] = logged(log_stream, "lesson_withdrawn")
    assert (withdrawn["lesson_id"], withdrawn["link_id"]) == (started["lesson_id"], link_id)


async def test_the_check_ends_only_withdrawn_links_lessons_in_one_query_and_an_expired_link_finishes(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        links = [await personal_link(state) for _ in range(3)]
        async with contextlib.AsyncExitStack() as stack:
            pages = [await stack.enter_async_context(lesson_under_way(desk.server, token)) for _, _, token in links]
            (_, revoked, _), (_, expired, _), _ = links
            async with state.db.begin() as session:
                await session.execute(update(Link).where(Link.id == revoked).values(revoked_at=datetime.now(UTC)))
                await session.execute(update(Link).where(Link.id == expired)
                                      .values(expires_at=datetime.now(UTC) - timedelta(minutes=1)))
            with statements_run(state.db.kw["bind"]) as statements:
                ended = await end_withdrawn_lessons(state.db, state.live_lessons, state.refused_resumes)
            error, _ = await ended_as(pages[0][0])
            assert state.live_lessons.running_links() == {expired, links[2][1]}
    assert ended == 1
    assert error["code"] == "link_revoked"
    assert len(statements) == 1


async def test_a_lesson_handed_off_by_a_restart_is_not_taken_over_once_its_link_was_revoked(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as old:
        state = old.app.state
        _, link_id, token = await personal_link(state)
        async with lesson_under_way(old.server, token) as (lesson, started):
            drain = asyncio.create_task(drain_lessons(old.app, 5))
            await lesson.until(lambda m: m["type"] == "status" and m["state"] == "reconnecting")
            await lesson.drain_until_closed()
        await drain
        await state.records.flushed()
        handed_off = await stored(state, started["lesson_id"])
        async with state.db.begin() as session:
            await session.execute(update(Link).where(Link.id == link_id).values(revoked_at=datetime.now(UTC)))
    async with desk_app(simulator, store_url, log_stream) as new:
        refusal, close_code = await resume_refusal(new.server, started["resume_token"])
        row = await stored(new.app.state, started["lesson_id"])
    assert (refusal["code"], refusal["message"], close_code) == (
        "link_revoked", Withdrawal.LINK_REVOKED.student_message, 1008)
    assert row is not None
    assert handed_off is not None
    assert row.end_reason == "link_revoked"
    # It stopped at its hand-off, not when its page came back.
    assert (row.ended_at, row.duration_s) == (handed_off.ended_at, handed_off.duration_s)
    assert len(simulator.connections) == 1  # no session was opened for the refused resume


async def test_a_page_away_when_its_student_is_deleted_is_refused_its_resume_in_plain_words(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        student_id, _, token = await personal_link(desk.app.state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson.ws.transport.abort()  # the network lost: the lesson waits for its page
        await desk.submit(f"/teacher/students/{student_id}/delete", {"confirm": "yes"},
                          page=f"/teacher/students/{student_id}")
        assert await stored(desk.app.state, started["lesson_id"]) is None
        refusal, close_code = await resume_refusal(desk.server, started["resume_token"])
    assert (refusal["code"], refusal["message"], close_code) == (
        "student_removed", Withdrawal.STUDENT_REMOVED.student_message, 1008)
    [withdrawn] = logged(log_stream, "lesson_withdrawn")
    assert withdrawn["lesson_id"] == started["lesson_id"]


async def test_a_database_outage_during_the_check_ends_no_lesson_and_the_check_resumes(
        simulator: RealtimeSimulator, postgres_behind_proxy: tuple[str, CuttableProxy],
        log_stream: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    async with desk_app(simulator, url, log_stream, link_check_seconds=1) as desk:
        state = desk.app.state
        _, link_id, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            proxy.cut()
            await until_logged(log_stream, "withdrawn_links_unchecked")
            # The check failed and ended nothing: the lesson goes on.
            assert state.live_lessons.running_links() == {link_id}
            proxy.restore()
            await until_logged(log_stream, "withdrawn_links_checked_again")
            assert state.live_lessons.running_links() == {link_id}
            async with state.db.begin() as session:
                await session.execute(update(Link).where(Link.id == link_id).values(revoked_at=datetime.now(UTC)))
            error, _ = await ended_as(lesson)
        row = await stored(state, started["lesson_id"])
    [unchecked] = logged(log_stream, "withdrawn_links_unchecked")
    assert (unchecked["level"], unchecked["retry_in_s"]) == ("warning", 1)
    assert error["code"] == "link_revoked"
    assert row is not None
    assert row.end_reason == "link_revoked"
