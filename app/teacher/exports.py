"""A lesson as data (the API's JSON and the JSON export), as Markdown, and all lessons as CSV rows.

Also the small formatters the desk's templates use, so a page, an export and the API say the same
duration, cost and failure reason for the same record.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from markupsafe import Markup

from app.outcomes import ended_because, event_meaning, is_failure, is_refused_start
from app.store.models import Lesson, LessonEvent, Student, Turn

USAGE_FIELDS = ("audio_input_tokens", "text_input_tokens", "cached_tokens", "audio_output_tokens",
                "text_output_tokens")
CSV_COLUMNS = ("lesson_id", "student_id", "student_name", "level", "started_at", "ended_at", "duration_s",
               "end_reason", "model", "simulated", *USAGE_FIELDS, "estimated_cost_usd", "refused_start")


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def student_json(student: Student) -> dict[str, Any]:
    return {
        "id": student.id,
        "name": student.name,
        "level": student.level,
        "target_language": student.target_language,
        "created_at": iso(student.created_at),
        "archived_at": iso(student.archived_at),
    }


def lesson_summary_json(lesson: Lesson) -> dict[str, Any]:
    """A lesson without its transcript: what a list of lessons holds."""
    return {
        "id": lesson.id,
        "student_id": lesson.student_id,
        "level": lesson.level,
        "started_at": iso(lesson.started_at),
        "ended_at": iso(lesson.ended_at),
        "end_reason": lesson.end_reason,
        "end_requested_at": iso(lesson.end_requested_at),
        "duration_s": lesson.duration_s,
        "model": lesson.model,
        "simulated": lesson.simulated,
        "usage": {field: getattr(lesson, field) for field in USAGE_FIELDS},
        "estimated_cost_usd": lesson.estimated_cost_usd,
    }


def turn_json(turn: Turn) -> dict[str, Any]:
    return {
        "seq": turn.seq,
        "role": turn.role,
        "text": turn.text,
        "started_at": iso(turn.started_at),
        "ended_at": iso(turn.ended_at),
        "interrupted": turn.interrupted,
        "heard_ms": turn.heard_ms,
        "heard_text": turn.heard_text,
    }


def event_json(event: LessonEvent) -> dict[str, Any]:
    return {"kind": event.kind, "at": iso(event.at), "detail": event.detail}


def lesson_json(lesson: Lesson, *, events_left_out: int, turns_left_out: int) -> dict[str, Any]:
    """The whole lesson: `GET /api/lessons/{id}` and the JSON export. Turns and events must be loaded: its newest
    ones, `turns_left_out` older turns and `events_left_out` older events not."""
    return lesson_summary_json(lesson) | {
        "refused_start": is_refused_start(lesson.end_reason, ended=lesson.ended_at is not None,
                                          has_turns=bool(lesson.turns) or turns_left_out > 0,
                                          audio_output_tokens=lesson.audio_output_tokens or 0),
        "student_name": lesson.student.name if lesson.student else None,
        "turns": [turn_json(turn) for turn in lesson.turns],
        "turns_left_out": turns_left_out,
        "events": [event_json(event) for event in lesson.events],
        "events_left_out": events_left_out,
        # summary, corrections [{said, better, why}], new_words [{word, meaning}], next_step; null without any.
        "feedback": lesson.feedback,
    }


def _unheard(turn: Turn) -> str:
    """The words of a tutor turn cut short that the student did not hear: its text after `heard_text`; "" for a
    whole turn, or a cut one recorded before the heard words were kept."""
    if not turn.interrupted or turn.heard_text is None or not turn.text.startswith(turn.heard_text):
        return ""
    return turn.text[len(turn.heard_text):].strip()


def cut_note(turn: Turn) -> str:
    """What the desk and the Markdown export say beside a tutor turn cut short; "" for a whole turn."""
    if not turn.interrupted:
        return ""
    if turn.heard_text is None:
        return f"Interrupted: {turn.heard_ms or 0} ms heard"
    rest = _unheard(turn)
    return f"Cut off: {turn.heard_ms or 0} ms heard" + (f"; not heard: {rest}" if rest else "")


def heard_words(turn: Turn) -> str:
    """A turn's words as the student heard them: `heard_text` for a tutor turn cut short, else its text."""
    return turn.heard_text if turn.interrupted and turn.heard_text is not None else turn.text


def lesson_json_text(lesson: Lesson, *, events_left_out: int, turns_left_out: int) -> str:
    whole = lesson_json(lesson, events_left_out=events_left_out, turns_left_out=turns_left_out)
    return orjson.dumps(whole, option=orjson.OPT_INDENT_2).decode() + "\n"


def event_reason(event: LessonEvent) -> str:
    """Why it happened, in the upstream's own words where it gave any: message, reason, code, status."""
    detail = _mapping(event.detail)
    status_details = _mapping(detail.get("status_details"))
    error = _mapping(status_details.get("error"))
    parts = [
        detail.get("message") or error.get("message"),
        detail.get("reason") or status_details.get("reason"),
        detail.get("code") or error.get("code"),
        detail.get("status") or status_details.get("type"),
    ]
    seen: list[str] = []
    for part in parts:
        if part not in (None, "") and str(part) not in seen:
            seen.append(str(part))
    return " · ".join(seen) if seen else "no reason given"


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def duration(seconds: float | None) -> str:
    """`seconds` rounded to the whole second: "42 s", "2 min 5 s", "3 h 0 min 12 s"."""
    if seconds is None:
        return "—"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min {rest} s"
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def since(start: datetime, now: datetime) -> str:
    """How long a lesson under way has lasted by `now`."""
    return duration(max(0.0, (now - start).total_seconds()))


def usd(amount: float | None) -> str:
    return f"${amount or 0:.4f}"


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value is not None else "—"


def local_time(value: datetime | None) -> Markup | str:
    """`when(value)` in a `<time>` element: the desk's script shows it in the teacher's own time zone, with the UTC
    time as its title; without the script it stays in UTC."""
    if value is None:
        return when(value)
    utc = value.astimezone(UTC)
    return Markup('<time datetime="{}" data-local>{}</time>').format(utc.strftime("%Y-%m-%dT%H:%M:%SZ"), when(utc))


def offset(value: datetime, start: datetime) -> str:
    """`value` as minutes:seconds into the lesson."""
    seconds = max(0, round((value - start).total_seconds()))
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


def compact(value: object) -> str:
    """An event detail's value on one line: nested objects as compact JSON."""
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return str(value)


TEMPLATE_FILTERS = {"when": when, "local_time": local_time, "usd": usd, "duration": duration, "since": since,
                    "offset": offset, "reason": event_reason, "compact": compact, "cut_note": cut_note,
                    "heard_words": heard_words,
                    "ended_because": ended_because, "event_meaning": event_meaning, "is_failure": is_failure}

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+|!~])")


def _md(text: str) -> str:
    # Transcript text is the student's and the model's words: shown as written, never as markup.
    return _MARKDOWN_SPECIAL.sub(r"\\\1", " ".join(text.split()))


def events_left_out_note(shown: int, left_out: int) -> str:
    """What a lesson's page and Markdown export say when they list only its newest events; "" when all are."""
    if not left_out:
        return ""
    return f"The newest {shown} of its {shown + left_out} events are listed; {left_out} older ones are left out."


def turns_left_out_note(shown: int, left_out: int) -> str:
    """What a lesson's page and Markdown export say when they show only its last turns; "" when all are."""
    if not left_out:
        return ""
    return f"The last {shown} of its {shown + left_out} turns are shown; {left_out} earlier ones are left out."


def lesson_markdown(lesson: Lesson, *, events_left_out: int, turns_left_out: int) -> str:
    """The lesson as a Markdown document: facts, transcript, events and usage. Turns and events loaded: its newest
    ones, `turns_left_out` older turns and `events_left_out` older events not."""
    student = _md(lesson.student.name) if lesson.student else "no student record"
    lines = [
        f"# Lesson {lesson.id}",
        "",
        f"- Student: {student} ({lesson.level})",
        f"- Started: {when(lesson.started_at)}",
        f"- Duration: {duration(lesson.duration_s)}",
        f"- Ended: {_md(ended_because(lesson.end_reason))}"
        f"{f' (`{lesson.end_reason}`)' if lesson.end_reason else ''}",
        f"- Model: {_md(lesson.model)}{' (simulator)' if lesson.simulated else ''}",
        f"- Estimated cost: {usd(lesson.estimated_cost_usd)}",
        "",
        "## Transcript",
        "",
    ]
    if turns_left_out:
        lines += [turns_left_out_note(len(lesson.turns), turns_left_out), ""]
    for turn in lesson.turns:
        note = f" *({_md(cut_note(turn))})*" if turn.interrupted else ""
        lines += [f"**{turn.role.capitalize()}** ({offset(turn.started_at, lesson.started_at)}): "
                  f"{_md(heard_words(turn))}{note}", ""]
    if not lesson.turns:
        lines += ["No turns were recorded.", ""]
    lines += ["## Events", ""]
    if events_left_out:
        lines += [events_left_out_note(len(lesson.events), events_left_out), ""]
    if lesson.events:
        lines += ["| at | kind | reason |", "|---|---|---|"]
        lines += [f"| {offset(event.at, lesson.started_at)} | {_md(event_meaning(event.kind))} (`{event.kind}`) "
                  f"| {_md(event_reason(event))} |"
                  for event in lesson.events]
    else:
        lines += ["No failures, retries or errors."]
    lines += ["", "## Feedback", "", *_feedback_markdown(lesson.feedback)]
    lines += ["", "## Usage", "", "| tokens | count |", "|---|---:|"]
    lines += [f"| {field.removesuffix('_tokens').replace('_', ' ')} | {getattr(lesson, field)} |"
              for field in USAGE_FIELDS]
    return "\n".join(lines) + "\n"


def _feedback_markdown(feedback: dict[str, Any] | None) -> list[str]:
    if not feedback:
        return ["No feedback for this lesson."]
    lines = [_md(str(feedback.get("summary", ""))), ""]
    for correction in feedback.get("corrections") or []:
        lines.append(f"- Say it better: {_md(str(correction.get('said', '')))} → "
                     f"**{_md(str(correction.get('better', '')))}** ({_md(str(correction.get('why', '')))})")
    for word in feedback.get("new_words") or []:
        lines.append(f"- New word: **{_md(str(word.get('word', '')))}**: {_md(str(word.get('meaning', '')))}")
    lines += ["", f"Next time: {_md(str(feedback.get('next_step', '')))}"]
    return lines


def _cell(value: object) -> object:
    # A cell starting with = + - @ is a formula to a spreadsheet: quote it as text.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_header() -> str:
    return _csv_line(CSV_COLUMNS)


def csv_row(lesson: Lesson, student_name: str | None, refused_start: bool) -> str:
    values = [lesson.id, lesson.student_id, student_name, lesson.level, iso(lesson.started_at),
              iso(lesson.ended_at), lesson.duration_s, lesson.end_reason, lesson.model, lesson.simulated,
              *(getattr(lesson, field) for field in USAGE_FIELDS), lesson.estimated_cost_usd, refused_start]
    return _csv_line(_cell(value) for value in values)


def _csv_line(values: Iterable[object]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(["" if value is None else value for value in values])
    return buffer.getvalue()
