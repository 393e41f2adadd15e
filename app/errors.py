"""The project's exceptions, each carrying the WebSocket close code the page receives.

    LessonError                      close 1011
    ├── InvalidRequest               1008  bad lesson parameters, origin or lesson link
    ├── OverCapacity                 1013  too many lessons, or lesson starts too fast
    ├── StoreUnavailable             1013  a lesson link cannot be checked: the records' database is out of reach
    ├── DailyBudgetReached           1008  the link's student has spent MAX_STUDENT_COST_USD_PER_DAY in a day
    ├── ResumeRefused                1008  a resume token that is altered, expired, foreign or of an ended (or
    │                                      withdrawn) lesson
    ├── ResumeNotYet                 1013  a resumed lesson is still being handed over: the page tries again
    │   └── ResumeElsewhere          1013  … it runs on another worker, which is asked to hand it over
    ├── InvalidTransition            1011  the lesson state machine was driven out of order (a bug)
    └── UpstreamError                1011  the Realtime session failed
        ├── UpstreamRefused          1014  the handshake was refused (HTTP status known)
        ├── UpstreamUnavailable      1014  the upstream could not be reached at all
        └── UpstreamClosed           1011  the upstream closed the socket mid-lesson

Foreign exceptions (websockets, OSError, TimeoutError) are translated into these at the boundary in
`upstream.py`, so the relay only handles its own tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.withdrawal import Withdrawal


class LessonError(Exception):
    """Base of the tree: `close_code` ends the browser socket, `code` names the cause on the page."""

    close_code = 1011
    code = "lesson_failed"
    student_message = "The lesson stopped because of a problem on our side. Please try again."

    def __init__(self, detail: str, *, student_message: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if student_message is not None:
            self.student_message = student_message


class InvalidRequest(LessonError):
    close_code = 1008
    code = "invalid_request"
    student_message = "This lesson link is not valid."


class OverCapacity(LessonError):
    close_code = 1013
    code = "over_capacity"
    student_message = "All tutors are busy right now. Please try again in a minute."


class StoreUnavailable(LessonError):
    close_code = 1013
    code = "link_unchecked"
    student_message = "Your lesson link cannot be checked just now. Please try again in a minute."


class DailyBudgetReached(LessonError):
    """The student's lessons started in the last 24 hours cost the daily cap: no new lesson until some age out."""

    close_code = 1008
    code = "daily_budget_reached"
    student_message = "You have had all the lesson time for today. Please ask your teacher."


class ResumeRefused(LessonError):
    """A resume the page must not retry: it is told in plain words and starts a new lesson."""

    close_code = 1008
    code = "resume_refused"

    def __init__(self, detail: str, *, code: str, student_message: str,
                 ended_with: tuple[str, Mapping[str, Any]] | None = None) -> None:
        super().__init__(detail, student_message=student_message)
        self.code = code
        # A lesson that ended with its feedback: (end reason, feedback), for a page that missed them.
        self.ended_with = ended_with

    @classmethod
    def invalid(cls, detail: str) -> ResumeRefused:
        return cls(detail, code="resume_invalid",
                   student_message="This lesson cannot be continued from here. Please start a new lesson.")

    @classmethod
    def expired(cls, detail: str) -> ResumeRefused:
        return cls(detail, code="resume_expired",
                   student_message="This lesson was away too long and has ended. Please start a new lesson.")

    @classmethod
    def unknown(cls, detail: str) -> ResumeRefused:
        return cls(detail, code="resume_unknown",
                   student_message="This lesson is not known here. Please start a new lesson.")

    @classmethod
    def withdrawn(cls, detail: str, withdrawal: Withdrawal,
                  ended_with: tuple[str, Mapping[str, Any]] | None = None) -> ResumeRefused:
        """The teacher withdrew the lesson (`app.withdrawal`): the page is told so as when it was ended."""
        return cls(detail, code=withdrawal.value, student_message=withdrawal.student_message, ended_with=ended_with)

    @classmethod
    def ended(cls, detail: str, ended_with: tuple[str, Mapping[str, Any]] | None = None) -> ResumeRefused:
        return cls(detail, code="lesson_ended", ended_with=ended_with,
                   student_message="This lesson has already ended. Please start a new lesson.")


class ResumeNotYet(LessonError):
    """The lesson is being handed over from an instance that is restarting: the page tries again shortly."""

    close_code = 1013
    code = "resume_not_yet"
    student_message = "Your lesson is moving to another server. Reconnecting…"


class ResumeElsewhere(ResumeNotYet):
    """The lesson runs on another worker of the replica: it is asked to hand the lesson over."""


class InvalidTransition(LessonError):
    code = "internal_error"


class UpstreamError(LessonError):
    code = "upstream_error"
    student_message = "The tutor could not continue the lesson. Please start again."


class UpstreamRefused(UpstreamError):
    close_code = 1014

    def __init__(self, detail: str, *, status: int, upstream_code: str | None = None) -> None:
        self.status = status
        self.upstream_code = upstream_code
        code, message = _refusal_wording(status, upstream_code)
        self.code = code
        super().__init__(detail, student_message=message)


class UpstreamUnavailable(UpstreamError):
    close_code = 1014
    code = "upstream_unavailable"
    student_message = "The tutor service cannot be reached right now. Please try again in a minute."


class UpstreamClosed(UpstreamError):
    code = "upstream_closed"
    student_message = "The connection to the tutor was lost. Start the lesson again to continue."

    def __init__(self, detail: str, *, received_code: int | None, received_reason: str) -> None:
        super().__init__(detail)
        self.received_code = received_code
        self.received_reason = received_reason


def _refusal_wording(status: int, upstream_code: str | None = None) -> tuple[str, str]:
    """The page's error code and plain words for an HTTP status the upstream refused us with."""
    # OpenAI answers 429 both for a rate limit (wait and retry) and for an exhausted quota (no retry helps).
    if upstream_code == "insufficient_quota":
        return "insufficient_quota", "The tutor service has run out of credit. Please tell your teacher."
    if status in (401, 403):
        return "upstream_auth", "The tutor service refused our credentials. Please tell your teacher."
    if status == 429:
        return "upstream_rate_limited", "The tutor service is busy right now. Please try again in a minute."
    if status >= 500:
        return "upstream_unavailable", "The tutor service is having problems. Please try again in a minute."
    return "upstream_refused", "The tutor service refused to start the lesson. Please tell your teacher."
