"""Instances: which app process runs each lesson, and what becomes of its lessons when it stops answering.

Each process that keeps lessons registers itself in `instances` at start under a fresh id, writes that id
on every lesson it starts or takes over, and marks itself alive every third of `lost_after_s`. An instance
silent for `lost_after_s` is lost: killed, out of memory, its machine gone, with no SIGTERM and so nothing
handed over. A page resuming one of its lessons within the resume grace takes the lesson over
(`app.store.handover`); what no page comes back for is ended here as `instance_lost`, dated when the
instance was last seen alive, so the desk never shows a lesson running forever.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import and_, delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.database import error_reason
from app.store.models import Instance, Lesson, LessonEvent, Turn, new_id, utcnow

log = structlog.get_logger("lesson_relay")

INSTANCE_LOST = "instance_lost"
# How often the lessons of lost instances are looked for (and once at start).
SWEEP_EVERY_S = 60.0
# Instances silent this long are forgotten (their lessons were ended long before).
FORGET_AFTER = timedelta(days=1)


@dataclass(frozen=True)
class InstanceTiming:
    """When an instance counts as lost, and how long after that a page may still take its lessons over."""

    lost_after_s: float
    resume_grace_s: float
    # A lesson kept before instances were recorded has no instance: it is ended once it must be over.
    max_lesson_s: float

    @property
    def alive_every_s(self) -> float:
        return self.lost_after_s / 3


async def register_instance(sessions: async_sessionmaker[AsyncSession], *, now: datetime) -> str:
    """A new instance, alive now: its id."""
    instance_id = new_id()
    async with sessions.begin() as session:
        await session.execute(insert(Instance).values(id=instance_id, started_at=now, seen_at=now))
    return instance_id


async def mark_alive(sessions: async_sessionmaker[AsyncSession], instance_id: str, *, now: datetime) -> None:
    async with sessions.begin() as session:
        await session.execute(update(Instance).where(Instance.id == instance_id).values(seen_at=now))


def instance_lost_event(lesson_id: str, instance_id: str | None, seen_at: datetime | None, *,
                        now: datetime) -> LessonEvent:
    """What a lesson keeps of its instance's loss, however it ends (this sweep, its teacher, a take-over refused
    because it was withdrawn), so that the desk's Failures page shows the server lost."""
    return LessonEvent(lesson_id=lesson_id, at=now, kind=INSTANCE_LOST,
                       detail={"instance_id": instance_id, "last_seen_at": seen_at.isoformat() if seen_at else None})


async def end_lessons_of_lost_instances(sessions: async_sessionmaker[AsyncSession], timing: InstanceTiming, *,
                                        now: datetime) -> list[str]:
    """End as `instance_lost` the open lessons that nothing runs and no page can take over any more: those of
    an instance silent past `lost_after_s` and the resume grace, and those with no instance once they must be
    over. Each ends when it was last known alive. The ids of the lessons ended."""
    silent_since = now - timedelta(seconds=timing.lost_after_s + timing.resume_grace_s)
    unowned_before = now - timedelta(seconds=timing.max_lesson_s + timing.resume_grace_s)
    last_turn_at = select(func.max(Turn.ended_at)).where(Turn.lesson_id == Lesson.id).scalar_subquery()
    async with sessions.begin() as session:
        found = (await session.execute(
            select(Lesson.id, Lesson.instance_id, Lesson.started_at, Instance.seen_at, last_turn_at)
            .outerjoin(Instance, Instance.id == Lesson.instance_id)
            .where(Lesson.ended_at.is_(None),
                   or_(Instance.seen_at < silent_since,
                       and_(Instance.id.is_(None), Lesson.started_at < unowned_before))))).all()
        ended = []
        for lesson_id, instance_id, started_at, seen_at, turn_ended_at in found:
            ended_at = seen_at or turn_ended_at or started_at
            done = await session.execute(
                update(Lesson).where(Lesson.id == lesson_id, Lesson.ended_at.is_(None),
                                     Lesson.instance_id.is_not_distinct_from(instance_id))
                .values(ended_at=ended_at, end_reason=INSTANCE_LOST,
                        duration_s=max(0.0, (ended_at - started_at).total_seconds())))
            if getattr(done, "rowcount", 0) != 1:
                continue  # taken over meanwhile
            event = instance_lost_event(lesson_id, instance_id, seen_at, now=now)
            session.add(event)
            ended.append(lesson_id)
            log.warning("lesson_lost_with_instance", lesson_id=lesson_id, **event.detail)
        # Their lessons have all ended, the open ones just now.
        await session.execute(delete(Instance).where(Instance.seen_at < now - FORGET_AFTER))
    return ended


async def sweep_lost_instances(sessions: async_sessionmaker[AsyncSession], timing: InstanceTiming, *, now: datetime,
                               on_lessons_lost: Callable[[int], None] | None) -> None:
    """End the lessons of lost instances (`end_lessons_of_lost_instances`), telling `on_lessons_lost(count)` when
    there were some."""
    ended = await end_lessons_of_lost_instances(sessions, timing, now=now)
    if ended and on_lessons_lost is not None:
        on_lessons_lost(len(ended))


async def keep_alive(sessions: async_sessionmaker[AsyncSession], instance_id: str, timing: InstanceTiming, *,
                     swept_at: datetime, on_lessons_lost: Callable[[int], None] | None = None) -> None:
    """Until cancelled: mark this instance alive every `alive_every_s`, and sweep the lessons of lost instances
    (`sweep_lost_instances`) `SWEEP_EVERY_S` after the last sweep, at `swept_at`. A database out of reach is logged
    once per outage."""
    failing = False
    while True:
        now = utcnow()
        try:
            await mark_alive(sessions, instance_id, now=now)
            if (now - swept_at).total_seconds() >= SWEEP_EVERY_S:
                await sweep_lost_instances(sessions, timing, now=now, on_lessons_lost=on_lessons_lost)
                swept_at = now
            if failing:
                log.info("instance_alive_again", instance_id=instance_id)
            failing = False
        except Exception as exc:  # the database is down or slow: the next beat tries again
            if not failing:
                log.warning("instance_not_marked_alive", instance_id=instance_id,
                            error=error_reason(exc),
                            lost_after_s=timing.lost_after_s)
            failing = True
        await asyncio.sleep(timing.alive_every_s)
