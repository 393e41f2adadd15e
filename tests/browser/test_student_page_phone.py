"""A student's desk page on a phone in headless Chromium, against the app as a process: with a start refused for
capacity (its reason names limits in long unbroken words) and a remembered lesson, the page fits the phone's width,
the count and the refused start's mark stay beside their labels, the remembered lesson is dated in the teacher's
own time zone, and the exact text the tutor is given opens from its fold.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import FloatRect, Locator, Playwright, expect
from sqlalchemy import create_engine
from sqlalchemy.orm import Session
from test_teacher_desk import PHONE, fits_the_width, signed_in_desk

from app.store.models import Lesson, LessonEvent, Student, Turn

pytestmark = pytest.mark.browser

STARTED = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
FEEDBACK = {"summary": "We talked about your dog Max.",
            "corrections": [{"said": "He have a ball", "better": "He has a ball", "why": "With he, say has."}],
            "new_words": [{"word": "leash", "meaning": "a rope for walking a dog"}],
            "next_step": "Practise 'he has'."}


def add_ana(database: Path) -> str:
    """Ana, with a lesson that ran (and left feedback) and, a day later, a start refused for capacity."""
    engine = create_engine(f"sqlite:///{database}")
    with Session(engine) as db, db.begin():
        ana = Student(name="Ana", level="A2")
        db.add(ana)
        db.flush()
        refused_at = STARTED + timedelta(days=1)
        db.add_all([
            Lesson(id="ran", student_id=ana.id, level="A2", started_at=STARTED,
                   ended_at=STARTED + timedelta(minutes=10), end_reason="student_ended", duration_s=600.0,
                   model="gpt-realtime", simulated=True, feedback=FEEDBACK),
            Lesson(id="refused", student_id=ana.id, level="A2", started_at=refused_at, ended_at=refused_at,
                   end_reason="over_capacity", duration_s=0.0, model="gpt-realtime", simulated=True),
        ])
        db.flush()
        db.add(Turn(lesson_id="ran", seq=0, role="tutor", text="Hello Ana!", started_at=STARTED, ended_at=STARTED))
        db.add(LessonEvent(lesson_id="refused", at=refused_at, kind="refused",
                           detail={"code": "over_capacity", "detail": "all places taken"}))
        student_id = ana.id
    engine.dispose()
    return student_id


def box(element: Locator) -> FloatRect:
    found = element.bounding_box()
    assert found is not None, f"{element} is not shown"
    return found


def test_a_student_s_page_with_a_refused_start_and_a_memory_fits_a_phone(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with signed_in_desk(playwright, tmp_path, tmp_path_factory) as desk:
        ana_id = add_ana(desk.stack.database)
        context = desk.browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB", viewport=PHONE)
        page = context.new_page()
        page.goto(f"{desk.stack.url}/teacher")
        page.get_by_label("Password").fill("desk-browser-test-password")
        page.keyboard.press("Enter")
        expect(page.get_by_role("heading", name="Students", exact=True)).to_be_visible()
        assert fits_the_width(page), "the students page is wider than a phone"
        lessons_cell = page.locator("td[data-label=Lessons] .lesson-count")
        expect(lessons_cell).to_have_text("1 (1 start refused)")
        # The count and its refused starts are one value, beside the cell's label (not a row of their own under it).
        assert box(page.locator("td[data-label=Lessons] .refused-count"))["x"] > box(lessons_cell)["x"]

        page.goto(f"{desk.stack.url}/teacher/students/{ana_id}")
        assert fits_the_width(page), "the student's page is wider than a phone"
        expect(page.locator(".facts")).to_contain_text("1 lesson (1 start refused)")
        refused_row = page.locator("tbody tr").filter(has=page.locator("a[href='/teacher/lessons/refused']"))
        expect(refused_row.locator(".tag")).to_have_text("Start refused")
        expect(refused_row.locator("td[data-label='Ended because']")).to_contain_text("LINK_STARTS_PER_MINUTE")
        # The mark is in the value's column with the start, not under the label.
        assert box(refused_row.locator(".tag"))["x"] >= box(refused_row.locator("th a"))["x"]

        remembered = page.locator(".memory-list time")
        in_tokyo = STARTED.astimezone(ZoneInfo("Asia/Tokyo"))
        expect(remembered).to_have_text(f"{in_tokyo:%a}, {in_tokyo.day} {in_tokyo:%b %Y}, {in_tokyo:%H:%M} GMT+9")
        expect(page.locator(".memory-list")).to_contain_text("He has a ball")
        exact = page.locator("pre.memory")
        expect(exact).to_be_hidden()
        page.get_by_text("Exactly what the tutor is given").click()
        expect(exact).to_be_visible()
        expect(exact).to_contain_text("# What you remember about the student")
        assert fits_the_width(page), "the opened memory is wider than a phone"
        context.close()
