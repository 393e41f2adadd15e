"""The desk's sign-in limit counted in the store, on SQLite and PostgreSQL: the window, what a right password
clears, parallel attempts from several workers, pruning, and a store that does not answer."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from databases import CuttableProxy
from harness import logged
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import SignInFailure
from app.teacher.sign_in_limit import PRUNE_PER_ATTEMPT, SignInLimiter, SignInUnavailable

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def failures(sessions: async_sessionmaker[AsyncSession], client: str | None = None) -> int:
    query = select(func.count()).select_from(SignInFailure)
    if client is not None:
        query = query.where(SignInFailure.client == client)
    async with sessions() as db:
        return int(await db.scalar(query) or 0)


async def test_a_client_is_refused_after_its_failures_until_the_oldest_leaves_the_window(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=2, window_s=60)
    first = await limiter.attempt(sessions, "10.0.0.1", at(0))
    second = await limiter.attempt(sessions, "10.0.0.1", at(10))

    refused = await limiter.attempt(sessions, "10.0.0.1", at(30))

    assert (first.refused, second.refused) == (False, False)
    assert refused.refused
    assert refused.wait_s == 30.0
    assert refused.retry_after == "31"
    assert not (await limiter.attempt(sessions, "10.0.0.2", at(30))).refused
    assert not (await limiter.attempt(sessions, "10.0.0.1", at(60))).refused  # the failure at 0 has left


async def test_refused_attempts_are_not_counted_and_do_not_push_the_wait_back(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=2, window_s=60)
    await limiter.attempt(sessions, "10.0.0.1", at(0))
    await limiter.attempt(sessions, "10.0.0.1", at(1))

    waits = [(await limiter.attempt(sessions, "10.0.0.1", at(seconds))).wait_s for seconds in (20, 40, 59)]

    assert waits == [40.0, 20.0, 1.0]
    assert await failures(sessions, "10.0.0.1") == 2


async def test_a_right_password_clears_only_its_own_attempt(sessions: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=2, window_s=60)
    await limiter.attempt(sessions, "10.0.0.9", at(0))
    await limiter.attempt(sessions, "10.0.0.9", at(0))
    await limiter.attempt(sessions, "10.0.0.1", at(0))  # a wrong password

    right = await limiter.attempt(sessions, "10.0.0.1", at(5))
    await limiter.passed(sessions, right)

    assert await failures(sessions, "10.0.0.1") == 1  # the earlier wrong password still counts
    assert (await limiter.attempt(sessions, "10.0.0.9", at(6))).refused  # another client's failures too
    assert not (await limiter.attempt(sessions, "10.0.0.1", at(7))).refused  # a wrong password
    assert (await limiter.attempt(sessions, "10.0.0.1", at(8))).refused


async def test_a_known_browser_is_counted_apart_from_its_address(sessions: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=2, window_s=60)
    for seconds in (0, 1):
        await limiter.attempt(sessions, "10.0.0.1", at(seconds))

    own = [await limiter.attempt(sessions, "10.0.0.1", at(2 + index), known_browser="b1") for index in range(3)]

    assert (await limiter.attempt(sessions, "10.0.0.1", at(5))).refused
    assert [attempt.refused for attempt in own] == [False, False, True]
    assert not (await limiter.attempt(sessions, "10.0.0.1", at(6), known_browser="b2")).refused
    assert await failures(sessions, "browser:b1") == 2


@pytest.fixture
async def second_worker(store_url: str, sessions: async_sessionmaker[AsyncSession]
                        ) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The same database through an engine of its own, as another worker or replica holds it."""
    engine = create_engine(database_url(store_url))
    yield session_factory(engine)
    await engine.dispose()


async def test_parallel_guesses_on_two_workers_are_never_more_than_the_limit(
        sessions: async_sessionmaker[AsyncSession], second_worker: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=3, window_s=300)
    workers = [sessions, second_worker]

    attempts = await asyncio.gather(*(limiter.attempt(workers[index % 2], "10.0.0.1", at(index / 1000))
                                      for index in range(24)))

    compared = [attempt for attempt in attempts if not attempt.refused]
    assert len(compared) <= limiter.max_failures
    assert await failures(sessions, "10.0.0.1") == len(compared)  # refused attempts left nothing behind
    after = await limiter.attempt(sessions, "10.0.0.1", at(1))
    assert after.refused == (len(compared) == limiter.max_failures)


async def test_failures_that_left_the_window_are_pruned_by_later_attempts(
        sessions: async_sessionmaker[AsyncSession]) -> None:
    limiter = SignInLimiter(max_failures=5, window_s=60)
    scanned = 2 * PRUNE_PER_ATTEMPT + 5
    for index in range(scanned):  # a scan: one wrong password from each of many addresses
        await limiter.attempt(sessions, f"10.1.{index // 250}.{index % 250}", at(index / 100))
    assert await failures(sessions) == scanned

    for index in range(3):
        await limiter.attempt(sessions, "10.0.0.1", at(120 + index))

    assert await failures(sessions) == 3


async def test_a_store_that_cannot_be_used_refuses_the_attempt_and_logs_why(
        store_url: str, store_log: io.StringIO) -> None:
    engine = create_engine(database_url(store_url))  # never migrated: no sign_in_failures table
    try:
        with pytest.raises(SignInUnavailable, match="the sign-in limit could not be checked"):
            await SignInLimiter().attempt(session_factory(engine), "10.0.0.1", at(0))
    finally:
        await engine.dispose()
    [line] = logged(store_log, "sign_in_limit_unavailable")
    assert (line["level"], line["client"]) == ("error", "10.0.0.1")
    assert "sign_in_failures" in line["error"]


async def test_a_database_out_of_reach_refuses_the_attempt_and_clearing_one_keeps_it_counted(
        postgres_behind_proxy: tuple[str, CuttableProxy], store_log: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    engine = create_engine(database_url(url))
    await migrate(engine)
    sessions = session_factory(engine)
    limiter = SignInLimiter()
    try:
        right = await limiter.attempt(sessions, "10.0.0.1", at(0))
        proxy.cut()
        await limiter.passed(sessions, right)
        with pytest.raises(SignInUnavailable):
            await limiter.attempt(sessions, "10.0.0.1", at(1))
        proxy.restore()
        assert await failures(sessions, "10.0.0.1") == 1
    finally:
        await engine.dispose()
    assert logged(store_log, "sign_in_attempt_not_cleared")
    [line] = logged(store_log, "sign_in_limit_unavailable")
    assert line["client"] == "10.0.0.1"
