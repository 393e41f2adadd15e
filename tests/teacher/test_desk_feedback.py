"""A lesson's feedback on the desk (SQLite and PostgreSQL): shown on the lesson page and in the API's lesson
object and exports; a teacher deletes a wrong correction or word with a CSRF-protected form, and it no longer
follows the student into the memory of their next lessons."""

from __future__ import annotations

from typing import Any

from desk_client import Desk
from markupsafe import escape
from records import add_lesson, add_student
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from test_desk_pages import _PageAudit

from app.memory import remembered_lessons
from app.prompts import memory_section
from app.store.models import Lesson
from app.students import LessonStudent

FEEDBACK: dict[str, Any] = {
    "summary": "We talked about your dog Max.",
    "corrections": [{"said": "He have a ball", "better": "He has a ball", "why": "With he, say has."},
                    {"said": "I am agree", "better": "I agree", "why": "It is wrong: Ana said it right."}],
    "new_words": [{"word": "leash", "meaning": "a rope for walking a dog"},
                  {"word": "wrongword", "meaning": "a word the tutor never used"}],
    "next_step": "Practise 'he has'.",
}


async def lesson_with_feedback(desk: Desk, feedback: dict[str, Any] | None = FEEDBACK) -> str:
    student = await add_student(desk.app)
    await add_lesson(desk.app, student.id, "lesson-1")
    if feedback is not None:
        sessions: async_sessionmaker[AsyncSession] = desk.app.state.db
        async with sessions.begin() as db:
            lesson = await db.get_one(Lesson, "lesson-1")
            lesson.feedback = feedback
    return student.id


async def stored_feedback(desk: Desk) -> Any:
    sessions: async_sessionmaker[AsyncSession] = desk.app.state.db
    async with sessions() as db:
        return (await db.get_one(Lesson, "lesson-1")).feedback


async def test_the_lesson_page_the_api_and_the_exports_carry_the_feedback(desk_on: Desk) -> None:
    await lesson_with_feedback(desk_on)
    page = (await desk_on.client.get("/teacher/lessons/lesson-1")).text
    assert "We talked about your dog Max." in page
    assert "He have a ball" in page
    assert "<strong>He has a ball</strong>" in page
    assert "<strong>leash</strong> — a rope for walking a dog" in page
    assert "Practise &#39;he has&#39;." in page
    api = await desk_on.client.get("/api/lessons/lesson-1",
                                   headers={"Authorization": "Bearer desk-test-password-not-real"})
    assert api.json()["feedback"] == FEEDBACK
    markdown = (await desk_on.client.get("/teacher/lessons/lesson-1/export?format=md")).text
    assert "## Feedback" in markdown
    assert "- New word: **leash**: a rope for walking a dog" in markdown


async def test_the_feedback_forms_are_labelled_and_free_of_inline_code(desk_on: Desk) -> None:
    await lesson_with_feedback(desk_on)
    audit = _PageAudit()
    audit.feed((await desk_on.client.get("/teacher/lessons/lesson-1")).text)
    assert audit.h1 == 1
    assert audit.inline == []
    assert [control for control in audit.controls if control not in audit.labels] == []


async def test_a_lesson_without_feedback_says_so(desk_on: Desk) -> None:
    await lesson_with_feedback(desk_on, None)
    page = (await desk_on.client.get("/teacher/lessons/lesson-1")).text
    assert "No feedback for this lesson: see the events for why." in page
    api = await desk_on.client.get("/api/lessons/lesson-1",
                                   headers={"Authorization": "Bearer desk-test-password-not-real"})
    assert api.json()["feedback"] is None


async def test_deleting_a_correction_and_a_word_keeps_them_out_of_the_students_memory(desk_on: Desk) -> None:
    student_id = await lesson_with_feedback(desk_on)
    lesson_page = "/teacher/lessons/lesson-1"
    deleted = await desk_on.submit(f"{lesson_page}/feedback/corrections/1/delete", {"said": "I am agree"},
                                   page=lesson_page)
    assert deleted.status_code == 303
    assert deleted.headers["location"] == f"{lesson_page}?notice=correction_deleted"
    deleted = await desk_on.submit(f"{lesson_page}/feedback/words/1/delete", {"word": "wrongword"}, page=lesson_page)
    assert deleted.headers["location"] == f"{lesson_page}?notice=word_deleted"

    assert await stored_feedback(desk_on) == FEEDBACK | {"corrections": FEEDBACK["corrections"][:1],
                                                         "new_words": FEEDBACK["new_words"][:1]}
    memory = memory_section(await remembered_lessons(desk_on.app.state.db, LessonStudent(student_id=student_id)))
    assert "He have a ball" in memory
    assert "I am agree" not in memory
    assert "leash" in memory
    assert "wrongword" not in memory
    page = (await desk_on.client.get(f"{lesson_page}?notice=word_deleted")).text
    assert "Word deleted" in page
    assert "wrongword" not in page
    student_page = (await desk_on.client.get(f"/teacher/students/{student_id}")).text
    assert "What the tutor remembers" in student_page
    assert escape(memory) in student_page
    assert "wrongword" not in student_page
    assert '"event": "teacher_feedback_entry_deleted"' in desk_on.log.getvalue()


async def test_the_student_page_shows_what_the_tutor_remembers_of_them(desk_on: Desk) -> None:
    student_id = await lesson_with_feedback(desk_on)
    memory = memory_section(await remembered_lessons(desk_on.app.state.db, LessonStudent(student_id=student_id)))
    assert memory

    page = (await desk_on.client.get(f"/teacher/students/{student_id}")).text

    assert f'<pre class="memory">{escape(memory)}</pre>' in page
    assert "He have a ball" in memory


async def test_a_student_without_feedback_is_remembered_for_nothing(desk_on: Desk) -> None:
    student_id = await lesson_with_feedback(desk_on, feedback=None)

    page = (await desk_on.client.get(f"/teacher/students/{student_id}")).text

    assert "What the tutor remembers" in page
    assert "Nothing yet" in page
    assert 'class="memory"' not in page


async def test_a_delete_form_without_its_csrf_token_or_for_an_entry_that_changed_deletes_nothing(
        desk_on: Desk) -> None:
    await lesson_with_feedback(desk_on)
    lesson_page = "/teacher/lessons/lesson-1"
    for token in ({}, {"csrf_token": "not-the-token"}):
        refused = await desk_on.client.post(f"{lesson_page}/feedback/corrections/0/delete",
                                            data=token | {"said": "He have a ball"})
        assert refused.status_code == 403
    # Another tab deleted entry 0 meanwhile: what the page showed as entry 1 is now entry 0, and 1 is gone.
    stale = await desk_on.submit(f"{lesson_page}/feedback/corrections/1/delete", {"said": "He have a ball"},
                                 page=lesson_page)
    assert stale.status_code == 409
    assert "changed since the page was shown" in stale.text
    for path in (f"{lesson_page}/feedback/corrections/9/delete", f"{lesson_page}/feedback/words/0/delete"):
        assert (await desk_on.submit(path, {"said": "He have a ball"}, page=lesson_page)).status_code == 409
    assert await stored_feedback(desk_on) == FEEDBACK


async def test_delete_forms_for_unknown_lessons_or_lists_are_404(desk_on: Desk) -> None:
    await lesson_with_feedback(desk_on)
    for path in ("/teacher/lessons/nope/feedback/words/0/delete", "/teacher/lessons/lesson-1/feedback/summary/0/delete",
                 "/teacher/lessons/lesson-1/feedback/words/x/delete",
                 "/teacher/lessons/lesson-1/feedback/words/²/delete",
                 "/teacher/lessons/lesson-1/feedback/words/" + "1" * 5000 + "/delete"):
        refused = await desk_on.submit(path, {"word": "leash"}, page="/teacher/lessons/lesson-1")
        assert refused.status_code == 404, path
    assert await stored_feedback(desk_on) == FEEDBACK
