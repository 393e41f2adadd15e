"""What the desk and the API read and write in the lesson records (the models of app.store.models).

Every function takes an open `AsyncSession` and leaves committing to the caller's `async with
db.begin()`, so a request's writes land together or not at all. Unknown ids are `None`/`False`, never an
exception: the routes turn them into 404s.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy import Date, Select, and_, case, delete, exists, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.outcomes import NOT_FAILURES, REFUSED_START_REASONS
from app.store.handover import HANDED_OFF
from app.store.instances import InstanceTiming, instance_lost_event
from app.store.models import Instance, Lesson, LessonEvent, Link, Student, Turn
from app.withdrawal import Withdrawal


@dataclass(frozen=True)
class StudentSummary:
    """A student with what the students page shows of their lessons."""

    student: Student
    lesson_count: int  # every lesson record: the lessons that ran and the refused starts
    refused_start_count: int  # of them, starts turned away before the tutor spoke (`refused_start`)
    seconds: float  # their lessons' durations, each in whole seconds as its own row shows it, added up
    cost_usd: float
    recent_cost_usd: float
    last_lesson_id: str | None  # their newest lesson that ran: a refused start is no lesson they had
    last_lesson_at: datetime | None

    @property
    def ran_count(self) -> int:
        return self.lesson_count - self.refused_start_count


@dataclass(frozen=True)
class StudentTotals:
    """What all of a student's lessons add up to, and what those of a recent period cost."""

    lesson_count: int  # as StudentSummary.lesson_count
    refused_start_count: int
    seconds: float  # as StudentSummary.seconds
    cost_usd: float
    recent_cost_usd: float

    @property
    def ran_count(self) -> int:
        return self.lesson_count - self.refused_start_count


@dataclass(frozen=True)
class LessonSummary:
    lesson: Lesson
    event_count: int
    refused_start: bool


@dataclass(frozen=True)
class Failure:
    """One lesson event with the lesson and student it belongs to."""

    event: LessonEvent
    lesson_id: str
    student_id: str | None
    student_name: str | None


@dataclass(frozen=True)
class FailureDay:
    """One UTC day's failures: every one counted by kind, the newest of them listed (`failures`)."""

    day: date
    by_kind: dict[str, int]
    failures: list[Failure]

    @property
    def count(self) -> int:
        return sum(self.by_kind.values())


async def student_summaries(db: AsyncSession, *, archived: bool | None = False,
                            recent_since: datetime | None = None, name_contains: str | None = None,
                            limit: int | None = None, offset: int = 0) -> list[StudentSummary]:
    """Students (archived or not as asked, both with None; whose name holds `name_contains` in any case when given),
    by name, with
    lesson count, time, cost (and that of their lessons started at or after `recent_since`) and last lesson that
    ran; `limit` of them from the `offset`-th when given."""
    last_lesson = (
        select(Lesson.id).where(Lesson.student_id == Student.id, ~refused_start())
        .order_by(Lesson.started_at.desc()).limit(1).correlate(Student).scalar_subquery()
    )
    query = (
        select(
            Student,
            func.count(Lesson.id),
            _refused_start_count(),
            _whole_seconds(),
            func.coalesce(func.sum(Lesson.estimated_cost_usd), 0.0),
            func.coalesce(func.sum(_cost_since(recent_since)), 0.0),
            func.max(case((~refused_start(), Lesson.started_at))),
            last_lesson,
        )
        .outerjoin(Lesson, Lesson.student_id == Student.id)
        .where(_students(archived=archived, name_contains=name_contains))
        .group_by(Student.id)
        .order_by(func.lower(Student.name), Student.created_at, Student.id)
        .limit(limit).offset(offset)
    )
    rows = (await db.execute(query)).all()
    return [
        StudentSummary(student=student, lesson_count=count, refused_start_count=int(refused), seconds=float(seconds),
                       cost_usd=float(cost), recent_cost_usd=float(recent), last_lesson_id=last_id,
                       last_lesson_at=last_at)
        for student, count, refused, seconds, cost, recent, last_at, last_id in rows
    ]


def refused_start() -> ColumnElement[bool]:
    """A lesson that was a refused start (`app.outcomes.is_refused_start`): ended for one of REFUSED_START_REASONS
    with no turn (read through the turns' (lesson_id, seq) index) and no audio from the tutor."""
    return and_(Lesson.ended_at.is_not(None), Lesson.end_reason.in_(REFUSED_START_REASONS),
                func.coalesce(Lesson.audio_output_tokens, 0) == 0, ~exists().where(Turn.lesson_id == Lesson.id))


def _refused_start_count() -> Any:
    return func.coalesce(func.sum(case((refused_start(), 1), else_=0)), 0)


def _whole_seconds() -> Any:
    """The lessons' durations added up, each rounded to the whole second its lesson's row shows: the totals then
    agree with the rows (three lessons shown as 11 s make 33 s, not 32)."""
    return func.coalesce(func.sum(func.round(Lesson.duration_s)), 0.0)


def _cost_since(since: datetime | None) -> Any:
    """A lesson's cost when it started at or after `since` (every lesson's without it), else 0."""
    if since is None:
        return Lesson.estimated_cost_usd
    return case((Lesson.started_at >= since, Lesson.estimated_cost_usd), else_=0.0)


async def all_students_totals(db: AsyncSession, *, recent_since: datetime) -> StudentTotals:
    """The lessons of every current (not archived) student, counted and added up like `student_totals`."""
    return await _totals(db, Student.archived_at.is_(None), recent_since=recent_since)


async def student_count(db: AsyncSession, *, archived: bool = False, name_contains: str | None = None) -> int:
    query = select(func.count(Student.id)).where(_students(archived=archived, name_contains=name_contains))
    return int((await db.execute(query)).scalar_one())


def _students(*, archived: bool | None, name_contains: str | None) -> ColumnElement[bool]:
    condition: ColumnElement[bool] = (
        true() if archived is None else Student.archived_at.is_not(None) if archived else Student.archived_at.is_(None))
    if name_contains:
        condition = and_(condition, func.lower(Student.name).contains(name_contains.lower(), autoescape=True))
    return condition


async def get_student(db: AsyncSession, student_id: str) -> Student | None:
    return await db.get(Student, student_id)


async def add_student(db: AsyncSession, *, name: str, level: str, target_language: str | None) -> Student:
    student = Student(name=name, level=level, target_language=target_language)
    db.add(student)
    await db.flush()
    return student


async def set_level(db: AsyncSession, student_id: str, level: str) -> bool:
    result = await db.execute(update(Student).where(Student.id == student_id).values(level=level))
    return _changed(result)


async def set_archived(db: AsyncSession, student_id: str, *, archived_at: datetime | None) -> bool:
    """Archive the student at `archived_at`, or restore them with None; False for an unknown id."""
    result = await db.execute(update(Student).where(Student.id == student_id).values(archived_at=archived_at))
    return _changed(result)


async def delete_student(db: AsyncSession, student_id: str) -> bool:
    """Delete the student; their links, lessons, turns and events go with them (ON DELETE CASCADE)."""
    result = await db.execute(delete(Student).where(Student.id == student_id))
    return _changed(result)


def _changed(result: object) -> bool:
    rowcount: int = getattr(result, "rowcount", 0)
    return rowcount > 0


async def create_link(db: AsyncSession, student_id: str, *, expires_at: datetime | None, topic: str | None = None,
                      support_language: str | None = None) -> Link:
    """A new lesson link for the student (who must exist), valid until `expires_at` or until revoked; its lessons
    are about `topic` and may use `support_language`, when given."""
    link = Link(student_id=student_id, expires_at=expires_at, topic=topic, support_language=support_language)
    db.add(link)
    await db.flush()
    return link


async def revoke_link(db: AsyncSession, student_id: str, link_id: str, *, now: datetime) -> bool:
    """Revoke the student's link (a link revoked before stays revoked then); False if they have no such link."""
    link = await db.get(Link, link_id)
    if link is None or link.student_id != student_id:
        return False
    if link.revoked_at is None:
        link.revoked_at = now
    return True


async def active_links(db: AsyncSession, student_id: str, *, now: datetime) -> list[Link]:
    """The student's links that still open a lesson (not revoked, not expired), newest first."""
    query = (
        select(Link)
        .where(Link.student_id == student_id, Link.revoked_at.is_(None),
               or_(Link.expires_at.is_(None), Link.expires_at > now))
        .order_by(Link.created_at.desc())
    )
    return list((await db.execute(query)).scalars())


async def newest_links(db: AsyncSession, student_ids: list[str], *, now: datetime) -> dict[str, Link]:
    """The newest link that still opens a lesson of each of `student_ids` that has one, by student id."""
    query = (
        select(Link)
        .where(Link.student_id.in_(student_ids), Link.revoked_at.is_(None),
               or_(Link.expires_at.is_(None), Link.expires_at > now))
        .order_by(Link.created_at)
    )
    # Oldest first, so the newest overwrites the others.
    return {link.student_id: link for link in (await db.execute(query)).scalars()}


async def student_lessons(db: AsyncSession, student_id: str, *, limit: int | None = None,
                          offset: int = 0) -> list[LessonSummary]:
    """The student's lessons, newest first, each with how many failures (events not in NOT_FAILURES) it had and
    whether it was a refused start; `limit` of them from the `offset`-th when given."""
    query = (
        select(Lesson, func.count(LessonEvent.id), refused_start())
        .outerjoin(LessonEvent, and_(LessonEvent.lesson_id == Lesson.id, LessonEvent.kind.not_in(NOT_FAILURES)))
        .where(Lesson.student_id == student_id)
        .group_by(Lesson.id)
        .order_by(Lesson.started_at.desc(), Lesson.id.desc())
        .limit(limit).offset(offset)
    )
    return [LessonSummary(lesson, count, bool(refused)) for lesson, count, refused in (await db.execute(query)).all()]


async def student_totals(db: AsyncSession, student_id: str, *, recent_since: datetime) -> StudentTotals:
    """The student's lessons counted and added up, with the cost of those started at or after `recent_since`."""
    return await _totals(db, Student.id == student_id, recent_since=recent_since)


async def _totals(db: AsyncSession, students: Any, *, recent_since: datetime) -> StudentTotals:
    query = (
        select(func.count(Lesson.id), _refused_start_count(), _whole_seconds(),
               func.coalesce(func.sum(Lesson.estimated_cost_usd), 0.0),
               func.coalesce(func.sum(_cost_since(recent_since)), 0.0))
        .join(Student, Student.id == Lesson.student_id).where(students)
    )
    count, refused, seconds, cost, recent = (await db.execute(query)).one()
    return StudentTotals(lesson_count=count, refused_start_count=int(refused), seconds=float(seconds),
                         cost_usd=float(cost), recent_cost_usd=float(recent))


# A lesson's page, export and API answer hold its newest events and turns, this many of each, and count the others: a
# page that resumes again and again piles events on its lesson, a page that keeps speaking makes thousands of turns an
# hour, and loading a hundred thousand rows held the worker's event loop (every lesson's audio on it) for seconds. The
# others are read a page at a time (`lesson_events`, `lesson_turns`).
EVENTS_SHOWN = 1000
TURNS_SHOWN = 1000


@dataclass(frozen=True)
class LessonRecord:
    """A lesson with its student, its newest `TURNS_SHOWN` turns and `EVENTS_SHOWN` events (oldest of them first)
    loaded, and how many older turns and events were left out."""

    lesson: Lesson
    events_left_out: int
    turns_left_out: int


LessonRow = TypeVar("LessonRow", Turn, LessonEvent)


async def get_lesson(db: AsyncSession, lesson_id: str) -> Lesson | None:
    """The lesson with its student loaded (not its turns or events), or None."""
    query = select(Lesson).where(Lesson.id == lesson_id).options(selectinload(Lesson.student))
    lesson: Lesson | None = (await db.execute(query)).scalar_one_or_none()
    return lesson


async def lesson_record(db: AsyncSession, lesson_id: str) -> LessonRecord | None:
    """The lesson as its page, export and API answer show it (`LessonRecord`), or None."""
    lesson = await get_lesson(db, lesson_id)
    if lesson is None:
        return None
    turns, turns_left_out = await _newest(db, Turn, Turn.seq, lesson_id, TURNS_SHOWN)
    events, events_left_out = await _newest(db, LessonEvent, LessonEvent.id, lesson_id, EVENTS_SHOWN)
    # The lesson's `turns` and `events`, as read: the pages only read them, so nothing is written from partial lists.
    set_committed_value(lesson, "turns", turns)
    set_committed_value(lesson, "events", events)
    return LessonRecord(lesson, events_left_out=events_left_out, turns_left_out=turns_left_out)


async def _newest(db: AsyncSession, model: type[LessonRow], order: Any, lesson_id: str,
                  shown: int) -> tuple[list[LessonRow], int]:
    """The lesson's newest `shown` rows of `model` by `order`, oldest of them first, and how many older ones there
    are (counted only when there may be some)."""
    newest = list((await db.execute(
        select(model).where(model.lesson_id == lesson_id).order_by(order.desc()).limit(shown))).scalars())
    left_out = 0
    if len(newest) == shown:
        left_out = await _count(db, model, lesson_id) - shown
    return newest[::-1], left_out


async def _count(db: AsyncSession, model: type[Turn] | type[LessonEvent], lesson_id: str) -> int:
    return int(await db.scalar(select(func.count()).select_from(model).where(model.lesson_id == lesson_id)) or 0)


async def lesson_events(db: AsyncSession, lesson_id: str, *, limit: int, offset: int = 0) -> list[LessonEvent]:
    """The lesson's events in the order they happened, `limit` of them from the `offset`-th (the first is 0). Events
    are only ever added after the others, so a page read now holds the same events when read again."""
    query = (select(LessonEvent).where(LessonEvent.lesson_id == lesson_id).order_by(LessonEvent.id)
             .limit(limit).offset(offset))
    return list((await db.execute(query)).scalars())


async def lesson_turns(db: AsyncSession, lesson_id: str, *, limit: int, offset: int = 0) -> list[Turn]:
    """The lesson's turns in order (by `seq`), `limit` of them from the `offset`-th (the first is 0)."""
    query = select(Turn).where(Turn.lesson_id == lesson_id).order_by(Turn.seq).limit(limit).offset(offset)
    return list((await db.execute(query)).scalars())


async def event_count(db: AsyncSession, lesson_id: str) -> int:
    return await _count(db, LessonEvent, lesson_id)


async def turn_count(db: AsyncSession, lesson_id: str) -> int:
    return await _count(db, Turn, lesson_id)


def _failure_since(since: datetime) -> ColumnElement[bool]:
    return and_(LessonEvent.at >= since, LessonEvent.kind.not_in(NOT_FAILURES))


class UtcDay(FunctionElement[date]):
    """The UTC calendar day of a timestamp column, in the database's own dialect: the days are counted where the rows
    are, and PostgreSQL's and SQLite's days are the same."""

    type = Date()
    name = "utc_day"
    inherit_cache = True


@compiles(UtcDay, "sqlite")
def _utc_day_sqlite(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps UtcDateTime as UTC text ("2026-03-01 23:59:59.999999"); date() reads its day (and would bring a
    # time written with an offset to UTC first).
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(UtcDay, "postgresql")
def _utc_day_postgresql(element: UtcDay, compiler: SQLCompiler, **kw: Any) -> str:
    # A timestamptz's date would be that of the session's time zone: its day in UTC, whatever the session's.
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


def failure_counts(since: datetime) -> Select[date, str, int]:
    """How many failures at or after `since` each UTC day had, by kind: counted by the database, which reads them
    through the index on `lesson_events.at` and returns one row per day and kind, however many failures there are."""
    day = UtcDay(LessonEvent.at)
    return (select(day, LessonEvent.kind, func.count()).where(_failure_since(since))
            .group_by(day, LessonEvent.kind))


async def failures_since(db: AsyncSession, since: datetime, *, listed: int) -> list[FailureDay]:
    """Every failure (a lesson event not in NOT_FAILURES) at or after `since`, counted by UTC day and kind, newest day
    first, with the newest `listed` of them (newest first) on their days. The database counts them
    (`failure_counts`): however many failures an outage or a script left, the page neither loads nor shows them all."""
    counts: dict[date, dict[str, int]] = {}
    for day, kind, number in (await db.execute(failure_counts(since))).all():
        counts.setdefault(day, {})[kind] = number
    newest = (
        select(LessonEvent, Lesson.id, Student.id, Student.name)
        .join(Lesson, Lesson.id == LessonEvent.lesson_id)
        .outerjoin(Student, Student.id == Lesson.student_id)
        .where(_failure_since(since))
        .order_by(LessonEvent.at.desc(), LessonEvent.id.desc())
        .limit(listed)
    )
    shown: dict[date, list[Failure]] = {}
    for event, lesson_id, student_id, student_name in (await db.execute(newest)).all():
        shown.setdefault(event.at.date(), []).append(Failure(event, lesson_id, student_id, student_name))
    return [FailureDay(day, dict(sorted(counts[day].items())), shown.get(day, []))
            for day in sorted(counts, reverse=True)]


async def lessons_for_export(db: AsyncSession) -> AsyncIterator[tuple[Lesson, str | None, bool]]:
    """Every lesson with its student's name and whether it was a refused start, oldest first, streamed (for the CSV
    of all lessons)."""
    query = (
        select(Lesson, Student.name, refused_start())
        .outerjoin(Student, Student.id == Lesson.student_id)
        .order_by(Lesson.started_at, Lesson.id)
        .execution_options(yield_per=500)
    )
    async for lesson, student_name, refused in await db.stream(query):
        yield lesson, student_name, bool(refused)


# What a teacher may delete from a lesson's feedback, and the field that names an entry.
FEEDBACK_LISTS = {"corrections": "said", "words": "word"}


async def delete_feedback_entry(db: AsyncSession, lesson_id: str, kind: str, index: int, named: str) -> str | None:
    """Delete entry `index` of the lesson's feedback list `kind` ("corrections" or "words"), if it is still the
    one the teacher saw (its `said` or `word` is `named`): "deleted", "changed" when it is not, None without
    such a lesson. Memory and the student's page read the feedback, so a deleted entry follows nobody."""
    lesson = await db.get(Lesson, lesson_id, with_for_update=True)
    if lesson is None:
        return None
    feedback = dict(lesson.feedback or {})
    key = "corrections" if kind == "corrections" else "new_words"
    entries = list(feedback.get(key) or [])
    if not (0 <= index < len(entries) and isinstance(entries[index], dict)
            and entries[index].get(FEEDBACK_LISTS[kind]) == named):
        return "changed"
    del entries[index]
    # A new object: SQLAlchemy writes a JSON column when it is assigned, not when it is changed in place.
    lesson.feedback = {**feedback, key: entries}
    return "deleted"


@dataclass(frozen=True)
class LessonUnderWay:
    """A lesson running now on a live instance, or `moving`: handed off by a restart and waiting, within the resume
    grace, for its page to take it over elsewhere. `link` is the lesson link it was opened with (None: the open
    page, or a link deleted since)."""

    lesson: Lesson
    student_name: str | None
    link: Link | None
    moving: bool

    @property
    def ending(self) -> bool:
        """A teacher ended it, and the worker running it has not yet."""
        return self.lesson.end_requested_at is not None and self.lesson.ended_at is None


def _under_way(now: datetime, timing: InstanceTiming) -> ColumnElement[bool]:
    alive_since = now - timedelta(seconds=timing.lost_after_s)
    moving_since = now - timedelta(seconds=timing.resume_grace_s)
    return or_(and_(Lesson.ended_at.is_(None), Instance.seen_at >= alive_since),
               and_(Lesson.end_reason == HANDED_OFF, Lesson.ended_at >= moving_since))


async def lessons_under_way(db: AsyncSession, *, now: datetime, timing: InstanceTiming) -> list[LessonUnderWay]:
    """The lessons under way across every instance sharing the records, newest first: open ones whose instance is
    alive, and those moving (handed off no longer than the resume grace ago). An open lesson of a lost instance is
    left out: no page can reach it until it is taken over."""
    query = (
        select(Lesson, Student.name, Link)
        .outerjoin(Instance, Instance.id == Lesson.instance_id)
        .outerjoin(Student, Student.id == Lesson.student_id)
        .outerjoin(Link, Link.id == Lesson.link_id)
        .where(_under_way(now, timing))
        .order_by(Lesson.started_at.desc(), Lesson.id)
    )
    return [LessonUnderWay(lesson, name, link, moving=lesson.ended_at is not None)
            for lesson, name, link in (await db.execute(query)).all()]


async def is_under_way(db: AsyncSession, lesson: Lesson, *, now: datetime, timing: InstanceTiming) -> bool:
    """Whether `lesson`, as read, is under way (`_under_way`): judged on that row, so that an end written since
    cannot leave it neither under way nor ended; only its instance's liveness is read."""
    if lesson.ended_at is not None:
        return lesson.end_reason == HANDED_OFF and lesson.ended_at >= now - timedelta(seconds=timing.resume_grace_s)
    if lesson.instance_id is None:
        return False
    seen_at = await db.scalar(select(Instance.seen_at).where(Instance.id == lesson.instance_id))
    return seen_at is not None and seen_at >= now - timedelta(seconds=timing.lost_after_s)


async def server_lost_at(db: AsyncSession, lesson: Lesson, *, now: datetime, timing: InstanceTiming) -> datetime | None:
    """When `lesson`, as read, is open but its instance has stopped answering (silent past `lost_after_s`): when that
    instance was last seen alive. None otherwise. Such a lesson is not under way, and a teacher may end it
    (`request_end`); unended, its page may take it over, or the sweep ends it as `instance_lost`."""
    if lesson.ended_at is not None or lesson.instance_id is None:
        return None
    seen_at = await db.scalar(select(Instance.seen_at).where(Instance.id == lesson.instance_id))
    return seen_at if seen_at is not None and seen_at < now - timedelta(seconds=timing.lost_after_s) else None


EndRequest = Literal["requested", "ended", "ended_lost", "already_ended"]


async def request_end(db: AsyncSession, lesson_id: str, *, now: datetime, timing: InstanceTiming) -> EndRequest | None:
    """A teacher ends the lesson: "requested" for an open one whose instance is alive (`end_requested_at`, kept from a
    first request, tells the worker running it, or the instance taking it over), "ended" for one handed off within
    the resume grace (it ends in the records as `teacher_ended`, and its page's resume is refused), "ended_lost" for an
    open one whose instance is lost (no worker checks it: it ends in the records as `teacher_ended`, when its instance
    was last seen alive), "already_ended" for one that ended otherwise (nothing is changed); None without such a
    lesson. Each end is one conditional UPDATE, so a take-over at the same moment either claims the lesson first or
    finds it ended."""
    moving = await db.execute(
        update(Lesson).where(Lesson.id == lesson_id, Lesson.end_reason == HANDED_OFF,
                             Lesson.ended_at >= now - timedelta(seconds=timing.resume_grace_s))
        .values(end_reason=Withdrawal.TEACHER_ENDED.value, end_requested_at=now))
    if _changed(moving):
        return "ended"
    if await _end_lost(db, lesson_id, now=now, lost_since=now - timedelta(seconds=timing.lost_after_s)):
        return "ended_lost"
    running = await db.execute(
        update(Lesson).where(Lesson.id == lesson_id, Lesson.ended_at.is_(None))
        .values(end_requested_at=func.coalesce(Lesson.end_requested_at, now)))
    if _changed(running):
        return "requested"
    return "already_ended" if await db.get(Lesson, lesson_id) is not None else None


async def _end_lost(db: AsyncSession, lesson_id: str, *, now: datetime, lost_since: datetime) -> bool:
    """End as `teacher_ended` the open lesson `lesson_id` if its instance was last seen before `lost_since`: dated
    when that instance was last seen alive, and with its `instance_lost` event, as `app.store.instances` ends the
    lessons of lost instances. Whether it was."""
    found = (await db.execute(
        select(Lesson.instance_id, Lesson.started_at, Instance.seen_at)
        .join(Instance, Instance.id == Lesson.instance_id)
        .where(Lesson.id == lesson_id, Lesson.ended_at.is_(None), Instance.seen_at < lost_since))).one_or_none()
    if found is None:
        return False
    instance_id, started_at, seen_at = found
    owner_seen_at = select(Instance.seen_at).where(Instance.id == Lesson.instance_id).scalar_subquery()
    # Unless taken over, or its instance back, meanwhile.
    ended = await db.execute(
        update(Lesson).where(Lesson.id == lesson_id, Lesson.ended_at.is_(None), Lesson.instance_id == instance_id,
                             owner_seen_at < lost_since)
        .values(ended_at=seen_at, end_reason=Withdrawal.TEACHER_ENDED.value, end_requested_at=now,
                duration_s=max(0.0, (seen_at - started_at).total_seconds())))
    if not _changed(ended):
        return False
    db.add(instance_lost_event(lesson_id, instance_id, seen_at, now=now))
    return True
