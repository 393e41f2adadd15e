"""The lesson page survives the browser taking its audio away mid-lesson, in headless Chromium against the app
and the Realtime simulator as processes.

The tests reach the page's objects through its `lesson` global: they suspend `lesson.context` (as iOS does for
a phone call, or Android Chrome in the background), end the track of `lesson.stream` (as another app
taking the microphone does), and send that track the `mute` and `unmute` events iOS sends it around a phone
call (headless Chromium cannot mute a track itself; a track is an EventTarget). Init scripts play the browsers
that refuse the page's own resume(): Safari, which wants a gesture after an interruption, and Chrome on
Android, which keeps a background tab's sound off. Chromium itself lets a page resume its own context at any
time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from browser_stack import SAMPLE_RATE, LessonPage, OpenPage, Stack, dominant_hz, wait_for, wait_recording
from playwright.sync_api import expect

pytestmark = pytest.mark.browser

# Counts what the page builds (AudioContexts, WebSockets), and makes resume() of a context the page suspended
# wait for a gesture as Safari does after an interruption: called outside a click or key press, it never
# settles and the context stays suspended. `window.event` tells a handler's gesture apart; the user activation
# alone does not, as every page.evaluate grants one.
SAFARI_AFTER_AN_INTERRUPTION = """
(() => {
  window.audioContextsCreated = 0;
  window.socketsOpened = 0;
  window.resumesWithoutGesture = 0;
  const NativeAudioContext = window.AudioContext;
  window.AudioContext = class extends NativeAudioContext {
    constructor(...args) {
      super(...args);
      window.audioContextsCreated += 1;
    }
  };
  const NativeWebSocket = window.WebSocket;
  window.WebSocket = class extends NativeWebSocket {
    constructor(...args) {
      super(...args);
      window.socketsOpened += 1;
    }
  };
  let interrupted = false;
  const suspend = NativeAudioContext.prototype.suspend;
  const resume = NativeAudioContext.prototype.resume;
  NativeAudioContext.prototype.suspend = function () {
    interrupted = true;
    return suspend.call(this);
  };
  NativeAudioContext.prototype.resume = function () {
    const gesture = window.event?.isTrusted && ["click", "keydown", "keyup"].includes(window.event.type)
      && navigator.userActivation.isActive;
    if (interrupted && !gesture) {
      window.resumesWithoutGesture += 1;
      return new Promise(() => {});
    }
    interrupted = false;
    return resume.call(this);
  };
})();
"""

# The microphone is refused while window.refuseMicrophone is true (the student said no to the browser's prompt).
MICROPHONE_REFUSED_ON_DEMAND = """
(() => {
  window.refuseMicrophone = false;
  const getUserMedia = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = function (constraints) {
    if (window.refuseMicrophone) return Promise.reject(new DOMException("the test refused", "NotAllowedError"));
    return getUserMedia.call(this, constraints);
  };
})();
"""

# Asked for the microphone again, the browser answers only when the test calls window.answerMicrophone("grant")
# or ("refuse"); every track it grants is in window.grantedTracks.
MICROPHONE_ANSWERED_ON_DEMAND = """
(() => {
  window.grantedTracks = [];
  let asked = 0;
  const getUserMedia = MediaDevices.prototype.getUserMedia;
  MediaDevices.prototype.getUserMedia = function (constraints) {
    asked += 1;
    if (asked === 1) {
      return getUserMedia.call(this, constraints).then((stream) => {
        window.grantedTracks.push(...stream.getTracks());
        return stream;
      });
    }
    return new Promise((resolve, reject) => {
      window.answerMicrophone = (answer) => {
        if (answer === "refuse") {
          reject(new DOMException("the test refused", "NotAllowedError"));
          return;
        }
        getUserMedia.call(this, constraints).then((stream) => {
          window.grantedTracks.push(...stream.getTracks());
          resolve(stream);
        });
      };
    });
  };
})();
"""

# A page in the background as the test says (window.pageHidden), with resume() refused meanwhile, as Chrome on
# Android suspends a background tab's audio: resume() called while hidden never settles.
BACKGROUND_TAB = """
(() => {
  window.pageHidden = false;
  Object.defineProperty(document, "visibilityState", { get: () => (window.pageHidden ? "hidden" : "visible") });
  Object.defineProperty(document, "hidden", { get: () => window.pageHidden });
  const resume = AudioContext.prototype.resume;
  AudioContext.prototype.resume = function () {
    return window.pageHidden ? new Promise(() => {}) : resume.call(this);
  };
})();
"""

# Half a second of 20 ms microphone frames.
HALF_A_SECOND_OF_FRAMES = 25


def wait_frames_flow(lesson: LessonPage) -> None:
    """Once half a second more of microphone frames has been sent than now."""
    sent = lesson.debug("framesSent")
    lesson.wait_debug(f"d.framesSent >= {sent + HALF_A_SECOND_OF_FRAMES}")


def wait_tutor_heard_again(lesson: LessonPage, heard_before: list[str]) -> None:
    """Once the playback worklet has played (and reported) some of a tutor item that had not begun before."""
    lesson.wait_debug(f"Object.keys(d.played).some((id) => !{heard_before!r}.includes(id) && d.played[id] > 0)",
                      timeout_s=60)


def lesson_with_turns(stack: Stack, open_page: OpenPage,
                      init_scripts: tuple[str, ...] = ()) -> tuple[LessonPage, list[str]]:
    """A lesson past its greeting whose student says a 0.8 s tone every 3 s, each a turn the tutor answers: the
    page, and the tutor items it has played so far."""
    lesson = open_page(stack.url, tone_hz=440, tone_s=0.8, pause_s=2.2, init_scripts=init_scripts)
    lesson.start("Ana")
    lesson.wait_greeting_played()
    return lesson, list(lesson.debug("played"))


def test_a_context_suspended_mid_lesson_is_resumed_by_the_page_and_the_lesson_goes_on(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson, heard_before = lesson_with_turns(stack, open_page)

    lesson.page.evaluate("() => lesson.context.suspend()")

    lesson.wait_debug("d.audioInterruptions === 1")
    lesson.page.wait_for_function("() => lesson.context.state === 'running'")
    wait_frames_flow(lesson)
    wait_tutor_heard_again(lesson, heard_before)
    expect(lesson.page.get_by_role("button", name="Continue lesson")).to_be_hidden()
    assert lesson.console_errors == []


def test_a_context_suspended_in_the_background_is_resumed_when_the_page_is_visible_again(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson, heard_before = lesson_with_turns(stack, open_page, init_scripts=(BACKGROUND_TAB,))
    set_hidden = "(hidden) => { window.pageHidden = hidden; document.dispatchEvent(new Event('visibilitychange')); }"

    lesson.page.evaluate(set_hidden, True)
    lesson.page.evaluate("() => lesson.context.suspend()")
    # Its resume() refused in the background, the page offers the button for when the student is back.
    expect(lesson.page.get_by_role("button", name="Continue lesson")).to_be_visible()
    assert lesson.page.evaluate("lesson.context.state") == "suspended"

    lesson.page.evaluate(set_hidden, False)

    lesson.page.wait_for_function("() => lesson.context.state === 'running'")
    expect(lesson.page.get_by_role("button", name="Continue lesson")).to_be_hidden()
    wait_frames_flow(lesson)
    wait_tutor_heard_again(lesson, heard_before)
    assert lesson.debug("audioInterruptions") == 1
    assert lesson.console_errors == []


def test_a_context_that_needs_a_gesture_is_resumed_by_continue_lesson_with_the_same_context_and_socket(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson, heard_before = lesson_with_turns(stack, open_page, init_scripts=(SAFARI_AFTER_AN_INTERRUPTION,))
    lesson_id = lesson.debug("lessonId")

    lesson.page.evaluate("() => lesson.context.suspend()")

    paused = lesson.page.get_by_role("alert").filter(has_text="The sound was paused")
    expect(paused).to_be_visible()
    continue_button = paused.get_by_role("button", name="Continue lesson")
    expect(continue_button).to_be_focused()
    # The page did try on its own: the context waits for the student.
    assert lesson.page.evaluate("window.resumesWithoutGesture") >= 1
    assert lesson.page.evaluate("lesson.context.state") == "suspended"

    lesson.page.keyboard.press("Enter")  # the focused button, from the keyboard

    lesson.page.wait_for_function("() => lesson.context.state === 'running'")
    expect(paused).to_be_hidden()
    # The button went from under the focus: the focus is on the status line, not at the top of the page.
    assert lesson.page.evaluate("() => document.activeElement.id") == "status"
    wait_frames_flow(lesson)
    wait_tutor_heard_again(lesson, heard_before)
    assert lesson.page.evaluate("[window.audioContextsCreated, window.socketsOpened]") == [1, 1]
    assert lesson.debug("lessonId") == lesson_id
    assert lesson.debug("resumes") == 0
    assert lesson.debug("reconnectDelays") == []
    assert lesson.debug("audioInterruptions") == 1
    assert lesson.console_errors == []


def recorded_second(path: Path, start_byte: int) -> np.ndarray:
    """The second of microphone audio the simulator recorded from `start_byte` on, once it is there."""
    end_byte = start_byte + SAMPLE_RATE * 2
    wait_for(lambda: path.stat().st_size >= end_byte, timeout=30, what="a second more of recorded microphone audio")
    data = path.read_bytes()[start_byte:end_byte]
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def rms_dbfs(samples: np.ndarray) -> float:
    return float(20 * np.log10(max(np.sqrt(np.mean(samples**2)), 1e-3) / 32768))


def test_a_microphone_that_ends_is_asked_for_again_and_its_audio_reaches_the_tutor_again(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, tone_hz=440, init_scripts=[MICROPHONE_REFUSED_ON_DEMAND])
    before = stack.recordings()
    lesson.start("Ana")
    wait_recording(stack, before, seconds=1.0)
    (recording,) = stack.recordings() - before

    # Another app takes the microphone: the track stops and says so.
    lesson.page.evaluate("""() => {
        const track = lesson.stream.getAudioTracks()[0];
        track.stop();
        track.dispatchEvent(new Event("ended"));
    }""")

    stopped = lesson.page.get_by_role("alert").filter(has_text="Your microphone stopped")
    expect(stopped).to_be_visible()
    restart = stopped.get_by_role("button", name="Turn the microphone back on")
    expect(restart).to_be_focused()
    # The ended track gives silence (its frames still flow): the tone below can only come from a new stream.
    ended_audio = recorded_second(recording, recording.stat().st_size)
    assert rms_dbfs(ended_audio[-SAMPLE_RATE // 4:]) < -90

    # Asked again, the browser refuses: the page says so and keeps the button.
    lesson.page.evaluate("window.refuseMicrophone = true")
    restart.click()
    refused = lesson.page.get_by_role("alert").filter(has_text="The page may not use your microphone")
    expect(refused).to_be_visible()
    expect(refused.get_by_role("button", name="Turn the microphone back on")).to_be_focused()
    assert lesson.debug("microphoneRestarts") == 0

    lesson.page.evaluate("window.refuseMicrophone = false")
    refused.get_by_role("button", name="Turn the microphone back on").click()

    lesson.wait_debug("d.microphoneRestarts === 1")
    expect(lesson.page.get_by_role("button", name="Turn the microphone back on")).to_be_hidden()
    assert lesson.page.evaluate("() => document.activeElement.id") == "status"
    wait_frames_flow(lesson)
    last_half_second = recorded_second(recording, recording.stat().st_size)[-SAMPLE_RATE // 2:]
    assert dominant_hz(last_half_second) == pytest.approx(440, abs=5)
    # The tone (-6 dBFS as sent, about -20 after Chromium's capture processing), far above the silence of a
    # stopped track (< -90): the margin absorbs where the new stream's first frames fall in the half second.
    assert rms_dbfs(last_half_second) > -40
    assert lesson.page.evaluate("lesson.stream.getAudioTracks()[0].readyState") == "live"
    assert lesson.console_errors == []


@pytest.mark.parametrize("answer", ["grant", "refuse"])
def test_a_microphone_answered_after_the_lesson_ended_is_released_and_nothing_is_shown(
    stack: Stack, open_page: OpenPage, answer: str
) -> None:
    lesson = open_page(stack.url, init_scripts=[MICROPHONE_ANSWERED_ON_DEMAND])
    lesson.start("Ana")
    lesson.wait_debug("d.framesSent > 0")
    lesson.page.evaluate("""() => {
        const track = lesson.stream.getAudioTracks()[0];
        track.stop();
        track.dispatchEvent(new Event("ended"));
    }""")
    lesson.page.get_by_role("button", name="Turn the microphone back on").click()
    lesson.page.wait_for_function("() => typeof window.answerMicrophone === 'function'")
    lesson.page.get_by_role("button", name="End lesson").click()
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")

    lesson.page.evaluate("(answer) => window.answerMicrophone(answer)", answer)

    if answer == "grant":
        # Both microphones are off: the one that ended and the one granted too late.
        lesson.wait_debug("window.grantedTracks.length === 2"
                          " && window.grantedTracks.every((track) => track.readyState === 'ended')")
    expect(lesson.page.get_by_role("alert")).to_be_hidden()
    assert lesson.debug("microphoneRestarts") == 0
    assert lesson.console_errors == []


MICROPHONE_PAUSED_WORDS = "Your microphone is paused by your device (a call?). The lesson continues when it is back."
TELL_THE_TRACK = "(type) => lesson.stream.getAudioTracks()[0].dispatchEvent(new Event(type))"


def test_a_microphone_muted_by_the_device_is_said_to_be_paused_until_it_is_unmuted_and_the_lesson_goes_on(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, tone_hz=440)
    before = stack.recordings()
    lesson.start("Ana")
    wait_recording(stack, before, seconds=1.0)
    (recording,) = stack.recordings() - before
    lesson_id = lesson.debug("lessonId")

    lesson.page.evaluate(TELL_THE_TRACK, "mute")  # a call comes in

    paused = lesson.page.get_by_role("status").filter(has_text=MICROPHONE_PAUSED_WORDS)
    expect(paused).to_be_visible()
    expect(paused.get_by_role("button")).to_have_count(0)  # the device gives it back on its own
    expect(lesson.page.get_by_role("alert")).to_be_hidden()
    assert lesson.debug("microphoneMutes") == 1

    lesson.page.evaluate(TELL_THE_TRACK, "unmute")  # the call is over

    expect(lesson.page.locator("#microphone-paused")).to_be_hidden()
    assert lesson.debug("microphoneUnmutes") == 1
    wait_frames_flow(lesson)
    # The microphone's tone reaches the relay after the unmute, not silence (a muted track's is below -90 dBFS).
    after_unmute = recorded_second(recording, recording.stat().st_size)[-SAMPLE_RATE // 2:]
    assert dominant_hz(after_unmute) == pytest.approx(440, abs=5)
    assert rms_dbfs(after_unmute) > -60
    assert (lesson.debug("lessonId"), lesson.debug("socket")) == (lesson_id, "open")
    assert (lesson.debug("resumes"), lesson.debug("reconnectDelays")) == (0, [])
    assert lesson.console_errors == []


@pytest.mark.parametrize("then", ["the track ends", "the lesson ends"])
def test_a_muted_microphone_is_no_longer_said_to_be_paused_once_its_track_or_lesson_ends(
    stack: Stack, open_page: OpenPage, then: str
) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana")
    lesson.wait_debug("d.framesSent > 0")
    lesson.page.evaluate(TELL_THE_TRACK, "mute")
    expect(lesson.page.get_by_role("status").filter(has_text=MICROPHONE_PAUSED_WORDS)).to_be_visible()

    if then == "the track ends":
        lesson.page.evaluate("""() => {
            const track = lesson.stream.getAudioTracks()[0];
            track.stop();
            track.dispatchEvent(new Event("ended"));
        }""")
        expect(lesson.page.get_by_role("alert").filter(has_text="Your microphone stopped")).to_be_visible()
    else:
        lesson.page.get_by_role("button", name="End lesson").click()
        lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")

    expect(lesson.page.locator("#microphone-paused")).to_be_hidden()
    assert lesson.debug("microphoneUnmutes") == 0
    assert lesson.console_errors == []


# Every track says it is muted while window.tracksMuted is true: a device already on a call.
TRACKS_MUTED_ON_DEMAND = """
(() => {
  window.tracksMuted = false;
  Object.defineProperty(MediaStreamTrack.prototype, "muted", { get: () => window.tracksMuted });
})();
"""


def test_a_microphone_already_muted_when_the_lesson_starts_is_said_to_be_paused_until_it_is_unmuted(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson = open_page(stack.url, init_scripts=[TRACKS_MUTED_ON_DEMAND])
    lesson.page.evaluate("window.tracksMuted = true")
    lesson.start("Ana")

    expect(lesson.page.get_by_role("status").filter(has_text=MICROPHONE_PAUSED_WORDS)).to_be_visible()
    assert lesson.debug("microphoneMutes") == 1

    lesson.page.evaluate("window.tracksMuted = false")
    lesson.page.evaluate(TELL_THE_TRACK, "unmute")

    expect(lesson.page.locator("#microphone-paused")).to_be_hidden()
    assert lesson.debug("microphoneUnmutes") == 1
    assert lesson.console_errors == []
