"""The desk with many students and lessons (SQLite and PostgreSQL): lists paged in a stable order, totals and
recent costs added up over every page, times a teacher's browser can show in their own zone, and the link
form's refusal shown next to its field."""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from desk_client import PASSWORD, Desk
from records import GREETING_FAILED, START, add_lesson, add_student, count
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_desk_pages import shown_links

from app.links import verify_lesson_token
from app.logging import quoted
from app.store.models import Link, Student
from app.store.queries import student_for_link
from app.teacher import pages
from app.teacher.pages import LESSONS_PER_PAGE, RECENT_COST_DAYS, STUDENTS_PER_PAGE
from app.teacher.web import link_view


def lesson_ids(page: str) -> list[str]:
    return re.findall(r'<a href="/teacher/lessons/([\w-]+)">', page)


def student_names(page: str) -> list[str]:
    return re.findall(r'<a href="/teacher/students/[0-9a-f]+">([^<]+)</a></th>', page)


async def add_students(desk: Desk, names: list[str]) -> None:
    sessions: async_sessionmaker[AsyncSession] = desk.app.state.db
    async with sessions.begin() as db:
        db.add_all(Student(name=name, level="A1") for name in names)


async def test_a_students_lessons_are_paged_newest_first_with_totals_over_all_of_them(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    lessons = LESSONS_PER_PAGE + 5
    for number in range(lessons):
        await add_lesson(desk_on.app, ana.id, f"lesson-{number:03d}", started_at=START + timedelta(hours=number),
                         duration_s=60, cost=0.01)
    newest_first = [f"lesson-{number:03d}" for number in reversed(range(lessons))]
    page = f"/teacher/students/{ana.id}"

    first = (await desk_on.client.get(page)).text
    second = (await desk_on.client.get(f"{page}?page=2")).text

    assert lesson_ids(first) == newest_first[:LESSONS_PER_PAGE]
    assert lesson_ids(second) == newest_first[LESSONS_PER_PAGE:]
    assert f'href="{page}?page=2" rel="next">Older lessons' in first
    assert f'href="{page}?page=1" rel="prev">← Newer lessons' in second
    assert 'rel="next"' not in second
    assert f"Lessons {LESSONS_PER_PAGE + 1}\N{EN DASH}{lessons} of {lessons}, newest first." in second
    # The totals are the student's, not the page's.
    for shown in (first, second):
        assert f"<dt>Lessons</dt><dd>{lessons} lessons</dd>" in shown
        assert f"<dt>Time</dt><dd>{lessons} min 0 s</dd>" in shown
        assert f"${lessons * 0.01:.4f} in all" in shown
    past_the_end = await desk_on.client.get(f"{page}?page=3")
    assert past_the_end.status_code == 404
    assert f"Ana has {lessons} lessons: 2 pages of them." in past_the_end.text
    for bad in ("0", "two"):
        refused = await desk_on.client.get(f"{page}?page={bad}")
        assert refused.status_code == 422
        assert "page:" in refused.text


async def test_students_are_paged_by_name(desk_on: Desk) -> None:
    names = [f"Student {chr(ord('a') + number // 26)}{chr(ord('a') + number % 26)}"
             for number in range(STUDENTS_PER_PAGE + 3)]
    await add_students(desk_on, list(reversed(names)))

    first = (await desk_on.client.get("/teacher")).text
    second = (await desk_on.client.get("/teacher?page=2")).text

    assert student_names(first) == names[:STUDENTS_PER_PAGE]
    assert student_names(second) == names[STUDENTS_PER_PAGE:]
    assert f"Your students ({len(names)})" in second
    assert f"Students {STUDENTS_PER_PAGE + 1}\N{EN DASH}{len(names)} of {len(names)}, by name." in second
    assert 'href="/teacher?page=2" rel="next"' in first
    assert 'href="/teacher?page=1" rel="prev"' in second
    assert (await desk_on.client.get("/teacher?page=3")).status_code == 404


async def test_a_level_changed_on_the_list_goes_back_to_that_page_of_it(desk_on: Desk) -> None:
    await add_students(desk_on, [f"Student {number:03d}" for number in range(STUDENTS_PER_PAGE + 3)])
    second = (await desk_on.client.get("/teacher?page=2")).text
    student_id = re.findall(r'<a href="/teacher/students/([0-9a-f]+)">Student 101</a>', second)[0]
    assert '<input type="hidden" name="list_page" value="2">' in second

    from_list = await desk_on.submit(f"/teacher/students/{student_id}/level", {"level": "B2", "list_page": "2"})
    from_student = await desk_on.submit(f"/teacher/students/{student_id}/level", {"level": "C1"})
    not_a_page = await desk_on.submit(f"/teacher/students/{student_id}/level", {"level": "C2", "list_page": "//x"})

    assert from_list.headers["location"] == "/teacher?page=2&notice=level_changed"
    shown = (await desk_on.client.get(from_list.headers["location"])).text
    assert "Level changed." in shown
    assert "Student 101" in shown
    assert from_student.headers["location"] == f"/teacher/students/{student_id}?notice=level_changed"
    # A page number the list never showed is refused by name, and changes nothing.
    assert not_a_page.status_code == 422
    assert "list_page must be a page number of the students list" in not_a_page.text
    assert f'href="/teacher/students/{student_id}">Back' in not_a_page.text
    assert 'value="C1" selected' in (await desk_on.client.get(f"/teacher/students/{student_id}")).text


async def test_a_level_changed_on_a_search_goes_back_to_that_search(desk_on: Desk) -> None:
    await add_students(desk_on, ["Ana Lopez", "Bruno Costa", "Anabel Ruiz"])
    found = (await desk_on.client.get("/teacher?find=ana+l")).text
    student_id = re.findall(r'<a href="/teacher/students/([0-9a-f]+)">Ana Lopez</a>', found)[0]
    assert '<input type="hidden" name="list_find" value="ana l">' in found

    saved = await desk_on.submit(f"/teacher/students/{student_id}/level",
                                 {"level": "B2", "list_page": "1", "list_find": "ana l"})

    assert saved.headers["location"] == "/teacher?page=1&find=ana+l&notice=level_changed"
    shown = (await desk_on.client.get(saved.headers["location"])).text
    assert "Level changed." in shown
    assert student_names(shown) == ["Ana Lopez"]


def student_id_of(page: str, name: str) -> str:
    [student_id] = re.findall(rf'<a href="/teacher/students/([0-9a-f]+)">{re.escape(name)}</a>', page)
    return student_id


async def test_every_action_on_a_later_page_of_a_search_goes_back_to_that_page_of_it(desk_on: Desk) -> None:
    olgas = [f"Olga {number:03d}" for number in range(STUDENTS_PER_PAGE + 2)]
    await add_students(desk_on, [*olgas, "Ana Lima"])
    where = "/teacher?page=2&find=olga"
    second = (await desk_on.client.get(where)).text
    # Every form on the page says where it is: Archive, Make a link (no link yet), the level's Save, Add student.
    assert second.count('<input type="hidden" name="list_page" value="2">') == 3 * 2 + 1
    assert second.count('<input type="hidden" name="list_find" value="olga">') == 3 * 2 + 1
    first_on_page, last = student_id_of(second, olgas[-2]), student_id_of(second, olgas[-1])

    made = await desk_on.submit(f"/teacher/students/{first_on_page}/links",
                                {"list_page": "2", "list_find": "olga"}, page=where)
    assert made.headers["location"] == "/teacher?page=2&find=olga&notice=link_created"
    shown = (await desk_on.client.get(made.headers["location"])).text
    assert "New lesson link made." in shown
    assert f"Lesson link for {olgas[-2]}" in shown
    [link_id] = re.findall(rf'action="/teacher/students/{first_on_page}/links/([\w-]+)/revoke"', shown)
    # Revoke, from the link's box on the list, is sent with where it is too.
    assert re.search(rf'/links/{link_id}/revoke" class="inline">\s*<input type="hidden" name="csrf_token"[^>]+>\s*'
                     r'<input type="hidden" name="list_page" value="2"><input type="hidden" name="list_find" '
                     r'value="olga">', shown)
    revoked = await desk_on.submit(f"/teacher/students/{first_on_page}/links/{link_id}/revoke",
                                   {"list_page": "2", "list_find": "olga"}, page=where)
    assert revoked.headers["location"] == "/teacher?page=2&find=olga&notice=link_revoked"

    archived = await desk_on.submit(f"/teacher/students/{last}/archive", {"list_page": "2", "list_find": "olga"},
                                    page=where)
    assert archived.headers["location"] == "/teacher?page=2&find=olga&notice=archived"
    shown = (await desk_on.client.get(archived.headers["location"])).text
    assert "Student archived:" in shown
    assert f"Students whose name holds “olga” ({len(olgas) - 1})" in shown
    assert "Archived students (1)" in shown
    # Restore is on every page of the list, in the archived students: back to the page it was pressed on.
    assert re.search(rf'/students/{last}/restore" class="inline">\s*<input type="hidden" name="csrf_token"[^>]+>\s*'
                     r'<input type="hidden" name="list_page" value="2"><input type="hidden" name="list_find" '
                     r'value="olga">', shown)
    restored = await desk_on.submit(f"/teacher/students/{last}/restore", {"list_page": "2", "list_find": "olga"},
                                    page=where)
    assert restored.headers["location"] == "/teacher?page=2&find=olga&notice=restored"
    shown = (await desk_on.client.get(restored.headers["location"])).text
    assert student_names(shown) == olgas[-2:]
    assert "Archived students" not in shown


async def test_a_student_refused_on_a_later_page_of_a_search_is_shown_again_on_that_page(desk_on: Desk) -> None:
    olgas = [f"Olga {number:03d}" for number in range(STUDENTS_PER_PAGE + 2)]
    await add_students(desk_on, [*olgas, "Ana Lima"])

    refused = await desk_on.submit("/teacher/students", {"name": "R2D2", "level": "A1", "list_page": "2",
                                                         "list_find": "olga"}, page="/teacher?page=2&find=olga")

    assert refused.status_code == 422
    assert 'id="name-error">Name may hold only letters' in refused.text
    assert 'value="R2D2"' in refused.text
    assert f"Students whose name holds “olga” ({len(olgas)})" in refused.text
    assert student_names(refused.text) == olgas[STUDENTS_PER_PAGE:]
    assert refused.text.count('<input type="hidden" name="list_find" value="olga">') == 2 * 3 + 1
    assert await count(desk_on.app, Student) == len(olgas) + 1


async def test_archiving_the_last_student_of_the_last_page_goes_back_to_the_page_before(desk_on: Desk) -> None:
    await add_students(desk_on, [f"Student {number:03d}" for number in range(STUDENTS_PER_PAGE + 1)])
    second = (await desk_on.client.get("/teacher?page=2")).text
    only = student_id_of(second, f"Student {STUDENTS_PER_PAGE:03d}")

    archived = await desk_on.submit(f"/teacher/students/{only}/archive", {"list_page": "2"}, page="/teacher?page=2")

    # Page 2 is gone: its 404 would be no place to come back to.
    assert archived.headers["location"] == "/teacher?page=1&notice=archived"
    assert (await desk_on.client.get(archived.headers["location"])).status_code == 200


async def test_an_action_sent_with_a_bad_place_on_the_list_is_refused_by_name_and_writes_nothing(
    desk_on: Desk
) -> None:
    await add_students(desk_on, ["Ana Lima"])
    ana = student_id_of((await desk_on.client.get("/teacher")).text, "Ana Lima")
    for fields, named in (({"list_page": "https://evil.example"}, "list_page"), ({"list_page": "0"}, "list_page"),
                          ({"list_page": "1" * 5000}, "list_page"), ({"list_page": "²"}, "list_page"),
                          ({"list_page": "1", "list_find": "x" * 41}, "list_find")):
        refused = await desk_on.submit(f"/teacher/students/{ana}/archive", fields)
        assert refused.status_code == 422, fields
        assert "<h1>Not archived</h1>" in refused.text
        assert f"{named} must be" in refused.text
        if named == "list_page":
            assert "not " + repr(quoted(fields["list_page"])).replace("'", "&#39;") in refused.text
        assert "location" not in refused.headers
    assert student_names((await desk_on.client.get("/teacher")).text) == ["Ana Lima"]


async def test_costs_per_student_and_for_all_in_all_and_in_the_recent_days(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app, "Ana")
    bruno = await add_student(desk_on.app, "Bruno")
    now = datetime.now(UTC)
    await add_lesson(desk_on.app, ana.id, "ana-old", started_at=now - timedelta(days=RECENT_COST_DAYS + 1),
                     cost=1.0, duration_s=600)
    await add_lesson(desk_on.app, ana.id, "ana-recent", started_at=now - timedelta(days=2), cost=0.25,
                     duration_s=300)
    await add_lesson(desk_on.app, bruno.id, "bruno-recent", started_at=now - timedelta(hours=1), cost=0.5,
                     duration_s=120)

    students = (await desk_on.client.get("/teacher")).text
    ana_row = students[students.index(f'href="/teacher/students/{ana.id}"'):].split("</tr>")[0]
    assert '<td data-label="Cost" class="num">$1.2500</td>' in ana_row
    assert f'<td data-label="Last {RECENT_COST_DAYS} days" class="num">$0.2500</td>' in ana_row
    assert "Cost (USD)</th>" in students
    assert ("Their 3 lessons: 17 min 0 s, an estimated\n    $1.7500 (USD) in all, $0.7500 in the last "
            f"{RECENT_COST_DAYS} days.") in students

    ana_page = (await desk_on.client.get(f"/teacher/students/{ana.id}")).text
    assert f"<dd>$1.2500 in all, $0.2500 in the last {RECENT_COST_DAYS} days</dd>" in ana_page

    # An archived student's lessons leave the list's totals.
    await desk_on.submit(f"/teacher/students/{bruno.id}/archive")
    students = (await desk_on.client.get("/teacher")).text
    assert "Their 2 lessons: 15 min 0 s, an estimated\n    $1.2500 (USD) in all" in students


async def test_times_carry_their_utc_instant_for_the_teachers_own_zone(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "lesson-1", started_at=datetime.now(UTC) - timedelta(days=1),
                     events=(("greeting_failed", GREETING_FAILED),))
    await add_lesson(desk_on.app, ana.id, "lesson-2")
    utc_time = '<time datetime="2026-03-02T09:30:00Z" data-local>2026-03-02 09:30 UTC</time>'

    for path in (f"/teacher/students/{ana.id}", "/teacher/lessons/lesson-2"):
        assert utc_time in (await desk_on.client.get(path)).text, path
    # The failures page groups by UTC day, so it says its times are UTC ones.
    failures = (await desk_on.client.get("/teacher/failures")).text
    assert "Days and times are in UTC." in failures
    assert '<th scope="col">Time (UTC)</th>' in failures


async def test_a_bad_link_validity_is_named_next_to_its_field_and_kept(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    page = f"/teacher/students/{ana.id}"
    await add_lesson(desk_on.app, ana.id, "lesson-1")

    for typed in ("400", "seven", "²", "1" * 5000):
        refused = await desk_on.submit(f"{page}/links", {"valid_days": typed}, page=page)

        assert refused.status_code == 422
        assert "<h1>Ana" in refused.text
        assert 'id="valid_days-error">Valid for (days) must be a whole number from 1 to 365' in refused.text
        assert 'aria-invalid="true"' in refused.text
        assert f'value="{typed}"' in refused.text
        assert 'href="/teacher/lessons/lesson-1"' in refused.text
    assert await count(desk_on.app, Link) == 0


async def test_a_barge_in_a_reload_or_a_take_over_is_no_failure(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    barge_in = {"status": "cancelled", "status_details": {"type": "cancelled", "reason": "turn_detected"}}
    await add_lesson(desk_on.app, ana.id, "lively", started_at=datetime.now(UTC) - timedelta(hours=1), events=(
        ("response_cancelled", barge_in), ("page_away", {"reason": "socket_closed"}),
        ("lesson_taken_over", {"elapsed_s": 40.0}), ("feedback_trimmed", {"corrections": 7}),
        ("greeting_failed", GREETING_FAILED),
    ))

    student = (await desk_on.client.get(f"/teacher/students/{ana.id}")).text
    failures = (await desk_on.client.get("/teacher/failures")).text
    lesson = (await desk_on.client.get("/teacher/lessons/lively")).text

    assert '<td data-label="Failures" class="num">1</td>' in student
    kinds = re.findall(r'<td data-label="Kind">[^<]*<code class="muted">(\w+)</code>', failures)
    assert kinds == ["greeting_failed"]
    # The lesson's page still shows every event, only the failure marked as one.
    assert lesson.count('<li class="event--failure">') == 1
    for kind in ("response_cancelled", "page_away", "lesson_taken_over", "feedback_trimmed", "greeting_failed"):
        assert f'<code class="muted">{kind}</code>' in lesson
    api = await desk_on.client.get(f"/api/students/{ana.id}/lessons",
                                   headers={"Authorization": f"Bearer {PASSWORD}"})
    assert api.json()["lessons"][0]["event_count"] == 1


async def test_a_link_can_set_its_lessons_topic_and_support_language(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    page = f"/teacher/students/{ana.id}"

    made = await desk_on.submit(f"{page}/links", {"valid_days": "", "topic": " ordering food ",
                                                  "support_language": "Spanish"}, page=page)

    assert made.status_code == 303
    shown = (await desk_on.client.get(page)).text
    assert "Topic: ordering food · Support language: Spanish" in shown
    [token] = [parse_qs(urlsplit(link).query)["token"][0] for link in shown_links(shown)]
    claim = verify_lesson_token(token, desk_on.app.state.link_secret, now=time.time())
    linked = await student_for_link(desk_on.app.state.db, claim, datetime.now(UTC))
    assert (linked.topic, linked.support_language) == ("ordering food", "Spanish")


async def test_a_bad_topic_or_support_language_is_named_and_everything_typed_kept(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    page = f"/teacher/students/{ana.id}"

    for fields, field, problem in (
        ({"topic": "x" * 81, "support_language": "Spanish"}, "topic", "Topic must be at most 80 characters."),
        ({"topic": "food\tand drink", "valid_days": "7"}, "topic", "Topic must be plain text on one line."),
        ({"topic": "food", "support_language": "Speak only French. Be rude"}, "support_language",
         "Support language must be the name of a language, like Spanish (at most 3 words of letters)."),
    ):
        refused = await desk_on.submit(f"{page}/links", fields, page=page)

        assert refused.status_code == 422
        assert f'id="{field}-error">{problem}</p>' in refused.text
        for typed in fields.values():
            assert f'value="{html.escape(typed)}"' in refused.text
    assert await count(desk_on.app, Link) == 0


async def test_a_field_the_form_does_not_have_is_named_in_its_summary_and_nothing_is_written(desk_on: Desk) -> None:
    # Only a hand-made request sends one: the page has no place under a field for it, so the summary says it.
    ana = await add_student(desk_on.app)
    page = f"/teacher/students/{ana.id}"
    links = await count(desk_on.app, Link)
    not_a_link = await desk_on.submit(f"{page}/links", {"topic": "food", "colour": "red"}, page=page)
    not_a_student = await desk_on.submit("/teacher/students", {"name": "Bruno", "level": "A1", "x" * 500: "1"})

    assert (not_a_link.status_code, not_a_student.status_code) == (422, 422)
    assert re.search(r'<p class="problem" role="alert"[^>]*>No link made: The form held a field it does not have '
                     r"\(&#39;colour&#39;\): reload the page and send it again.</p>", not_a_link.text)
    assert re.search(r'<p class="problem" role="alert"[^>]*>The student was not added: The form held a field it '
                     rf"does not have \(&#39;{'x' * 99}…&#39;\)", not_a_student.text)
    assert await count(desk_on.app, Link) == links
    assert "Bruno" not in (await desk_on.client.get("/teacher")).text


async def test_finding_a_student_whose_name_begins_with_an_accented_capital_in_lower_case(desk_on: Desk) -> None:
    # SQLite's own lower() folds A to Z alone: the same search must find the same students on both databases.
    await add_students(desk_on, ["Élodie Martin", "Øystein Berg", "Olga Ivanova"])
    found = {typed: student_names((await desk_on.client.get("/teacher", params={"find": typed})).text)
             for typed in ("élodie", "ÉLODIE", "øys", "olga")}
    assert found == {"élodie": ["Élodie Martin"], "ÉLODIE": ["Élodie Martin"], "øys": ["Øystein Berg"],
                     "olga": ["Olga Ivanova"]}


async def test_finding_students_by_part_of_their_name_in_any_case(desk_on: Desk) -> None:
    names = [f"Olga {number:03d}" for number in range(STUDENTS_PER_PAGE + 2)] + ["Ana Lima", "Bruno 50%_off"]
    await add_students(desk_on, names)

    olgas = (await desk_on.client.get("/teacher", params={"find": "  OLGA "})).text
    second = (await desk_on.client.get("/teacher", params={"find": "olga", "page": "2"})).text
    lima = (await desk_on.client.get("/teacher", params={"find": "lim"})).text
    # LIKE's wildcards are searched for as they are.
    percent = (await desk_on.client.get("/teacher", params={"find": "0%_"})).text
    nobody = (await desk_on.client.get("/teacher", params={"find": "Zed"})).text

    assert student_names(olgas) == names[:STUDENTS_PER_PAGE]
    assert f"Students whose name holds “OLGA” ({STUDENTS_PER_PAGE + 2})" in olgas
    assert 'value="OLGA"' in olgas
    assert 'href="/teacher?page=2&amp;find=OLGA" rel="next"' in olgas
    assert student_names(second) == names[STUDENTS_PER_PAGE:STUDENTS_PER_PAGE + 2]
    assert student_names(lima) == ["Ana Lima"]
    assert student_names(percent) == ["Bruno 50%_off"]
    assert student_names(nobody) == []
    assert "No student's name holds “Zed”." in nobody
    assert 'href="/teacher">Show all students</a>' in nobody
    too_long = await desk_on.client.get("/teacher", params={"find": "x" * 41})
    assert too_long.status_code == 422
    assert "find:" in too_long.text


async def test_archived_students_are_paged_by_name_and_counted(desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Browser keys make tens of thousands of students: the page never reads every archived one."""
    monkeypatch.setattr(pages, "ARCHIVED_PER_PAGE", 2)
    await add_students(desk_on, ["Current"])
    sessions: async_sessionmaker[AsyncSession] = desk_on.app.state.db
    async with sessions.begin() as db:
        db.add_all(Student(name=name, level="A1", archived_at=START) for name in ("Cleo", "Abe", "Bo"))

    first = (await desk_on.client.get("/teacher")).text
    second = (await desk_on.client.get("/teacher?archived_page=2")).text
    past_the_end = await desk_on.client.get("/teacher?archived_page=3")
    refused = await desk_on.client.get("/teacher?archived_page=0")

    def archived_names(page: str) -> list[str]:
        return student_names(page.split('id="archived"')[1])

    assert (archived_names(first), archived_names(second)) == (["Abe", "Bo"], ["Cleo"])
    assert "Archived students (3)" in first
    assert "Archived students 1\N{EN DASH}2 of 3, by name." in first
    assert 'href="/teacher?page=1&amp;archived_page=2#archived" rel="next"' in first
    assert 'href="/teacher?page=1&amp;archived_page=1#archived" rel="prev"' in second
    assert student_names(second.split('id="archived"')[0]) == ["Current"]
    assert past_the_end.status_code == 404
    assert "There are 3 archived students: 2 pages of them." in past_the_end.text
    assert refused.status_code == 422


async def test_the_students_page_signs_the_links_of_its_page_of_students_alone(
        desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each link shown is signed (an HMAC): a view signs those of the students it shows, not every student's."""
    monkeypatch.setattr(pages, "STUDENTS_PER_PAGE", 2)
    signed: list[str] = []

    def counted_link_view(request: Any, link: Link) -> Any:
        signed.append(link.student_id)
        return link_view(request, link)

    monkeypatch.setattr(pages, "link_view", counted_link_view)
    names = ["Ana", "Bea", "Cy", "Dan", "Eva"]
    for name in names:
        await desk_on.submit("/teacher/students", {"name": name, "level": "A1"})
    signed.clear()

    second = (await desk_on.client.get("/teacher?page=2")).text

    assert student_names(second) == ["Cy", "Dan"]
    assert len(shown_links(second)) == 2
    assert len(signed) == 2
