"""The lesson outlives its socket in Firefox and WebKit (the `other_browser` fixture), against the app and the
Realtime simulator as processes: a reload mid-lesson, the page left for another and come back to with Back (WebKit
restores it from its back-forward cache, Firefox loads it anew), the socket cut under the page by a proxy, the
network lost (Firefox only: WebDriver classic cannot take it away), a reload or Back while the feedback is written.

These browsers' fake microphones play a steady tone: the student speaks from the moment the microphone opens
until they press Mute, and the silence that follows ends their turn. "The lesson goes on" is that turn
answered by the tutor after the page is back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
from browser_stack import Stack, run_stack
from cuttable_proxy import CuttableProxy, run_cuttable_proxy
from firefox import FirefoxLessonPage
from scripted_page import OtherBrowser, ScriptedLessonPage

pytestmark = pytest.mark.browser

TUTOR_TURNS = "document.querySelectorAll('#transcript .turn--tutor').length"


def lesson_events(stack: Stack, lesson_id: str, event: str) -> list[dict[str, object]]:
    """The app's log lines `event` of this lesson, so far."""
    found = []
    for line in stack.logs[-1].read_text(errors="replace").splitlines():
        if line.startswith("{"):
            fields = json.loads(line)
            if fields.get("event") == event and fields.get("lesson_id") == lesson_id:
                found.append(fields)
    return found


def greeting_words(lesson: ScriptedLessonPage) -> str:
    return lesson.texts("#transcript .turn--tutor .turn__text")[0]


def same_greeting(before: str, restored: str) -> bool:
    """Whether the greeting came back as the page had shown it. The microphone's tone barges in at its last 40 ms:
    shown before its end was told, it may come back as far as it was heard."""
    return "Ana" in restored and before.startswith(restored)


def error_shown(lesson: ScriptedLessonPage) -> str | None:
    """The page's error alert, if one is shown."""
    shown: str | None = lesson.evaluate(
        "document.getElementById('error').hidden ? null : document.getElementById('error-message').innerText")
    return shown


def assert_no_error(lesson: ScriptedLessonPage) -> None:
    """No error frame came and no error alert is shown. WebKitGTK starts an AudioContext by rendering some 600 ms at
    once, and the capture worklet's frames of that stretch come together: after a resume the socket is open, and
    the page sends no more of such a burst than the relay takes (lesson.js, MicrophonePace)."""
    assert lesson.debug("errors") == []
    assert error_shown(lesson) is None


def greeted(other_browser: OtherBrowser, url: str) -> tuple[ScriptedLessonPage, str, str]:
    """A lesson started at `url` whose greeting was played: its page, its id and the greeting's words."""
    lesson = other_browser.open(url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    return lesson, lesson.debug("lessonId"), greeting_words(lesson)


def the_lesson_goes_on(lesson: ScriptedLessonPage) -> None:
    """The student speaks (the microphone's tone reaches the relay) and ends the turn with Mute: the tutor answers
    it in the transcript, and the answer is played."""
    turns_before = lesson.evaluate(TUTOR_TURNS)
    items_before = len(lesson.debug("durations"))
    frames_before = lesson.debug("framesSent")
    # 50 frames of 20 ms: a second of the tone sent since now, enough to be a turn.
    lesson.wait_debug(f"d.framesSent >= {frames_before} + 50")
    lesson.click_button("Mute microphone")
    lesson.wait_for(f"{TUTOR_TURNS} > {turns_before}", timeout_s=60, what="the tutor's answer in the transcript")
    answer_id = lesson.wait_debug(f"Object.keys(d.durations)[{items_before}]", timeout_s=30)
    lesson.wait_played(answer_id)


def test_a_reload_mid_lesson_resumes_it_with_its_transcript_and_it_goes_on(
    stack: Stack, other_browser: OtherBrowser
) -> None:
    lesson, lesson_id, greeting = greeted(other_browser, stack.url)

    lesson.reload()

    lesson.wait_debug("d.resumes === 1 && d.statuses.length > 0")
    assert lesson.debug("lessonId") == lesson_id
    assert same_greeting(greeting, greeting_words(lesson))
    # The sound needs the student's gesture after a reload.
    lesson.click_button("Continue lesson")
    lesson.wait_for("document.getElementById('resume-audio').hidden", what="Continue lesson hidden")
    the_lesson_goes_on(lesson)
    assert "greeting" not in lesson.debug("statuses")
    assert len(lesson_events(stack, lesson_id, "page_back")) == 1
    assert len(lesson_events(stack, lesson_id, "greeting_requested")) == 1
    assert_no_error(lesson)
    assert lesson.console_errors == []


def test_a_lesson_left_for_another_page_and_back_resumes_and_goes_on(
    stack: Stack, other_browser: OtherBrowser
) -> None:
    # WebKit brings the page back from its back-forward cache, as it was when left, without running its scripts
    # again; Firefox loads it anew.
    lesson, lesson_id, greeting = greeted(other_browser, stack.url)
    lesson.click_button("Mute microphone")

    lesson.go_to(f"{stack.url}/healthz")
    lesson.go_back()

    lesson.wait_debug("d.resumes === 1 && !d.reconnecting && d.socket === 'open'")
    assert lesson.debug("lessonId") == lesson_id
    assert same_greeting(greeting, greeting_words(lesson))
    # The microphone comes back on, as after a reload: the button says so.
    assert lesson.evaluate("document.getElementById('mute').getAttribute('aria-pressed')") == "false"
    lesson.click_button("Continue lesson")
    lesson.wait_for("document.getElementById('resume-audio').hidden", what="Continue lesson hidden")
    the_lesson_goes_on(lesson)
    assert lesson.evaluate("document.getElementById('end').disabled") is False
    assert len(lesson_events(stack, lesson_id, "page_back")) == 1
    assert len(lesson_events(stack, lesson_id, "greeting_requested")) == 1
    assert_no_error(lesson)
    assert lesson.console_errors == []


@pytest.fixture
def proxy(stack: Stack) -> Iterator[CuttableProxy]:
    with run_cuttable_proxy(urlsplit(stack.url).port or 80) as running:
        yield running


def test_the_socket_cut_under_the_page_reconnects_by_itself_and_the_lesson_goes_on(
    stack: Stack, proxy: CuttableProxy, other_browser: OtherBrowser
) -> None:
    lesson, lesson_id, greeting = greeted(other_browser, proxy.url)

    assert proxy.cut() > 0

    lesson.wait_debug("d.resumes === 1 && !d.reconnecting && d.socket === 'open'")
    assert lesson.debug("lessonId") == lesson_id
    assert same_greeting(greeting, greeting_words(lesson))
    assert len(lesson.debug("reconnectDelays")) >= 1
    the_lesson_goes_on(lesson)
    assert len(lesson_events(stack, lesson_id, "page_back")) == 1
    assert len(lesson_events(stack, lesson_id, "greeting_requested")) == 1
    assert_no_error(lesson)
    assert lesson.console_errors == []


# WebDriver classic (WebKit) has no way to take a page's network away; BiDi (Firefox) has.
@pytest.mark.parametrize("other_browser", ["firefox"], indirect=True)
def test_the_network_lost_and_back_the_page_reconnects_at_once_and_the_lesson_goes_on(
    stack: Stack, other_browser: OtherBrowser
) -> None:
    lesson, lesson_id, greeting = greeted(other_browser, stack.url)
    assert isinstance(lesson, FirefoxLessonPage)

    lesson.set_offline(True)
    lesson.wait_for("document.getElementById('status').innerText === 'Reconnecting…'")
    # While the browser says it is offline the page only schedules its attempts: the `online` event tries at once.
    lesson.wait_debug("d.reconnectDelays.length >= 2 && d.socket === 'closed'")
    lesson.set_offline(False)

    lesson.wait_debug("d.resumes === 1 && !d.reconnecting && d.socket === 'open'")
    assert lesson.debug("lessonId") == lesson_id
    assert same_greeting(greeting, greeting_words(lesson))
    the_lesson_goes_on(lesson)
    assert len(lesson_events(stack, lesson_id, "page_back")) == 1
    assert_no_error(lesson)
    assert lesson.console_errors == []


@pytest.fixture(scope="module")
def slow_feedback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack whose tutor takes 3 s to write the feedback, which the relay waits 8 s for. No grace for a page
    that left: what brings a page back to its lesson here is the feedback alone."""
    app_env = {"FEEDBACK_TIMEOUT_SECONDS": "8", "RESUME_GRACE_SECONDS": "0"}
    with run_stack(tmp_path_factory.mktemp("slow-feedback"), "--feedback-delay-ms", "3000", app_env=app_env) as stack:
        yield stack


@pytest.mark.parametrize("away", ["reload", "back"])
def test_a_page_reloaded_or_left_and_back_while_the_feedback_is_written_brings_back_the_feedback_card(
    slow_feedback: Stack, other_browser: OtherBrowser, away: str
) -> None:
    lesson, lesson_id, greeting = greeted(other_browser, slow_feedback.url)
    lesson.click_button("End lesson")
    lesson.wait_debug("d.statuses.includes('feedback')")

    if away == "reload":
        lesson.reload()
    else:
        lesson.go_to(f"{slow_feedback.url}/healthz")
        lesson.go_back()

    summary = lesson.wait_for("document.querySelector('#feedback .feedback-card__summary')?.innerText",
                              what="the feedback card")
    assert "Today we talked about how you are" in summary
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended' && d.resumes === 1")
    assert lesson.debug("lessonId") == lesson_id
    assert lesson.debug("statuses")[-1] == "ended:student_ended"  # as the student asked, not browser_gone
    assert same_greeting(greeting, greeting_words(lesson))
    assert len(lesson.texts("#feedback .feedback-card")) == 1
    # Nothing is left to hear: the page does not offer to start the sound.
    assert lesson.evaluate("document.getElementById('resume-audio').hidden")
    assert_no_error(lesson)
    assert lesson.console_errors == []
