"""The database: which one (DATABASE_URL), the engine and session factory, and migrations at start.

`DATABASE_URL` unset → a SQLite file `data/lessons.db` under the working directory, created on first
start (aiosqlite). `postgres://…` (what Railway sets) and `postgresql://…` → asyncpg. `migrate()` brings
the schema to the newest Alembic revision before the server serves; when the database cannot be reached
it raises `DatabaseUnavailable`, whose message names the URL without its password.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///data/lessons.db"
MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT_S = 10.0

_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


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
    driver = _SCHEMES.get(url.drivername)
    if driver is None:
        raise DatabaseUrlError(
            f"DATABASE_URL scheme {url.drivername!r} is not supported: use postgresql://… or sqlite:///…")
    if driver.startswith("sqlite") and url.database in (None, "", ":memory:"):
        raise DatabaseUrlError("DATABASE_URL names no SQLite file: use sqlite:///path/to/lessons.db")
    return url.set(drivername=driver)


def redact(url: URL | str) -> str:
    """`url` as text with its password replaced by ***, for logs and error messages."""
    if isinstance(url, str):
        try:
            url = make_url(url)
        except ArgumentError:
            return "<unreadable URL>"
    return url.render_as_string(hide_password=True)


def create_engine(url: URL) -> AsyncEngine:
    """An engine for `url`; on SQLite every connection enforces foreign keys."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    # asyncpg waits 60 s for an unanswered connect by default: too long for a start or a writer retry.
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                               connect_args={"timeout": CONNECT_TIMEOUT_S})


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    # SQLite ignores ON DELETE CASCADE unless asked per connection; WAL lets the desk read while the
    # writer writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
    `DatabaseUnavailable` when the database is out of reach."""
    try:
        if engine.url.get_backend_name() == "sqlite" and engine.url.database:
            Path(engine.url.database).parent.mkdir(parents=True, exist_ok=True)
        async with engine.begin() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), "head"))
    except (OSError, TimeoutError) as exc:
        raise DatabaseUnavailable(f"database {redact(engine.url)} cannot be reached: {error_reason(exc)}") from exc
    except Exception as exc:
        # Drivers raise their own error trees (asyncpg, sqlite3, SQLAlchemy's wrappers of both).
        raise DatabaseUnavailable(f"database {redact(engine.url)} cannot be used: {error_reason(exc)}") from exc


def error_reason(exc: BaseException) -> str:
    """What a database error says, for a log line: the driver's first line (not SQLAlchemy's wrapping of it),
    or the error's type when it says nothing."""
    original = getattr(exc, "orig", None) or exc
    text = str(original).strip().splitlines()[0] if str(original).strip() else type(original).__name__
    return text[:300]
