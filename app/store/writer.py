"""RecordWriter: the one task per process that writes lesson records, fed by a bounded queue.

Lessons hand records over with `put`, which never waits and never raises: the audio path never waits
for the database. The task takes whatever has queued (records arrive at turn boundaries, so a batch is
what the lessons finished during a short linger) and writes it in one transaction, each run of records of
one kind as one statement over many rows. A database that is
slow or gone is retried with growing pauses; past `give_up_after_s` the batch is dropped, counted and
logged, and the next batch tries again. A record the database refuses (a student deleted mid-lesson) is
dropped alone: the batch is then written one record per transaction. When the queue is full a record is
dropped the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from itertools import groupby

import structlog
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql import ColumnElement

from app.records import (
    FeedbackGiven,
    LessonEnded,
    LessonEventHappened,
    LessonRecord,
    LessonStarted,
    TurnFinished,
    TurnInterrupted,
    UsageSoFar,
)
from app.store.database import error_reason
from app.store.models import Lesson, LessonEvent, Student, Turn, new_id, utcnow

log = structlog.get_logger("lesson_relay")

# Records are not urgent: waiting this long after the first lets a busy relay write many in one transaction.
LINGER_S = 0.25
# What the database says about the data itself: retrying the same records cannot help.
_REFUSED = (IntegrityError, DataError, ProgrammingError)


class RecordWriter:
    """Writes lesson records in the background; `put` is the only method a lesson calls."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        capacity: int = 10_000,
        batch_size: int = 500,
        linger_s: float = LINGER_S,
        write_timeout_s: float = 10.0,
        first_retry_s: float = 0.5,
        longest_retry_s: float = 30.0,
        give_up_after_s: float = 300.0,
        on_dropped: Callable[[str, int], None] | None = None,
        on_retry: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        instance_id: str | None = None,
    ) -> None:
        """`on_dropped(cause, count)` is told of every drop (the metrics count them by cause), `on_retry()` of every
        batch the database did not take and that is tried again (a database slow or gone). `instance_id`:
        this process's, written on the lessons it starts; a lesson's end and feedback are written only while
        the lesson is still this instance's (another may have taken it over)."""
        self.engine = engine
        self.instance_id = instance_id
        self.linger_s = linger_s
        self.queue: asyncio.Queue[LessonRecord] = asyncio.Queue(maxsize=capacity)
        self.batch_size = batch_size
        self.write_timeout_s = write_timeout_s
        self.first_retry_s = first_retry_s
        self.longest_retry_s = longest_retry_s
        self.give_up_after_s = give_up_after_s
        self.on_dropped = on_dropped
        self.on_retry = on_retry
        self.clock = clock
        self.written = 0
        self.dropped = 0
        self._task: asyncio.Task[None] | None = None
        # The records taken from the queue and neither written nor dropped yet: lost with them if the task stops.
        self._in_flight: list[LessonRecord] = []

    # ---- what lessons call -----------------------------------------------------------------------

    def put(self, record: LessonRecord) -> None:
        """Queue `record` for writing; when the queue is full it is dropped, counted and logged."""
        try:
            self.queue.put_nowait(record)
        except asyncio.QueueFull:
            self._count_dropped([record], "queue_full", "queue_full")

    # ---- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="record-writer")

    async def flushed(self) -> None:
        """Return once every record queued so far has been written or dropped."""
        await self.queue.join()

    async def stop(self, grace_s: float) -> None:
        """Write what is queued for up to `grace_s`, then stop; what is left (the batch being written included) is
        counted and logged."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self.queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        left, self._in_flight = self._in_flight, []
        while not self.queue.empty():
            left.append(self.queue.get_nowait())
            self.queue.task_done()
        if left:
            self._count_dropped(left, "shutdown", "shutdown")
        log.info("records_writer_stopped", written=self.written, dropped=self.dropped)

    # ---- the task --------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self._in_flight = batch = [await self.queue.get()]
            taken = 1
            try:
                if self.linger_s:
                    await asyncio.sleep(self.linger_s)
                while len(batch) < self.batch_size and not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    taken += 1
                await self._write_with_retries(batch)
                self._in_flight = []
            finally:
                for _ in range(taken):
                    self.queue.task_done()

    async def _write_with_retries(self, batch: list[LessonRecord]) -> None:
        first_try, pause = self.clock(), self.first_retry_s
        while True:
            try:
                await self._write(batch)
                self.written += len(batch)
                return
            except _REFUSED:
                await self._write_one_by_one(batch)
                return
            except Exception as exc:  # the database is slow or gone: its driver's errors, OSError, timeouts
                waited = self.clock() - first_try
                if waited + pause > self.give_up_after_s:
                    self._count_dropped(batch, "database_unavailable",
                                        f"database unavailable for {waited:.0f} s: {error_reason(exc)}")
                    return
                log.warning("records_write_retry", records=len(batch), **_lessons_of(batch), retry_in_s=pause,
                            error=error_reason(exc))
                if self.on_retry is not None:
                    self.on_retry()
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.longest_retry_s)

    async def _write_one_by_one(self, batch: list[LessonRecord]) -> None:
        for record in list(batch):
            try:
                await self._write([record])
                self.written += 1
            except Exception as exc:
                self._count_dropped([record], "refused", f"refused by the database: {error_reason(exc)}")
            batch.remove(record)

    async def _write(self, batch: list[LessonRecord]) -> None:
        async with asyncio.timeout(self.write_timeout_s), self.engine.begin() as connection:
            await _apply(connection, batch, self.instance_id)

    def _count_dropped(self, records: list[LessonRecord], cause: str, reason: str) -> None:
        count = len(records)
        before, self.dropped = self.dropped, self.dropped + count
        if self.on_dropped is not None:
            self.on_dropped(cause, count)
        # Logged on the first drop of a run of them and then at each power of two, not once per record.
        if cause != "queue_full" or before == 0 or (self.dropped & (self.dropped - 1)) == 0:
            log.error("records_dropped", count=count, dropped_total=self.dropped, reason=reason,
                      **_lessons_of(records))


# A batch may hold records of hundreds of lessons: a log line names this many of them, and counts them all.
MAX_LOGGED_LESSON_IDS = 20


def _lessons_of(records: list[LessonRecord]) -> dict[str, object]:
    """The lessons `records` belong to, for a log line: how many, and the ids of the first of them."""
    lesson_ids = list(dict.fromkeys(record.lesson_id for record in records))
    return {"lessons": len(lesson_ids), "lesson_ids": lesson_ids[:MAX_LOGGED_LESSON_IDS]}


async def _apply(connection: AsyncConnection, batch: list[LessonRecord], instance_id: str | None) -> None:
    """Write `batch` as one statement over many rows per kind of record, the kinds in `_WRITE_ORDER` and the
    records of a kind in queue order."""
    this_instances = Lesson.instance_id.is_not_distinct_from(instance_id)
    for kind, run in groupby(sorted(batch, key=lambda record: _WRITE_ORDER[type(record)]), key=type):
        records = list(run)
        if kind is LessonStarted:
            rows = [await _lesson_row(connection, record, instance_id)
                    for record in records if isinstance(record, LessonStarted)]
            await connection.execute(insert(Lesson), rows)
        elif kind is TurnFinished:
            await connection.execute(insert(Turn), [
                {"lesson_id": r.lesson_id, "seq": r.seq, "role": r.role, "text": r.text, "started_at": r.started_at,
                 "ended_at": r.ended_at, "interrupted": r.interrupted, "heard_ms": r.heard_ms,
                 "heard_text": r.heard_text}
                for r in records if isinstance(r, TurnFinished)])
        elif kind is LessonEventHappened:
            await connection.execute(insert(LessonEvent), [
                {"lesson_id": r.lesson_id, "at": r.at, "kind": r.kind, "detail": dict(r.detail)}
                for r in records if isinstance(r, LessonEventHappened)])
        elif kind is TurnInterrupted:
            await connection.execute(
                update(Turn).where(Turn.lesson_id == bindparam("b_lesson"), Turn.seq == bindparam("b_seq"))
                .values(interrupted=True, heard_ms=bindparam("b_heard_ms"), heard_text=bindparam("b_heard_text")),
                [{"b_lesson": r.lesson_id, "b_seq": r.seq, "b_heard_ms": r.heard_ms, "b_heard_text": r.heard_text}
                 for r in records if isinstance(r, TurnInterrupted)])
        elif kind is UsageSoFar:
            await _update_lessons(connection, records, _USAGE_COLUMNS, this_instances)
        elif kind is FeedbackGiven:
            await connection.execute(
                update(Lesson).where(Lesson.id == bindparam("b_lesson"), this_instances)
                .values(feedback=bindparam("b_feedback")),
                [{"b_lesson": r.lesson_id, "b_feedback": dict(r.feedback)}
                 for r in records if isinstance(r, FeedbackGiven)])
        elif kind is LessonEnded:
            await _update_lessons(connection, records, _ENDED_COLUMNS, this_instances)


# What a record depends on is written before it: a lesson before its turns and events, a turn before its
# interruption, the usage so far before the lesson's end (which carries the final usage).
_WRITE_ORDER: dict[type, int] = {kind: rank for rank, kind in enumerate((
    LessonStarted, TurnFinished, TurnInterrupted, LessonEventHappened, UsageSoFar, FeedbackGiven, LessonEnded))}
_USAGE_COLUMNS = ("audio_input_tokens", "text_input_tokens", "cached_tokens", "cached_audio_tokens",
                  "cached_text_tokens", "audio_output_tokens", "text_output_tokens", "responses", "estimated_cost_usd")
_ENDED_COLUMNS = ("ended_at", "end_reason", "duration_s", *_USAGE_COLUMNS)


async def _update_lessons(connection: AsyncConnection, records: list[LessonRecord], columns: tuple[str, ...],
                          owned: ColumnElement[bool]) -> None:
    """Set `columns` of each record's lesson row to the record's values, where `owned` holds."""
    await connection.execute(
        update(Lesson).where(Lesson.id == bindparam("b_lesson"), owned).values(
            {name: bindparam(f"b_{name}") for name in columns}),
        [{"b_lesson": r.lesson_id, **{f"b_{name}": getattr(r, name) for name in columns}} for r in records])


async def _lesson_row(connection: AsyncConnection, record: LessonStarted, instance_id: str | None) -> dict[str, object]:
    student_id = record.student_id
    if student_id is None and record.browser_key_hash is not None:
        student_id = await _browser_student(connection, record)
    return {"id": record.lesson_id, "student_id": student_id, "link_id": record.link_id, "level": record.level,
            "started_at": record.started_at, "model": record.model, "simulated": record.simulated,
            "instance_id": instance_id}


async def _browser_student(connection: AsyncConnection, record: LessonStarted) -> str:
    """The open page's student for this browser, made on its first lesson; name and level as chosen now."""
    name = record.student_name or ""
    key_hash = record.browser_key_hash
    found = await connection.scalar(select(Student.id).where(Student.browser_key_hash == key_hash))
    if found is None:
        student_id = new_id()
        await connection.execute(insert(Student).values(
            id=student_id, name=name, level=record.level, created_at=utcnow(), browser_key_hash=key_hash))
        return student_id
    await connection.execute(update(Student).where(Student.id == found).values(name=name, level=record.level))
    return str(found)

