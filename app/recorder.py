"""LessonRecorder: turns what the lesson machine sees into `Record` actions (no I/O, no clock).

It numbers turns in the order they began (a tutor item's first delta, the student's speech_started),
keeps each until it is finished (the transcript's `done`, a barge-in, the student's transcription), and
stamps record times as wall-clock UTC counted from the lesson's start.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from app.records import (
    FeedbackGiven,
    LessonEnded,
    LessonEventHappened,
    LessonStarted,
    Record,
    TurnFinished,
    TurnInterrupted,
    UsageSoFar,
)


@dataclass(slots=True)
class _PendingTurn:
    seq: int
    started_at: float
    ended_at: float | None = None
    parts: list[str] = field(default_factory=list)


class LessonRecorder:
    def __init__(self, lesson_id: str, started_at: datetime) -> None:
        self.lesson_id = lesson_id
        self.started_at = started_at
        self._started_mono = 0.0
        self._turns_begun = 0
        self._tutor: dict[str, _PendingTurn] = {}
        self._student: dict[str, _PendingTurn] = {}

    def wall(self, now: float) -> datetime:
        """The wall-clock time of monotonic `now`."""
        return self.started_at + timedelta(seconds=now - self._started_mono)

    def started(self, now: float, *, level: str, model: str, simulated: bool, student_id: str | None,
                link_id: str | None, browser_key_hash: str | None, student_name: str) -> Record:
        self._started_mono = now
        return Record(LessonStarted(
            lesson_id=self.lesson_id, started_at=self.started_at, level=level, model=model, simulated=simulated,
            student_id=student_id, link_id=link_id, browser_key_hash=browser_key_hash, student_name=student_name,
        ))

    def taken_over(self, now: float, *, elapsed_s: float, last_seq: int, from_lost_instance: bool) -> Record:
        """The lesson goes on here after another instance handed it over or was lost: its clock and turn numbers
        carry on."""
        self._started_mono = now - elapsed_s
        self._turns_begun = last_seq
        return self.event(now, "lesson_taken_over", {"elapsed_s": round(elapsed_s, 3), "turns": last_seq,
                                                     "from_lost_instance": from_lost_instance})

    def usage(self, usage: Mapping[str, int], estimated_cost_usd: float) -> Record:
        """What the lesson has used so far; `usage` holds the counts `LessonUsage.recorded_counts` gives."""
        return Record(UsageSoFar(
            lesson_id=self.lesson_id, audio_input_tokens=usage["audio_input_tokens"],
            text_input_tokens=usage["text_input_tokens"], cached_tokens=usage["cached_tokens"],
            cached_audio_tokens=usage["cached_audio_tokens"], cached_text_tokens=usage["cached_text_tokens"],
            audio_output_tokens=usage["audio_output_tokens"], text_output_tokens=usage["text_output_tokens"],
            responses=usage["responses"], estimated_cost_usd=estimated_cost_usd))

    def ended(self, now: float, *, end_reason: str, duration_s: float, usage: Mapping[str, int],
              estimated_cost_usd: float) -> Record:
        """The lesson's end; `usage` holds the counts `LessonUsage.recorded_counts` gives (LessonEnded's *_tokens)."""
        return Record(LessonEnded(
            lesson_id=self.lesson_id, ended_at=self.wall(now), end_reason=end_reason, duration_s=duration_s,
            audio_input_tokens=usage["audio_input_tokens"], text_input_tokens=usage["text_input_tokens"],
            cached_tokens=usage["cached_tokens"], cached_audio_tokens=usage["cached_audio_tokens"],
            cached_text_tokens=usage["cached_text_tokens"], audio_output_tokens=usage["audio_output_tokens"],
            text_output_tokens=usage["text_output_tokens"], responses=usage["responses"],
            estimated_cost_usd=estimated_cost_usd,
        ))

    def event(self, now: float, kind: str, detail: Mapping[str, Any]) -> Record:
        return Record(LessonEventHappened(lesson_id=self.lesson_id, at=self.wall(now), kind=kind, detail=dict(detail)))

    def feedback(self, content: Mapping[str, Any]) -> Record:
        return Record(FeedbackGiven(lesson_id=self.lesson_id, feedback=content))

    # ---- the tutor's turns: response.output_audio(_transcript) -----------------------------------

    def tutor_turn_seq(self, item_id: str, now: float) -> int:
        """The number of the tutor's turn for `item_id`, begun now if it had not begun."""
        return self._tutor_turn(item_id, now).seq

    def tutor_text(self, item_id: str, delta: str, now: float) -> None:
        self._tutor_turn(item_id, now).parts.append(delta)

    def tutor_done(self, item_id: str, transcript: str, now: float) -> Record:
        """response.output_audio_transcript.done: the tutor's turn as said."""
        turn = self._tutor.pop(item_id, None) or self._begin(now)
        return self._turn("tutor", turn, transcript, now)

    def tutor_interrupted(self, item_id: str, seq: int, heard_ms: int, now: float, *, recorded_text: str,
                          heard: Callable[[str], str]) -> Record:
        """The tutor was cut short (a barge-in, End, the page or the upstream gone): the turn still waiting for its
        transcript is recorded with what came of it; one already recorded (as `recorded_text`) is marked
        interrupted. Either keeps `heard(text)`, the words the student heard."""
        turn = self._tutor.pop(item_id, None)
        if turn is None:
            return Record(TurnInterrupted(lesson_id=self.lesson_id, seq=seq, heard_ms=heard_ms,
                                          heard_text=heard(recorded_text)))
        text = "".join(turn.parts)
        return self._turn("tutor", turn, text, now, heard_ms=heard_ms, heard_text=heard(text))

    # ---- the student's turns: input_audio_buffer.speech_*, input_audio_transcription -------------

    def student_started(self, item_id: str, now: float) -> None:
        self._student[item_id] = self._begin(now)

    def student_stopped(self, item_id: str, now: float) -> None:
        if (turn := self._student.get(item_id)) is not None:
            turn.ended_at = now

    def student_done(self, item_id: str, transcript: str, now: float) -> Record | None:
        """The student's transcription completed: their turn, unless nothing was made out."""
        turn = self._student.pop(item_id, None) or self._begin(now)
        if not transcript.strip():
            return None
        return self._turn("student", turn, transcript, turn.ended_at if turn.ended_at is not None else now)

    def student_failed(self, item_id: str) -> None:
        self._student.pop(item_id, None)

    # ---- helpers ---------------------------------------------------------------------------------

    def _begin(self, now: float) -> _PendingTurn:
        self._turns_begun += 1
        return _PendingTurn(seq=self._turns_begun, started_at=now)

    def _tutor_turn(self, item_id: str, now: float) -> _PendingTurn:
        turn = self._tutor.get(item_id)
        if turn is None:
            turn = self._tutor[item_id] = self._begin(now)
        return turn

    def _turn(self, role: Literal["tutor", "student"], turn: _PendingTurn, text: str, ended_at: float,
              *, heard_ms: int | None = None, heard_text: str | None = None) -> Record:
        return Record(TurnFinished(
            lesson_id=self.lesson_id, seq=turn.seq, role=role, text=text,
            started_at=self.wall(turn.started_at), ended_at=self.wall(ended_at),
            interrupted=heard_ms is not None, heard_ms=heard_ms, heard_text=heard_text,
        ))
