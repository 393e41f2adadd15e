"""Settings that start but leave something open, or undercut another setting, are named once at start."""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from typing import Any

import pytest
import structlog
from harness import logged, relay_settings, serve_app

from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.startup_warnings import warn_about_settings

TOKEN = "metrics-test-token-not-a-secret"


async def test_a_real_key_without_metrics_token_warns_at_start_that_metrics_are_public(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream):
        pass
    assert logged(log_stream, "metrics_open_to_anyone") == []
    async with serve_app(relay_settings(simulator.url), log_stream):
        pass
    [warning] = logged(log_stream, "metrics_open_to_anyone")
    assert warning["level"] == "warning"
    assert "/metrics" in warning["message"]
    assert "set METRICS_TOKEN" in warning["message"]


async def test_the_simulator_without_metrics_token_does_not_warn(log_stream: io.StringIO) -> None:
    async with serve_app(Settings(log_format="json"), log_stream):
        pass
    assert logged(log_stream, "simulator_mode") != []
    assert logged(log_stream, "metrics_open_to_anyone") == []


def warnings_for(settings: Settings) -> list[MutableMapping[str, Any]]:
    with structlog.testing.capture_logs() as captured:
        warn_about_settings(settings)
    return captured


@pytest.mark.parametrize(("max_sessions", "max_connections", "web_concurrency", "warned"), [
    (50, 500, 1, False),
    (500, 500, 1, False),
    (501, 500, 1, True),
    (900, 500, 2, False),
    (1001, 500, 2, True),
])
def test_max_sessions_past_every_workers_connections_warns_naming_the_three_settings(
    max_sessions: int, max_connections: int, web_concurrency: int, warned: bool
) -> None:
    settings = Settings(max_sessions=max_sessions, max_connections=max_connections, web_concurrency=web_concurrency)
    warnings = [line for line in warnings_for(settings) if line["event"] == "max_sessions_unreachable"]
    assert len(warnings) == int(warned)
    if warned:
        [warning] = warnings
        assert warning["log_level"] == "warning"
        assert (warning["max_sessions"], warning["max_connections"], warning["web_concurrency"]) == (
            max_sessions, max_connections, web_concurrency)
        assert f"= {max_connections * web_concurrency} connections" in warning["message"]
