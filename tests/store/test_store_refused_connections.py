"""Each call a request makes on the store answers a database that refuses its connections as "store unavailable",
whether the refusal comes as SQLAlchemy's error or as the driver's own (asyncpg's `CannotConnectNowError` while
PostgreSQL restarts, which SQLAlchemy does not always wrap), and its log line names the reason. An error of our own
code is not taken for an outage. On PostgreSQL, the driver whose connect errors escape SQLAlchemy unwrapped."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from databases import STARTING_UP, Refusal, connections_refused
from harness import logged
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.budget import DailyBudget
from app.errors import StoreUnavailable
from app.memory import load_memory, student_history
from app.students import LessonStudent
from app.teacher import desk_sessions
from app.teacher.sign_in_limit import SignInAttempt, SignInLimiter

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
ANA = LessonStudent(student_id="ana")


@pytest.fixture
def store_url(postgres_url: str) -> str:
    """The store's `engine` and `sessions` (conftest.py) on PostgreSQL alone: its driver's errors are the ones
    SQLAlchemy does not always wrap."""
    return postgres_url


async def test_the_daily_budget_refuses_the_start_unchecked(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], refusal: Refusal) -> None:
    async with connections_refused(engine, refusal):
        with pytest.raises(StoreUnavailable) as unchecked:
            await DailyBudget(20.0).check(sessions, ANA, now=NOW, clock=0.0)
    assert unchecked.value.code == "link_unchecked"
    assert unchecked.value.detail == (
        f"daily budget of student 'ana' not checked: the store did not answer ({STARTING_UP})")


async def test_memory_and_history_are_left_out_and_the_lesson_or_page_goes_on(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], refusal: Refusal,
        store_log: io.StringIO) -> None:
    async with connections_refused(engine, refusal):
        memory = await load_memory(sessions, ANA)
        history = await student_history(sessions, "ana")
    assert memory == []
    assert (history.lessons, history.words) == ([], [])
    for event in ("memory_unavailable", "history_unavailable"):
        [line] = logged(store_log, event)
        assert STARTING_UP in line["error"]


async def test_desk_sessions_are_refused_and_the_reason_logged(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], refusal: Refusal,
        store_log: io.StringIO) -> None:
    async with connections_refused(engine, refusal):
        with pytest.raises(desk_sessions.DeskSessionsUnavailable, match=STARTING_UP):
            await desk_sessions.start(sessions, "laptop", NOW)
        with pytest.raises(desk_sessions.DeskSessionsUnavailable, match=STARTING_UP):
            await desk_sessions.is_open(sessions, "laptop", NOW)
        with pytest.raises(desk_sessions.DeskSessionsUnavailable, match=STARTING_UP):
            await desk_sessions.end(sessions, "laptop")
        with pytest.raises(desk_sessions.DeskSessionsUnavailable, match=STARTING_UP):
            await desk_sessions.end_all(sessions)
    lines = logged(store_log, "desk_session_unavailable")
    assert [(line["action"], line["error"]) for line in lines] == [
        ("start", STARTING_UP), ("check", STARTING_UP), ("end", STARTING_UP), ("end_all", STARTING_UP)]


async def test_a_sign_in_attempt_is_refused_and_one_not_cleared_stays_counted(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], refusal: Refusal,
        store_log: io.StringIO) -> None:
    limiter = SignInLimiter()
    right = await limiter.attempt(sessions, "10.0.0.1", NOW)
    async with connections_refused(engine, refusal):
        await limiter.passed(sessions, right)
        with pytest.raises(Exception, match=f"the sign-in limit could not be checked: {STARTING_UP}"):
            await limiter.attempt(sessions, "10.0.0.1", NOW)
    [not_cleared] = logged(store_log, "sign_in_attempt_not_cleared")
    [unavailable] = logged(store_log, "sign_in_limit_unavailable")
    assert (not_cleared["error"], unavailable["error"]) == (STARTING_UP, STARTING_UP)


async def test_an_error_of_our_own_code_is_not_taken_for_an_outage(
        engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> None:
    def bug() -> Exception:
        return TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    async with connections_refused(engine, bug):
        with pytest.raises(TypeError):
            await DailyBudget(20.0).check(sessions, ANA, now=NOW, clock=0.0)
        with pytest.raises(TypeError):
            await desk_sessions.is_open(sessions, "laptop", NOW)
        with pytest.raises(TypeError):
            await SignInLimiter().passed(sessions, SignInAttempt(failure_id=1, client="10.0.0.1", wait_s=0))
