"""The page's audio set-up never hangs and never keeps the microphone.

Chromium is made to fail the way real browsers were seen to: `AudioContext.resume()` that never settles
(Firefox with no output device) and a worklet that does not load. An init script records every track
`getUserMedia` granted, so each test can check that the page stopped all of them (readyState 'ended': the
browser's microphone indicator goes off).
"""

from __future__ import annotations

import pytest
from browser_stack import LessonPage, OpenPage, Stack
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

RECORD_GRANTED_TRACKS = """
(() => {
  window.grantedTracks = [];
  const getUserMedia = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = async function (constraints) {
    const stream = await getUserMedia.call(this, constraints);
    window.grantedTracks.push(...stream.getTracks());
    return stream;
  };
})();
"""

# The output device never starts: resume() stays pending, for the first `times` contexts (-1: always).
OUTPUT_NEVER_STARTS = """
(() => {
  let left = %d;
  const resume = AudioContext.prototype.resume;
  AudioContext.prototype.resume = function () {
    if (left === 0) return resume.call(this);
    left -= 1;
    return new Promise(() => {});
  };
})();
"""

WORKLET_FAILS_TO_LOAD = """
AudioWorklet.prototype.addModule = function () {
  return Promise.reject(new DOMException("the test made the worklet fail", "AbortError"));
};
"""


def granted_tracks_all_ended(lesson: LessonPage) -> None:
    lesson.wait_debug(
        "window.grantedTracks.length > 0 && window.grantedTracks.every((track) => track.readyState === 'ended')"
    )


def test_output_that_never_starts_shows_an_error_with_try_again_and_releases_the_microphone(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, test_config={"audioStartTimeoutMs": 1000},
                       init_scripts=[RECORD_GRANTED_TRACKS, OUTPUT_NEVER_STARTS % 1])
    lesson.start("Ana")

    alert = lesson.page.get_by_role("alert")
    expect(alert).to_contain_text("speakers or headphones did not start", timeout=15_000)
    granted_tracks_all_ended(lesson)
    expect(lesson.page.get_by_role("status")).to_have_text("Ready when you are.")
    expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()

    # The output starts the second time: Try again gives the lesson.
    lesson.page.get_by_role("button", name="Try again").click()
    lesson.wait_greeting_played()
    expect(alert).to_be_hidden()
    assert lesson.console_errors == []


def test_a_worklet_that_fails_to_load_shows_an_error_and_releases_the_microphone(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, init_scripts=[RECORD_GRANTED_TRACKS, WORKLET_FAILS_TO_LOAD])
    lesson.start("Ana")

    expect(lesson.page.get_by_role("alert")).to_contain_text("could not start the lesson audio", timeout=15_000)
    expect(lesson.page.get_by_role("button", name="Try again")).to_be_visible()
    # The microphone was granted after the set-up had already failed: it is stopped all the same.
    granted_tracks_all_ended(lesson)
    assert lesson.console_errors == []


@pytest.mark.parametrize("leave", ["end", "pagehide"])
def test_leaving_a_set_up_that_has_not_finished_releases_the_microphone(
    stack: Stack, open_page: OpenPage, leave: str
) -> None:
    lesson = open_page(stack.url, test_config={"audioStartTimeoutMs": 120_000},
                       init_scripts=[RECORD_GRANTED_TRACKS, OUTPUT_NEVER_STARTS % -1])
    lesson.start("Ana")
    lesson.wait_debug("window.grantedTracks.length > 0")
    expect(lesson.page.get_by_role("status")).to_have_text("Starting your microphone…")

    if leave == "end":
        lesson.page.get_by_role("button", name="End lesson").click()
        expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")
        expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()
    else:
        lesson.page.evaluate("() => window.dispatchEvent(new PageTransitionEvent('pagehide'))")

    granted_tracks_all_ended(lesson)
    assert lesson.console_errors == []
