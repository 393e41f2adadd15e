"""The desk's pages and forms on SQLite and PostgreSQL: students, one student, one lesson, failures, exports."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import time
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
from desk_client import PASSWORD, Desk
from records import GREETING_FAILED, START, add_lesson, add_student, count

from app.links import LinkError, verify_lesson_token
from app.store.models import Lesson, LessonEvent, Link, Student, Turn
from app.store.queries import student_for_link
from app.teacher import pages, queries

CONVERSATION = (("tutor", "Hello Ana! How are you today?"), ("student", "I am fine, thank you."),
                ("tutor", "Great. What did you do <b>yesterday</b>?"))


def ids_of(html: str, pattern: str) -> list[str]:
    return re.findall(pattern, html)


def shown_links(page: str) -> list[str]:
    """The lesson links a desk page shows, as the teacher copies them."""
    found = re.findall(r'class="link-field" type="text" readonly value="([^"]+)"', page)
    return [html.unescape(link) for link in found]


async def test_students_page_shows_lessons_minutes_cost_and_last_lesson(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app, "Ana")
    await add_student(desk_on.app, "Bruno", "B1")
    await add_lesson(desk_on.app, ana.id, "lesson-old", duration_s=125, cost=0.01)
    await add_lesson(desk_on.app, ana.id, "lesson-new", started_at=START + timedelta(days=1), duration_s=55, cost=0.02)

    page = await desk_on.client.get("/teacher")

    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    ana_row = page.text[page.text.index(f'href="/teacher/students/{ana.id}"'):].split("</tr>")[0]
    assert '<td data-label="Lessons" class="num">2</td>' in ana_row
    assert '<td data-label="Time" class="num">3 min 0 s</td>' in ana_row
    assert '<td data-label="Cost" class="num">$0.0300</td>' in ana_row
    assert ('href="/teacher/lessons/lesson-new"><time datetime="2026-03-03T09:30:00Z" data-local>'
            '2026-03-03 09:30 UTC</time>') in ana_row
    bruno_row = page.text[page.text.index(">Bruno<"):].split("</tr>")[0]
    assert '<td data-label="Lessons" class="num">0</td>' in bruno_row
    assert "none yet" in bruno_row


async def test_lesson_time_adds_up_to_what_each_lessons_row_shows(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app, "Ana")
    for number in range(3):
        await add_lesson(desk_on.app, ana.id, f"lesson-{number}", started_at=START + timedelta(hours=number),
                         duration_s=10.7)
    bruno = await add_student(desk_on.app, "Bruno")
    await add_lesson(desk_on.app, bruno.id, "bruno-long", duration_s=3725.2)

    students = (await desk_on.client.get("/teacher")).text
    ana_page = (await desk_on.client.get(f"/teacher/students/{ana.id}")).text

    # Each lesson shows 11 s, so the student's time is 33 s, not the 32.1 s they add up to unrounded.
    assert ana_page.count('<td data-label="Duration" class="num">11 s</td>') == 3
    assert "<dt>Time</dt><dd>33 s</dd>" in ana_page
    ana_row = students[students.index(f'href="/teacher/students/{ana.id}"'):].split("</tr>")[0]
    assert '<td data-label="Time" class="num">33 s</td>' in ana_row
    bruno_row = students[students.index(f'href="/teacher/students/{bruno.id}"'):].split("</tr>")[0]
    assert '<td data-label="Time" class="num">1 h 2 min 5 s</td>' in bruno_row
    assert "Their 4 lessons: 1 h 2 min 38 s, an estimated" in students


async def test_adding_a_student_gives_them_a_link(desk_on: Desk) -> None:
    added = await desk_on.submit("/teacher/students", {"name": " Ana  Lima ", "level": "B1",
                                                        "target_language": "Spanish"})

    assert added.status_code == 303
    student_page = await desk_on.client.get(added.headers["location"])
    assert "Student added. Their lesson link is below." in student_page.text
    assert "<h1>Ana Lima" in student_page.text
    assert "Spanish" in student_page.text
    links = shown_links(student_page.text)
    assert len(links) == 1
    assert links[0].startswith(f"{desk_on.server.base_url}/?token=")
    assert await count(desk_on.app, Student) == 1
    assert await count(desk_on.app, Link) == 1
    assert "Ana Lima" in (await desk_on.client.get("/teacher")).text


@pytest.mark.parametrize(("fields", "named"), [
    ({"name": "", "level": "A1"}, "Name is required."),
    ({"name": "Ana<script>", "level": "A1"}, "Name may hold only letters"),
    ({"name": "Ana", "level": "Z9"}, "Level must be one of A1, A2, B1, B2, C1, C2."),
    ({"name": "Ana", "level": "A1", "target_language": "Klingon 2"}, "Target language must be a language name"),
    ({"name": "Ana", "level": "A1", "target_language": "Español"},
     "Target language must be a language name in the letters A to Z without accents, like Spanish."),
])
async def test_a_bad_new_student_is_named_and_nothing_written(desk_on: Desk, fields: dict[str, str],
                                                              named: str) -> None:
    refused = await desk_on.submit("/teacher/students", fields)

    assert refused.status_code == 422
    assert named in refused.text
    assert 'aria-invalid="true"' in refused.text
    assert "<script>" not in refused.text  # the refused value is shown escaped
    assert await count(desk_on.app, Student) == 0


async def test_a_form_without_its_csrf_token_writes_nothing(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    forms = [("/teacher/students", {"name": "Bruno", "level": "A1"}),
             (f"/teacher/students/{ana.id}/level", {"level": "C2"}),
             (f"/teacher/students/{ana.id}/archive", {}),
             (f"/teacher/students/{ana.id}/delete", {"confirm": "yes"}),
             (f"/teacher/students/{ana.id}/links", {})]
    for action, fields in forms:
        for token in ({}, {"csrf_token": "not-the-token"}):
            refused = await desk_on.client.post(action, data=fields | token)
            assert refused.status_code == 403, action
            assert "did not come from the desk" in refused.text

    assert await count(desk_on.app, Student) == 1
    assert await count(desk_on.app, Link) == 0
    page = await desk_on.client.get(f"/teacher/students/{ana.id}")
    assert '<option value="A2" selected>' in page.text
    assert "(archived)" not in page.text


async def test_changing_the_level(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)

    changed = await desk_on.submit(f"/teacher/students/{ana.id}/level", {"level": "B2"})
    refused = await desk_on.submit(f"/teacher/students/{ana.id}/level", {"level": "D1"})

    assert changed.status_code == 303
    assert refused.status_code == 422
    assert "must be one of" in refused.text
    page = await desk_on.client.get(changed.headers["location"])
    assert "Level changed." in page.text
    assert '<option value="B2" selected>' in page.text


async def test_archiving_and_restoring(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)

    archived = await desk_on.submit(f"/teacher/students/{ana.id}/archive")
    listing = await desk_on.client.get(archived.headers["location"])

    assert "Student archived:" in listing.text
    assert "Your students (0)" in listing.text
    assert "Archived students (1)" in listing.text
    restored = await desk_on.submit(f"/teacher/students/{ana.id}/restore")
    assert restored.status_code == 303
    assert "Your students (1)" in (await desk_on.client.get("/teacher")).text


async def test_making_and_revoking_links(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    page = f"/teacher/students/{ana.id}"

    made = await desk_on.submit(f"/teacher/students/{ana.id}/links", {"valid_days": "7"}, page=page)
    assert made.status_code == 303
    shown = await desk_on.client.get(page)
    link_ids = ids_of(shown.text, r'/links/([0-9a-f]+)/revoke')
    assert len(link_ids) == 1
    assert "valid until" in shown.text

    revoked = await desk_on.submit(f"/teacher/students/{ana.id}/links/{link_ids[0]}/revoke", page=page)
    assert revoked.status_code == 303
    after = await desk_on.client.get(revoked.headers["location"])
    assert "Lesson link revoked" in after.text
    assert "No working link" in after.text
    assert ids_of(after.text, r'/links/([0-9a-f]+)/revoke') == []


async def test_bad_link_requests_write_nothing(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    bruno = await add_student(desk_on.app, "Bruno")
    await desk_on.submit(f"/teacher/students/{bruno.id}/links")
    bruno_link = ids_of((await desk_on.client.get(f"/teacher/students/{bruno.id}")).text, r"/links/([0-9a-f]+)/")[0]

    for days in ("0", "366", "seven", "-1", "²", "٣", "9" * 5000):
        refused = await desk_on.submit(f"/teacher/students/{ana.id}/links", {"valid_days": days})
        assert refused.status_code == 422
        assert "whole number from 1 to 365" in refused.text
    # Another student's link is not this student's to revoke.
    wrong_student = await desk_on.submit(f"/teacher/students/{ana.id}/links/{bruno_link}/revoke")

    assert wrong_student.status_code == 404
    assert await count(desk_on.app, Link) == 1
    assert bruno_link in (await desk_on.client.get(f"/teacher/students/{bruno.id}")).text


async def test_deleting_a_student_needs_confirmation_and_removes_every_record(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    bruno = await add_student(desk_on.app, "Bruno")
    await add_lesson(desk_on.app, ana.id, "ana-1", turns=CONVERSATION, events=(("greeting_failed", GREETING_FAILED),))
    await add_lesson(desk_on.app, bruno.id, "bruno-1", turns=CONVERSATION)
    page = f"/teacher/students/{ana.id}"

    unconfirmed = await desk_on.submit(f"/teacher/students/{ana.id}/delete", page=page)
    assert unconfirmed.status_code == 422
    assert await count(desk_on.app, Student) == 2

    deleted = await desk_on.submit(f"/teacher/students/{ana.id}/delete", {"confirm": "yes"}, page=page)

    assert deleted.status_code == 303
    assert await count(desk_on.app, Student) == 1
    assert await count(desk_on.app, Lesson) == 1
    assert await count(desk_on.app, Turn) == len(CONVERSATION)
    assert await count(desk_on.app, LessonEvent) == 0
    assert (await desk_on.client.get(page)).status_code == 404


@pytest.mark.parametrize("path", ["/teacher/students/nope", "/teacher/lessons/nope",
                                  "/teacher/lessons/nope/export?format=md"])
async def test_unknown_ids_are_404_pages(desk_on: Desk, path: str) -> None:
    page = await desk_on.client.get(path)
    assert page.status_code == 404
    assert "It may have been deleted." in page.text


async def test_forms_for_unknown_students_are_404_and_write_nothing(desk_on: Desk) -> None:
    for action, fields in [("level", {"level": "B1"}), ("archive", {}), ("restore", {}),
                           ("delete", {"confirm": "yes"}), ("links", {})]:
        refused = await desk_on.submit(f"/teacher/students/nope/{action}", fields)
        assert refused.status_code == 404, action
    assert await count(desk_on.app, Link) == 0


async def test_lesson_page_shows_the_conversation_failures_usage_and_cost(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    upstream_error = {"code": "server_error", "message": "The server had an error"}
    await add_lesson(desk_on.app, ana.id, "lesson-1", turns=CONVERSATION, cost=0.0456,
                     events=(("greeting_retry", GREETING_FAILED), ("upstream_error", upstream_error)))

    page = await desk_on.client.get("/teacher/lessons/lesson-1")

    assert page.status_code == 200
    html = page.text
    turns = re.findall(r'<li class="turn turn--(tutor|student)">', html)
    assert turns == ["tutor", "student", "tutor"]
    assert html.index("How are you today?") < html.index("I am fine") < html.index("What did you do")
    assert "&lt;b&gt;yesterday&lt;/b&gt;" in html
    assert "Interrupted: 1200 ms heard" in html
    assert "The greeting did not come through and was asked for again." in html
    assert "<code class=\"muted\">greeting_retry</code>" in html
    assert "The tutor service reported an error." in html
    assert "The student pressed End. <code class=\"muted\">student_ended</code>" in html
    assert "Rate limit reached for audio output · rate_limit_exceeded · failed" in html
    assert "The server had an error · server_error" in html
    assert "$0.0456" in html
    assert '<th scope="row">audio output</th><td class="num">1500</td>' in html
    assert "2 min 5 s" in html


async def test_failures_page_groups_every_failure_by_day(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    # The page counts back from now, so these failures are placed relative to now.
    await add_lesson(desk_on.app, ana.id, "day-1", started_at=_days_ago(10),
                     events=(("greeting_failed", GREETING_FAILED),))
    incomplete = {"status": "incomplete", "reason": "max_output_tokens"}
    await add_lesson(desk_on.app, ana.id, "day-2", started_at=_days_ago(2),
                     events=(("greeting_retry", GREETING_FAILED), ("response_incomplete", incomplete)))
    await add_lesson(desk_on.app, None, "day-3", started_at=_days_ago(1), events=(("refused", {"message": "origin"}),))

    page = await desk_on.client.get("/teacher/failures?days=7")

    assert page.status_code == 200
    days = re.findall(r'<h2 id="day-(\d{4}-\d{2}-\d{2})"', page.text)
    assert days == [_days_ago(1).date().isoformat(), _days_ago(2).date().isoformat()]
    assert "max_output_tokens · incomplete" in page.text
    assert "A reply of the tutor was cut short by the tutor service." in page.text
    assert "no student record" in page.text
    assert 'href="/teacher/lessons/day-2"' in page.text
    assert "day-1" not in page.text  # older than the window
    assert (await desk_on.client.get("/teacher/failures?days=3")).status_code == 400


async def test_failures_page_counts_every_failure_and_lists_only_the_newest(desk_on: Desk,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """An outage or a script can leave hundreds of thousands of failures: building and rendering every one held the
    worker's event loop (and every lesson's audio on it) for seconds, so the page lists only the newest."""
    monkeypatch.setattr(pages, "FAILURES_LISTED", 2)
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "older", started_at=_days_ago(2),
                     events=(("greeting_failed", GREETING_FAILED), ("greeting_retry", GREETING_FAILED)))
    await add_lesson(desk_on.app, ana.id, "newer", started_at=_days_ago(1),
                     events=(("greeting_retry", GREETING_FAILED), ("greeting_retry", GREETING_FAILED)))

    page = await desk_on.client.get("/teacher/failures?days=7")

    assert page.status_code == 200
    assert re.findall(r'<h2 id="day-(\d{4}-\d{2}-\d{2})"', page.text) == [_days_ago(1).date().isoformat()]
    assert page.text.count('href="/teacher/lessons/newer"') == 2
    assert 'href="/teacher/lessons/older"' not in page.text
    assert re.findall(r'data-label="All" class="num">(\d+)<', page.text) == ["2", "2"]
    assert "All 4 failures are counted above; the newest 2 are listed below." in page.text


def _days_ago(days: int) -> datetime:
    return datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=days)


async def test_lesson_exports_markdown_and_json(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "lesson-1", turns=CONVERSATION,
                     events=(("greeting_retry", GREETING_FAILED),))

    markdown = await desk_on.client.get("/teacher/lessons/lesson-1/export?format=md")
    as_json = await desk_on.client.get("/teacher/lessons/lesson-1/export?format=json")

    assert markdown.headers["content-disposition"] == 'attachment; filename="lesson-lesson-1.md"'
    assert markdown.headers["content-type"] == "text/markdown; charset=utf-8"
    assert "**Tutor** (00:00): Hello Ana\\! How are you today?" in markdown.text
    assert "What did you do \\<b\\>yesterday\\</b\\>?" in markdown.text
    assert "- Ended: The student pressed End. (`student_ended`)" in markdown.text
    assert ("| 00:01 | The greeting did not come through and was asked for again. (`greeting_retry`) "
            "| Rate limit reached for audio output") in markdown.text
    lesson = json.loads(as_json.text)
    assert as_json.headers["content-disposition"] == 'attachment; filename="lesson-lesson-1.json"'
    assert [turn["role"] for turn in lesson["turns"]] == ["tutor", "student", "tutor"]
    assert lesson["events"][0]["detail"] == GREETING_FAILED
    assert (await desk_on.client.get("/teacher/lessons/lesson-1/export?format=xml")).status_code == 422


async def test_a_cut_turn_shows_the_words_the_student_heard_and_those_they_did_not_on_the_page_and_export(
    desk_on: Desk
) -> None:
    ana = await add_student(desk_on.app)
    await add_lesson(desk_on.app, ana.id, "lesson-1", turns=CONVERSATION, heard_texts={2: "Great. What did you"})

    html = (await desk_on.client.get("/teacher/lessons/lesson-1")).text
    markdown = (await desk_on.client.get("/teacher/lessons/lesson-1/export?format=md")).text
    exported = json.loads((await desk_on.client.get("/teacher/lessons/lesson-1/export?format=json")).text)

    texts = re.findall(r'<p class="turn__text">(.*?)</p>', html)
    assert texts[2] == "Great. What did you"
    assert "Cut off: 1200 ms heard; not heard: do &lt;b&gt;yesterday&lt;/b&gt;?" in html
    assert ("**Tutor** (00:20): Great. What did you *(Cut off: 1200 ms heard; not heard: do \\<b\\>yesterday\\</b\\>?)*"
            in markdown)
    cut = exported["turns"][2]
    assert (cut["text"], cut["interrupted"], cut["heard_ms"], cut["heard_text"]) == (
        "Great. What did you do <b>yesterday</b>?", True, 1200, "Great. What did you")
    assert exported["turns"][0]["heard_text"] is None


async def test_all_lessons_as_csv(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app, "Ana")
    await add_lesson(desk_on.app, ana.id, "lesson-b", started_at=START + timedelta(hours=1), cost=0.5)
    await add_lesson(desk_on.app, ana.id, "lesson-a")
    await add_lesson(desk_on.app, None, "lesson-c", started_at=START + timedelta(hours=2))

    exported = await desk_on.client.get("/teacher/lessons.csv")

    assert exported.status_code == 200
    assert exported.headers["content-type"] == "text/csv; charset=utf-8"
    assert exported.headers["content-disposition"].startswith('attachment; filename="lessons-')
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [row["lesson_id"] for row in rows] == ["lesson-a", "lesson-b", "lesson-c"]
    assert rows[1]["student_name"] == "Ana"
    assert rows[1]["estimated_cost_usd"] == "0.5"
    assert rows[2]["student_name"] == ""
    assert rows[0]["audio_output_tokens"] == "1500"


async def test_desk_pages_need_signing_in(desk_on: Desk) -> None:
    desk_on.client.cookies.clear()
    for path in ("/teacher", "/teacher/students/x", "/teacher/lessons/x", "/teacher/failures",
                 "/teacher/lessons.csv", "/teacher/lessons/x/export", "/teacher/lessons/x/events",
                 "/teacher/lessons/x/transcript"):
        page = await desk_on.client.get(path)
        assert page.status_code == 303, path
        assert page.headers["location"].startswith("/teacher/signin?next=")


class _PageAudit(HTMLParser):
    """What the accessibility and CSP checks look at: labels, inputs, headings, inline scripts and styles."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: set[str] = set()
        self.controls: list[str] = []
        self.h1 = 0
        self.inline: list[str] = []
        self._in_script_without_src = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "style" in attributes or any(name.startswith("on") for name in attributes):
            self.inline.append(f"<{tag} {attributes}>")
        if tag == "style":
            self.inline.append("<style>")
        if tag == "script" and "src" not in attributes:
            self.inline.append("<script> without src")
        if tag == "label" and attributes.get("for"):
            self.labels.add(str(attributes["for"]))
        if tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append(str(attributes.get("id")))
        if tag == "h1":
            self.h1 += 1


async def test_every_desk_page_is_labelled_headed_and_free_of_inline_code(desk_on: Desk) -> None:
    ana = await add_student(desk_on.app)
    await desk_on.submit(f"/teacher/students/{ana.id}/links")
    await add_lesson(desk_on.app, ana.id, "lesson-1", turns=CONVERSATION, events=(("greeting_retry", GREETING_FAILED),))
    await desk_on.submit(f"/teacher/students/{(await add_student(desk_on.app, 'Bruno')).id}/archive")

    for path in ("/teacher", f"/teacher/students/{ana.id}", "/teacher/lessons/lesson-1", "/teacher/failures",
                 "/teacher/lessons/lesson-1/events", "/teacher/lessons/lesson-1/transcript", "/teacher/students/nope"):
        audit = _PageAudit()
        audit.feed((await desk_on.client.get(path)).text)
        assert audit.h1 == 1, path
        assert audit.inline == [], path
        unlabelled = [control for control in audit.controls if control not in audit.labels]
        assert unlabelled == [], path
    desk_on.client.cookies.clear()
    audit = _PageAudit()
    audit.feed((await desk_on.client.get("/teacher/signin")).text)
    assert audit.inline == []
    assert audit.controls == ["password"]
    assert "password" in audit.labels


async def _link_opens_a_lesson_for(desk: Desk, link_url: str) -> str:
    """The student name the lesson path finds for `link_url`, or LinkError when it refuses the link."""
    token = parse_qs(urlsplit(link_url).query)["token"][0]
    claim = verify_lesson_token(token, desk.app.state.link_secret, now=time.time())
    return (await student_for_link(desk.app.state.db, claim, datetime.now(UTC))).name


async def test_the_desks_link_opens_a_lesson_until_revoked_or_archived(desk_on: Desk) -> None:
    added = await desk_on.submit("/teacher/students", {"name": "Ana", "level": "A2"})
    page = added.headers["location"].split("?")[0]
    student_id = page.rsplit("/", 1)[1]
    first_link = shown_links((await desk_on.client.get(page)).text)[0]
    assert await _link_opens_a_lesson_for(desk_on, first_link) == "Ana"

    first_id = ids_of((await desk_on.client.get(page)).text, r"/links/([0-9a-f]+)/revoke")[0]
    await desk_on.submit(f"{page}/links/{first_id}/revoke", page=page)
    with pytest.raises(LinkError, match="revoked"):
        await _link_opens_a_lesson_for(desk_on, first_link)

    await desk_on.submit(f"{page}/links", page=page)
    second_link = shown_links((await desk_on.client.get(page)).text)[0]
    assert await _link_opens_a_lesson_for(desk_on, second_link) == "Ana"
    await desk_on.submit(f"/teacher/students/{student_id}/archive", page=page)
    with pytest.raises(LinkError, match="archived"):
        await _link_opens_a_lesson_for(desk_on, second_link)


async def test_a_lesson_shows_and_exports_its_newest_events_and_counts_the_others(
        desk_on: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page resuming again and again piles events on its lesson: its page, exports and API answer never load them
    all."""
    monkeypatch.setattr(queries, "EVENTS_SHOWN", 3)
    ana = await add_student(desk_on.app)
    events = tuple(("upstream_error", {"message": f"failure {number}"}) for number in range(5))
    await add_lesson(desk_on.app, ana.id, "piled", events=events)
    await add_lesson(desk_on.app, ana.id, "few", events=events[:3])
    bearer = {"Authorization": f"Bearer {PASSWORD}"}

    page = (await desk_on.client.get("/teacher/lessons/piled")).text
    markdown = (await desk_on.client.get("/teacher/lessons/piled/export", params={"format": "md"})).text
    exported = json.loads((await desk_on.client.get("/teacher/lessons/piled/export?format=json")).text)
    answered = (await desk_on.client.get("/api/lessons/piled", headers=bearer)).json()
    whole = (await desk_on.client.get("/teacher/lessons/few")).text
    whole_answered = (await desk_on.client.get("/api/lessons/few", headers=bearer)).json()

    note = "The newest 3 of its 5 events are listed; 2 older ones are left out."
    newest = ["failure 2", "failure 3", "failure 4"]
    # The page gives each message twice: as the reason, and in the event's details.
    assert list(dict.fromkeys(re.findall(r"failure \d", page))) == newest
    assert note in page
    assert note in markdown
    assert re.findall(r"failure \d", markdown) == newest
    for lesson in (exported, answered):
        assert [event["detail"]["message"] for event in lesson["events"]] == newest
        assert lesson["events_left_out"] == 2
    assert list(dict.fromkeys(re.findall(r"failure \d", whole))) == ["failure 0", "failure 1", "failure 2"]
    assert "left out" not in whole
    assert whole_answered["events_left_out"] == 0
