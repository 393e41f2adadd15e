"""Fixtures shared by the integration tests; the harness itself is in `harness.py`."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from databases import (  # noqa: F401  (fixtures for all tests)
    postgres_behind_proxy,
    postgres_server,
    postgres_url,
    refusal,
    store_url,
)
from harness import AppServer, relay_settings, serve_app

from app.simulator import RealtimeSimulator, SimulatorBehaviour


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(SimulatorBehaviour()) as sim:
        yield sim


@pytest.fixture
def simulator_with() -> Callable[..., Any]:
    """`async with simulator_with(response_fault="failed") as sim:` — a simulator with a behaviour."""
    return lambda **behaviour: RealtimeSimulator(SimulatorBehaviour(**behaviour))


@pytest.fixture
def log_stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
async def relay(simulator: RealtimeSimulator, log_stream: io.StringIO) -> AsyncIterator[AppServer]:
    async with serve_app(relay_settings(simulator.url), log_stream) as server:
        yield server


@pytest.fixture(autouse=True)
def _records_in_the_test_folder(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app built without DATABASE_URL keeps its records in ./data/lessons.db: the test's own folder."""
    monkeypatch.chdir(tmp_path)
