"""The lesson page in headless Firefox (Debian's firefox-esr, over WebDriver BiDi) and WebKit (Debian's
WebKitGTK, over WebKitWebDriver), against the app and the Realtime simulator as processes; every test runs in
each of them (the `other_browser` fixture).

What these prove in both: the student's whole happy path — the form, Start, the greeting shown with the
student's name and played by the playback worklet up to its last 40 ms (where the relay opens the
microphone, and the fake microphone's steady tone barges in at once), its playback reports counted by the relay (the
microphone opens because the greeting was played), microphone frames reaching the upstream, End giving the
feedback card; the fake microphone's steady tone reaching the upstream as 24 kHz PCM16 at its pitch, and a
turn of the student's (the tone, then Mute) transcribed on the page and answered by a tutor turn that is
played; no console errors and no CSP violations throughout.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from browser_stack import SAMPLE_RATE, Stack, spectrum_db, wait_for, wait_recording
from scripted_page import GREETING_HEARD_MS, OtherBrowser, ScriptedLessonPage

pytestmark = pytest.mark.browser


def microphone_open(stack: Stack, lesson_id: str) -> dict[str, Any] | None:
    """The app's `microphone_open` log line of this lesson, once written."""
    for line in stack.logs[-1].read_text(errors="replace").splitlines():
        if line.startswith("{"):
            fields = json.loads(line)
            if fields.get("event") == "microphone_open" and fields.get("lesson_id") == lesson_id:
                return fields
    return None


def steadiest_pitch_hz(samples: np.ndarray) -> float:
    """The strongest frequency under 1 kHz (WebKit's microphone beeps above it, now and then)."""
    freqs, levels = spectrum_db(samples)
    below = freqs < 1000
    return float(freqs[below][int(np.argmax(levels[below]))])


def assert_clean(lesson: ScriptedLessonPage) -> None:
    assert lesson.console_errors == []
    assert lesson.csp_violations() == []


def test_greeting_played_and_reported_microphone_heard_and_end_gives_the_feedback_card(
    stack: Stack, other_browser: OtherBrowser
) -> None:
    lesson = other_browser.open(stack.url)
    before = stack.recordings()
    lesson.start("Ana", "B1")

    lesson.wait_for("document.querySelector('#transcript .turn--tutor')?.innerText.includes('Ana')",
                    what="the greeting, naming the student, in the transcript")
    item_id = lesson.wait_greeting_played()
    played, duration_ms = lesson.debug("played")[item_id], lesson.debug("durations")[item_id]
    assert duration_ms > GREETING_HEARD_MS
    assert played >= (duration_ms - GREETING_HEARD_MS) * 24
    # The relay opened the microphone on the page's playback reports, not on a timer.
    opened = wait_for(lambda: microphone_open(stack, lesson.debug("lessonId")), timeout=15,
                      what="the app's microphone_open line of this lesson")
    assert opened["because"] == "played"
    # The page's microphone frames reach the upstream once the greeting was heard.
    wait_recording(stack, before, seconds=1.0)
    assert lesson.debug("frameBytes") == 960  # 20 ms at 24 kHz

    lesson.click_button("End lesson")

    summary = lesson.wait_for("document.querySelector('#feedback .feedback-card .feedback-card__summary')?.innerText",
                              what="the feedback card")
    assert "Today we talked about how you are" in summary
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert lesson.debug("closeCode") == 1000
    assert_clean(lesson)


def test_the_microphone_reaches_the_tutor_at_24khz_and_a_turn_ended_with_mute_is_answered(
    stack: Stack, other_browser: OtherBrowser
) -> None:
    # The fake microphone plays a steady tone: the student speaks from the moment the microphone opens until
    # they press Mute, and the silence that follows ends their turn.
    lesson = other_browser.open(stack.url)
    before = stack.recordings()
    lesson.start("Ana")
    lesson.wait_greeting_played()

    samples = wait_recording(stack, before, seconds=1.5)
    assert steadiest_pitch_hz(samples[-SAMPLE_RATE:]) == pytest.approx(other_browser.microphone_hz, abs=5)

    lesson.click_button("Mute microphone")

    student = lesson.wait_for("document.querySelector('#transcript .turn--student')?.innerText", timeout_s=30,
                              what="the student's turn in the transcript")
    assert "I said something for" in student
    answer_id = lesson.wait_debug("Object.keys(d.durations)[1]", timeout_s=30)  # the tutor's second item
    lesson.wait_played(answer_id)
    assert len(lesson.texts("#transcript .turn--tutor")) == 2
    assert_clean(lesson)
