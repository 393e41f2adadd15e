"""RecordWriter: records queued without waiting, written in batches, retried, and dropped only past a bound."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from databases import CuttableProxy
from harness import logged
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.metrics import LessonMetrics
from app.records import LessonEnded, LessonEventHappened, LessonStarted, TurnFinished, TurnInterrupted, UsageSoFar
from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import Lesson, LessonEvent, Student, Turn
from app.store.writer import RecordWriter

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def started(lesson_id: str = "L1", **fields: object) -> LessonStarted:
    values: dict[str, object] = {"lesson_id": lesson_id, "started_at": T0, "level": "A2", "model": "gpt-realtime-2.1",
                                 "simulated": True, "student_name": "Ana"}
    return LessonStarted(**(values | fields))  # type: ignore[arg-type]


def ended(lesson_id: str = "L1") -> LessonEnded:
    return LessonEnded(lesson_id=lesson_id, ended_at=at(90), end_reason="student_ended", duration_s=90.0,
                       audio_input_tokens=100, text_input_tokens=20, cached_tokens=5, cached_audio_tokens=1,
                       cached_text_tokens=4, audio_output_tokens=300, text_output_tokens=40, estimated_cost_usd=0.0231)


@pytest.fixture
async def writer(engine: AsyncEngine) -> AsyncIterator[RecordWriter]:
    writer = RecordWriter(engine)
    writer.start()
    yield writer
    await writer.stop(grace_s=5)


async def test_a_lesson_s_records_become_its_rows(writer: RecordWriter,
                                                  sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions.begin() as session:
        session.add(Student(id="s1", name="Ana", level="A2"))
    for record in [
        started(student_id="s1", link_id="k1"),
        TurnFinished(lesson_id="L1", seq=1, role="tutor", text="Hello Ana!", started_at=at(1), ended_at=at(3)),
        LessonEventHappened(lesson_id="L1", at=at(2), kind="greeting_retry",
                            detail={"status": "failed", "code": "server_error"}),
        TurnFinished(lesson_id="L1", seq=2, role="student", text="Hi!", started_at=at(4), ended_at=at(5)),
        TurnFinished(lesson_id="L1", seq=3, role="tutor", text="Tell me", started_at=at(6), ended_at=at(7)),
        TurnInterrupted(lesson_id="L1", seq=3, heard_ms=700, heard_text="Tell"),
        TurnFinished(lesson_id="L1", seq=4, role="tutor", text="Now, what", started_at=at(8), ended_at=at(9),
                     interrupted=True, heard_ms=300, heard_text="Now,"),
        ended(),
    ]:
        writer.put(record)
    await writer.flushed()
    async with sessions() as session:
        lesson = await session.get_one(Lesson, "L1")
        turns = (await session.scalars(select(Turn).order_by(Turn.seq))).all()
        [event] = (await session.scalars(select(LessonEvent))).all()
    assert (lesson.student_id, lesson.link_id, lesson.level, lesson.started_at, lesson.ended_at) == (
        "s1", "k1", "A2", T0, at(90))
    assert (lesson.end_reason, lesson.duration_s, lesson.model, lesson.simulated) == (
        "student_ended", 90.0, "gpt-realtime-2.1", True)
    assert (lesson.audio_input_tokens, lesson.text_input_tokens, lesson.cached_tokens, lesson.audio_output_tokens,
            lesson.text_output_tokens, lesson.estimated_cost_usd) == (100, 20, 5, 300, 40, 0.0231)
    assert (lesson.cached_audio_tokens, lesson.cached_text_tokens) == (1, 4)
    assert [(t.seq, t.role, t.text, t.interrupted, t.heard_ms, t.heard_text) for t in turns] == [
        (1, "tutor", "Hello Ana!", False, None, None), (2, "student", "Hi!", False, None, None),
        (3, "tutor", "Tell me", True, 700, "Tell"), (4, "tutor", "Now, what", True, 300, "Now,")]
    assert (turns[0].started_at, turns[0].ended_at) == (at(1), at(3))
    assert (event.kind, event.at) == ("greeting_retry", at(2))
    assert event.detail == {"status": "failed", "code": "server_error"}
    assert (writer.written, writer.dropped) == (8, 0)


async def test_the_same_browser_is_the_same_student(writer: RecordWriter,
                                                    sessions: async_sessionmaker[AsyncSession]) -> None:
    writer.put(started("L1", browser_key_hash="ab" * 32, student_name="Ana", level="A1"))
    writer.put(started("L2", browser_key_hash="ab" * 32, student_name="Ana Lima", level="A2"))
    writer.put(started("L3", browser_key_hash="cd" * 32, student_name="Ben"))
    await writer.flushed()
    async with sessions() as session:
        students = (await session.scalars(select(Student).order_by(Student.name))).all()
        owners = {lesson_id: student_id for lesson_id, student_id in await session.execute(
            select(Lesson.id, Lesson.student_id))}
    assert [(s.name, s.level) for s in students] == [("Ana Lima", "A2"), ("Ben", "A2")]
    assert owners["L1"] == owners["L2"] == students[0].id
    assert owners["L3"] == students[1].id


async def test_a_record_the_database_refuses_is_dropped_alone(
        writer: RecordWriter, sessions: async_sessionmaker[AsyncSession], store_log: io.StringIO) -> None:
    writer.put(started("L1"))
    # A turn of a lesson that was never recorded: its foreign key fails.
    writer.put(TurnFinished(lesson_id="nope", seq=1, role="tutor", text="Hi", started_at=at(1), ended_at=at(2)))
    writer.put(TurnFinished(lesson_id="L1", seq=1, role="tutor", text="Hi", started_at=at(1), ended_at=at(2)))
    await writer.flushed()
    async with sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Turn)) == 1
        assert await session.get(Lesson, "L1") is not None
    assert (writer.written, writer.dropped) == (2, 1)
    [line] = logged(store_log, "records_dropped")
    assert (line["lessons"], line["lesson_ids"]) == (1, ["nope"])
    assert str(line["reason"]).startswith("refused by the database")


async def test_a_full_queue_drops_counts_and_logs_without_blocking(engine: AsyncEngine, store_log: io.StringIO) -> None:
    writer = RecordWriter(engine, capacity=2)  # not started: nothing leaves the queue
    for lesson_id in ("L1", "L2", "L3", "L4"):
        writer.put(started(lesson_id))
    assert (writer.queue.qsize(), writer.dropped) == (2, 2)
    assert [line["dropped_total"] for line in logged(store_log, "records_dropped")] == [1, 2]


async def test_every_drop_reaches_the_metrics_by_its_cause(engine: AsyncEngine) -> None:
    metrics = LessonMetrics()
    writer = RecordWriter(engine, capacity=1, on_dropped=metrics.records_lost)  # not started
    for lesson_id in ("L1", "L2", "L3"):
        writer.put(started(lesson_id))
    await writer.stop(0)
    samples = {(sample.name, tuple(sample.labels.values())): sample.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for sample in family.samples}
    assert samples[("lesson_relay_records_dropped_total", ("queue_full",))] == 2


async def test_records_wait_out_an_outage_and_are_written_when_the_database_is_back(
        postgres_behind_proxy: tuple[str, CuttableProxy], store_log: io.StringIO) -> None:
    """A server database can go away (a file database cannot): PostgreSQL behind a proxy we cut."""
    url, proxy = postgres_behind_proxy
    engine = create_engine(database_url(url))
    await migrate(engine)
    sessions = session_factory(engine)
    metrics = LessonMetrics()
    writer = RecordWriter(engine, write_timeout_s=2, first_retry_s=0.05, longest_retry_s=0.2, give_up_after_s=60,
                          on_retry=metrics.records_write_retries.inc)
    writer.start()
    try:
        proxy.cut()
        writer.put(started("L1"))
        writer.put(ended("L1"))
        await proxy.refused.wait()  # the writer tried the database during the outage
        proxy.restore()
        await writer.flushed()
        async with sessions() as session:
            lesson = await session.get_one(Lesson, "L1")
        assert lesson.end_reason == "student_ended"
        assert (writer.written, writer.dropped) == (2, 0)
        retries = logged(store_log, "records_write_retry")
        assert retries
        assert all((retry["lessons"], retry["lesson_ids"]) == (1, ["L1"]) for retry in retries)
        # An operator sees the outage in /metrics as it happens, not only once records are dropped.
        assert metrics.registry.get_sample_value("lesson_relay_records_write_retries_total") == len(retries)
    finally:
        await writer.stop(grace_s=5)
        await engine.dispose()


async def test_past_the_bound_an_unreachable_database_s_records_are_dropped_counted_and_logged(
        postgres_behind_proxy: tuple[str, CuttableProxy], store_log: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    engine = create_engine(database_url(url))
    await migrate(engine)
    writer = RecordWriter(engine, write_timeout_s=2, first_retry_s=0.01, longest_retry_s=0.02,
                          give_up_after_s=0.1)
    writer.start()
    try:
        proxy.cut()
        writer.put(started("L1"))
        writer.put(ended("L1"))
        await writer.flushed()
        assert (writer.written, writer.dropped) == (0, 2)
        [line] = logged(store_log, "records_dropped")
        assert line["count"] == 2
        assert "database unavailable" in str(line["reason"])
    finally:
        await writer.stop(grace_s=5)
        await engine.dispose()



async def test_a_stop_during_an_outage_counts_and_logs_the_batch_being_written_with_its_lessons(
        postgres_behind_proxy: tuple[str, CuttableProxy], store_log: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    engine = create_engine(database_url(url))
    await migrate(engine)
    metrics = LessonMetrics()
    writer = RecordWriter(engine, write_timeout_s=2, first_retry_s=0.05, longest_retry_s=0.2, give_up_after_s=60,
                          on_dropped=metrics.records_lost)
    writer.start()
    try:
        proxy.cut()
        writer.put(started("L1"))
        writer.put(started("L2"))
        writer.put(ended("L1"))
        await proxy.refused.wait()  # the batch is taken and being retried
        await writer.stop(grace_s=0)
    finally:
        await engine.dispose()
    assert (writer.written, writer.dropped) == (0, 3)
    [line] = logged(store_log, "records_dropped")
    assert (line["reason"], line["count"], line["lessons"], line["lesson_ids"]) == ("shutdown", 3, 2, ["L1", "L2"])
    assert metrics.registry.get_sample_value("lesson_relay_records_dropped_total", {"cause": "shutdown"}) == 3


async def test_a_batch_of_interleaved_lessons_is_written_kind_by_kind_keeping_every_dependency(
    writer: RecordWriter, sessions: async_sessionmaker[AsyncSession]
) -> None:
    def usage(lesson_id: str, tokens: int) -> UsageSoFar:
        return UsageSoFar(lesson_id=lesson_id, audio_input_tokens=tokens, text_input_tokens=0, cached_tokens=0,
                          audio_output_tokens=tokens, text_output_tokens=0, estimated_cost_usd=tokens / 1000)

    # Put before the writer wakes: one batch, in the order two lessons made them.
    for record in [
        started("L1"), started("L2"),
        TurnFinished(lesson_id="L1", seq=1, role="tutor", text="Hello Ana!", started_at=at(1), ended_at=at(3)),
        usage("L1", 100),
        TurnFinished(lesson_id="L2", seq=1, role="tutor", text="Hello Bo!", started_at=at(1), ended_at=at(2)),
        TurnInterrupted(lesson_id="L1", seq=1, heard_ms=900, heard_text="Hello"), usage("L2", 50), usage("L1", 200),
        ended("L1"),
        usage("L2", 70),
    ]:
        writer.put(record)
    await writer.flushed()
    async with sessions() as session:
        rows = {row.id: row for row in (await session.scalars(select(Lesson))).all()}
        interrupted = await session.scalar(select(Turn.interrupted).where(Turn.lesson_id == "L1"))
    assert writer.written == 10
    assert (rows["L1"].end_reason, rows["L1"].audio_input_tokens) == ("student_ended", 100)  # the end's own usage
    assert (rows["L2"].ended_at, rows["L2"].audio_input_tokens, rows["L2"].estimated_cost_usd) == (None, 70, 0.07)
    assert interrupted is True
