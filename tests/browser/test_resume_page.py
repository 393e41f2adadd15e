"""The page keeps its lesson through a lost network and a reload, in headless Chromium against the app and
the Realtime simulator as processes.

The microphone is a looping WAV (a tone, then a pause): each tone is a student turn the simulated tutor
answers, so "the lesson goes on" is a new tutor turn after the page is back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from browser_stack import TEACHER_PASSWORD, LessonPage, OpenPage, Stack, run_stack, teacher_api, wait_for
from playwright.sync_api import WebSocketRoute, expect

pytestmark = pytest.mark.browser



def tutor_turns(lesson: object) -> int:
    return int(lesson.page.locator("#transcript .turn--tutor").count())  # type: ignore[attr-defined]


def test_three_seconds_offline_reconnects_keeps_the_transcript_and_the_lesson_goes_on(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=2.2)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    lesson_id = lesson.debug("lessonId")
    greeting = lesson.page.locator("#transcript .turn--tutor").first.inner_text()

    lesson.page.context.set_offline(True)
    expect(lesson.page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
    time.sleep(3)  # the network is away this long: the outage under test, not a synchronisation
    turns_before = tutor_turns(lesson)
    lesson.page.context.set_offline(False)

    lesson.wait_debug("d.resumes === 1 && !d.reconnecting", timeout_s=30)
    assert lesson.debug("lessonId") == lesson_id
    assert lesson.page.locator("#transcript .turn--tutor").first.inner_text() == greeting
    lesson.page.wait_for_function(
        f"() => document.querySelectorAll('#transcript .turn--tutor').length > {turns_before}", timeout=60_000)
    assert lesson.page.get_by_role("alert").is_hidden()
    assert "reconnecting" not in lesson.debug("statuses")[-1]
    assert lesson.console_errors == []


def test_a_reload_mid_lesson_resumes_it_with_the_transcript_restored(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=2.2)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    before = lesson.wait_student_spoke()
    lesson_id = lesson.debug("lessonId")

    lesson.page.reload()

    lesson.wait_debug("d.resumes === 1", timeout_s=30)
    assert lesson.debug("lessonId") == lesson_id
    # The relay sends the turns after the `lesson` frame that counts the resume, and the lesson's status after them.
    lesson.wait_debug("d.statuses.length > 0")
    restored = lesson.page.locator("#transcript .turn").all_inner_texts()
    # Every turn is back; one the reload cut short comes back with the words it had reached.
    assert len(restored) >= len(before)
    assert all(now.startswith(then) for then, now in zip(before, restored, strict=False))
    # The restored turns are shown, not read out to a screen reader all over again.
    assert lesson.page.locator("#turn-announcer > *").count() == 0
    continue_button = lesson.page.get_by_role("button", name="Continue lesson")
    expect(continue_button).to_be_visible()
    turns_before = tutor_turns(lesson)
    continue_button.focus()
    lesson.page.keyboard.press("Enter")  # the sound needs the student's gesture after a reload
    expect(continue_button).to_be_hidden()
    # The button goes under the focus: the focus moves to the status line, not to the top of the page.
    assert lesson.page.evaluate("() => document.activeElement.id") == "status"
    lesson.page.wait_for_function(
        f"() => document.querySelectorAll('#transcript .turn--tutor').length > {turns_before}", timeout=60_000)
    assert lesson.page.get_by_role("button", name="End lesson").is_enabled()
    assert lesson.console_errors == []


def test_end_pressed_while_offline_ends_the_lesson_once_back_with_its_feedback(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    lesson.wait_debug("d.state === 'listening'")
    lesson_id = lesson.debug("lessonId")

    lesson.page.context.set_offline(True)
    expect(lesson.page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
    lesson.page.get_by_role("button", name="End lesson").click()
    expect(lesson.page.get_by_role("button", name="End lesson")).to_be_disabled()
    # Until the lesson has ended a new one cannot be started over it.
    start = lesson.page.get_by_role("button", name="Start lesson")
    expect(start).to_be_disabled()
    lesson.page.context.set_offline(False)

    expect(lesson.page.locator("#feedback .feedback-card__summary")).to_be_visible(timeout=30_000)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert lesson.debug("lessonId") == lesson_id
    assert lesson.debug("statuses")[-1] == "ended:student_ended"  # as the student asked, not browser_gone
    assert lesson.page.get_by_role("alert").is_hidden()
    expect(start).to_be_enabled()
    assert lesson.console_errors == []


@pytest.fixture(scope="module")
def slow_feedback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose tutor takes 3 s to write the feedback, which the relay waits 8 s for; with a teacher's desk.
    No grace for a page that left: what brings a page back to its lesson here is the feedback alone."""
    app_env = {"FEEDBACK_TIMEOUT_SECONDS": "8", "RESUME_GRACE_SECONDS": "0", "TEACHER_PASSWORD": TEACHER_PASSWORD}
    with run_stack(tmp_path_factory.mktemp("slow-feedback"), "--feedback-delay-ms", "3000", app_env=app_env) as stack:
        yield stack


def start_on_a_personal_link(stack: Stack, open_page: OpenPage) -> LessonPage:
    """A new student's personal link opened and its lesson started (the link's page has the name and level)."""
    student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "A2"})
    lesson = open_page(student["link"])
    lesson.page.get_by_role("button", name="Start lesson").click()
    return lesson


def wait_for_the_stored_feedback(stack: Stack, lesson_id: str) -> None:
    wait_for(lambda: teacher_api(stack, "GET", f"/api/lessons/{lesson_id}")["feedback"], timeout=30,
             what="the lesson's feedback in the lesson records")


def end_once_greeted(lesson: LessonPage) -> None:
    """End the lesson once the greeting was heard; returns as the relay starts waiting for the feedback."""
    lesson.wait_greeting_played()
    lesson.wait_debug("d.state === 'listening'")
    lesson.page.get_by_role("button", name="End lesson").click()
    lesson.wait_debug("d.statuses.includes('feedback')")


def the_lesson_ended_with_its_feedback(lesson: LessonPage) -> None:
    expect(lesson.page.locator("#feedback .feedback-card__summary")).to_be_visible(timeout=30_000)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert lesson.debug("statuses")[-1] == "ended:student_ended"  # as the student asked, not browser_gone
    assert lesson.page.get_by_role("alert").is_hidden()
    expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()
    assert lesson.console_errors == []


def end_and_go_offline_while_the_feedback_is_written(lesson: LessonPage) -> None:
    page = lesson.page
    end_once_greeted(lesson)
    page.context.set_offline(True)
    expect(page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
    expect(page.locator("#feedback-status")).to_have_text("Preparing your feedback…")


def test_the_network_lost_while_the_feedback_is_written_the_page_comes_back_for_it(
    slow_feedback: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(slow_feedback.url)
    lesson.start("Ana")
    end_and_go_offline_while_the_feedback_is_written(lesson)
    lesson.page.context.set_offline(False)

    the_lesson_ended_with_its_feedback(lesson)
    assert lesson.debug("resumes") == 1


def test_the_network_away_past_the_feedback_s_wait_the_page_says_so_and_a_reload_online_brings_it(
    slow_feedback: Stack, open_page: OpenPage
) -> None:
    lesson = start_on_a_personal_link(slow_feedback, open_page)
    end_and_go_offline_while_the_feedback_is_written(lesson)

    # The page waits the relay's 8 s and its own 5 s margin, then stops trying.
    expect(lesson.page.locator("#feedback-status")).to_have_text(
        "The lesson has ended, but the connection was lost before your feedback arrived. Reload this page when "
        "you are back online to see it.", timeout=30_000)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended' && !d.reconnecting")
    assert lesson.page.get_by_role("alert").is_hidden()
    expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()

    lesson.page.context.set_offline(False)
    wait_for_the_stored_feedback(slow_feedback, lesson.debug("lessonId"))
    lesson.page.reload()
    expect(lesson.page.locator("#feedback .feedback-card__summary")).to_be_visible(timeout=30_000)
    # A personal link's page also lists it with the student's last lessons.
    expect(lesson.page.get_by_role("region", name="Your last lessons")).to_contain_text("Next time")
    assert lesson.page.get_by_role("alert").is_hidden()
    assert lesson.console_errors == []


def test_a_reload_while_the_feedback_is_written_brings_back_the_transcript_and_the_feedback(
    slow_feedback: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(slow_feedback.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    greeting = lesson.page.locator("#transcript .turn--tutor").first.inner_text()
    end_once_greeted(lesson)

    lesson.page.reload()

    the_lesson_ended_with_its_feedback(lesson)
    assert lesson.debug("resumes") == 1
    assert lesson.page.locator("#transcript .turn--tutor").first.inner_text() == greeting
    # Nothing is left to hear: the page does not offer to start the sound.
    expect(lesson.page.get_by_role("button", name="Continue lesson")).to_be_hidden()


def answer_the_first_resume(lesson: LessonPage, error: dict[str, object], close_code: int) -> list[str]:
    """The relay's refusal `error` (then `close_code`) to the page's first resume, in place of the app; the app
    answers every later socket. Returns the refused sockets' URLs."""
    refused: list[str] = []

    def route(socket: WebSocketRoute) -> None:
        if refused or "resume=" not in socket.url:
            socket.connect_to_server()
            return
        refused.append(socket.url)
        socket.send(json.dumps({"type": "error", **error}))
        socket.close(code=close_code, reason=str(error["code"]))

    lesson.page.route_web_socket("**/ws/lesson**", route)
    return refused


def test_a_reload_for_the_feedback_answered_not_yet_tries_again_and_gets_it(
    slow_feedback: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(slow_feedback.url)
    lesson.start("Ana")
    end_once_greeted(lesson)
    refused = answer_the_first_resume(
        lesson, {"code": "resume_not_yet", "message": "Reconnecting to your lesson…", "fatal": False}, 1013)

    lesson.page.reload()

    the_lesson_ended_with_its_feedback(lesson)
    assert len(refused) == 1
    assert lesson.debug("resumes") == 1


@pytest.mark.parametrize(("refusal", "card"), [
    ({"code": "resume_expired", "message": "This lesson was away too long and has ended. Please start a new lesson."},
     "This lesson ended a while ago, and its feedback can no longer be shown here."),
    ({"code": "lesson_ended", "message": "This lesson has already ended. Please start a new lesson."},
     "This lesson has ended, and there is no feedback for it."),
], ids=["token expired", "ended without feedback"])
def test_a_tab_back_for_a_feedback_it_cannot_have_is_told_so_on_the_card(
    slow_feedback: Stack, open_page: OpenPage, refusal: dict[str, object], card: str
) -> None:
    lesson = start_on_a_personal_link(slow_feedback, open_page)
    end_once_greeted(lesson)
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    wait_for_the_stored_feedback(slow_feedback, lesson.debug("lessonId"))
    refused = answer_the_first_resume(lesson, {**refusal, "fatal": True}, 1008)
    # The tab as a browser restores it hours later: its saved lesson still waiting for the feedback.
    lesson.page.evaluate("""() => sessionStorage.setItem("lessonResume",
        JSON.stringify({token: "refused.token", graceMs: 0, awaitingFeedback: true}))""")

    lesson.page.reload()

    expect(lesson.page.locator("#feedback-status")).to_have_text(f"{card} Your last lessons are listed below.")
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert len(refused) == 1
    assert lesson.page.get_by_role("alert").is_hidden()
    expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()
    assert lesson.page.evaluate("sessionStorage.getItem('lessonResume')") is None
    assert lesson.console_errors == []


def test_a_tab_back_on_the_page_after_its_lesson_ended_without_it_gets_the_feedback(
    slow_feedback: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(slow_feedback.url)
    lesson.start("Ana")
    end_once_greeted(lesson)
    lesson_id = lesson.debug("lessonId")

    lesson.page.goto("about:blank")
    wait_for_the_stored_feedback(slow_feedback, lesson_id)
    lesson.page.goto(slow_feedback.url)

    the_lesson_ended_with_its_feedback(lesson)


def test_a_lesson_ended_after_a_reload_before_its_sound_came_back_no_longer_offers_the_sound(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    lesson.page.reload()
    lesson.wait_debug("d.resumes === 1 && d.statuses.length > 0")
    continue_button = lesson.page.get_by_role("button", name="Continue lesson")
    expect(continue_button).to_be_visible()

    lesson.page.get_by_role("button", name="End lesson").click()

    expect(lesson.page.locator("#feedback .feedback-card__summary")).to_be_visible(timeout=30_000)
    expect(continue_button).to_be_hidden()
    assert lesson.console_errors == []


CUT_TURNS = "() => [...document.querySelectorAll('#transcript .turn--cut')].map((turn) => turn.innerText)"


def test_a_turn_the_student_interrupted_is_marked_cut_off_and_a_reload_shows_it_as_it_was_heard(
    stack: Stack, open_page: OpenPage
) -> None:
    # Each tone is a student turn that barges in on the tutor's answer to the one before.
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=2.2)
    lesson.start("Ana")
    lesson.wait_debug("d.interrupted.length > 0", timeout_s=60)
    lesson.page.wait_for_function(f"() => ({CUT_TURNS})().length > 0", timeout=15_000)
    cut_live = lesson.page.evaluate(CUT_TURNS)
    assert all(text.startswith("Tutor") and text.endswith("Cut off") for text in cut_live)

    lesson.page.reload()

    lesson.wait_debug("d.resumes === 1", timeout_s=30)
    # The turns come back in frames after the one that counts the resume: wait for them, not for the count.
    lesson.page.wait_for_function(f"() => ({CUT_TURNS})().length >= {len(cut_live)}", timeout=15_000)
    # The relay sent the cut turns as heard and marked: the page shows them as it did live (and the reload
    # may have cut one more).
    assert lesson.page.evaluate(CUT_TURNS)[: len(cut_live)] == cut_live
    assert lesson.console_errors == []
