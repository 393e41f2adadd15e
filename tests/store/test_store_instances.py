"""Instances in the store (SQLite, then PostgreSQL): who runs each lesson, and the lessons of a lost instance
ended when no page can take them over any more; only a lesson's own instance writes its end."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime, timedelta

from harness import logged
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.metrics import LessonMetrics
from app.records import FeedbackGiven, LessonEnded, LessonStarted, UsageSoFar
from app.settings import Settings
from app.store.instances import (
    FORGET_AFTER,
    INSTANCE_LOST,
    InstanceTiming,
    end_lessons_of_lost_instances,
    keep_alive,
    register_instance,
)
from app.store.models import Instance, Lesson, LessonEvent, Turn, utcnow
from app.store.runtime import open_store
from app.store.writer import RecordWriter

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
TIMING = InstanceTiming(lost_after_s=15, resume_grace_s=30, max_lesson_s=3600)
# Past the lost instance's silence and the grace in which a page could still have taken its lessons over.
TOO_LATE = T0 + timedelta(seconds=15 + 30 + 1)


async def add_instance(sessions: async_sessionmaker[AsyncSession], instance_id: str, seen_at: datetime) -> None:
    async with sessions.begin() as session:
        session.add(Instance(id=instance_id, started_at=seen_at - timedelta(hours=1), seen_at=seen_at))


async def add_lesson(sessions: async_sessionmaker[AsyncSession], lesson_id: str, *, instance_id: str | None,
                     started_at: datetime, ended_at: datetime | None = None, last_turn_at: datetime | None = None,
                     ) -> None:
    async with sessions.begin() as session:
        session.add(Lesson(id=lesson_id, level="B1", started_at=started_at, model="gpt-realtime", simulated=True,
                           instance_id=instance_id, ended_at=ended_at,
                           end_reason=None if ended_at is None else "student_ended"))
        await session.flush()
        if last_turn_at is not None:
            session.add(Turn(lesson_id=lesson_id, seq=1, role="tutor", text="Hello!", started_at=started_at,
                             ended_at=last_turn_at))


async def test_the_lessons_of_an_instance_lost_past_the_grace_end_when_it_was_last_seen_and_the_rest_go_on(
    sessions: async_sessionmaker[AsyncSession], store_log: io.StringIO
) -> None:
    started = T0 - timedelta(minutes=20)
    await add_instance(sessions, "lost", T0)
    await add_instance(sessions, "alive", TOO_LATE)
    await add_lesson(sessions, "of-lost", instance_id="lost", started_at=started)
    await add_lesson(sessions, "of-lost-ended", instance_id="lost", started_at=started, ended_at=T0)
    await add_lesson(sessions, "of-alive", instance_id="alive", started_at=started)
    # Kept before instances were recorded: ended once it must be over, at its last turn.
    await add_lesson(sessions, "unowned-old", instance_id=None, started_at=T0 - timedelta(hours=2),
                     last_turn_at=T0 - timedelta(hours=1, minutes=50))
    await add_lesson(sessions, "unowned-recent", instance_id=None, started_at=started)

    ended = await end_lessons_of_lost_instances(sessions, TIMING, now=TOO_LATE)

    assert sorted(ended) == ["of-lost", "unowned-old"]
    async with sessions() as session:
        rows = {row.id: row for row in (await session.scalars(select(Lesson))).all()}
        events = (await session.scalars(select(LessonEvent).where(LessonEvent.kind == INSTANCE_LOST)
                                        .order_by(LessonEvent.lesson_id))).all()
    lost = rows["of-lost"]
    assert (lost.ended_at, lost.end_reason, lost.duration_s) == (T0, INSTANCE_LOST, 20 * 60)
    unowned = rows["unowned-old"]
    assert (unowned.ended_at, unowned.end_reason, unowned.duration_s) == (T0 - timedelta(hours=1, minutes=50),
                                                                          INSTANCE_LOST, 10 * 60)
    assert rows["of-lost-ended"].end_reason == "student_ended"
    assert rows["of-alive"].ended_at is None
    assert rows["unowned-recent"].ended_at is None
    assert [(event.lesson_id, event.detail["instance_id"]) for event in events] == [("of-lost", "lost"),
                                                                                    ("unowned-old", None)]
    assert [line["lesson_id"] for line in logged(store_log, "lesson_lost_with_instance")] == ["of-lost", "unowned-old"]


async def test_a_lost_instances_lesson_is_left_open_while_a_page_may_still_take_it_over(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    await add_instance(sessions, "lost", T0)
    await add_lesson(sessions, "L1", instance_id="lost", started_at=T0 - timedelta(minutes=5))
    assert await end_lessons_of_lost_instances(sessions, TIMING, now=TOO_LATE - timedelta(seconds=2)) == []
    assert await end_lessons_of_lost_instances(sessions, TIMING, now=TOO_LATE) == ["L1"]
    assert await end_lessons_of_lost_instances(sessions, TIMING, now=TOO_LATE) == []  # once


async def test_instances_silent_for_a_day_are_forgotten_once_their_lessons_are_ended(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    long_ago = T0 - FORGET_AFTER - timedelta(minutes=1)
    await add_instance(sessions, "gone", long_ago)
    await add_instance(sessions, "recent", T0)
    await add_lesson(sessions, "L1", instance_id="gone", started_at=long_ago)
    assert await end_lessons_of_lost_instances(sessions, TIMING, now=T0) == ["L1"]
    async with sessions() as session:
        assert set((await session.scalars(select(Instance.id))).all()) == {"recent"}
        row = await session.get(Lesson, "L1")
    assert row is not None
    assert (row.ended_at, row.instance_id) == (long_ago, "gone")


async def test_an_instance_marks_itself_alive_while_it_runs(sessions: async_sessionmaker[AsyncSession]) -> None:
    instance_id = await register_instance(sessions, now=T0)
    quick = InstanceTiming(lost_after_s=0.3, resume_grace_s=30, max_lesson_s=3600)
    alive = asyncio.create_task(keep_alive(sessions, instance_id, quick, swept_at=T0))
    try:
        for _ in range(100):
            async with sessions() as session:
                row = await session.get(Instance, instance_id)
            assert row is not None
            if row.seen_at > T0:
                break
            await asyncio.sleep(quick.alive_every_s)
    finally:
        alive.cancel()
    assert row.seen_at > T0


async def test_a_sweep_a_minute_after_the_last_tells_the_metrics_how_many_lessons_it_ended(
    sessions: async_sessionmaker[AsyncSession]
) -> None:
    killed_at = utcnow() - timedelta(hours=1)
    await add_instance(sessions, "killed", killed_at)
    for lesson_id in ("L1", "L2"):
        await add_lesson(sessions, lesson_id, instance_id="killed", started_at=killed_at - timedelta(minutes=5))
    metrics = LessonMetrics()
    counts: list[int] = []
    swept = asyncio.Event()

    def lessons_lost(count: int) -> None:
        metrics.lessons_lost(count)
        counts.append(count)
        swept.set()

    instance_id = await register_instance(sessions, now=utcnow())
    alive = asyncio.create_task(keep_alive(sessions, instance_id, TIMING, swept_at=utcnow() - timedelta(minutes=1),
                                           on_lessons_lost=lessons_lost))
    try:
        async with asyncio.timeout(10):
            await swept.wait()
    finally:
        alive.cancel()
    assert counts == [2]
    assert metrics.registry.get_sample_value("lesson_relay_lessons_lost_with_instance_total") == 2


async def test_only_the_lessons_own_instance_writes_its_usage_end_and_feedback(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first, second = RecordWriter(engine, instance_id="first"), RecordWriter(engine, instance_id="second")
    for writer in (first, second):
        writer.start()
    try:
        first.put(LessonStarted(lesson_id="L1", started_at=T0, level="A2", model="gpt-realtime", simulated=True))
        await first.flushed()
        async with sessions.begin() as session:  # the second instance took the lesson over
            row = await session.get(Lesson, "L1")
            assert row is not None
            assert row.instance_id == "first"
            row.instance_id = "second"
        for writer, reason, tokens in ((first, "browser_gone", 111), (second, "student_ended", 222)):
            writer.put(UsageSoFar(lesson_id="L1", audio_input_tokens=tokens, text_input_tokens=0, cached_tokens=0,
                                  audio_output_tokens=tokens, text_output_tokens=0, estimated_cost_usd=0.01))
            await writer.flushed()
            async with sessions() as session:
                row = await session.get(Lesson, "L1")
            assert row is not None
            assert row.audio_input_tokens == (0 if writer is first else 222)
            writer.put(FeedbackGiven(lesson_id="L1", feedback={"summary": f"by {writer.instance_id}"}))
            writer.put(LessonEnded(lesson_id="L1", ended_at=T0 + timedelta(minutes=5), end_reason=reason,
                                   duration_s=300.0, audio_input_tokens=tokens, text_input_tokens=0, cached_tokens=0,
                                   audio_output_tokens=tokens, text_output_tokens=0, estimated_cost_usd=0.02))
            await writer.flushed()
            async with sessions() as session:
                row = await session.get(Lesson, "L1")
            assert row is not None
            assert (row.end_reason, row.feedback, row.audio_output_tokens) == (
                (None, None, 0) if writer is first else ("student_ended", {"summary": "by second"}, 222))
    finally:
        for writer in (first, second):
            await writer.stop(grace_s=5)


async def test_a_grace_too_short_for_a_killed_instances_lessons_to_be_taken_over_is_warned_of_at_start(
    store_url: str, store_log: io.StringIO
) -> None:
    for grace_s in (10, 30, 0):
        store = await open_store(Settings(database_url=store_url, resume_grace_seconds=grace_s,
                                          instance_lost_after_seconds=15))
        await store.close()
    [warning] = logged(store_log, "lessons_of_killed_instances_not_resumable")
    assert "INSTANCE_LOST_AFTER_SECONDS (15) is not under RESUME_GRACE_SECONDS (10)" in warning["message"]
