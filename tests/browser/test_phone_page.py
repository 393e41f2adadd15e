"""The lesson page on a phone: 360 px wide, in headless Chromium against the app and the simulator.

What this proves: nothing is wider than the screen; a personal link's page with its last lessons still has
Start lesson on the first screen, and a refusal is shown where the student is looking, next to the status;
while a lesson runs, its status and the tutor's live words are on the first screen, and at its end the
feedback is; a bad link's page keeps its words off the screen's edges.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_stack import (
    TEACHER_PASSWORD,
    LessonPage,
    OpenPage,
    Stack,
    launch_chromium,
    make_wav,
    run_stack,
    teacher_api,
    wait_for,
)
from playwright.sync_api import Locator, Playwright, expect

pytestmark = pytest.mark.browser

PHONE = {"width": 360, "height": 740}
# What a small phone shows of a page under its browser's address bar.
SMALL_PHONE = {"width": 360, "height": 560}


def on_first_screen(element: Locator) -> bool:
    """Whether all of `element` is inside the viewport as the page is scrolled now."""
    box, viewport = element.bounding_box(), element.page.viewport_size
    assert box is not None, "the element is not shown"
    assert viewport is not None
    return box["x"] >= 0 and box["y"] >= 0 and box["x"] + box["width"] <= viewport["width"] \
        and box["y"] + box["height"] <= viewport["height"]


def test_a_link_s_page_with_its_history_keeps_start_and_its_messages_on_the_first_screen(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("phone"), app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}) as stack:
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "A2"})
            lesson = LessonPage.open(browser, student["link"])
            page = lesson.page
            page.set_viewport_size(PHONE)
            start = page.get_by_role("button", name="Start lesson")
            start.click()
            lesson.wait_greeting_played()
            lesson.wait_debug("d.state === 'listening'")
            page.get_by_role("button", name="End lesson").click()
            expect(page.locator("#feedback .feedback-card__summary")).to_be_visible(timeout=30_000)
            lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
            lesson_id = lesson.debug("lessonId")
            wait_for(lambda: teacher_api(stack, "GET", f"/api/lessons/{lesson_id}")["feedback"], timeout=15,
                     what="the lesson's feedback in the store")

            page.reload()  # the link's page now shows the lesson just had
            expect(page.get_by_role("region", name="Your last lessons")).to_contain_text("New words")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
            assert on_first_screen(start)

            teacher_api(stack, "DELETE", f"/api/students/{student['id']}")
            start.click()
            alert = page.get_by_role("alert")
            expect(alert).to_contain_text("no longer valid", timeout=15_000)
            assert on_first_screen(alert)
            assert lesson.console_errors == []
        finally:
            browser.close()


def test_the_lesson_s_words_and_then_its_feedback_are_on_a_phone_s_first_screen(stack: Stack,
                                                                               open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    page = lesson.page
    page.set_viewport_size(PHONE)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    greeting = page.locator("#transcript").get_by_text("Hello Ana!")
    expect(greeting).to_be_visible()
    assert on_first_screen(greeting)
    assert on_first_screen(page.get_by_role("button", name="End lesson"))

    page.get_by_role("button", name="End lesson").click()
    summary = page.locator("#feedback .feedback-card__summary")
    expect(summary).to_be_visible(timeout=30_000)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert on_first_screen(summary)
    # The form is back for the next lesson.
    expect(page.get_by_role("button", name="Start lesson")).to_be_enabled()
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    assert lesson.console_errors == []


def test_a_bad_link_s_page_is_laid_out_like_the_lesson_page(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(f"{stack.url}/?token=not-a-link")
    lesson.page.set_viewport_size(PHONE)
    message = lesson.page.get_by_role("alert")
    expect(message).to_contain_text("This lesson link is not valid.")
    assert on_first_screen(message)
    # Its text is not pressed against the edges of the screen.
    for element in (lesson.page.get_by_role("heading", name="Lesson link needed"), message):
        box = element.bounding_box()
        assert box is not None
        assert box["x"] >= 8, box
        assert box["x"] + box["width"] <= PHONE["width"] - 8, box


REFUSE_MICROPHONE = """
MediaDevices.prototype.getUserMedia = () => Promise.reject(new DOMException("the test refused", "NotAllowedError"));
"""


def test_a_refused_microphone_s_message_and_try_again_are_on_the_screen(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url, init_scripts=[REFUSE_MICROPHONE])
    lesson.page.set_viewport_size(SMALL_PHONE)
    lesson.start("Ana")

    alert = lesson.page.get_by_role("alert")
    expect(alert).to_contain_text("The page may not use your microphone.", timeout=15_000)
    try_again = alert.get_by_role("button", name="Try again")
    expect(try_again).to_be_visible()
    assert on_first_screen(try_again)
    assert lesson.console_errors == []
