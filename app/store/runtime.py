"""The store for one running app: opened (and migrated) at start with its record writer, the daily retention
sweep and the instance's keep-alive running, closed at shutdown once the writer has written what the drained
lessons left."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.logging import stop_at_start
from app.settings import Settings
from app.store import retention
from app.store.database import DatabaseUnavailable, create_engine, database_url, migrate, redact, session_factory
from app.store.instances import InstanceTiming, keep_alive, register_instance, sweep_lost_instances
from app.store.models import utcnow
from app.store.queries import lesson_link_secret
from app.store.writer import RecordWriter

log = structlog.get_logger("lesson_relay")


# At shutdown, after the lessons are drained, queued records get this long to be written: inside the
# EXIT_AFTER_GRACE_SECONDS that app.main leaves after the lessons' grace, with the connections' close.
RECORDS_SHUTDOWN_GRACE_S = 3.0


@dataclass
class Store:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    records: RecordWriter
    # Signs and checks personal lesson links: LESSON_SECRET, or the one kept in the database.
    link_secret: str
    # This process, as the instance that runs its lessons (`app.store.instances`).
    instance_id: str
    instance_timing: InstanceTiming
    background: tuple[asyncio.Task[None], ...]

    async def close(self) -> None:
        """Write what the lessons left queued (for a bounded time), then let the database go."""
        for task in self.background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.records.stop(RECORDS_SHUTDOWN_GRACE_S)
        await self.engine.dispose()


def _url(settings: Settings) -> URL:
    return database_url(settings.database_url.get_secret_value() if settings.database_url else None)


def prepare_database(settings: Settings, *, on_sigterm: Callable[[], None] | None = None) -> None:
    """Migrate the database before the server starts, or stop the process with one line naming it;
    `on_sigterm()` is called on SIGTERM meanwhile.

    `python -m app` calls this first so that an unreachable database ends the start with that line alone
    (the lifespan's own failure would come wrapped in uvicorn's traceback); the lifespan migrates again,
    which is a no-op on an up-to-date schema. The signal is taken by the event loop: a plain handler would
    wait for the main thread, which sleeps while SQLite waits for another instance's lock in a thread of its own.
    """

    async def migrate_once() -> None:
        if on_sigterm is not None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
        engine = create_engine(_url(settings))
        try:
            await migrate(engine)
        finally:
            await engine.dispose()

    try:
        asyncio.run(migrate_once())
    except DatabaseUnavailable as exc:
        stop_at_start(SystemExit(f"DATABASE_URL: {exc}"), "database_unavailable", settings.log_format,
                      url=redact(_url(settings)), error=str(exc))


async def open_store(settings: Settings, *, on_records_dropped: Callable[[str, int], None] | None = None,
                     on_records_retried: Callable[[], None] | None = None,
                     on_lessons_lost: Callable[[int], None] | None = None) -> Store:
    """The migrated store for `settings`, or `DatabaseUnavailable` (logged once, password-free) when out of reach;
    `on_records_dropped(cause, count)` is told of every record the writer has to drop, `on_records_retried()` of
    every batch of them it tries again, and `on_lessons_lost(count)`
    of the lessons of lost instances each sweep ends."""
    url = _url(settings)
    engine = create_engine(url)
    try:
        await migrate(engine)
    except DatabaseUnavailable as exc:
        await engine.dispose()
        log.error("database_unavailable", url=redact(url), error=str(exc))
        raise
    log.info("database_ready", url=redact(url))
    sessions = session_factory(engine)
    link_secret = await lesson_link_secret(sessions, settings)
    await retention.sweep(sessions, settings.retention_days)
    instance_id = await register_instance(sessions, now=utcnow())
    timing = InstanceTiming(lost_after_s=settings.instance_lost_after_seconds,
                            resume_grace_s=settings.resume_grace_seconds, max_lesson_s=settings.max_lesson_seconds)
    if 0 < timing.resume_grace_s <= timing.lost_after_s:
        log.warning("lessons_of_killed_instances_not_resumable",
                    message=f"INSTANCE_LOST_AFTER_SECONDS ({timing.lost_after_s:g}) is not under RESUME_GRACE_SECONDS "
                            f"({timing.resume_grace_s:g}): pages give up before the lessons of a killed instance "
                            "may be taken over, so those lessons end as instance_lost")
    # What instances lost while none ran left is ended before this one serves (a desk never shows it running).
    swept_at = utcnow()
    await sweep_lost_instances(sessions, timing, now=swept_at, on_lessons_lost=on_lessons_lost)
    records = RecordWriter(engine, on_dropped=on_records_dropped, on_retry=on_records_retried,
                           instance_id=instance_id)
    records.start()
    background = (
        asyncio.create_task(retention.sweep_daily(sessions, settings.retention_days), name="retention"),
        asyncio.create_task(keep_alive(sessions, instance_id, timing, swept_at=swept_at,
                                       on_lessons_lost=on_lessons_lost), name="instance-keep-alive"),
    )
    return Store(engine=engine, sessions=sessions, records=records, link_secret=link_secret, instance_id=instance_id,
                 instance_timing=timing, background=background)


@asynccontextmanager
async def opened_database(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The migrated database for a one-off command (`python -m app.links`), closed after the block."""
    engine = create_engine(_url(settings))
    try:
        try:
            await migrate(engine)
        except DatabaseUnavailable as exc:
            raise SystemExit(f"DATABASE_URL: {exc}") from None
        yield session_factory(engine)
    finally:
        await engine.dispose()
