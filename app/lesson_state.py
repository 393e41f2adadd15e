"""A lesson's states, the transitions allowed between them, and its timers: everything that decides
which transition is legal lives here (as in the h11 library's `_state.py`); `LessonSession` moves between them."""

from __future__ import annotations

import enum

from app.errors import InvalidTransition


class LessonState(enum.Enum):
    CONNECTING = "connecting"  # waiting for session.created
    CONFIGURING = "configuring"  # session.update sent, waiting for session.updated
    GREETING = "greeting"  # response.create sent; microphone held until the greeting is heard
    CONVERSING = "conversing"  # microphone relayed, turns taken by server-side turn detection
    FEEDBACK = "feedback"  # ended normally: microphone held, the lesson's feedback asked for out of band
    # The upstream session is being replaced: a new one is opened and configured with the conversation so
    # far; microphone held. Then back to CONVERSING, or to GREETING when the greeting had not been heard.
    RECONNECTING = "reconnecting"
    ENDED = "ended"


ALLOWED = {
    LessonState.CONNECTING: {LessonState.CONFIGURING, LessonState.RECONNECTING, LessonState.ENDED},
    LessonState.CONFIGURING: {LessonState.GREETING, LessonState.ENDED},
    LessonState.GREETING: {LessonState.CONVERSING, LessonState.RECONNECTING, LessonState.ENDED},
    LessonState.CONVERSING: {LessonState.FEEDBACK, LessonState.RECONNECTING, LessonState.ENDED},
    LessonState.RECONNECTING: {LessonState.GREETING, LessonState.CONVERSING, LessonState.ENDED},
    LessonState.FEEDBACK: {LessonState.ENDED},
    LessonState.ENDED: set(),
}


class Timer(enum.Enum):
    SETUP = "setup"  # session.updated must arrive
    GREETING_WATCHDOG = "greeting_watchdog"  # response.created must follow the greeting's response.create
    GREETING_HEARD = "greeting_heard"  # the greeting's audio has had time to play out
    GREETING_RETRY = "greeting_retry"  # the wait the upstream asked for before the greeting is asked for again
    LESSON_LIMIT = "lesson_limit"
    IDLE = "idle"
    FEEDBACK = "feedback"  # the feedback's response.done must arrive (FEEDBACK_TIMEOUT_SECONDS)
    PAGE_GRACE = "page_grace"  # the page that went away must be back by now
    UPSTREAM_RETRY = "upstream_retry"  # the pause before the next attempt at a new upstream session
    ROLL_OVER = "roll_over"  # the upstream session nears its cap: replace it at the next turn boundary


def check_transition(lesson_id: str, current: LessonState, new: LessonState) -> None:
    """Return if `current` → `new` is allowed; raise `InvalidTransition` naming both otherwise."""
    if new not in ALLOWED[current]:
        raise InvalidTransition(f"lesson {lesson_id!r}: cannot go from {current.value!r} to {new.value!r}")
