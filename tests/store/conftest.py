"""The store under test: a migrated database (SQLite, then PostgreSQL) and its session factory; its log lines."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.store.database import create_engine, database_url, migrate, session_factory


@pytest.fixture
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url(store_url))
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
def store_log() -> Iterator[io.StringIO]:
    """What structlog logs while the test runs, as JSON lines in the stream returned."""
    stream = io.StringIO()
    structlog.configure(processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
                        logger_factory=structlog.PrintLoggerFactory(stream))
    yield stream
    structlog.reset_defaults()
