"""LessonConfig: what one lesson needs to know, built by the route from the request, `Settings` and the store
(the student, their memory) before the lesson's machine is built."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from app.continuity import CarriedOver


@dataclass(frozen=True, slots=True)
class LessonConfig:
    """What one lesson needs to know; built by the route from the request and `Settings`."""

    lesson_id: str
    name: str
    level: str
    # The tutor prompt of each `session.update`, written when it is sent rather than kept for the lesson.
    instructions: Callable[[], str]
    simulated: bool
    voice: str
    transcription_model: str
    # The transcription's language; None = the transcription model finds it.
    language_code: str | None
    turn_detection: Literal["server_vad", "semantic_vad"]
    vad_eagerness: str
    max_frame_bytes: int
    upstream_timeout_s: float
    max_lesson_s: float
    idle_timeout_s: float
    # The out-of-band request at a normal end, and how long its answer may take. Written when it is asked
    # for: kept as text for the whole lesson it would be some 2 KiB a lesson.
    feedback_instructions: Callable[[], str]
    feedback_timeout_s: float
    prices_per_million: Mapping[str, float]
    model: str
    # Wall-clock time of the lesson's start, read by the shell: record times are counted from it.
    started_at: datetime
    # Who the lesson is recorded for: a link's student, or the open page's browser (its key's hash).
    student_id: str | None = None
    link_id: str | None = None
    browser_key_hash: str | None = None
    # The lesson ends when its estimated cost reaches this (USD); None = no cap.
    max_cost_usd: float | None = None
    # The page may come back within `resume_grace_s` with this token (0: a page that leaves ends the lesson).
    resume_token: str = ""
    resume_grace_s: float = 0.0
    # Set when this instance takes over a lesson another one handed over (a redeploy).
    carried: CarriedOver | None = None
