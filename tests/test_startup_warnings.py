"""Settings that start but leave something open, or undercut another setting, are named once at start."""

from __future__ import annotations

import io

from harness import logged, relay_settings, serve_app

from app.settings import Settings
from app.simulator import RealtimeSimulator

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
