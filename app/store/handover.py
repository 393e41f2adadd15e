"""Taking over a lesson from another instance: the lesson's row, claimed once, and its turns.

An instance that drains for a redeploy ends each lesson as `handed_off` (its usage and duration so far, its
turns written before it). An instance that was killed hands nothing over: its lessons stay open, and once it
has been silent for `lost_after_s` (`app.store.instances`) they may be taken over as they are. The instance
a page resumes on claims the row in one conditional UPDATE that also makes it the lesson's instance, so two
resumes of one lesson never both take it over, and reads what the lesson needs to go on. The route calls
this under `LOOKUP_TIMEOUT_S` before the lesson's machine is built. A claimed lesson that finds no place here
(capacity, start rates), or whose machine cannot be built, is given back, handed off again, for the page's next
attempt to take over.

A lesson its teacher withdrew meanwhile is not taken over: it ends when it stopped, at its hand-off (with the
duration its instance recorded), or, as `app.store.instances` dates the lessons of lost instances, at its lost
instance's last heartbeat (its duration counted to then). It keeps the instance that ran it, and a lost instance's
lesson keeps the `instance_lost` event the sweep would have recorded. A lesson that has ended is refused as
withdrawn, without its feedback, once its link is revoked or its student archived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, NamedTuple, cast

from sqlalchemy import ColumnExpressionArgument, Update, and_, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql import ColumnElement

from app.errors import ResumeElsewhere, ResumeNotYet, ResumeRefused
from app.resume import ended_refusal
from app.store.instances import InstanceTiming, instance_lost_event
from app.store.models import Instance, Lesson, Link, Student, Turn
from app.store.queries import link_states, withdrawals
from app.withdrawal import Withdrawal

HANDED_OFF = "handed_off"


class CarriedTurn(NamedTuple):
    seq: int
    role: Literal["tutor", "student"]
    # What the student heard: the whole turn, or of a tutor turn cut short the words they heard of it.
    text: str
    # A tutor turn cut short: the page shows it marked "Cut off".
    cut: bool


@dataclass(frozen=True)
class TakenOverLesson:
    lesson_id: str
    student_id: str | None
    link_id: str | None
    # The language the teacher set for the lesson's student, if any.
    target_language: str | None
    level: str
    started_at: datetime
    # The turns so far, as the student heard them, in the order they began.
    turns: list[CarriedTurn]
    tokens: dict[str, int]
    # Taken from an instance that stopped answering, rather than handed over by one that was stopping.
    from_lost_instance: bool


async def take_over_lesson(sessions: async_sessionmaker[AsyncSession], lesson_id: str, *, instance_id: str,
                           timing: InstanceTiming, now: datetime, link_id: str | None = None) -> TakenOverLesson:
    """Claim for `instance_id` a lesson handed over, or left by a lost instance, no longer than the resume grace
    ago, or say why not: `ResumeNotYet` while it is neither (the page tries again), `ResumeRefused` when it
    ended or waited too long, or when the teacher withdrew its link or ended it meanwhile (it then ends as withdrawn).
    `link_id`, the lesson link its resume token names, tells a lesson deleted with its student from one whose
    first record has not arrived yet.

    The claim is the first statement, so it takes the database's write lock before anything is read: of two
    resumes at once, the second waits for the first and then finds the lesson open again."""
    grace = timedelta(seconds=timing.resume_grace_s)
    lost_since = now - timedelta(seconds=timing.lost_after_s)
    owner_seen_at = select(Instance.seen_at).where(Instance.id == Lesson.instance_id).scalar_subquery()
    handed_over = and_(Lesson.end_reason == HANDED_OFF, Lesson.ended_at >= now - grace)
    left_by_lost_instance = and_(Lesson.ended_at.is_(None), owner_seen_at < lost_since,
                                 owner_seen_at >= lost_since - grace)
    async with sessions.begin() as session:
        from_lost_instance = False
        if not await _claimed(session, _claim(lesson_id, handed_over, stopped_at=Lesson.ended_at)):
            from_lost_instance = await _claimed(session, _claim(lesson_id, left_by_lost_instance,
                                                                stopped_at=owner_seen_at))
            if not from_lost_instance:
                raise await _why_not(session, lesson_id, timing.resume_grace_s, too_late=lost_since - grace,
                                     link_id=link_id)
        lesson = await session.get(Lesson, lesson_id)
        assert lesson is not None
        withdrawal = await _withdrawal(session, lesson)
        if withdrawal is None:
            lesson.ended_at, lesson.end_reason, lesson.instance_id = None, None, instance_id
            return await _taken_over(session, lesson, from_lost_instance)
        # Withdrawn, or ended by its teacher, while no instance ran it: it ends when it stopped, without the
        # feedback there is no tutor session left to ask for.
        lesson.end_reason = withdrawal.value
        if from_lost_instance:
            assert lesson.ended_at is not None  # its claim set it to the lost instance's last heartbeat
            lesson.duration_s = max(0.0, (lesson.ended_at - lesson.started_at).total_seconds())
            session.add(instance_lost_event(lesson_id, lesson.instance_id, lesson.ended_at, now=now))
    raise ResumeRefused.withdrawn(f"lesson {lesson_id!r} not taken over: its teacher withdrew it ({withdrawal})",
                                  withdrawal)


async def _withdrawal(session: AsyncSession, lesson: Lesson) -> Withdrawal | None:
    if lesson.link_id is not None and (withdrawal := await _link_withdrawal(session, lesson.link_id)) is not None:
        return withdrawal
    return Withdrawal.TEACHER_ENDED if lesson.end_requested_at is not None else None


async def _link_withdrawal(session: AsyncSession, link_id: str) -> Withdrawal | None:
    states = (await session.execute(link_states([link_id]))).all()
    return withdrawals([link_id], states).get(link_id)


async def _taken_over(session: AsyncSession, lesson: Lesson, from_lost_instance: bool) -> TakenOverLesson:
    lesson_id = lesson.id
    turns = (await session.execute(
        select(Turn.seq, Turn.role, Turn.text, Turn.interrupted, Turn.heard_text)
        .where(Turn.lesson_id == lesson_id).order_by(Turn.seq))).all()
    student = await session.get(Student, lesson.student_id) if lesson.student_id is not None else None
    return TakenOverLesson(
        lesson_id=lesson.id, student_id=lesson.student_id, link_id=lesson.link_id,
        target_language=student.target_language if student is not None else None, level=lesson.level,
        started_at=lesson.started_at,
        turns=[_carried(seq, role, text, interrupted, heard_text)
               for seq, role, text, interrupted, heard_text in turns],
        tokens=_tokens(lesson),
        from_lost_instance=from_lost_instance,
    )


async def give_back_lesson(sessions: async_sessionmaker[AsyncSession], lesson_id: str, *, instance_id: str,
                           now: datetime) -> None:
    """A lesson `instance_id` claimed but cannot run: handed off again at `now`, as a draining instance hands its
    lessons off, so that a resume within the grace takes it over here or on any instance. Left claimed, it would
    stay open with no instance running it, refusing every resume, until this instance is gone."""
    async with sessions.begin() as session:
        await session.execute(update(Lesson).where(Lesson.id == lesson_id, Lesson.instance_id == instance_id,
                                                   Lesson.ended_at.is_(None))
                              .values(ended_at=now, end_reason=HANDED_OFF))


def _tokens(lesson: Lesson) -> dict[str, int]:
    """The lesson's token (and response) counts as `LessonUsage.carry` takes them: without the cached split or the
    responses when they are not known (a lesson recorded before they were kept)."""
    tokens = {"audio_input_tokens": lesson.audio_input_tokens, "text_input_tokens": lesson.text_input_tokens,
              "cached_tokens": lesson.cached_tokens, "audio_output_tokens": lesson.audio_output_tokens,
              "text_output_tokens": lesson.text_output_tokens}
    if lesson.cached_audio_tokens is not None and lesson.cached_text_tokens is not None:
        tokens |= {"cached_audio_tokens": lesson.cached_audio_tokens, "cached_text_tokens": lesson.cached_text_tokens}
    if lesson.responses is not None:
        tokens["responses"] = lesson.responses
    return tokens


def _carried(seq: int, role: str, text: str, interrupted: bool, heard_text: str | None) -> CarriedTurn:
    """A turn as the student heard it. A cut turn recorded before the heard words were kept (`heard_text` NULL)
    comes back marked with all its text, the only text there is."""
    heard = heard_text if interrupted and heard_text is not None else text
    return CarriedTurn(seq, cast(Literal["tutor", "student"], role), heard, interrupted)


def _claim(lesson_id: str, condition: ColumnElement[bool], *,
           stopped_at: ColumnExpressionArgument[datetime | None]) -> Update:
    """The claim of a lesson in `condition`: its row locked for this transaction, `ended_at` set to when it stopped
    (until the lesson is known not withdrawn: then it is reopened for this instance)."""
    return update(Lesson).where(Lesson.id == lesson_id, condition).values(ended_at=stopped_at)


async def _claimed(session: AsyncSession, claim: Update) -> bool:
    return cast(CursorResult[tuple[()]], await session.execute(claim)).rowcount == 1


async def _why_not(session: AsyncSession, lesson_id: str, grace_s: float, *,
                   too_late: datetime, link_id: str | None) -> ResumeNotYet | ResumeRefused:
    lesson = await session.get(Lesson, lesson_id)
    if lesson is None and link_id is not None and await session.get(Link, link_id) is None:
        # Its student was deleted, with their links and lessons.
        return ResumeRefused.withdrawn(f"lesson {lesson_id!r} is gone with the student of link {link_id!r}",
                                       Withdrawal.STUDENT_REMOVED)
    if lesson is None:
        # Its first record may still be on its way from the instance that started it.
        return ResumeNotYet(f"lesson {lesson_id!r} is not in the store (yet)")
    if lesson.ended_at is None:
        owner = await session.get(Instance, lesson.instance_id) if lesson.instance_id else None
        if owner is not None and owner.seen_at < too_late:
            return ResumeRefused.expired(f"lesson {lesson_id!r} was left by an instance last seen at "
                                         f"{owner.seen_at.isoformat()}, lost more than {grace_s:g} s ago")
        return ResumeElsewhere(f"lesson {lesson_id!r} is open on another instance, or was just taken over")
    if lesson.link_id is not None and (link_withdrawn := await _link_withdrawal(session, lesson.link_id)):
        # Its link revoked, or its student archived, since it ended: its page is given nothing more of it.
        return ResumeRefused.withdrawn(f"lesson {lesson_id!r} ended ({lesson.end_reason}), and then its teacher "
                                       f"withdrew its link ({link_withdrawn})", link_withdrawn)
    # Its page may have missed the end with its feedback (away, or resuming on another worker, while it came).
    ended_with = None if lesson.feedback is None else (lesson.end_reason or "", lesson.feedback)
    if lesson.end_reason != HANDED_OFF:
        return ended_refusal(lesson_id, lesson.end_reason or "", ended_with)
    return ResumeRefused.expired(f"lesson {lesson_id!r} was handed off at {lesson.ended_at.isoformat()}, "
                                 f"more than {grace_s:g} s ago")
