"""The lesson page in headless Chromium against the app and the Realtime simulator, as processes.

What these prove: microphone audio at 48 kHz and 44.1 kHz reaches the upstream as 24 kHz PCM16 at
the right pitch; the greeting is shown and fully played by the playback worklet; End lesson closes the
page's socket and the relay's lesson; refusals reach the student as a readable error with Try again;
the open page's lesson is kept under the student of this browser's localStorage key.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from browser_stack import (
    SAMPLE_RATE,
    TEACHER_PASSWORD,
    LessonPage,
    OpenPage,
    Stack,
    dominant_hz,
    launch_chromium,
    make_wav,
    run_stack,
    teacher_api,
    wait_for,
    wait_recording,
)
from playwright.sync_api import Playwright, expect

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_microphone_tone_arrives_upstream_at_24khz(stack: Stack, open_page: OpenPage, rate: int) -> None:
    # The AudioContext runs at the WAV's rate, standing in for a device of that native rate, so the
    # capture worklet itself does the 48 → 24 kHz (1:2) or 44.1 → 24 kHz (80:147) conversion.
    lesson = open_page(stack.url, tone_hz=440, wav_rate=rate, context_rate=rate)
    before = stack.recordings()
    lesson.start("Ana")

    samples = wait_recording(stack, before, seconds=2.0)

    assert lesson.debug("contextRate") == rate
    assert lesson.debug("frameBytes") == 960  # 20 ms at 24 kHz
    assert dominant_hz(samples[-SAMPLE_RATE:]) == pytest.approx(440, abs=5)
    assert lesson.console_errors == []


def test_greeting_is_shown_and_played(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana", "B1")

    expect(lesson.page.locator("#transcript .turn--tutor").first).to_contain_text("Ana", timeout=30_000)
    item_id = lesson.wait_greeting_played()

    played, duration_ms = lesson.debug("played")[item_id], lesson.debug("durations")[item_id]
    assert duration_ms > 0
    assert played >= 0.9 * duration_ms * 24
    assert lesson.debug("startLatencyMs")[item_id] >= 0
    assert lesson.console_errors == []


def test_student_speaking_flushes_tutor_audio(stack: Stack, open_page: OpenPage) -> None:
    # The microphone "speaks" 0.8 s in every 3 s: each burst ends a turn, the next one barges in on the
    # tutor's answer, which arrives faster than real time and so is mostly still queued in the page.
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=2.2)
    lesson.start("Ana")

    item_id = lesson.wait_debug("d.interrupted[0]", timeout_s=60)

    # Finished with fewer samples played than received: the queued rest was dropped, not played out.
    finished = lesson.wait_debug(f"d.finished[{item_id!r}] !== undefined && [d.finished[{item_id!r}]]")[0]
    assert finished < lesson.debug("received")[item_id]
    assert lesson.console_errors == []


def test_end_lesson_closes_both_sockets(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    # Lessons of earlier tests on this stack are ending as their students ended them.
    wait_for(lambda: stack.health()["open_lessons"] == 1, timeout=15, what="this lesson to be the only one open")

    lesson.page.get_by_role("button", name="End lesson").click()

    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert lesson.debug("closeCode") == 1000
    # The relay counts a lesson open until both its sockets are closed.
    wait_for(lambda: stack.health()["open_lessons"] == 0, timeout=15, what="the relay to close the lesson")
    expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")
    expect(lesson.page.get_by_role("alert")).to_be_hidden()
    assert lesson.console_errors == []


def test_refused_lesson_shows_error_and_try_again(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    # A manipulated page: a level the relay does not offer.
    lesson.page.evaluate("document.getElementById('level').add(new Option('Z9', 'Z9'))")
    lesson.start("Ana", "Z9")

    alert = lesson.page.get_by_role("alert")
    expect(alert).to_be_visible(timeout=15_000)
    expect(alert.get_by_role("button", name="Try again")).to_be_visible()
    lesson.wait_debug("d.socket === 'closed'")
    assert lesson.debug("closeCode") == 1008
    assert lesson.debug("errors")[0]["code"] == "invalid_request"


def test_upstream_refusal_shows_error(open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory) -> None:
    with run_stack(tmp_path_factory.mktemp("refusing"), "--refuse-handshake", "401") as refusing:
        lesson = open_page(refusing.url)
        lesson.start("Ana")

        alert = lesson.page.get_by_role("alert")
        expect(alert).to_be_visible(timeout=15_000)
        expect(alert.get_by_role("button", name="Try again")).to_be_visible()
        lesson.wait_debug("d.socket === 'closed'")
        assert lesson.debug("errors")[-1]["fatal"] is True


def test_a_server_that_never_comes_back_is_retried_for_the_grace_then_the_page_offers_to_start_again(
    open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("dropping"), app_env={"RESUME_GRACE_SECONDS": "3"}) as dropping:
        lesson = open_page(dropping.url)
        lesson.start("Ana")
        lesson.wait_greeting_played()

        dropping.app.kill()  # no goodbye: the socket just drops

        expect(lesson.page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
        alert = lesson.page.get_by_role("alert")
        expect(alert).to_be_visible(timeout=15_000)
        expect(alert).to_contain_text("connection to your tutor was lost")
        expect(alert.get_by_role("button", name="Try again")).to_be_visible()
        expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()
        assert lesson.debug("socket") == "closed"


def test_the_open_page_lesson_is_kept_for_this_browser_s_student(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    lesson.page.get_by_role("button", name="End lesson").click()
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    key = lesson.page.evaluate("localStorage.getItem('lessonStudentKey')")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    key_hash = hashlib.sha256(key.encode()).hexdigest()

    def lessons_of_this_browser() -> list[tuple[str, str | None]]:
        with contextlib.closing(sqlite3.connect(stack.database)) as db:
            return db.execute("SELECT students.name, lessons.end_reason FROM lessons JOIN students "
                              "ON lessons.student_id = students.id WHERE students.browser_key_hash = ?",
                              (key_hash,)).fetchall()

    # The records are written by the app's writer task, after the lesson: wait for them to land.
    wait_for(lambda: lessons_of_this_browser() == [("Ana", "student_ended")], timeout=15,
             what="the lesson's record under this browser's student")
    assert lesson.console_errors == []


def focused(lesson: LessonPage) -> str:
    """The id of the element with the keyboard's focus, or its tag when it has none (BODY: the focus was lost)."""
    focus: str = lesson.page.evaluate("() => document.activeElement.id || document.activeElement.tagName")
    return focus


def test_the_keyboard_alone_starts_and_ends_a_lesson_and_the_focus_stays_on_the_lesson(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url)
    keyboard = lesson.page.keyboard
    keyboard.press("Tab")
    assert focused(lesson) == "name"
    keyboard.type("Ana")
    keyboard.press("Tab")
    keyboard.press("ArrowDown")  # the level: A1 → A2
    assert lesson.page.get_by_label("Level").input_value() == "A2"
    keyboard.press("Tab")
    assert focused(lesson) == "start"
    keyboard.press("Enter")

    # Start is disabled under the focus: the focus moves to the status line, and Tab goes on to the lesson's buttons.
    lesson.wait_greeting_played()
    assert focused(lesson) == "status"
    keyboard.press("Tab")
    assert focused(lesson) == "mute"
    keyboard.press("Tab")
    assert focused(lesson) == "end"
    keyboard.press("Enter")

    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")
    assert focused(lesson) == "status"
    assert lesson.debug("statuses")[-1] == "ended:student_ended"
    assert lesson.console_errors == []


def test_a_link_withdrawn_after_its_page_opened_is_refused_in_plain_words_without_try_again(
    open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("withdrawn"), app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}) as stack:
        student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "A2"})
        lesson = open_page(student["link"])
        expect(lesson.page.get_by_label("Name")).to_have_value("Ana")
        teacher_api(stack, "DELETE", f"/api/students/{student['id']}")

        lesson.page.get_by_role("button", name="Start lesson").click()

        alert = lesson.page.get_by_role("alert")
        expect(alert).to_contain_text("This lesson link is no longer valid. Ask your teacher for a new one.",
                                      timeout=15_000)
        lesson.wait_debug("d.socket === 'closed'")
        # Starting again with the same link cannot help: the student is not asked to.
        expect(alert.get_by_role("button", name="Try again")).to_be_hidden()
        expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_disabled()
        # It never was a lesson: the status does not say it ended.
        expect(lesson.page.get_by_role("status")).to_have_text("The lesson did not start.")
        assert lesson.debug("errors")[0]["code"] == "invalid_request"
        assert lesson.console_errors == []


def test_a_past_lesson_s_card_is_dated_by_the_student_s_own_calendar(
    playwright: Playwright, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("dated"), app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}) as stack:
        student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "A2"})
        feedback = {"summary": "We talked about breakfast.", "corrections": [], "new_words": [],
                    "next_step": "Say what you ate."}
        # 23:30 UTC on 2 March is 08:30 on 3 March in Tokyo.
        with contextlib.closing(sqlite3.connect(stack.database)) as db, db:
            db.execute("INSERT INTO lessons (id, student_id, level, started_at, model, simulated, feedback) "
                       "VALUES ('lesson-1', ?, 'A2', '2026-03-02 23:30:00.000000', 'm', 1, ?)",
                       (student["id"], json.dumps(feedback)))
        browser = launch_chromium(playwright, make_wav(tmp_path / "mic.wav", rate=48_000, tone_hz=None))
        try:
            in_tokyo = browser.new_context(timezone_id="Asia/Tokyo", locale="en-GB").new_page()
            in_tokyo.goto(student["link"])
            card_date = in_tokyo.get_by_role("region", name="Your last lessons").locator(".feedback-card__date")
            expect(card_date).to_have_text("3 March 2026")
            assert card_date.locator("time").get_attribute("datetime") == "2026-03-02T23:30:00Z"
        finally:
            browser.close()


def test_a_lesson_under_way_ends_in_plain_words_without_try_again_when_its_student_is_deleted(
    open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("removed"), app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}) as stack:
        student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "A2"})
        lesson = open_page(student["link"])
        lesson.page.get_by_role("button", name="Start lesson").click()
        lesson.wait_greeting_played()
        teacher_api(stack, "DELETE", f"/api/students/{student['id']}")

        alert = lesson.page.get_by_role("alert")
        expect(alert).to_contain_text("Your teacher has closed your lessons here, so this lesson has ended.",
                                      timeout=15_000)
        lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
        # Starting again with the same link cannot help: the student is not asked to.
        expect(alert.get_by_role("button", name="Try again")).to_be_hidden()
        # Nor to press Start lesson again, which could only be refused.
        expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_disabled()
        expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")
        assert lesson.debug("errors")[0]["code"] == "student_removed"
        assert lesson.debug("closeCode") == 1000
        assert lesson.console_errors == []


def relative_luminance(css_colour: str) -> float:
    red, green, blue = (int(part) / 255 for part in re.findall(r"\d+", css_colour)[:3])
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (red, green, blue)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    """The WCAG contrast ratio of two computed CSS colours (rgb(r, g, b))."""
    lighter, darker = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def test_the_edges_of_the_fields_and_buttons_stand_out_from_their_card(stack: Stack, open_page: OpenPage) -> None:
    # WCAG 1.4.11: what shows where a field is (its border) has 3:1 against what is around it.
    lesson = open_page(stack.url)
    for control in ("#name", "#level", "#mute"):
        border, around = lesson.page.locator(control).evaluate(
            "(node) => [getComputedStyle(node).borderTopColor,"
            " getComputedStyle(node.closest('.card')).backgroundColor]")
        assert contrast(border, around) >= 3, f"{control}: border {border} on {around}"


# Records what is added to the visible transcript's turns and to the screen readers' announcements, as it happens.
WATCH_TRANSCRIPT = """
window.transcriptWatch = {fragments: 0, announced: []};
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver((changes) => {
    for (const change of changes) {
      if (change.target.closest?.(".turn__text")) window.transcriptWatch.fragments += change.addedNodes.length;
    }
  }).observe(document.getElementById("transcript"), {childList: true, subtree: true});
  new MutationObserver((changes) => {
    for (const change of changes) {
      for (const node of change.addedNodes) window.transcriptWatch.announced.push(node.textContent);
    }
  }).observe(document.getElementById("turn-announcer"), {childList: true});
});
"""


def test_screen_readers_hear_each_finished_turn_once_not_its_streamed_fragments(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, init_scripts=[WATCH_TRANSCRIPT])
    lesson.start("Ana")
    lesson.wait_greeting_played()
    lesson.page.wait_for_function("() => window.transcriptWatch.announced.length > 0", timeout=15_000)

    greeting = lesson.page.locator("#transcript .turn--tutor .turn__text").first.inner_text()
    watch = lesson.page.evaluate("window.transcriptWatch")
    # The greeting streamed in as several fragments, and was announced once, whole, with who said it.
    assert watch["fragments"] > 1
    assert watch["announced"] == [f"Tutor: {greeting}"]
    # The visible transcript is not a live region (it would read every fragment); the announcer is one, unseen.
    transcript = lesson.page.locator("#transcript")
    assert transcript.get_attribute("aria-live") is None
    assert transcript.get_attribute("role") is None
    announcer = lesson.page.locator("#turn-announcer")
    assert (announcer.get_attribute("role"), announcer.get_attribute("aria-live")) == ("log", "polite")
    box = announcer.bounding_box()
    assert box is not None
    assert max(box["width"], box["height"]) <= 1
    # What a sighted student sees is unchanged: the turn, labelled, in the conversation.
    expect(lesson.page.locator("#transcript .turn--tutor").first).to_have_text(f"Tutor{greeting}")
    assert lesson.console_errors == []


def test_the_mute_button_keeps_its_name_and_says_whether_it_is_pressed(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    microphone_on = "() => lesson.stream.getAudioTracks().every((track) => track.enabled)"

    mute = lesson.page.get_by_role("button", name="Mute microphone", exact=True)
    expect(mute).to_have_attribute("aria-pressed", "false")
    mute.click()
    # One name, its state in aria-pressed: a screen reader hears "Mute microphone, pressed".
    expect(lesson.page.get_by_role("button", name="Mute microphone", exact=True, pressed=True)).to_be_visible()
    assert lesson.page.evaluate(microphone_on) is False
    mute.click()
    expect(lesson.page.get_by_role("button", name="Mute microphone", exact=True, pressed=False)).to_be_visible()
    assert lesson.page.evaluate(microphone_on) is True
    assert lesson.console_errors == []


def test_a_link_s_level_is_read_only_text_the_keyboard_reaches_and_the_lesson_keeps(
    open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with run_stack(tmp_path_factory.mktemp("link-level"), app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}) as stack:
        student = teacher_api(stack, "POST", "/api/students", {"name": "Ana", "level": "B1"})
        lesson = open_page(student["link"])
        keyboard = lesson.page.keyboard

        keyboard.press("Tab")
        assert focused(lesson) == "name"
        keyboard.press("Tab")
        # A screen reader hears "Level, B1, read only"; the keyboard can neither skip it nor change it.
        assert focused(lesson) == "level"
        level = lesson.page.get_by_label("Level")
        expect(level).to_have_value("B1")
        expect(level).not_to_be_editable()
        # Side by side on a wide screen, the text field keeps to its column instead of running under Start.
        level_box, start_box = level.bounding_box(), lesson.page.locator("#start").bounding_box()
        assert level_box is not None
        assert start_box is not None
        viewport = lesson.page.viewport_size
        assert viewport is not None
        assert viewport["width"] >= 640
        assert level_box["x"] + level_box["width"] <= start_box["x"]
        keyboard.type("C2")
        expect(level).to_have_value("B1")
        keyboard.press("Tab")
        assert focused(lesson) == "start"
        keyboard.press("Enter")

        lesson.wait_greeting_played()
        expect(level).to_have_value("B1")

        def levels_of_the_student() -> list[tuple[str]]:
            with contextlib.closing(sqlite3.connect(stack.database)) as db:
                return db.execute("SELECT level FROM lessons WHERE student_id = ?", (student["id"],)).fetchall()

        wait_for(lambda: levels_of_the_student() == [("B1",)], timeout=15, what="the lesson's record at B1")
        assert lesson.console_errors == []


def test_the_turns_are_marked_with_the_lesson_s_language_and_the_page_s_own_words_are_not(
    open_page: OpenPage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spanish = {"TARGET_LANGUAGE": "Spanish", "TARGET_LANGUAGE_CODE": "es"}
    with run_stack(tmp_path_factory.mktemp("spanish"), app_env=spanish) as stack:
        lesson = open_page(stack.url)
        lesson.start("Ana")
        lesson.wait_greeting_played()
        lesson.page.wait_for_function("() => document.querySelector('#turn-announcer span') !== null",
                                      timeout=15_000)

        # A screen reader reads the turns with Spanish pronunciation, and "Tutor" as the page's English.
        turn = lesson.page.locator("#transcript .turn--tutor").first
        expect(turn.locator(".turn__text")).to_have_attribute("lang", "es")
        assert turn.locator(".turn__who").evaluate("(node) => node.closest('[lang]').lang") == "en"
        announced = lesson.page.locator("#turn-announcer p").first
        expect(announced.locator("span")).to_have_attribute("lang", "es")
        assert announced.evaluate("(node) => node.closest('[lang]').lang") == "en"
        assert lesson.console_errors == []


def test_a_tutor_answer_cut_by_end_is_marked_cut_off(stack: Stack, open_page: OpenPage) -> None:
    # A tone is the student's turn, which the tutor answers; End is pressed as the answer starts, seconds before
    # the next tone could barge in.
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=4)
    lesson.start("Ana")
    answer = lesson.wait_debug("Object.keys(d.received).length > 1 && Object.keys(d.received)[1]", timeout_s=60)
    lesson.page.get_by_role("button", name="End lesson").click()

    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert answer in lesson.debug("interrupted")
    turns = lesson.page.locator("#transcript .turn--tutor")
    expect(turns).to_have_count(2)
    expect(turns.last.locator(".turn__note")).to_have_text("Cut off")
    # Only what the relay cut is marked: the greeting too, when a slow machine let the tone start on its tail.
    expect(turns.locator(".turn__note")).to_have_count(len(set(lesson.debug("interrupted"))))
    assert lesson.console_errors == []


# The first request for the microphone is refused, the next ones get the fake device.
REFUSE_MICROPHONE_ONCE = """
const getUserMedia = MediaDevices.prototype.getUserMedia;
let refused = false;
MediaDevices.prototype.getUserMedia = function (constraints) {
  if (refused) return getUserMedia.call(this, constraints);
  refused = true;
  return Promise.reject(new DOMException("the test refused", "NotAllowedError"));
};
"""


def test_try_again_by_keyboard_keeps_the_focus_on_the_lesson(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url, init_scripts=[REFUSE_MICROPHONE_ONCE])
    lesson.start("Ana")
    try_again = lesson.page.get_by_role("alert").get_by_role("button", name="Try again")
    expect(try_again).to_be_visible(timeout=15_000)
    try_again.focus()
    lesson.page.keyboard.press("Enter")

    # The error and its button go as the lesson starts again: the focus moves to the status line, not to the
    # top of the page, and Tab goes on to the lesson's buttons.
    lesson.wait_greeting_played()
    assert focused(lesson) == "status"
    lesson.page.keyboard.press("Tab")
    assert focused(lesson) == "mute"
    assert lesson.console_errors == []


def test_a_burst_of_microphone_sound_is_sent_no_faster_than_the_relay_takes_it(stack: Stack,
                                                                                open_page: OpenPage) -> None:
    # A browser restarting its sound may hand the page a backlog at once (WebKit, after a resume): 2 s of frames
    # here, in one go, once the relay takes the microphone.
    lesson = open_page(stack.url)
    before = stack.recordings()
    lesson.start("Ana")
    lesson.wait_greeting_played()
    wait_recording(stack, before, seconds=0.5)  # the microphone is open: frames reach the upstream
    lesson.page.evaluate("""() => {
        for (let frame = 0; frame < 100; frame += 1) {
            lesson.onCaptureMessage({type: "frame", buffer: new ArrayBuffer(960), dropped: 0});
        }
    }""")
    lesson.page.get_by_role("button", name="End lesson").click()
    # The relay answers the page's frames in order: an `audio_too_fast` for the burst comes before the end.
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert [error["code"] for error in lesson.debug("errors")] == []
    assert lesson.debug("paceDropped") >= 50  # at most half a second of the 2 s went ahead of real time
    expect(lesson.page.get_by_role("alert")).to_be_hidden()
