"""A student's daily spending cap over real sockets: a personal link whose student's lessons of the last 24
hours cost MAX_STUDENT_COST_USD_PER_DAY starts no new lesson (no upstream session is opened, the teacher sees
the refusal), while other students start, a running lesson goes on and resumes, and 0 turns the cap off. A
link retried again and again is refused from the worker's memory, without reading the store each time."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from databases import statements_run
from harness import logged, open_lesson, relay_settings, serve_app
from test_links import lessons_in, personal_link, started_app
from test_metrics import TOKEN, scrape, value

from app.pacing import LogThrottles
from app.simulator import RealtimeSimulator
from app.store.models import Lesson

TEACHER_PASSWORD = "teacher-password-for-tests"
REFUSAL_WORDS = "You have had all the lesson time for today. Please ask your teacher."


async def spent(state: Any, student_id: str, *lessons: tuple[timedelta, float]) -> None:
    """Ended lessons of the student, each started that long ago and of that estimated cost."""
    now = datetime.now(UTC)
    async with state.db.begin() as session:
        for number, (ago, cost) in enumerate(lessons):
            session.add(Lesson(id=f"spent-{student_id[:8]}-{number}", student_id=student_id, level="B1",
                               started_at=now - ago, ended_at=now - ago + timedelta(minutes=30),
                               end_reason="student_ended", model="gpt-realtime-2.1", simulated=False,
                               estimated_cost_usd=cost))


async def test_a_student_whose_lessons_today_cost_the_cap_is_refused_and_another_student_still_starts(
        simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    settings = relay_settings(simulator.url, max_student_cost_usd_per_day=2.0, metrics_token=TOKEN,
                              teacher_password=TEACHER_PASSWORD)
    async with serve_app(settings, log_stream) as server:
        state = await started_app(server)
        ana_id, _, ana_token = await personal_link(state, name="Ana")
        ben_id, _, ben_token = await personal_link(state, name="Ben")
        await spent(state, ana_id, (timedelta(hours=1), 1.5), (timedelta(hours=23), 0.5))
        # Ben's expensive lesson was yesterday: it has left his day.
        await spent(state, ben_id, (timedelta(hours=25), 9.0))
        async with open_lesson(server.lesson_url(name="Ana", token=ana_token)) as ana:
            error = await ana.until_type("error")
            ended = await ana.until_type("status")
            await ana.drain_until_closed()
        upstream_sessions_for_ana = len(simulator.connections)
        async with open_lesson(server.lesson_url(name="Ben", token=ben_token)) as ben:
            await ben.until_type("lesson")
            await ben.hear_greeting()
            await ben.send_json({"type": "end"})
            await ben.drain_until_closed()
        refused = next(lesson for lesson in await lessons_in(state) if lesson.student_id == ana_id
                       and not lesson.id.startswith("spent-"))
        async with httpx.AsyncClient(base_url=server.base_url,
                                     headers={"Authorization": f"Bearer {TEACHER_PASSWORD}"}) as api:
            on_the_desk = (await api.get(f"/api/lessons/{refused.id}")).json()
        metrics = await scrape(server)
    assert (error["code"], error["fatal"], error["message"]) == ("daily_budget_reached", True, REFUSAL_WORDS)
    assert (ended["state"], ended["reason"]) == ("ended", "daily_budget_reached")
    assert ana.ws.close_code == 1008
    assert upstream_sessions_for_ana == 0
    assert len(simulator.connections) == 1  # Ben's lesson
    assert ben.ws.close_code == 1000
    assert (on_the_desk["student_id"], on_the_desk["end_reason"], on_the_desk["estimated_cost_usd"]) == (
        ana_id, "daily_budget_reached", 0.0)
    assert on_the_desk["refused_start"] is True  # counted apart from the lessons that ran
    [event] = on_the_desk["events"]
    assert (event["kind"], event["detail"]["code"]) == ("refused", "daily_budget_reached")
    [line] = logged(log_stream, "lesson_refused")
    assert (line["code"], line["level"]) == ("daily_budget_reached", "warning")
    assert "MAX_STUDENT_COST_USD_PER_DAY is 2" in line["detail"]
    assert value(metrics, "lesson_relay_refusals_total", code="daily_budget_reached") == 1
    assert value(metrics, "lesson_relay_lessons_started_total") == 1


async def test_a_refused_start_leaves_the_students_running_lesson_alone_and_it_resumes(
        simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    # So small that the running lesson's greeting alone reaches it.
    settings = relay_settings(simulator.url, max_student_cost_usd_per_day=0.000001)
    async with serve_app(settings, log_stream) as server:
        state = await started_app(server)
        _, _, token = await personal_link(state, name="Ana")
        async with open_lesson(server.lesson_url(name="Ana", token=token)) as first:
            lesson = await first.until_type("lesson")
            await first.hear_greeting()
            await state.records.flushed()  # the greeting's usage is in the store, the lesson still open
            async with open_lesson(server.lesson_url(name="Ana", token=token)) as second:
                error = await second.until_type("error")
                await second.drain_until_closed()
            first.ws.transport.abort()  # the network goes: the lesson waits for its page
        async with open_lesson(f"{server.ws_url}/ws/lesson?resume={lesson['resume_token']}") as back:
            resumed = await back.until_type("lesson")
            await back.send_json({"type": "end"})
            await back.drain_until_closed()
    assert error["code"] == "daily_budget_reached"
    assert second.ws.close_code == 1008
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert not [m for m in first.messages if m["type"] == "error"]  # not replaced by the refused start
    assert len(simulator.connections) == 1
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "student_ended"


async def test_a_cap_of_0_lets_a_student_start_whatever_they_spent(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, max_student_cost_usd_per_day=0)) as server:
        state = await started_app(server)
        ana_id, _, token = await personal_link(state, name="Ana")
        await spent(state, ana_id, (timedelta(hours=1), 500.0))
        async with open_lesson(server.lesson_url(name="Ana", token=token)) as ana:
            await ana.until_type("lesson")
            await ana.send_json({"type": "end"})
            await ana.drain_until_closed()
    assert ana.ws.close_code == 1000
    assert len(simulator.connections) == 1


async def test_a_refused_link_retried_again_and_again_is_kept_on_the_desk_once_a_minute(
        simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, max_student_cost_usd_per_day=2.0)) as server:
        state = await started_app(server)
        ana_id, _, token = await personal_link(state, name="Ana")
        await spent(state, ana_id, (timedelta(hours=1), 3.0))
        codes = []
        for _ in range(5):
            async with open_lesson(server.lesson_url(name="Ana", token=token)) as attempt:
                codes.append((await attempt.until_type("error"))["code"])
                await attempt.drain_until_closed()
        await state.records.flushed()
        refused = [lesson for lesson in await lessons_in(state)
                   if lesson.student_id == ana_id and not lesson.id.startswith("spent-")]
    assert codes == ["daily_budget_reached"] * 5
    assert [lesson.end_reason for lesson in refused] == ["daily_budget_reached"]


def of_lessons(statements: list[str]) -> list[str]:
    """The statements run for lessons, without the instance's keep-alive, which beats on its own."""
    return [statement for statement in statements if "instances" not in statement]


async def test_a_capped_link_retried_again_and_again_is_refused_from_memory_reading_nothing_from_the_store(
        simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    settings = relay_settings(simulator.url, max_student_cost_usd_per_day=2.0, metrics_token=TOKEN)
    async with serve_app(settings, log_stream) as server:
        state = await started_app(server)
        # Every refusal's line, not one every 10 s: each says where the cap was found.
        state.refusal_log = LogThrottles(interval_s=0)
        ana_id, _, token = await personal_link(state, name="Ana")
        await spent(state, ana_id, (timedelta(hours=1), 3.0))
        refusals = []

        async def attempt() -> None:
            async with open_lesson(server.lesson_url(name="Ana", token=token)) as page:
                refusals.append((await page.until_type("error"), await page.until_type("status")))
                await page.drain_until_closed()
            assert page.ws.close_code == 1008

        with statements_run(state.db.kw["bind"]) as statements:
            await attempt()
            await state.records.flushed()
            finding_the_cap = of_lessons(statements)
            for _ in range(5):
                await attempt()
            await state.records.flushed()
        refused = [lesson for lesson in await lessons_in(state)
                   if lesson.student_id == ana_id and not lesson.id.startswith("spent-")]
        metrics = await scrape(server)
    assert any("sum(lessons.estimated_cost_usd)" in statement.lower() for statement in finding_the_cap)
    assert of_lessons(statements) == finding_the_cap  # the five attempts after it read and wrote nothing
    assert {(error["code"], error["fatal"], error["message"], ended["state"], ended["reason"])
            for error, ended in refusals} == {
        ("daily_budget_reached", True, REFUSAL_WORDS, "ended", "daily_budget_reached")}
    lines = logged(log_stream, "lesson_refused")
    assert [(line["code"], line["level"]) for line in lines] == [("daily_budget_reached", "warning")] * 6
    assert "(read from the store)" in lines[0]["detail"]
    assert all("(found " in line["detail"] and "MAX_STUDENT_COST_USD_PER_DAY is 2" in line["detail"]
               for line in lines[1:])
    assert value(metrics, "lesson_relay_refusals_total", code="daily_budget_reached") == 6
    assert [lesson.end_reason for lesson in refused] == ["daily_budget_reached"]  # kept once, by the first
    assert len(simulator.connections) == 0
