"""PageInput: what the lesson accepts from its page, the part of `LessonSession` that says so.

A base class of `LessonSession` (app/session.py), split out by concern like `ResumableLesson`; it does no I/O
and reads no clock. It keeps the page's own counters (microphone pace, joined frames, throttled warnings) and
works the machine's state through what `LessonSession` provides, declared below.

- An audio frame is PCM16 (an even length) of 1 to `max_frame_bytes`; anything else is refused with an `error`
  frame and the lesson goes on.
- Microphone audio is discarded until the greeting has been heard; after it, it is relayed at no more than
  about real time (`app/pacing.py`), and frames smaller than 10 ms are joined before they go upstream.
- A JSON message is one of the allowlisted `app/messages.py` messages, or an `error` frame goes back.
- A flood of refusals becomes one log line per interval with the count held back; the counts still held back
  when the lesson ends are logged then.
- A page that sends more than `MAX_PAGE_MESSAGES_PER_S` messages (frames and JSON) in a second is not a lesson
  page: the lesson ends as `page_flooded`, with a fatal `error` frame and close 1008.

`handle_browser_audio` runs for every 20 ms frame of every lesson: it adds no allocation, and one call (the
message count) to what it must do.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import assert_never

from app import messages, protocol
from app.actions import NO_ACTIONS, Action, Log, ToBrowser, ToUpstream
from app.greeting import Greeting
from app.heard import TutorItems
from app.lesson_config import LessonConfig
from app.lesson_state import LessonState
from app.messages import End, InvalidMessage, Playback
from app.pacing import MAX_PAGE_MESSAGES_PER_S, FrameCoalescer, LogThrottle, MessageCounter, microphone_bucket

_TOO_FAST_WORDS = "Your microphone is sending sound faster than it is spoken, so some of it was left out."
_FLOODED_WORDS = ("This page sent far more than a lesson page sends, so the lesson was stopped. "
                  "Please reload the page and start again.")


class PageInput(abc.ABC):
    """The lesson's rules for what its page sends; `LessonSession` is the lesson."""

    # The machine's own state, kept by LessonSession, that these rules read and move.
    config: LessonConfig
    state: LessonState
    _greeting: Greeting
    _items: TutorItems

    def _init_page_input(self) -> None:
        self.discarded_frames = 0
        self._microphone = microphone_bucket()
        self._coalescer = FrameCoalescer()
        self._too_fast = LogThrottle()
        self._refusals = LogThrottle()
        self._page_messages = MessageCounter()

    # ---- what the machine provides -----------------------------------------------------------------

    @abc.abstractmethod
    def _end_normally(self, reason: str, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _open_microphone_or_arm_timer(self, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _finish(self, reason: str, close_code: int, now: float,
                error: tuple[str, str] | None = None) -> Sequence[Action]: ...

    # ---- the page's frames and messages ------------------------------------------------------------

    def handle_browser_audio(self, frame: bytes, now: float) -> Sequence[Action]:
        """A binary frame from the page: discarded before the greeting was heard; then relayed at real-time pace."""
        if not self._page_messages.count(now):
            return self._page_flooded(now)
        size = len(frame)
        if size == 0 or size % 2 or size > self.config.max_frame_bytes:
            return self._refuse_browser_input(
                "invalid_audio",
                f"audio frame of {size} bytes refused: it must be PCM16 (even length), "
                f"1 to {self.config.max_frame_bytes} bytes", now,
            )
        if self.state is not LessonState.CONVERSING:
            self.discarded_frames += 1
            return NO_ACTIONS
        if not self._microphone.take(size, now):
            return self._audio_too_fast(size, now)
        chunk = self._coalescer.add(frame)
        return NO_ACTIONS if chunk is None else (ToUpstream(protocol.audio_append(chunk)),)

    def handle_browser_text(self, text: str, now: float) -> Sequence[Action]:
        """A JSON message from the page: one of the allowlisted messages, or an error frame back."""
        if not self._page_messages.count(now):
            return self._page_flooded(now)
        try:
            message = messages.parse_browser_message(text)
        except InvalidMessage as exc:
            return self._refuse_browser_input("invalid_message", str(exc), now)
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        match message:
            case Playback():
                return self._on_playback(message, now)
            case End():
                return NO_ACTIONS if self.state is LessonState.FEEDBACK else self._end_normally("student_ended", now)
            case _:
                assert_never(message)

    def _on_playback(self, report: Playback, now: float) -> Sequence[Action]:
        item = self._items.by_id.get(report.item_id)
        if item is None:
            return NO_ACTIONS
        item.played_ms = min(report.played_ms, item.received_ms)
        item.reported_at = now
        if self.state is not LessonState.GREETING or not self._greeting.done:
            return NO_ACTIONS
        return self._open_microphone_or_arm_timer(now)

    def _page_flooded(self, now: float) -> Sequence[Action]:
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        return (Log("warning", "page_flooded", {"limit_per_s": MAX_PAGE_MESSAGES_PER_S, "state": self.state.value}),
                *self._finish("page_flooded", 1008, now, error=("too_many_messages", _FLOODED_WORDS)))

    # ---- refusals, throttled -----------------------------------------------------------------------

    def _refuse_browser_input(self, code: str, detail: str, now: float) -> Sequence[Action]:
        refused = ToBrowser(messages.error(code=code, message=detail, fatal=False))
        held_back = self._refusals.allow(now)
        if held_back is None:
            return (refused,)
        return (refused, Log("warning", "browser_input_refused",
                             {"code": code, "detail": detail, "suppressed": held_back}))

    def _audio_too_fast(self, size: int, now: float) -> Sequence[Action]:
        # Over the pace: the frame is dropped, never queued (queueing would only delay the same cost).
        held_back = self._too_fast.allow(now)
        if held_back is None:
            return NO_ACTIONS
        return (
            ToBrowser(messages.error(code="audio_too_fast", message=_TOO_FAST_WORDS, fatal=False)),
            Log("warning", "audio_too_fast", {"frame_bytes": size, "suppressed": held_back}),
        )

    def _held_back_warnings(self) -> list[Action]:
        """The counts of warnings held back since their last line, so the log never loses one."""
        return [Log("warning", event, {"suppressed": throttle.suppressed})
                for event, throttle in (("browser_input_refused", self._refusals), ("audio_too_fast", self._too_fast))
                if throttle.suppressed]
