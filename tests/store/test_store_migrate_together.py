"""Instances starting together on one empty database: their migrations take turns, and every one starts.

Each starter is its own process running what `python -m app` runs before serving (`prepare_database`), held
at a barrier (it says `ready` and waits for a line on stdin) so that all of them migrate at once. Another
instance's migration in progress is its lock, held by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from harness import REPO_ROOT, app_process
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from app.store.database import MIGRATION_LOCK_KEY, alembic_config, create_engine, database_url, redact
from app.store.models import Base

STARTERS = 4
WAITING = "migration_waits_for_another_instance"
SERVING = "Application startup complete."
STOPPED = "stopped_before_serving"
# No lesson starts in these tests: the Realtime server is never dialled.
UNUSED_UPSTREAM = "ws://127.0.0.1:9"
# A failure bound, not synchronisation: how long a starter may take before the test gives up on it.
STARTER_TIMEOUT_S = 60.0

STARTER = """
import sys
from app.logging import configure_logging
from app.settings import Settings
from app.store.runtime import prepare_database

settings = Settings(database_url=sys.argv[1], log_format="json")
configure_logging(settings)
print("ready", flush=True)
sys.stdin.readline()
prepare_database(settings)
"""


class Starter:
    """One starting instance in its own process, stopped at the barrier until `go()`."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def launch(cls, url: str, cwd: Path) -> Starter:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", STARTER, url, cwd=cwd, env={"PATH": "", "PYTHONPATH": str(REPO_ROOT)},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(process)

    async def ready(self) -> None:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), STARTER_TIMEOUT_S)
        assert line == b"ready\n", await self._failure(line)

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def log_line(self) -> dict[str, Any]:
        """The starter's next JSON log line."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), STARTER_TIMEOUT_S)
        assert line, await self._failure(line)
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    async def finished(self) -> tuple[int, list[dict[str, Any]], str]:
        """(exit status, JSON log lines, stderr) once the starter has exited."""
        out, err = await asyncio.wait_for(self.process.communicate(), STARTER_TIMEOUT_S)
        assert self.process.returncode is not None
        return self.process.returncode, [json.loads(line) for line in out.splitlines()], err.decode()

    async def _failure(self, line: bytes) -> str:
        self.process.kill()
        _, err = await self.process.communicate()
        return f"starter said {line!r}; stderr: {err.decode()}"


LaunchStarters = Callable[[int], Awaitable[list[Starter]]]


@pytest.fixture
async def starters_at_the_barrier(store_url: str, tmp_path: Path) -> AsyncIterator[LaunchStarters]:
    """`await starters_at_the_barrier(n)`: n starters on `store_url`, all ready; those still running at the
    test's end are killed."""
    launched: list[Starter] = []

    async def launch(count: int) -> list[Starter]:
        starters = [await Starter.launch(store_url, tmp_path) for _ in range(count)]
        launched.extend(starters)
        await asyncio.gather(*(starter.ready() for starter in starters))
        return starters

    yield launch
    for starter in launched:
        if starter.process.returncode is None:
            starter.process.kill()
            await starter.process.wait()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def _assert_schema_at_head_once(url: str) -> None:
    engine = create_engine(database_url(url))
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
            versions = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalars().all()
    finally:
        await engine.dispose()
    assert tables == {*Base.metadata.tables, "alembic_version"}
    assert versions == [_head()]


async def test_instances_starting_together_on_an_empty_database_all_start(
        store_url: str, starters_at_the_barrier: LaunchStarters) -> None:
    starters = await starters_at_the_barrier(STARTERS)
    for starter in starters:
        starter.go()
    results = await asyncio.gather(*(starter.finished() for starter in starters))

    assert [(status, err) for status, _, err in results] == [(0, "")] * STARTERS
    await _assert_schema_at_head_once(store_url)


@contextlib.asynccontextmanager
async def _migration_lock_held(url: str) -> AsyncIterator[None]:
    """The lock a migrating instance holds, taken here as another instance would: PostgreSQL's advisory lock,
    or SQLite's write lock on a database in WAL mode (which every instance's first connection sets)."""
    if url.startswith("postgresql"):
        connection = await asyncpg.connect(url)
        try:
            await connection.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
            yield
        finally:
            await connection.close()
        return
    database = make_url(url).database
    assert database is not None
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as connection:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("BEGIN IMMEDIATE")
        yield
        connection.execute("ROLLBACK")


async def test_python_m_app_waits_for_another_instances_migration_says_so_and_serves(store_url: str) -> None:
    async with app_process(UNUSED_UPSTREAM, store_url) as served:
        async with _migration_lock_held(store_url):
            await served.output.until(lambda lines: any(line.get("event") == WAITING for line in lines))
            assert served.process.returncode is None
        await served.output.until(lambda lines: any(line.get("event") == SERVING for line in lines))
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(STARTER_TIMEOUT_S) == 0

    [waiting] = served.output.of(WAITING)
    assert waiting["level"] == "info"
    assert waiting["url"] == redact(database_url(store_url))
    await _assert_schema_at_head_once(store_url)


async def test_sigterm_while_waiting_for_another_instances_migration_stops_python_m_app_at_once(
        store_url: str) -> None:
    async with app_process(UNUSED_UPSTREAM, store_url) as served, _migration_lock_held(store_url):
        await served.output.until(lambda lines: any(line.get("event") == WAITING for line in lines))
        served.process.send_signal(signal.SIGTERM)
        # A failure bound well under the 300 s the wait would last: the process does not wait for the lock.
        exit_code = await served.exited(STARTER_TIMEOUT_S)

    assert exit_code == 0
    [stopped] = served.output.of(STOPPED)
    assert (stopped["level"], stopped["signal"]) == ("info", "SIGTERM")
    assert served.output.of(SERVING) == []
    assert served.output.lines[-1]["event"] == STOPPED


async def test_an_instance_that_has_migrated_does_not_hold_up_the_next(
        store_url: str, engine: AsyncEngine, starters_at_the_barrier: LaunchStarters) -> None:
    # `engine` migrated and stays open with its connection pooled, as a running instance's does.
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))
    [starter] = await starters_at_the_barrier(1)
    starter.go()
    status, lines, err = await starter.finished()

    assert (status, err) == (0, "")
    assert [line for line in lines if line["event"] == WAITING] == []
    await _assert_schema_at_head_once(store_url)
