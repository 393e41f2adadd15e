"""Taking over a lesson from the store (SQLite, then PostgreSQL), handed over or left by a lost instance: claimed
once, by the instance that resumes it, refused with why."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app import protocol
from app.errors import ResumeElsewhere, ResumeNotYet, ResumeRefused
from app.recorder import LessonRecorder
from app.records import LessonStarted
from app.store.handover import HANDED_OFF, TakenOverLesson, give_back_lesson, take_over_lesson
from app.store.instances import INSTANCE_LOST, InstanceTiming, end_lessons_of_lost_instances
from app.store.models import Instance, Lesson, LessonEvent, Link, Student, Turn
from app.store.writer import RecordWriter
from app.usage import LessonUsage

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PRICES = {"audio_input": 32.0, "audio_output": 64.0, "text_input": 4.0, "text_output": 16.0, "cached": 0.4}
GRACE_S = 30.0
LOST_AFTER_S = 15.0
TIMING = InstanceTiming(lost_after_s=LOST_AFTER_S, resume_grace_s=GRACE_S, max_lesson_s=3600)


async def take_over(sessions: async_sessionmaker[AsyncSession], lesson_id: str, *, now: datetime,
                    by: str = "B") -> TakenOverLesson:
    return await take_over_lesson(sessions, lesson_id, instance_id=by, timing=TIMING, now=now)


async def instance(sessions: async_sessionmaker[AsyncSession], instance_id: str, *, seen_at: datetime) -> None:
    async with sessions.begin() as session:
        session.add(Instance(id=instance_id, started_at=T0 - timedelta(hours=1), seen_at=seen_at))


async def lesson(sessions: async_sessionmaker[AsyncSession], *, end_reason: str | None, ended_at: datetime | None,
                 lesson_id: str = "L1", instance_id: str | None = "A", student_id: str | None = None,
                 link_id: str | None = None) -> None:
    async with sessions.begin() as session:
        session.add(Lesson(id=lesson_id, level="A2", started_at=T0, model="gpt-realtime-2.1", simulated=True,
                           instance_id=instance_id, student_id=student_id, link_id=link_id,
                           ended_at=ended_at, end_reason=end_reason, audio_input_tokens=100, text_input_tokens=20,
                           cached_tokens=5, audio_output_tokens=300, text_output_tokens=40))
        await session.flush()
        for seq, role, text in ((1, "tutor", "Hello Ana!"), (3, "tutor", "What is your favourite food?"),
                                (2, "student", "Hi.")):
            session.add(Turn(lesson_id=lesson_id, seq=seq, role=role, text=text, started_at=T0, ended_at=T0))


async def instance_lost_events(sessions: async_sessionmaker[AsyncSession]) -> list[dict[str, Any]]:
    async with sessions() as session:
        return list((await session.scalars(select(LessonEvent.detail).where(
            LessonEvent.lesson_id == "L1", LessonEvent.kind == INSTANCE_LOST))).all())


async def test_a_handed_over_lesson_is_taken_over_once_with_its_turns_and_usage(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    handed_off_at = T0 + timedelta(minutes=10)
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=handed_off_at)
    taken = await take_over(sessions, "L1", now=handed_off_at + timedelta(seconds=5))
    assert taken.turns == [(1, "tutor", "Hello Ana!", False), (2, "student", "Hi.", False),
                           (3, "tutor", "What is your favourite food?", False)]
    assert taken.tokens == {"audio_input_tokens": 100, "text_input_tokens": 20, "cached_tokens": 5,
                            "audio_output_tokens": 300, "text_output_tokens": 40}
    assert (taken.started_at, taken.from_lost_instance, taken.target_language) == (T0, False, None)
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.ended_at, row.end_reason, row.instance_id) == (None, None, "B")  # running again, here
    with pytest.raises(ResumeNotYet):
        await take_over(sessions, "L1", now=handed_off_at + timedelta(seconds=6), by="C")


async def test_a_taken_over_lesson_keeps_the_target_language_the_teacher_set_for_its_student(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions.begin() as session:
        session.add_all([Student(id="S1", name="Sofía", level="A2", target_language="Spanish"),
                         Student(id="S2", name="Bruno", level="A2")])
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0, lesson_id="L1", student_id="S1")
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0, lesson_id="L2", student_id="S2")
    spanish = await take_over(sessions, "L1", now=T0 + timedelta(seconds=1))
    default = await take_over(sessions, "L2", now=T0 + timedelta(seconds=1))
    assert (spanish.student_id, spanish.target_language) == ("S1", "Spanish")
    assert (default.student_id, default.target_language) == ("S2", None)


async def test_a_cut_turn_is_taken_over_as_the_student_heard_it_and_marked_cut(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0)
    async with sessions.begin() as session:
        session.add_all([
            Turn(lesson_id="L1", seq=4, role="student", text="Pizza.", started_at=T0, ended_at=T0),
            Turn(lesson_id="L1", seq=5, role="tutor", text="Pizza is great. Do you make it at home?", started_at=T0,
                 ended_at=T0, interrupted=True, heard_ms=900, heard_text="Pizza is great."),
            # Cut before the heard words were kept: all its text is what there is.
            Turn(lesson_id="L1", seq=6, role="tutor", text="Tell me more about it.", started_at=T0, ended_at=T0,
                 interrupted=True, heard_ms=400),
        ])
    taken = await take_over(sessions, "L1", now=T0 + timedelta(seconds=1))
    assert taken.turns[3:] == [(4, "student", "Pizza.", False), (5, "tutor", "Pizza is great.", True),
                               (6, "tutor", "Tell me more about it.", True)]


async def test_a_lesson_taken_over_is_priced_as_it_was_where_its_cached_input_was_text(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A response that read its 600 tokens of instructions from the cache: text, four times cheaper than audio.
    usage = LessonUsage()
    usage.add(protocol.Usage.model_validate({
        "total_tokens": 1300, "input_tokens": 1000, "output_tokens": 300,
        "input_token_details": {"text_tokens": 700, "audio_tokens": 300, "cached_tokens": 600,
                                "cached_tokens_details": {"text_tokens": 600, "audio_tokens": 0}},
        "output_token_details": {"text_tokens": 50, "audio_tokens": 250}}))
    cost = usage.cost_usd(PRICES)
    recorder = LessonRecorder("L1", T0)
    writer = RecordWriter(engine)
    writer.start()
    try:
        writer.put(LessonStarted(lesson_id="L1", started_at=T0, level="A2", model="m", simulated=True))
        writer.put(recorder.usage(usage.recorded_counts(), cost).record)
        writer.put(recorder.ended(60.0, end_reason=HANDED_OFF, duration_s=60.0, usage=usage.recorded_counts(),
                                  estimated_cost_usd=cost).record)
        await writer.flushed()
    finally:
        await writer.stop(grace_s=5)
    taken = await take_over(sessions, "L1", now=T0 + timedelta(seconds=61))
    carried = LessonUsage()
    carried.carry(taken.tokens)
    # Taken off the audio input first (all 300 of it), the cached tokens made it $0.0084 cheaper than it was.
    assert carried.cost_usd(PRICES) == cost


async def test_a_lesson_recorded_without_its_cached_split_is_not_priced_lower_after_a_take_over(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0)  # 100 audio, 20 text and 5 cached input tokens
    taken = await take_over(sessions, "L1", now=T0 + timedelta(seconds=1))
    assert "cached_audio_tokens" not in taken.tokens
    carried = LessonUsage()
    carried.carry(taken.tokens)
    # Whichever input the 5 cached tokens came off, the estimate is at least what it was.
    assert (carried.cached_text_tokens, carried.cached_audio_tokens) == (5, 0)
    assert carried.cost_usd(PRICES) == round((100 * 32 + 15 * 4 + 5 * 0.4 + 300 * 64 + 40 * 16) / 1e6, 6)


async def test_a_lesson_given_back_by_the_instance_that_claimed_it_is_taken_over_by_the_next_resume(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0)
    await take_over(sessions, "L1", now=T0 + timedelta(seconds=1), by="B")
    # Another instance cannot give back what it did not claim.
    await give_back_lesson(sessions, "L1", instance_id="C", now=T0 + timedelta(seconds=2))
    with pytest.raises(ResumeNotYet):
        await take_over(sessions, "L1", now=T0 + timedelta(seconds=2), by="C")
    await give_back_lesson(sessions, "L1", instance_id="B", now=T0 + timedelta(seconds=3))
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.end_reason, row.instance_id) == (HANDED_OFF, "B")
    taken = await take_over(sessions, "L1", now=T0 + timedelta(seconds=4), by="C")
    assert taken.lesson_id == "L1"


async def test_two_take_overs_at_once_claim_the_lesson_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0)
    now = T0 + timedelta(seconds=1)
    outcomes = await asyncio.gather(*(take_over(sessions, "L1", now=now, by=by) for by in ("B", "C")),
                                    return_exceptions=True)
    taken = [outcome for outcome in outcomes if isinstance(outcome, TakenOverLesson)]
    # The other finds the lesson running again: on another worker, which it asks to hand the lesson over.
    refused = [outcome for outcome in outcomes if isinstance(outcome, ResumeElsewhere)]
    assert (len(taken), len(refused)) == (1, 1)


@pytest.mark.parametrize(("end_reason", "ended_after_s", "resumed_after_s", "refusal"), [
    (None, None, 10, ResumeNotYet),  # still open on the instance that runs it
    ("student_ended", 60, 65, ResumeRefused),
    (HANDED_OFF, 60, 60 + GRACE_S + 1, ResumeRefused),  # waited longer than the grace
])
async def test_a_lesson_not_handed_over_or_handed_over_too_long_ago_is_not_taken_over(
    sessions: async_sessionmaker[AsyncSession], end_reason: str | None, ended_after_s: float | None,
    resumed_after_s: float, refusal: type[Exception],
) -> None:
    ended_at = None if ended_after_s is None else T0 + timedelta(seconds=ended_after_s)
    await lesson(sessions, end_reason=end_reason, ended_at=ended_at)
    with pytest.raises(refusal) as refused:
        await take_over(sessions, "L1", now=T0 + timedelta(seconds=resumed_after_s))
    if isinstance(refused.value, ResumeRefused):
        assert refused.value.code == ("lesson_ended" if end_reason == "student_ended" else "resume_expired")
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert row.end_reason == end_reason  # untouched


@pytest.mark.parametrize(("end_reason", "code"), [("time_limit", "lesson_ended"), ("teacher_ended", "teacher_ended")])
async def test_a_lesson_that_ended_with_its_feedback_is_refused_with_its_feedback_and_end_reason(
    sessions: async_sessionmaker[AsyncSession], end_reason: str, code: str
) -> None:
    # Its page was away (or resuming on another worker) while the feedback came: the refusal carries it.
    feedback = {"summary": "We talked about food.", "corrections": [], "new_words": [], "next_step": "Practise."}
    await lesson(sessions, end_reason=end_reason, ended_at=T0 + timedelta(seconds=60))
    async with sessions.begin() as session:
        (await session.get_one(Lesson, "L1")).feedback = feedback
    with pytest.raises(ResumeRefused) as refused:
        await take_over(sessions, "L1", now=T0 + timedelta(seconds=61))
    assert refused.value.code == code
    assert refused.value.ended_with == (end_reason, feedback)
    await lesson(sessions, end_reason="student_ended", ended_at=T0 + timedelta(seconds=60), lesson_id="L2")
    with pytest.raises(ResumeRefused) as without_feedback:
        await take_over(sessions, "L2", now=T0 + timedelta(seconds=61))
    assert without_feedback.value.ended_with is None


async def test_a_lesson_not_in_the_store_yet_is_tried_again(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(ResumeNotYet):
        await take_over(sessions, "nowhere", now=T0)


# ---- an instance that stopped answering ------------------------------------------------------------


async def test_a_lesson_left_by_an_instance_silent_past_lost_after_is_taken_over_by_the_instance_it_resumes_on(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    await instance(sessions, "A", seen_at=T0)
    await lesson(sessions, end_reason=None, ended_at=None)
    with pytest.raises(ResumeElsewhere):  # A may only be slow: not yet
        await take_over(sessions, "L1", now=T0 + timedelta(seconds=LOST_AFTER_S - 1))
    resumed_at = T0 + timedelta(seconds=LOST_AFTER_S + 1)
    await instance(sessions, "B", seen_at=resumed_at)
    taken = await take_over(sessions, "L1", now=resumed_at)
    assert taken.from_lost_instance
    assert [turn.seq for turn in taken.turns] == [1, 2, 3]
    assert taken.tokens["audio_output_tokens"] == 300
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.ended_at, row.end_reason, row.instance_id) == (None, None, "B")
    # B is alive: a second page of the lesson finds it running there, not left.
    with pytest.raises(ResumeElsewhere):
        await take_over(sessions, "L1", now=resumed_at + timedelta(seconds=1), by="C")


async def test_two_take_overs_of_a_lost_instances_lesson_at_once_claim_it_once(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    now = T0 + timedelta(seconds=LOST_AFTER_S + 1)
    for alive in ("B", "C"):
        await instance(sessions, alive, seen_at=now)
    await instance(sessions, "A", seen_at=T0)
    await lesson(sessions, end_reason=None, ended_at=None)
    outcomes = await asyncio.gather(*(take_over(sessions, "L1", now=now, by=by) for by in ("B", "C")),
                                    return_exceptions=True)
    taken = [outcome for outcome in outcomes if isinstance(outcome, TakenOverLesson)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, ResumeElsewhere)]
    assert (len(taken), len(refused)) == (1, 1)


@pytest.mark.parametrize(("owner", "seen_before_s", "refusal", "code"), [
    ("A", LOST_AFTER_S + GRACE_S + 1, ResumeRefused, "resume_expired"),  # lost longer ago than the grace
    (None, 3600, ResumeElsewhere, "resume_not_yet"),  # kept before instances were: nothing says it is lost
])
async def test_a_lesson_of_a_lost_instance_is_not_taken_over_past_the_grace_nor_one_without_an_instance(
    sessions: async_sessionmaker[AsyncSession], owner: str | None, seen_before_s: float,
    refusal: type[Exception], code: str,
) -> None:
    await instance(sessions, "A", seen_at=T0)
    await lesson(sessions, end_reason=None, ended_at=None, instance_id=owner)
    with pytest.raises(refusal) as refused:
        await take_over(sessions, "L1", now=T0 + timedelta(seconds=seen_before_s))
    assert getattr(refused.value, "code", None) == code
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.ended_at, row.instance_id) == (None, owner)


@pytest.mark.parametrize("left_by_lost_instance", [False, True])
async def test_a_lesson_its_teacher_ended_while_no_instance_ran_it_is_refused_and_ends_when_it_stopped(
    sessions: async_sessionmaker[AsyncSession], left_by_lost_instance: bool
) -> None:
    now = T0 + timedelta(minutes=10)
    # When the lesson stopped: its instance's last heartbeat, or its hand-off (recorded with its duration).
    stopped_at = now - timedelta(seconds=LOST_AFTER_S + 5) if left_by_lost_instance else now - timedelta(seconds=5)
    if left_by_lost_instance:
        await instance(sessions, "A", seen_at=stopped_at)
        await lesson(sessions, end_reason=None, ended_at=None)
    else:
        # Ended on the desk while it ran, and handed off by a restart before its worker's next check.
        await lesson(sessions, end_reason=HANDED_OFF, ended_at=stopped_at)
    async with sessions.begin() as session:
        row = await session.get_one(Lesson, "L1")
        row.end_requested_at = now - timedelta(seconds=6)
        if not left_by_lost_instance:
            row.duration_s = 594.0
    with pytest.raises(ResumeRefused) as refused:
        await take_over(sessions, "L1", now=now)
    async with sessions() as session:
        row = await session.get_one(Lesson, "L1")
    assert (refused.value.code, refused.value.student_message) == (
        "teacher_ended", "Your teacher has ended this lesson.")
    assert (row.end_reason, row.ended_at, row.instance_id) == ("teacher_ended", stopped_at, "A")
    assert row.duration_s == ((stopped_at - T0).total_seconds() if left_by_lost_instance else 594.0)
    # A lost instance's lesson keeps its loss for the desk's Failures page, once: no sweep records it again.
    await end_lessons_of_lost_instances(sessions, TIMING, now=now + timedelta(seconds=GRACE_S))
    assert await instance_lost_events(sessions) == (
        [{"instance_id": "A", "last_seen_at": stopped_at.isoformat()}] if left_by_lost_instance else [])


@pytest.mark.parametrize("left_by_lost_instance", [False, True])
async def test_a_lesson_whose_link_was_revoked_while_no_instance_ran_it_ends_when_it_stopped(
    sessions: async_sessionmaker[AsyncSession], left_by_lost_instance: bool
) -> None:
    now = T0 + timedelta(minutes=10)
    stopped_at = now - timedelta(seconds=LOST_AFTER_S + 5) if left_by_lost_instance else now - timedelta(seconds=5)
    async with sessions.begin() as session:
        session.add(Student(id="S1", name="Ana", level="A2"))
        await session.flush()
        session.add(Link(id="K1", student_id="S1", revoked_at=now - timedelta(seconds=2)))
    if left_by_lost_instance:
        await instance(sessions, "A", seen_at=stopped_at)
    await lesson(sessions, end_reason=None if left_by_lost_instance else HANDED_OFF,
                 ended_at=None if left_by_lost_instance else stopped_at, student_id="S1", link_id="K1")
    with pytest.raises(ResumeRefused) as refused:
        await take_over(sessions, "L1", now=now)
    async with sessions() as session:
        row = await session.get_one(Lesson, "L1")
    assert refused.value.code == "link_revoked"
    assert (row.end_reason, row.ended_at, row.instance_id) == ("link_revoked", stopped_at, "A")
    assert await instance_lost_events(sessions) == (
        [{"instance_id": "A", "last_seen_at": stopped_at.isoformat()}] if left_by_lost_instance else [])
    if left_by_lost_instance:
        assert row.duration_s == (stopped_at - T0).total_seconds()
