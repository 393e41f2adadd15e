"""The greeting's rules: asked for once and retried once, and when it counts as heard.

`LessonSession` keeps one `Greeting` per lesson and asks it; like the machine, it does no I/O and reads
no clock. The microphone is held until the greeting counts as heard, so room noise cannot cancel it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app import protocol
from app.heard import TutorItem

# A greeting counts as heard this long after its audio should have finished playing.
GREETING_PLAYOUT_MARGIN_S = 0.5
# The greeting and one retry, when it fails or comes back without audio.
MAX_ATTEMPTS = 2
# A greeting retry waits as long as the upstream's failure asks ("try again in 6.9s"), but never longer than this.
GREETING_RETRY_MAX_WAIT_S = 10.0
_RETRY_AFTER = re.compile(r"try again in (?:(\d+)m)?(\d+(?:\.\d+)?)(ms|s)\b", re.IGNORECASE)

# Plain words for the student when the tutor cannot be had; the log carries the upstream's own codes.
_FAILURE_WORDS = {
    "insufficient_quota": "The tutor service has run out of credit. Please tell your teacher.",
    "invalid_api_key": "The tutor service refused our credentials. Please tell your teacher.",
}
_FAILURE_DEFAULT = "The tutor could not start speaking. Please try starting the lesson again."


def failure_words(code: str | None) -> str:
    """What the student reads when the tutor failed with the upstream's error `code`."""
    return _FAILURE_WORDS.get(code or "", _FAILURE_DEFAULT)


def retry_wait_s(message: str | None) -> float:
    """The wait an upstream failure message asks for ("Please try again in 6.9s."), bounded; 0 when it names none."""
    found = _RETRY_AFTER.search(message or "")
    if found is None:
        return 0.0
    minutes, amount, unit = found.groups()
    seconds = int(minutes or 0) * 60 + float(amount) / (1000 if unit.lower() == "ms" else 1)
    return min(seconds, GREETING_RETRY_MAX_WAIT_S)


@dataclass(slots=True)
class Greeting:
    """The greeting's progress: its request, its response, and how much audio it carried."""

    attempts: int = 0
    request_id: str | None = None
    response_id: str | None = None
    first_audio_at: float | None = None
    audio_started: bool = False  # any attempt's first audio reached the page
    done: bool = False
    audio_ms: int = 0

    def requested(self, event_id: str) -> None:
        """A `response.create` for the greeting went out as `event_id`."""
        self.attempts += 1
        self.request_id = event_id
        self.response_id = None
        self.first_audio_at = None

    def may_retry(self, failure_code: str | None) -> bool:
        return failure_code not in protocol.UNRECOVERABLE_CODES and self.attempts < MAX_ATTEMPTS

    def heard_at(self, items: list[TutorItem], now: float) -> float:
        """When the finished greeting counts as heard without a final report (a page that stalls or never reports).

        From the page's latest playback report of the greeting: what was still unplayed then, plus the margin.
        Only a page that has not reported the greeting's playback gets the whole greeting from its first audio
        frame plus the margin: late audio output (Bluetooth, a slow phone) must not open the microphone early."""
        reports = [item.reported_at for item in items if item.reported_at is not None]
        if reports:
            start = max(reports)
            unplayed_ms = sum(item.received_ms - item.played_ms for item in items)
        else:
            start = self.first_audio_at if self.first_audio_at is not None else now
            unplayed_ms = self.audio_ms
        return start + unplayed_ms / 1000 + GREETING_PLAYOUT_MARGIN_S
