"""Two lessons in a row for the same student, with no API key (the app's own simulator), in headless Chromium.

What this proves: the first lesson ends with a feedback card; the second greeting welcomes the student back
and names something from the first; both lessons and their feedback are on the teacher's desk.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_stack import TEACHER_PASSWORD, LessonPage, launch_chromium, make_wav, run_stack, teacher_api, wait_for
from playwright.sync_api import Playwright, expect

pytestmark = pytest.mark.browser

def end_and_read_card(lesson: LessonPage) -> str:
    lesson.wait_greeting_played()
    lesson.wait_debug("d.state === 'listening'")
    lesson.page.get_by_role("button", name="End lesson").click()
    summary = lesson.page.locator("#feedback .feedback-card__summary")
    expect(summary).to_be_visible(timeout=30_000)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    return summary.inner_text()


def test_the_second_lesson_remembers_the_first_and_the_desk_shows_both(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # No key and no upstream URL: the app starts its own simulator, as on a fresh clone.
    app_env: dict[str, str | None] = {"OPENAI_API_KEY": None, "OPENAI_REALTIME_URL": None,
                                      "TEACHER_PASSWORD": TEACHER_PASSWORD}
    with run_stack(tmp_path_factory.mktemp("two-lessons"), app_env=app_env) as stack:
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            lesson = LessonPage.open(browser, stack.url)
            lesson.start("Ana", "A2")
            first_summary = end_and_read_card(lesson)
            assert first_summary.startswith("Today we talked about how you are.")

            [student] = wait_for(lambda: teacher_api(stack, "GET", "/api/students")["students"] or None, timeout=15,
                                 what="the browser's student on the desk")
            first_id = student["last_lesson_id"]
            wait_for(lambda: teacher_api(stack, "GET", f"/api/lessons/{first_id}")["feedback"], timeout=15,
                     what="the first lesson's feedback in the store")

            # The same browser (its student key in localStorage) starts the next lesson.
            lesson.start("Ana", "A2")
            greeting = lesson.page.locator("#transcript .turn--tutor .turn__text").first
            expect(greeting).to_contain_text("Welcome back, Ana!", timeout=30_000)
            expect(greeting).to_contain_text("I remember from last time: Today we talked about how you are")
            second_summary = end_and_read_card(lesson)
            assert lesson.console_errors == []

            desk = LessonPage.open(browser, f"{stack.url}/teacher").page
            desk.get_by_label("Password").fill(TEACHER_PASSWORD)
            desk.keyboard.press("Enter")
            desk.get_by_role("link", name="Ana").first.click()
            lesson_links = desk.locator("section[aria-labelledby='lessons-heading'] a[href^='/teacher/lessons/']")
            expect(lesson_links).to_have_count(2)
            # Both lessons gave feedback: the tutor remembers both, each linked to its lesson.
            remembered = desk.locator(".memory-list a[href^='/teacher/lessons/']")
            expect(remembered).to_have_count(2)
            hrefs = [lesson_links.nth(index).get_attribute("href") for index in range(2)]
            on_the_desk = set()
            for href in hrefs:
                desk.goto(f"{stack.url}{href}")
                on_the_desk.add(desk.get_by_role("region", name="Feedback").locator("p").first.inner_text())
            assert on_the_desk == {first_summary, second_summary}
        finally:
            browser.close()
