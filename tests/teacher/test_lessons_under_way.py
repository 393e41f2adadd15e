"""The lessons under way on the desk (`/teacher/live`), and a teacher ending one: from the desk (confirmed, with
its CSRF token) or the API. On the app running the lesson it ends at once; on another app of the same database at
that app's next check. The page is told in plain words, gets its feedback as at End, and the record says
`teacher_ended`. The list the page updates itself with is the page's own, for a signed-in desk only. Lessons run
against the simulator; every store-backed test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from desk_client import PASSWORD, Desk, csrf_token
from harness import LessonClient, SimulatorWith, logged, open_lesson, relay_settings, serve_app
from sqlalchemy import insert
from test_withdrawn_lessons import desk_app, lesson_under_way, personal_link, resume_refusal, stored, until_logged

from app.main import drain_lessons
from app.outcomes import END_REASONS, NOT_FAILURES
from app.resume import ResumeClaim, make_resume_token
from app.simulator import RealtimeSimulator
from app.simulator.connection import SimulatedConnection
from app.simulator.feedback import is_feedback_request
from app.store.models import Instance, Lesson, new_id
from app.teacher.queries import is_under_way
from app.teacher.web import NOTICES
from app.withdrawal import Withdrawal

WORDS = Withdrawal.TEACHER_ENDED.student_message


async def ended_by_teacher(lesson: LessonClient) -> list[dict[str, Any]]:
    """Every JSON frame from the teacher's `error` to the close (within 20 s: a lesson not ended fails rather than
    waits for its own end)."""
    async with asyncio.timeout(20):
        await lesson.until_type("error", code="teacher_ended")
        start = len(lesson.messages) - 1
        await lesson.drain_until_closed()
    return [frame for frame in lesson.messages[start:] if isinstance(frame, dict)]


def assert_ended_with_feedback(frames: list[dict[str, Any]], lesson: LessonClient) -> None:
    assert frames[0] == {"type": "error", "code": "teacher_ended", "message": WORDS, "fatal": True}
    assert [(frame["type"], frame.get("state")) for frame in frames[1:]] == [
        ("status", "feedback"), ("feedback", None), ("usage", None), ("status", "ended")]
    assert frames[-1]["reason"] == "teacher_ended"
    assert lesson.ws.close_code == 1000


async def failures_of(state: Any, lesson_id: str) -> list[str]:
    async with state.db() as session:
        lesson = await session.get(Lesson, lesson_id)
        assert lesson is not None
        await session.refresh(lesson, ["events"])
        return [event.kind for event in lesson.events if event.kind not in NOT_FAILURES]


async def test_the_desk_and_the_api_list_the_lessons_under_way_and_moving_but_not_ended_or_lost_ones(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        empty = await desk.client.get("/teacher/live")
        student_id, _, token = await personal_link(state)
        now = datetime.now(UTC)
        lost_instance = new_id()
        moving, ended, lost = new_id(), new_id(), new_id()
        async with state.db.begin() as session:
            await session.execute(insert(Instance).values(id=lost_instance, started_at=now - timedelta(hours=1),
                                                          seen_at=now - timedelta(minutes=5)))
            common = {"student_id": student_id, "level": "B1", "model": "m", "simulated": True}
            await session.execute(insert(Lesson), [
                common | {"id": moving, "started_at": now - timedelta(minutes=3), "ended_at": now,
                          "end_reason": "handed_off", "duration_s": 180.0, "instance_id": state.instance_id},
                common | {"id": ended, "started_at": now - timedelta(minutes=9), "ended_at": now,
                          "end_reason": "student_ended", "instance_id": state.instance_id},
                common | {"id": lost, "started_at": now - timedelta(minutes=9), "instance_id": lost_instance},
            ])
        async with lesson_under_way(desk.server, token) as (_, started):
            await state.records.flushed()
            live = await desk.client.get("/teacher/live")
            lesson_page = await desk.client.get(f"/teacher/lessons/{started['lesson_id']}")
            listed = await desk.client.get("/api/lessons/under-way", headers={"Authorization": f"Bearer {PASSWORD}"})
    assert empty.status_code == 200
    assert "No lesson is under way." in empty.text
    assert live.status_code == 200
    assert 'href="/teacher/live" aria-current="page"' in live.text
    assert f'href="/teacher/lessons/{started["lesson_id"]}"' in live.text
    assert f'action="/teacher/lessons/{started["lesson_id"]}/end"' in live.text
    assert f'href="/teacher/lessons/{moving}"' in live.text
    assert "Moving to another server" in live.text
    assert "In lesson" in live.text
    assert "Personal link" in live.text
    assert "data-local" in live.text
    assert ended not in live.text
    assert lost not in live.text
    assert lesson_page.status_code == 200
    assert "Transcript so far" in lesson_page.text
    assert "Under way" in lesson_page.text
    assert "Still open." not in lesson_page.text
    assert f'action="/teacher/lessons/{started["lesson_id"]}/end"' in lesson_page.text
    assert listed.status_code == 200
    running, handed_off = listed.json()["lessons"]
    assert (running["id"], running["state"], running["student_name"]) == (started["lesson_id"], "in_lesson", "Ana")
    assert running["link"]["url"].startswith(f"{desk.server.base_url}/?token=")
    assert running["seconds_so_far"] >= 0
    assert (handed_off["id"], handed_off["state"], handed_off["seconds_so_far"], handed_off["link"]) == (
        moving, "moving", 180.0, None)


def without_the_clock(html: str) -> str:
    """`html` with what changes from one second to the next (the time of "As of", a lesson's time so far) blanked."""
    html = re.sub(r'<span id="live-as-of">.*?</span>', '<span id="live-as-of"></span>', html)
    return re.sub(r'(<td data-label="So far" class="num">).*?(</td>)', r"\1\2", html)


async def test_the_list_the_page_updates_itself_with_is_the_pages_own_and_needs_a_signed_in_desk(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        student_id, _, _ = await personal_link(state)
        lesson_id = new_id()
        async with state.db.begin() as session:
            await session.execute(insert(Lesson).values(
                id=lesson_id, student_id=student_id, level="B1", model="m", simulated=True,
                started_at=datetime.now(UTC) - timedelta(minutes=3), instance_id=state.instance_id))
        page = await desk.client.get("/teacher/live")
        # A GET with the session cookie alone: no CSRF token is asked for.
        listed = await desk.client.get("/teacher/live/list")
        async with httpx.AsyncClient(base_url=desk.server.base_url) as stranger:
            never_signed_in = await stranger.get("/teacher/live/list")
        # A copy of the cookie, kept by a page left open when the teacher signed out elsewhere.
        async with httpx.AsyncClient(base_url=desk.server.base_url, cookies=desk.client.cookies) as left_open:
            before_sign_out = await left_open.get("/teacher/live/list")
            await desk.submit("/teacher/signout")
            signed_out = await left_open.get("/teacher/live/list")
            page_signed_out = await left_open.get("/teacher/live")
    assert (listed.status_code, before_sign_out.status_code) == (200, 200)
    assert listed.headers["cache-control"] == "no-store"
    fragment = listed.text.strip()
    assert fragment.startswith('<div id="live-lessons"')
    assert "<html" not in fragment
    assert f'<tr data-lesson="{lesson_id}">' in fragment
    assert '<caption class="visually-hidden">1 lesson under way</caption>' in fragment
    assert f'action="/teacher/lessons/{lesson_id}/end"' in fragment
    # Its End lesson form carries the session's token, as the page's does.
    assert csrf_token(fragment) == csrf_token(page.text)
    # The page shows that same list, from the same template.
    assert without_the_clock(fragment) in without_the_clock(page.text)
    assert 'data-update-url="/teacher/live/list"' in page.text
    # Without the script, the page is read again by its link.
    assert '<a href="/teacher/live">Refresh</a>' in page.text
    assert '<script src="/static/teacher-live.js" defer></script>' in page.text
    # Signed out, the script is told so (401), not sent the sign-in form; the page itself redirects to it.
    for refused in (never_signed_in, signed_out):
        assert refused.status_code == 401
        assert "location" not in refused.headers
        assert "Signed out" in refused.text
        assert lesson_id not in refused.text
    assert page_signed_out.status_code == 303
    assert page_signed_out.headers["location"] == "/teacher/signin?next=%2Fteacher%2Flive"


async def test_ending_a_lesson_on_the_desk_of_its_app_ends_it_at_once_with_its_feedback(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, link_id, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            answer = await desk.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"}, page="/teacher/live")
            frames = await ended_by_teacher(lesson)
        row = await stored(state, lesson_id)
        failures = await failures_of(state, lesson_id)
        after = await desk.client.get("/teacher/live")
        lesson_page = await desk.client.get(f"/teacher/lessons/{lesson_id}")
        refusal, close_code = await resume_refusal(desk.server, started["resume_token"])
    assert answer.status_code == 303
    assert answer.headers["location"] == "/teacher/live?notice=lesson_ended"
    assert_ended_with_feedback(frames, lesson)
    assert row is not None
    assert (row.end_reason, row.end_requested_at is not None, row.ended_at is not None) == ("teacher_ended", True, True)
    assert row.feedback == {key: value for key, value in frames[2].items() if key != "type"}
    assert failures == []
    assert "No lesson is under way." in after.text
    assert END_REASONS["teacher_ended"] in lesson_page.text
    [withdrawn] = [line for line in log_stream.getvalue().splitlines() if '"lesson_withdrawn"' in line]
    assert '"teacher_ended"' in withdrawn
    assert link_id in withdrawn
    # A page back after the end gets what the page there got: the teacher's words, the feedback, the end (1000).
    assert (refusal["code"], refusal["message"], close_code) == ("teacher_ended", WORDS, 1000)


async def test_a_lesson_on_another_app_of_the_same_database_ends_at_its_next_check(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream, link_check_seconds=1) as running, \
            desk_app(simulator, store_url, log_stream) as desk:
        _, _, token = await personal_link(running.app.state)
        async with lesson_under_way(running.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            await running.app.state.records.flushed()
            # The desk's request lands on an app that does not run the lesson: only the check can end it.
            assert desk.app.state.live_lessons.running_lessons() == set()
            listed = await desk.client.get("/teacher/live")
            answer = await desk.submit(f"/teacher/lessons/{lesson_id}/end", page=f"/teacher/lessons/{lesson_id}")
            frames = await ended_by_teacher(lesson)
        row = await stored(running.app.state, lesson_id)
    assert f'href="/teacher/lessons/{lesson_id}"' in listed.text
    assert answer.headers["location"] == f"/teacher/lessons/{lesson_id}?notice=lesson_ending"
    assert_ended_with_feedback(frames, lesson)
    assert row is not None
    assert row.end_reason == "teacher_ended"
    assert row.feedback is not None


async def test_a_page_away_when_its_teacher_ends_the_lesson_is_told_so_on_its_return_then_gets_its_feedback(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # The simulator holds the feedback request until the page is back: it comes while the lesson waits for it.
    page_back = asyncio.Event()
    answer_feedback = SimulatedConnection._response_create

    async def feedback_once_the_page_is_back(connection: SimulatedConnection, event: dict[str, Any]) -> None:
        if is_feedback_request((event.get("response") or {}).get("metadata")):
            await page_back.wait()
        await answer_feedback(connection, event)

    monkeypatch.setattr(SimulatedConnection, "_response_create", feedback_once_the_page_is_back)
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            lesson.ws.transport.abort()  # the network lost: the lesson waits for its page
            await until_logged(log_stream, "page_away")
        await state.records.flushed()
        answer = await desk.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"}, page="/teacher/live")
        await until_logged(log_stream, "feedback_requested")
        async with open_lesson(f"{desk.server.ws_url}/ws/lesson?resume={started['resume_token']}") as back:
            resumed = await back.until_type("lesson")
            waiting = await back.until_type("status")
            page_back.set()
            async with asyncio.timeout(20):
                await back.drain_until_closed()
        row = await stored(state, lesson_id)
    assert answer.headers["location"] == "/teacher/live?notice=lesson_ended"
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson_id, True)
    # As a page that was there: the teacher's words, the feedback on its way (within what is left of its
    # time), the feedback, the end reason.
    frames = back.messages[back.messages.index(resumed) + 1:]
    assert_ended_with_feedback(frames, back)
    assert frames[1] == waiting
    assert 0 < waiting["timeout_s"] <= 20
    assert row is not None
    assert row.end_reason == "teacher_ended"
    assert row.feedback == {key: value for key, value in frames[2].items() if key != "type"}


async def test_a_page_back_after_its_lesson_ended_with_its_feedback_gets_the_teachers_words_the_feedback_and_the_end(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    # The same from the lesson records, on whichever instance or worker the page comes back to: the lesson ended
    # (with its feedback) while its page was away.
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            lesson.ws.transport.abort()  # the network lost: the lesson waits for its page
            await until_logged(log_stream, "page_away")
        await state.records.flushed()
        await desk.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"}, page="/teacher/live")
        await until_logged(log_stream, "lesson_ended")
        await state.records.flushed()
        async with open_lesson(f"{desk.server.ws_url}/ws/lesson?resume={started['resume_token']}") as back:
            async with asyncio.timeout(20):
                await back.drain_until_closed()
        row = await stored(state, lesson_id)
    frames = [frame for frame in back.messages if isinstance(frame, dict)]
    assert frames[0] == {"type": "error", "code": "teacher_ended", "message": WORDS, "fatal": True}
    assert [(frame["type"], frame.get("state")) for frame in frames[1:]] == [("feedback", None), ("status", "ended")]
    assert frames[-1]["reason"] == "teacher_ended"
    assert back.ws.close_code == 1000
    assert row is not None
    assert row.feedback == {key: value for key, value in frames[1].items() if key != "type"}


async def test_a_lesson_of_the_open_page_without_a_link_is_listed_and_ended_too(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    settings = relay_settings(simulator.url, database_url=store_url, teacher_password=PASSWORD)
    async with serve_app(settings, log_stream) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        desk = Desk(server, client, log_stream)
        await desk.sign_in()
        async with open_lesson(server.lesson_url(name="Ana", level="A2")) as lesson:
            started = await lesson.until_type("lesson")
            await lesson.hear_greeting()
            await server.app.state.records.flushed()
            listed = await desk.client.get("/teacher/live")
            answer = await desk.submit(f"/teacher/lessons/{started['lesson_id']}/end", page="/teacher/live")
            frames = await ended_by_teacher(lesson)
    assert "Open page (no link)" in listed.text
    assert answer.status_code == 303
    assert_ended_with_feedback(frames, lesson)


async def test_a_form_without_its_csrf_token_ends_nothing(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (_, started):
            lesson_id = started["lesson_id"]
            await state.records.flushed()
            without = await desk.client.post(f"/teacher/lessons/{lesson_id}/end", data={"back": "live"})
            wrong = await desk.client.post(f"/teacher/lessons/{lesson_id}/end", data={"csrf_token": "forged"})
            still_running = state.live_lessons.running_lessons()
            row = await stored(state, lesson_id)
    assert (without.status_code, wrong.status_code) == (403, 403)
    assert "Form refused" in without.text
    assert still_running == {lesson_id}
    assert row is not None
    assert (row.ended_at, row.end_requested_at) == (None, None)


async def test_ending_a_lesson_that_has_ended_says_so_and_changes_nothing(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            await lesson.send_json({"type": "end"})
            await lesson.drain_until_closed()
        before = await stored(state, lesson_id)
        answer = await desk.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"})
        shown = await desk.client.get(answer.headers["location"])
        after = await stored(state, lesson_id)
        unknown = await desk.submit("/teacher/lessons/no-such-lesson/end")
    assert answer.headers["location"] == f"/teacher/lessons/{lesson_id}?notice=lesson_already_ended"
    assert NOTICES["lesson_already_ended"] in shown.text
    assert before is not None
    assert after is not None
    assert (after.end_reason, after.ended_at, after.end_requested_at) == ("student_ended", before.ended_at, None)
    assert unknown.status_code == 404


async def test_ending_a_lesson_already_waiting_for_its_feedback_says_so_and_it_ends_as_it_was_going_to(
        simulator_with: SimulatorWith, store_url: str, log_stream: io.StringIO) -> None:
    # The feedback never comes: the lesson waits for it, ending on its own, while the teacher presses End lesson.
    async with simulator_with(feedback_fault="never") as simulator, \
            desk_app(simulator, store_url, log_stream, feedback_timeout_seconds=5) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with lesson_under_way(desk.server, token) as (lesson, started):
            lesson_id = started["lesson_id"]
            await lesson.send_json({"type": "end"})
            await lesson.until(lambda m: m["type"] == "status" and m["state"] == "feedback")
            await state.records.flushed()
            answer = await desk.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"}, page="/teacher/live")
            shown = await desk.client.get(answer.headers["location"])
            await lesson.drain_until_closed()
        row = await stored(state, lesson_id)
    assert answer.headers["location"] == "/teacher/live?notice=lesson_ending_already"
    assert NOTICES["lesson_ending_already"] in shown.text
    # The student was not told that the teacher ended it: the lesson ended as they asked.
    frames = [frame for frame in lesson.messages if isinstance(frame, dict)]
    assert [frame for frame in frames if frame["type"] == "error"] == []
    assert frames[-1] == {"type": "status", "state": "ended", "reason": "student_ended"}
    assert row is not None
    assert row.end_reason == "student_ended"
    assert logged(log_stream, "lesson_withdrawn") == []


async def test_the_api_ends_a_lesson_and_refuses_an_ended_or_unknown_one_or_no_token(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    bearer = {"Authorization": f"Bearer {PASSWORD}"}
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        _, _, token = await personal_link(state)
        async with httpx.AsyncClient(base_url=desk.server.base_url) as api:
            async with lesson_under_way(desk.server, token) as (lesson, started):
                lesson_id = started["lesson_id"]
                await state.records.flushed()
                no_token = await api.post(f"/api/lessons/{lesson_id}/end")
                ended = await api.post(f"/api/lessons/{lesson_id}/end", headers=bearer)
                frames = await ended_by_teacher(lesson)
            await state.records.flushed()
            again = await api.post(f"/api/lessons/{lesson_id}/end", headers=bearer)
            unknown = await api.post("/api/lessons/no-such-lesson/end", headers=bearer)
            record = await api.get(f"/api/lessons/{lesson_id}", headers=bearer)
    assert no_token.status_code == 401
    assert (ended.status_code, ended.json()) == (202, {"id": lesson_id, "ending": "now"})
    assert_ended_with_feedback(frames, lesson)
    assert again.status_code == 409
    assert again.json() == {"error": f"lesson {lesson_id!r} has already ended (teacher_ended): nothing was changed"}
    assert unknown.status_code == 404
    assert record.json()["end_reason"] == "teacher_ended"
    assert record.json()["end_requested_at"] is not None


async def test_a_lesson_moving_after_a_restart_ended_on_the_desk_is_not_taken_over(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as old:
        _, _, token = await personal_link(old.app.state)
        async with lesson_under_way(old.server, token) as (lesson, started):
            drain = asyncio.create_task(drain_lessons(old.app, 5))
            await lesson.until(lambda m: m["type"] == "status" and m["state"] == "reconnecting")
            await lesson.drain_until_closed()
        await drain
        await old.app.state.records.flushed()
    async with desk_app(simulator, store_url, log_stream) as new:
        lesson_id = started["lesson_id"]
        listed = await new.client.get("/teacher/live")
        answer = await new.submit(f"/teacher/lessons/{lesson_id}/end", {"back": "live"}, page="/teacher/live")
        refusal, close_code = await resume_refusal(new.server, started["resume_token"])
        row = await stored(new.app.state, lesson_id)
    assert "Moving to another server" in listed.text
    assert answer.headers["location"] == "/teacher/live?notice=lesson_ended_moving"
    assert (refusal["code"], refusal["message"], close_code) == ("teacher_ended", WORDS, 1008)
    assert row is not None
    assert row.end_reason == "teacher_ended"
    assert len(simulator.connections) == 1  # no session was opened for the refused resume


async def test_a_lesson_whose_instance_is_lost_ends_in_the_records_at_once_dated_when_that_instance_was_last_seen(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        now = datetime.now(UTC)
        lost_instance, last_seen = new_id(), now - timedelta(minutes=5)
        by_api, by_desk = new_id(), new_id()
        async with state.db.begin() as session:
            await session.execute(insert(Instance).values(id=lost_instance, started_at=now - timedelta(hours=1),
                                                          seen_at=last_seen))
            common = {"level": "B1", "model": "m", "simulated": True, "started_at": now - timedelta(minutes=9),
                      "instance_id": lost_instance}
            await session.execute(insert(Lesson), [common | {"id": by_api}, common | {"id": by_desk}])
        async with httpx.AsyncClient(base_url=desk.server.base_url) as api:
            answer = await api.post(f"/api/lessons/{by_api}/end", headers={"Authorization": f"Bearer {PASSWORD}"})
        # The End lesson of the lessons under way, shown before its instance was lost.
        form = await desk.submit(f"/teacher/lessons/{by_desk}/end", {"back": "live"}, page="/teacher/live")
        shown = await desk.client.get(form.headers["location"])
        claim = ResumeClaim(lesson_id=by_api, name="Ana", level="B1", support=None, topic=None,
                            expires_at=int(now.timestamp()) + 3600)
        refusal, close_code = await resume_refusal(desk.server, make_resume_token(state.link_secret, claim))
        rows = [await stored(state, lesson_id) for lesson_id in (by_api, by_desk)]
        failures = [await failures_of(state, lesson_id) for lesson_id in (by_api, by_desk)]
    # No worker will check it: "at_next_check" would never come true.
    assert (answer.status_code, answer.json()) == (202, {"id": by_api, "ending": "now"})
    assert form.headers["location"] == "/teacher/live?notice=lesson_ended_lost"
    assert NOTICES["lesson_ended_lost"] in shown.text
    # Its page, coming back to take it over, is told its teacher ended it.
    assert (refusal["code"], refusal["message"], close_code) == ("teacher_ended", WORDS, 1008)
    for row in rows:
        assert row is not None
        assert (row.end_reason, row.ended_at, row.duration_s) == ("teacher_ended", last_seen, 240.0)
        assert row.end_requested_at is not None
    assert [line["lost"] for line in logged(log_stream, "teacher_lesson_ended")] == [True, True]
    # Its server's loss is on the Failures page, as the sweep would have recorded it.
    assert failures == [["instance_lost"], ["instance_lost"]]


async def test_a_lesson_whose_server_stopped_answering_says_so_on_its_page_and_ends_there(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        now = datetime.now(UTC)
        lost_instance, last_seen, lesson_id = new_id(), now - timedelta(minutes=5), new_id()
        async with state.db.begin() as session:
            await session.execute(insert(Instance).values(id=lost_instance, started_at=now - timedelta(hours=1),
                                                          seen_at=last_seen))
            await session.execute(insert(Lesson).values(
                id=lesson_id, level="B1", model="m", simulated=True, started_at=now - timedelta(minutes=9),
                instance_id=lost_instance, end_requested_at=now - timedelta(minutes=6)))
        page = await desk.client.get(f"/teacher/lessons/{lesson_id}")
        form = await desk.submit(f"/teacher/lessons/{lesson_id}/end", page=f"/teacher/lessons/{lesson_id}")
        after = await desk.client.get(form.headers["location"])
        row = await stored(state, lesson_id)
    assert page.status_code == 200
    assert "Its server stopped answering at" in page.text
    # Even a lesson its teacher had ended before the server was lost: no worker will end it now.
    assert f'action="/teacher/lessons/{lesson_id}/end"' in page.text
    assert "Ended because" not in page.text
    assert form.headers["location"] == f"/teacher/lessons/{lesson_id}?notice=lesson_ended_lost"
    assert NOTICES["lesson_ended_lost"] in after.text
    assert "Its server stopped answering" not in after.text
    assert f'action="/teacher/lessons/{lesson_id}/end"' not in after.text
    assert row is not None
    assert (row.end_reason, row.ended_at) == ("teacher_ended", last_seen)


async def test_a_lesson_read_open_is_judged_under_way_on_that_row_even_when_its_end_is_written_after(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with desk_app(simulator, store_url, log_stream) as desk:
        state = desk.app.state
        now = datetime.now(UTC)
        lesson_id, lost_instance = new_id(), new_id()
        async with state.db.begin() as session:
            await session.execute(insert(Instance).values(id=lost_instance, started_at=now - timedelta(hours=1),
                                                          seen_at=now - timedelta(minutes=5)))
            common = {"level": "B1", "model": "m", "simulated": True, "started_at": now - timedelta(minutes=2)}
            await session.execute(insert(Lesson), [common | {"id": lesson_id, "instance_id": state.instance_id},
                                                   common | {"id": "oflostone", "instance_id": lost_instance}])
        async with state.db() as session:
            read_open = await session.get(Lesson, lesson_id)
            of_lost_instance = await session.get(Lesson, "oflostone")
            # Its end is written by the instance running it, between the desk's two reads.
            async with state.db.begin() as writer:
                ended = await writer.get(Lesson, lesson_id)
                assert ended is not None
                ended.ended_at, ended.end_reason = now, "student_ended"
            timing = state.instance_timing
            assert read_open is not None
            assert of_lost_instance is not None
            assert await is_under_way(session, read_open, now=now, timing=timing)
            assert not await is_under_way(session, of_lost_instance, now=now, timing=timing)
