"""The page brings its lesson back after the app process running it is killed (SIGKILL: nothing drained, nothing
handed over) and a replacement starts on the same port and the same store, as Railway restarts a crashed
instance; in headless Chromium against the app and the Realtime simulator as processes.

The replacement may take the lesson over only once the killed instance has been silent for
INSTANCE_LOST_AFTER_SECONDS; until then the page's resumes fail (nothing listens) or are answered "not yet", and
the page keeps retrying within its resume grace. The microphone is a looping WAV (a tone, then a pause): each
tone is a student turn the simulated tutor answers, so "the lesson goes on" is a new tutor turn after the
take-over.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from browser_stack import LessonPage, OpenPage, free_port, run_app, run_simulator
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

# The page's retry pacing (app/static/lesson.js): 0.5 s, doubling, at most 4 s.
RECONNECT_FIRST_MS = 500
RECONNECT_LONGEST_MS = 4000
# The killed instance marks itself alive every third of this, so it counts as lost 10 to 15 s after the kill: after
# the page's fourth attempt (7.5 s after the kill), so the page schedules a fifth pause, the first the cap holds;
# a replacement that starts within those seconds answers the page "not yet" meanwhile.
INSTANCE_LOST_AFTER_S = 15
RESUME_GRACE_S = 30


def app_log_events(log: Path, event: str) -> list[dict[str, Any]]:
    """The app's JSON log lines of `event`."""
    lines = (json.loads(line) for line in log.read_text(errors="replace").splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == event]


def tutor_turns(lesson: LessonPage) -> list[str]:
    texts: list[str] = lesson.page.locator("#transcript .turn--tutor .turn__text").all_inner_texts()
    return texts


def test_a_lesson_whose_instance_is_killed_comes_back_on_the_replacement_and_goes_on(
    open_page: OpenPage, tmp_path: Path
) -> None:
    port, database = free_port(), tmp_path / "lessons.db"
    app_env = {"INSTANCE_LOST_AFTER_SECONDS": str(INSTANCE_LOST_AFTER_S), "RESUME_GRACE_SECONDS": str(RESUME_GRACE_S),
               "LOG_FORMAT": "json"}
    killed_log, replacement_log = tmp_path / "app-killed.log", tmp_path / "app-replacement.log"
    with run_simulator(tmp_path) as simulator, contextlib.ExitStack() as apps:
        killed = apps.enter_context(run_app(simulator, port=port, database=database, log=killed_log, app_env=app_env))
        lesson = open_page(f"http://127.0.0.1:{port}", tone_hz=440, tone_s=0.8, pause_s=2.2)
        lesson.start("Ana")
        lesson.wait_greeting_played()
        before = lesson.wait_student_spoke()
        lesson_id = lesson.debug("lessonId")
        statuses_before = len(lesson.debug("statuses"))

        killed.kill()  # SIGKILL: no drain, no hand-over; its lesson stays open in the store
        killed.wait()
        expect(lesson.page.get_by_role("status")).to_have_text("Reconnecting…", timeout=5_000)
        apps.enter_context(run_app(simulator, port=port, database=database, log=replacement_log, app_env=app_env))

        # Back, or given up (the lesson ended on the page): whichever comes first, then told apart.
        lesson.wait_debug("d.resumes > 0 || d.state === 'ended'", timeout_s=RESUME_GRACE_S + 15)
        assert lesson.debug("resumes") == 1, f"the page did not get its lesson back: {lesson.debug('errors')}"
        assert lesson.debug("lessonId") == lesson_id
        lesson.wait_debug(f"d.statuses.slice({statuses_before}).includes('listening')")
        turns_back = len(tutor_turns(lesson))
        lesson.page.wait_for_function(
            f"() => document.querySelectorAll('#transcript .turn--tutor').length > {turns_back}", timeout=60_000)

        after = lesson.page.locator("#transcript .turn").all_inner_texts()
        delays = lesson.debug("reconnectDelays")
        errors = lesson.debug("errors")
        statuses_after = lesson.debug("statuses")[statuses_before:]
        tutor_after = tutor_turns(lesson)
        [taken_over] = app_log_events(replacement_log, "lesson_taken_over")
        greetings_requested_there = app_log_events(replacement_log, "greeting_requested")

    # The page's transcript is kept: every turn is still there (one the kill cut short with the words it had).
    assert len(after) > len(before)
    assert all(now.startswith(then) for then, now in zip(before, after, strict=False))
    # No second greeting: the replacement asked for none, the page was told of none, the tutor said one.
    assert (taken_over["from_lost_instance"], taken_over["lesson_id"]) == (True, lesson_id)
    assert greetings_requested_there == []
    assert "greeting" not in statuses_after
    assert tutor_after.count(tutor_after[0]) == 1
    # Only "not yet" was ever said to the page, and the page never showed it.
    assert {(error["code"], error["fatal"]) for error in errors} <= {("resume_not_yet", False)}
    assert lesson.page.get_by_role("alert").is_hidden()
    # The retries the page scheduled: 0.5 s, doubling, then at the cap; never a longer pause. The fifth is the
    # first the cap holds (8 s uncapped).
    assert len(delays) >= 5
    assert delays == [min(RECONNECT_FIRST_MS * 2**attempt, RECONNECT_LONGEST_MS) for attempt in range(len(delays))]
    assert max(delays) <= RECONNECT_LONGEST_MS
    # Chromium reports each attempt that found nothing listening (between the kill and the replacement's start).
    assert [error for error in lesson.console_errors if "net::ERR_CONNECTION_REFUSED" not in error] == []
