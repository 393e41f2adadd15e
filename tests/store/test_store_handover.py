"""Taking over a handed-over lesson from the store (SQLite, then PostgreSQL): claimed once, refused with why."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.errors import ResumeElsewhere, ResumeNotYet, ResumeRefused
from app.store.handover import HANDED_OFF, TakenOverLesson, take_over_lesson
from app.store.models import Lesson, Turn

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
GRACE_S = 30.0


async def lesson(sessions: async_sessionmaker[AsyncSession], *, end_reason: str | None, ended_at: datetime | None,
                 lesson_id: str = "L1") -> None:
    async with sessions.begin() as session:
        session.add(Lesson(id=lesson_id, level="A2", started_at=T0, model="gpt-realtime-2.1", simulated=True,
                           ended_at=ended_at, end_reason=end_reason, audio_input_tokens=100, text_input_tokens=20,
                           cached_tokens=5, audio_output_tokens=300, text_output_tokens=40))
        await session.flush()
        for seq, role, text in ((1, "tutor", "Hello Ana!"), (3, "tutor", "What is your favourite food?"),
                                (2, "student", "Hi.")):
            session.add(Turn(lesson_id=lesson_id, seq=seq, role=role, text=text, started_at=T0, ended_at=T0))


async def test_a_handed_over_lesson_is_taken_over_once_with_its_turns_and_usage(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    handed_off_at = T0 + timedelta(minutes=10)
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=handed_off_at)
    taken = await take_over_lesson(sessions, "L1", grace_s=GRACE_S, now=handed_off_at + timedelta(seconds=5))
    assert taken.turns == [(1, "tutor", "Hello Ana!"), (2, "student", "Hi."),
                           (3, "tutor", "What is your favourite food?")]
    assert taken.tokens == {"audio_input_tokens": 100, "text_input_tokens": 20, "cached_tokens": 5,
                            "audio_output_tokens": 300, "text_output_tokens": 40}
    assert taken.started_at == T0
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.ended_at, row.end_reason) == (None, None)  # running again, here
    with pytest.raises(ResumeNotYet):
        await take_over_lesson(sessions, "L1", grace_s=GRACE_S, now=handed_off_at + timedelta(seconds=6))


async def test_two_take_overs_at_once_claim_the_lesson_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    await lesson(sessions, end_reason=HANDED_OFF, ended_at=T0)
    now = T0 + timedelta(seconds=1)
    outcomes = await asyncio.gather(*(take_over_lesson(sessions, "L1", grace_s=GRACE_S, now=now) for _ in range(2)),
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
        await take_over_lesson(sessions, "L1", grace_s=GRACE_S, now=T0 + timedelta(seconds=resumed_after_s))
    if isinstance(refused.value, ResumeRefused):
        assert refused.value.code == ("lesson_ended" if end_reason == "student_ended" else "resume_expired")
    async with sessions() as session:
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert row.end_reason == end_reason  # untouched


async def test_a_lesson_not_in_the_store_yet_is_tried_again(sessions: async_sessionmaker[AsyncSession]) -> None:
    with pytest.raises(ResumeNotYet):
        await take_over_lesson(sessions, "nowhere", grace_s=GRACE_S, now=T0)
