"""The per-worker check for lessons a teacher withdrew (`app.link_check.check_withdrawn_links`), with the database
replaced by a stand-in: whatever a failed check raises, it is logged and the check goes on."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from harness import logged

from app.link_check import check_withdrawn_links
from app.logging import configure_logging
from app.resume import RefusedResumes
from app.settings import Settings
from app.withdrawal import Withdrawal


class DriverError(Exception):
    """An error of a database driver's own tree, which SQLAlchemy does not always wrap (asyncpg, sqlite3)."""


class OneLinkLesson:
    """A worker running one lesson, of link K1; `told` is set once a withdrawal reaches it."""

    def __init__(self) -> None:
        self.told = asyncio.Event()
        self.withdrawals: list[Withdrawal] = []

    def running_lessons(self) -> set[str]:
        return {"L1"}

    def running_links(self) -> set[str]:
        return {"K1"}

    def withdraw(self, withdrawal: Withdrawal, *, link_id: str | None = None, student_id: str | None = None,
                 lesson_id: str | None = None) -> list[str]:
        self.withdrawals.append(withdrawal)
        self.told.set()
        return ["L1"]


class RevokedAfterAnOutage:
    """Sessions whose first check fails with `DriverError`, and whose next ones find link K1 revoked."""

    def __init__(self) -> None:
        self.opened = 0

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[RevokedAfterAnOutage]:
        self.opened += 1
        if self.opened == 1:
            raise DriverError("the database system is starting up")
        yield self

    async def execute(self, statement: Any) -> RevokedAfterAnOutage:
        return self

    def all(self) -> list[tuple[str, datetime | None, datetime | None, str]]:
        return [("K1", datetime.now(UTC), None, "link")]


async def checked_until(sessions: Any, live: Any, reached: asyncio.Event, what: str) -> io.StringIO:
    """Run the link check every 10 ms until `reached` is set, `what` failing if not within 10 s; its log."""
    log = io.StringIO()
    configure_logging(Settings(log_format="json"), log)
    checking = asyncio.create_task(check_withdrawn_links(sessions, live, RefusedResumes(), every_s=0.01))
    waiting = asyncio.create_task(reached.wait())
    # The check runs until cancelled: its task ending first means it stopped checking.
    done, _ = await asyncio.wait({checking, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    checking.cancel()
    waiting.cancel()
    assert done == {waiting}, checking.exception() if checking in done else f"{what} within 10 s"
    return log


async def test_a_check_failing_with_a_drivers_own_error_is_logged_and_the_next_one_still_ends_the_lesson() -> None:
    live = OneLinkLesson()
    log = await checked_until(RevokedAfterAnOutage(), live, live.told, "no check told the lesson")
    assert live.withdrawals[0] is Withdrawal.LINK_REVOKED
    [unchecked] = logged(log, "withdrawn_links_unchecked")
    assert (unchecked["level"], unchecked["error"]) == ("warning", "the database system is starting up")
    assert len(logged(log, "withdrawn_links_checked_again")) == 1


class LessonsThatEnd:
    """A worker whose one lesson ends after the first check; `asked` is set once it has been asked `until` times."""

    def __init__(self, until: int) -> None:
        self.calls, self.until = 0, until
        self.asked = asyncio.Event()

    def running_lessons(self) -> set[str]:
        self.calls += 1
        if self.calls >= self.until:
            self.asked.set()
        return {"L1"} if self.calls == 1 else set()

    def running_links(self) -> set[str]:
        return set()


class DatabaseDown:
    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        raise DriverError("connection refused")
        yield


async def test_a_worker_left_with_no_lesson_to_check_does_not_say_the_database_answers_again() -> None:
    live = LessonsThatEnd(until=5)
    log = await checked_until(DatabaseDown(), live, live.asked, "the check did not run 5 times")
    assert len(logged(log, "withdrawn_links_unchecked")) == 1
    assert logged(log, "withdrawn_links_checked_again") == []
