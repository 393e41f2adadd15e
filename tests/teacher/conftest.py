"""Fixtures for the desk and API tests (helpers in desk_client.py)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import pytest
from desk_client import Desk, serve_desk


@pytest.fixture
async def desk(log_stream: io.StringIO) -> AsyncIterator[Desk]:
    async with serve_desk(log_stream) as running:
        yield running


@pytest.fixture
async def desk_on(store_url: str, log_stream: io.StringIO) -> AsyncIterator[Desk]:
    """The desk on each real database: a SQLite file, then a PostgreSQL database (see tests/databases.py)."""
    async with serve_desk(log_stream, database_url=store_url) as running:
        await running.sign_in()
        yield running
