"""What a lesson leaves in the store, as frozen values the state machine returns inside `Record` actions.

The machine decides what is worth keeping (a finished turn, a response that did not complete, the
lesson's end with its usage and cost); the relay hands each record to a `RecordSink` without waiting
(`put` never blocks and never raises), and the store's writer task writes them. Records never hold
audio or a key. Times are timezone-aware UTC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol


@dataclass(frozen=True, slots=True)
class LessonStarted:
    """A lesson began. The student is `student_id` (a link's), or the browser whose key hashes to
    `browser_key_hash` (created on first sight with `student_name` and `level`), or nobody known."""

    lesson_id: str
    started_at: datetime
    level: str
    model: str
    simulated: bool
    student_id: str | None = None
    link_id: str | None = None
    browser_key_hash: str | None = None
    student_name: str | None = None


@dataclass(frozen=True, slots=True)
class TurnFinished:
    """One turn of the conversation; `seq` orders the turns by when they began. A tutor turn cut short before its
    transcript was done is `interrupted`: `text` is what came of it, `heard_text` the words of it the student heard."""

    lesson_id: str
    seq: int
    role: Literal["tutor", "student"]
    text: str
    started_at: datetime
    ended_at: datetime
    interrupted: bool = False
    heard_ms: int | None = None
    heard_text: str | None = None


@dataclass(frozen=True, slots=True)
class TurnInterrupted:
    """The tutor's turn `seq` was cut short (a barge-in, End, the page or the upstream gone) after the student
    heard `heard_ms` of it: the words of it they heard, `heard_text`."""

    lesson_id: str
    seq: int
    heard_ms: int
    heard_text: str


@dataclass(frozen=True, slots=True)
class LessonEventHappened:
    """Why something went wrong (or was retried): a response that did not complete, an upstream error …"""

    lesson_id: str
    at: datetime
    kind: str
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LessonEnded:
    lesson_id: str
    ended_at: datetime
    end_reason: str
    duration_s: float
    audio_input_tokens: int
    text_input_tokens: int
    cached_tokens: int
    audio_output_tokens: int
    text_output_tokens: int
    estimated_cost_usd: float
    # Of cached_tokens, those taken off the audio input and off the text input; None: not known.
    cached_audio_tokens: int | None = None
    cached_text_tokens: int | None = None
    # The responses the lesson had (those of an instance that handed it over included); None: not known.
    responses: int | None = None


@dataclass(frozen=True, slots=True)
class UsageSoFar:
    """What the lesson has used up to its latest response, so its cost is known even if it never ends here."""

    lesson_id: str
    audio_input_tokens: int
    text_input_tokens: int
    cached_tokens: int
    audio_output_tokens: int
    text_output_tokens: int
    estimated_cost_usd: float
    # Of cached_tokens, those taken off the audio input and off the text input; None: not known.
    cached_audio_tokens: int | None = None
    cached_text_tokens: int | None = None
    # The responses the lesson had (those of an instance that handed it over included); None: not known.
    responses: int | None = None


@dataclass(frozen=True, slots=True)
class FeedbackGiven:
    """The lesson's feedback as the student got it: summary, corrections, new_words, next_step."""

    lesson_id: str
    feedback: Mapping[str, Any]


LessonRecord = (LessonStarted | TurnFinished | TurnInterrupted | LessonEventHappened | UsageSoFar | FeedbackGiven
                | LessonEnded)


class RecordSink(Protocol):
    def put(self, record: LessonRecord) -> None:
        """Accept `record` for writing, without waiting; never raises."""


class DiscardRecords:
    """A sink that keeps nothing: lessons run unrecorded (the bench's baseline, unit tests)."""

    def put(self, record: LessonRecord) -> None:
        return None


@dataclass(frozen=True, slots=True)
class Record:
    """An action: hand `record` to the store's writer; the lesson never waits for it to be written."""

    record: LessonRecord
