"""Refused starts on the desk (SQLite and PostgreSQL): a start turned away before the tutor said a word (by the
relay: capacity, start rates, the daily budget; or by the tutor service: refused, unreachable, no greeting) is kept
as a lesson record, but the desk counts the lessons that ran apart from it ("4 lessons (2 starts refused)"), lists it
among the student's lessons marked with its reason, and the API and the CSV keep their fields and add the count and
the mark."""

from __future__ import annotations

import csv
import io
import re
from datetime import timedelta
from pathlib import Path

import httpx
from desk_client import PASSWORD, Desk
from harness import SimulatorWith, open_lesson, relay_settings, serve_app
from records import START, add_lesson, add_student
from test_links import lessons_in, personal_link, started_app

from app.outcomes import END_REASONS, REFUSED_START_REASONS, ended_because
from app.store.retention import delete_old_transcripts

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
GREETED = (("tutor", "Hello Ana!"), ("student", "Hello."))


async def ana_with_refused_starts(desk: Desk) -> str:
    """Ana's six lesson records, a day apart, oldest first: two lessons that ran, a start refused for capacity, one
    the tutor service refused, a lesson it cut off after the greeting, and one she ended before it (both ran); and
    Bruno's one lesson."""
    ana = await add_student(desk.app)
    kept = (("ran-1", GREETED, "student_ended", 300.0), ("refused-capacity", (), "over_capacity", 0.0),
            ("ran-2", GREETED, "time_limit", 600.0), ("refused-upstream", (), "upstream_auth", 0.4),
            ("cut-off", GREETED, "upstream_unavailable", 90.0), ("ended-early", (), "student_ended", 2.0))
    for day, (lesson_id, turns, end_reason, seconds) in enumerate(kept):
        # A refused start has no tutor audio (and costs nothing); every other lesson here has some.
        await add_lesson(desk.app, ana.id, lesson_id, started_at=START + timedelta(days=day), turns=turns,
                         end_reason=end_reason, duration_s=seconds,
                         audio_output_tokens=0 if lesson_id.startswith("refused") else 1500,
                         cost=0.0 if lesson_id.startswith("refused") else 0.0123,
                         events=(("refused", {"code": end_reason, "detail": "all places taken"}),) if not turns
                         and end_reason == "over_capacity" else ())
    bruno = await add_student(desk.app, "Bruno")
    await add_lesson(desk.app, bruno.id, "bruno-1", turns=GREETED)
    return ana.id


def row_of(page: str, lesson_id: str) -> str:
    start = page.index(f'<a href="/teacher/lessons/{lesson_id}">', page.index('id="lessons-heading"'))
    return page[start:page.index("</tr>", start)]


async def test_the_student_page_counts_lessons_apart_from_refused_starts_and_lists_them_with_their_reason(
        desk_on: Desk) -> None:
    ana_id = await ana_with_refused_starts(desk_on)

    page = (await desk_on.client.get(f"/teacher/students/{ana_id}")).text

    assert ('<dt>Lessons</dt><dd><span class="lesson-count">4 lessons <span class="refused-count">(2 starts refused)'
            '</span></span></dd>') in page
    for lesson_id, reason in (("refused-capacity", "over_capacity"), ("refused-upstream", "upstream_auth")):
        row = row_of(page, lesson_id)
        assert '<span class="tag tag--refused">Start refused</span>' in row
        assert str(ended_because(reason)) in row.replace("&#39;", "'")
    for lesson_id in ("ran-1", "ran-2", "cut-off", "ended-early"):
        assert "Start refused" not in row_of(page, lesson_id), lesson_id
    assert ">1 s<" not in row_of(page, "refused-upstream")  # a refused start has no lesson time to show


async def test_the_students_list_and_its_totals_count_refused_starts_apart(desk_on: Desk) -> None:
    await ana_with_refused_starts(desk_on)

    page = (await desk_on.client.get("/teacher")).text

    assert ('data-label="Lessons" class="num"><span class="lesson-count">4 <span class="refused-count">'
            '(2 starts refused)</span></span></td>') in page
    # Bruno: no refusal, nothing more said.
    assert 'data-label="Lessons" class="num">1</td>' in page
    assert ('Their <span class="lesson-count">5 lessons <span class="refused-count">(2 starts refused)</span></span>:'
            in page)


async def test_a_students_last_lesson_is_the_newest_that_ran_not_a_refused_start(desk_on: Desk) -> None:
    """Bruno's start refused a day after his lesson; Carla has only ever been refused."""
    bruno = await add_student(desk_on.app, "Bruno")
    await add_lesson(desk_on.app, bruno.id, "bruno-ran", turns=GREETED)
    await add_lesson(desk_on.app, bruno.id, "bruno-refused", started_at=START + timedelta(days=1),
                     end_reason="over_capacity", duration_s=0.0, audio_output_tokens=0, cost=0.0)
    carla = await add_student(desk_on.app, "Carla")
    await add_lesson(desk_on.app, carla.id, "carla-refused", end_reason="daily_budget_reached", duration_s=0.0,
                     audio_output_tokens=0, cost=0.0)

    page = (await desk_on.client.get("/teacher")).text
    students = (await desk_on.client.get("/api/students", headers=BEARER)).json()["students"]

    cells = re.findall(r'<td data-label="Last lesson">\s*(.*?)\s*</td>', page, re.S)
    assert len(cells) == 2
    assert '<a href="/teacher/lessons/bruno-ran">' in cells[0]
    assert "none yet" in cells[1]
    assert [(s["name"], s["last_lesson_id"], s["last_lesson_at"]) for s in students] == [
        ("Bruno", "bruno-ran", START.isoformat()), ("Carla", None, None)]


async def test_the_api_and_the_csv_keep_their_fields_and_add_the_refused_starts(desk_on: Desk) -> None:
    ana_id = await ana_with_refused_starts(desk_on)

    students = (await desk_on.client.get("/api/students", headers=BEARER)).json()["students"]
    lessons = (await desk_on.client.get(f"/api/students/{ana_id}/lessons", headers=BEARER)).json()["lessons"]
    refused = (await desk_on.client.get("/api/lessons/refused-upstream", headers=BEARER)).json()
    ran = (await desk_on.client.get("/api/lessons/ran-2", headers=BEARER)).json()
    rows = list(csv.DictReader(io.StringIO((await desk_on.client.get("/teacher/lessons.csv")).text)))

    # lesson_count is every record, as before; refused_start_count says how many of them were refused starts.
    assert [(s["name"], s["lesson_count"], s["refused_start_count"]) for s in students] == [
        ("Ana", 6, 2), ("Bruno", 1, 0)]
    assert [(lesson["id"], lesson["refused_start"]) for lesson in lessons] == [
        ("ended-early", False), ("cut-off", False), ("refused-upstream", True), ("ran-2", False),
        ("refused-capacity", True), ("ran-1", False)]
    assert (refused["refused_start"], refused["end_reason"]) == (True, "upstream_auth")
    assert ran["refused_start"] is False
    assert list(rows[0])[-2:] == ["estimated_cost_usd", "refused_start"]
    assert {row["lesson_id"]: row["refused_start"] for row in rows} == {
        "ran-1": "False", "refused-capacity": "True", "ran-2": "False", "refused-upstream": "True",
        "cut-off": "False", "ended-early": "False", "bruno-1": "False"}


async def test_a_lesson_that_ran_stays_one_once_retention_has_deleted_its_turns(desk_on: Desk) -> None:
    """Twenty minutes of lesson the tutor service then cut off, past RETENTION_DAYS: its turns are gone, but the
    tutor spoke (its audio output is in the record), so it is not taken for a start refused before a word."""
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "ran-long-ago", turns=GREETED, end_reason="upstream_error",
                     duration_s=1200.0, cost=1.25, audio_output_tokens=48000)
    await delete_old_transcripts(desk_on.app.state.db, older_than=START + timedelta(days=1))

    page = (await desk_on.client.get(f"/teacher/students/{ana.id}")).text
    [student] = (await desk_on.client.get("/api/students", headers=BEARER)).json()["students"]
    [listed] = (await desk_on.client.get(f"/api/students/{ana.id}/lessons", headers=BEARER)).json()["lessons"]
    lesson = (await desk_on.client.get("/api/lessons/ran-long-ago", headers=BEARER)).json()
    [row] = list(csv.DictReader(io.StringIO((await desk_on.client.get("/teacher/lessons.csv")).text)))

    assert lesson["turns"] == []
    assert "<dt>Lessons</dt><dd>1 lesson</dd>" in page
    assert "Start refused" not in row_of(page, "ran-long-ago")
    assert ">20 min 0 s<" in row_of(page, "ran-long-ago")  # its lesson time, not the dash of a refused start
    assert (student["lesson_count"], student["refused_start_count"]) == (1, 0)
    assert (listed["refused_start"], lesson["refused_start"], row["refused_start"]) == (False, False, "False")


def test_every_refused_start_reason_is_an_end_reason_the_desk_explains() -> None:
    assert END_REASONS.keys() >= REFUSED_START_REASONS


async def test_a_start_the_tutor_service_refused_is_a_refused_start_on_the_desk(
        simulator_with: SimulatorWith, log_stream: io.StringIO) -> None:
    """Recorded by the relay itself: a personal link's lesson whose upstream handshake is refused (401)."""
    async with simulator_with(refuse_handshake=401) as simulator, serve_app(
            relay_settings(simulator.url, teacher_password=PASSWORD), log_stream) as server:
        state = await started_app(server)
        ana_id, _, token = await personal_link(state, name="Ana")
        async with open_lesson(server.lesson_url(name="Ana", token=token)) as page:
            await page.until_type("error")
            await page.drain_until_closed()
        [lesson] = await lessons_in(state)
        async with httpx.AsyncClient(base_url=server.base_url, headers=BEARER) as api:
            [student] = (await api.get("/api/students")).json()["students"]
            on_the_desk = (await api.get(f"/api/lessons/{lesson.id}")).json()
    assert (lesson.student_id, lesson.end_reason) == (ana_id, "upstream_auth")
    assert (student["lesson_count"], student["refused_start_count"]) == (1, 1)
    assert on_the_desk["refused_start"] is True


def test_the_api_docs_name_every_refused_start_reason() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "api.md").read_text()
    rule = docs[docs.index("`refused_start` is `true`"):docs.index("A lesson that ended so after a turn ran")]
    named = set(re.findall(r"`([a-z_]+)`", rule)) - {"refused_start", "refused", "true"}
    assert named == REFUSED_START_REASONS
