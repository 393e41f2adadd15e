"""The database: which one (DATABASE_URL), the engine and session factory, and migrations at start.

`DATABASE_URL` unset → a SQLite file `data/lessons.db` under the working directory, created on first
start (aiosqlite). `postgres://…` (what Railway sets) and `postgresql://…` → asyncpg. `migrate()` brings
the schema to the newest Alembic revision before the server serves; when the database cannot be reached
it raises `DatabaseUnavailable`, whose message names the URL without its password.

Instances starting together (replicas on a first deploy, the workers of one) migrate one at a time: each
upgrade holds a lock from before Alembic reads the schema's revision until it has committed, so the next
starter waits, then finds the schema at head and does nothing.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/lessons.db"
MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 10.0
# How long a SQLite connection waits for another's write lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30
# How long a starter waits for another instance's migration (then its start fails with one line).
MIGRATION_WAIT_S = 300
# The PostgreSQL advisory lock held while migrating: any fixed 64-bit number no other application sharing the
# database uses; this one is the ASCII of "lessonre".
MIGRATION_LOCK_KEY = 0x6C6573736F6E7265

log = structlog.get_logger("lesson_relay")

# What a request's call on the store raises when the database is out of reach, restarting or refusing: SQLAlchemy's
# errors, and the drivers' own, which SQLAlchemy does not wrap everywhere (asyncpg's while it connects, such as
# "the database system is starting up"). Each caller answers these as "store unavailable". A bug of ours (a
# TypeError, an AttributeError) is none of them: it fails as a bug, not as an outage.
STORE_ERRORS: tuple[type[Exception], ...] = (
    TimeoutError, OSError, SQLAlchemyError, sqlite3.Error,
    asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
)

_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


_SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


class DatabaseUrlError(ValueError):
    """DATABASE_URL is not a SQLite or PostgreSQL URL."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached or migrated at start; the message is safe to log (no password)."""


def database_url(raw: str | None) -> URL:
    """The async driver URL for `DATABASE_URL` (`raw`), or `DatabaseUrlError` naming what is wrong."""
    if not raw:
        return make_url(DEFAULT_DATABASE_URL)
    try:
        url = make_url(raw)
    except ArgumentError as exc:
        raise DatabaseUrlError(f"DATABASE_URL is not a database URL: {redact(raw)!r}") from exc
    except ValueError as exc:
        # SQLAlchemy reads the port with int(); the URL, password and all, is not echoed.
        raise DatabaseUrlError("DATABASE_URL has a port that is not a number: "
                               "postgresql://user:password@host:5432/database") from exc
    driver = _SCHEMES.get(url.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"DATABASE_URL scheme {url.drivername!r} is not supported: use postgresql://… or sqlite:///…")
    if driver.startswith("sqlite") and url.database in (None, "", ":memory:"):
        raise DatabaseUrlError("DATABASE_URL names no SQLite file: use sqlite:///path/to/lessons.db")
    if driver.startswith("postgresql") and "sslmode" in url.query:
        # libpq's sslmode (in the URLs many hosts hand out) is asyncpg's ssl, with the same values.
        sslmode = url.query["sslmode"]
        if sslmode not in _SSL_MODES:
            raise DatabaseUrlError(f"DATABASE_URL sslmode {sslmode!r} is not one of {', '.join(_SSL_MODES)}")
        url = url.difference_update_query(["sslmode"]).update_query_dict({"ssl": sslmode})
    return url.set(drivername=driver)


def redact(url: URL | str) -> str:
    """`url` as text with its password replaced by ***, for logs and error messages."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except (ArgumentError, ValueError):
            return "<unreadable URL>"
    return url.render_as_string(hide_password=True)


def create_engine(url: URL) -> AsyncEngine:
    """An engine for `url`; on SQLite every connection enforces foreign keys."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # asyncpg waits 60 s for an unanswered connect by default: too long for a start or a writer retry.
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                               connect_args={"timeout": CONNECT_TIMEOUT_S})


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLite ignores ON DELETE CASCADE unless asked per connection; WAL lets the desk read while the
    # writer writes.
    # SQLite's own lower() folds A to Z alone: the desk's search by name ("élodie" for "Élodie") and its order
    # by name then follow PostgreSQL's.
    dbapi_connection.create_function("lower", 1, _lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def _lower(value: str | None) -> str | None:
    return None if value is None else value.lower()


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the store's migrations, on `connection` when given."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (creating a SQLite file and its folder on first start), or
    `DatabaseUnavailable` when the database is out of reach. Waits while another instance migrates."""
    try:
        if engine.url.get_backend_name() == "sqlite":
            await _upgrade_sqlite(engine.url)
        else:
            await _upgrade_postgresql(engine)
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database {redact(engine.url)} cannot be reached: {error_reason(exc)}") from exc
    except Exception as exc:
        # Drivers raise their own error trees (asyncpg, sqlite3, SQLAlchemy's wrappers of both).
        raise DatabaseUnavailable(f"database {redact(engine.url)} cannot be used: {error_reason(exc)}") from exc


def _upgrade(connection: Connection) -> None:
    before = MigrationContext.configure(connection).get_current_revision()
    command.upgrade(alembic_config(connection), "head")
    after = MigrationContext.configure(connection).get_current_revision()
    if after != before:
        log.info("database_migrated", from_revision=before, to_revision=after)


async def _upgrade_postgresql(engine: AsyncEngine) -> None:
    """The upgrade under a session-level advisory lock, released once it has committed."""
    async with engine.connect() as connection:
        try:
            await _take_migration_lock(connection)
            await connection.run_sync(_upgrade)
            await connection.commit()
        except BaseException:
            # Dropping the connection ends its session, and the session's advisory lock with it.
            await connection.invalidate()
            raise
        await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
        await connection.commit()


async def _take_migration_lock(connection: AsyncConnection) -> None:
    # Bounds the wait for the lock below and for the tables the upgrade alters; SET LOCAL ends with the upgrade.
    await connection.execute(text(f"SET LOCAL lock_timeout = {MIGRATION_WAIT_S * 1000}"))
    taken = await connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    if not taken:
        _log_waiting(connection.engine.url)
        await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


async def _upgrade_sqlite(url: URL) -> None:
    """The upgrade as one `BEGIN IMMEDIATE` transaction on a connection of its own.

    SQLite's write lock is the migration lock: BEGIN IMMEDIATE takes it before Alembic reads the revision, and
    the next starter's BEGIN IMMEDIATE waits until the upgrade commits. With sqlite3's own transaction handling
    off (isolation_level=None) the DDL is inside that transaction, so a failed upgrade leaves the schema as it
    was, where sqlite3 would have committed each CREATE TABLE by itself. (A lock file beside the database would
    serialise starters too, but still leave half a schema behind a failure.)
    """
    if url.database:
        file = Path(url.database)
        file.parent.mkdir(parents=True, exist_ok=True)
        # SQLite itself would only say "unable to open database file".
        for needed in (file.parent, file):
            if needed.exists() and not os.access(needed, os.W_OK):
                raise PermissionError(f"{needed.resolve()} is not writable by this user (uid {os.getuid()}): a volume "
                                      "mounted as root's? On Railway, set RAILWAY_RUN_UID=0")
    engine = create_async_engine(url, poolclass=NullPool,
                                 connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None})
    event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    event.listen(engine.sync_engine, "begin", _begin_immediate)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade)
    finally:
        await engine.dispose()


def _begin_immediate(connection: Connection) -> None:
    # Try without waiting first, so that a starter says so when another instance is migrating.
    cursor = connection.connection.cursor()
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        try:
            cursor.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                raise
        _log_waiting(connection.engine.url)
        cursor.execute(f"PRAGMA busy_timeout={MIGRATION_WAIT_S * 1000}")
        cursor.execute("BEGIN IMMEDIATE")
    finally:
        cursor.close()


def _log_waiting(url: URL) -> None:
    log.info("migration_waits_for_another_instance", url=redact(url), max_wait_s=MIGRATION_WAIT_S)


def error_reason(exc: BaseException) -> str:
    """What a database error says, for a log line: the driver's first line (not SQLAlchemy's wrapping of it),
    or the error's type when it says nothing."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text[:300]
