"""Settings that start but leave something open, or undercut another setting, are named once at start."""

from __future__ import annotations

import io
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from harness import app_process, logged, relay_settings, serve_app

from app.main import shutdown_worst_case_seconds
from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.startup_warnings import RAILWAY_DRAINING_SECONDS, log_settings_at_start

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


@pytest.mark.parametrize("uvicorn_cli", [True, False])
async def test_serving_by_the_uvicorn_cli_warns_that_lessons_are_not_drained_nor_guarded(
    simulator: RealtimeSimulator, tmp_path: Path, uvicorn_cli: bool
) -> None:
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", uvicorn_cli=uvicorn_cli) as served:
        await served.until_workers_started(1)
        warnings = served.output.of("served_without_drain_or_guards")
    if uvicorn_cli:
        [warning] = warnings
        assert warning["level"] == "warning"
        assert "deploy with `python -m app`" in warning["message"]
    else:
        assert warnings == []


def warnings_for(settings: Settings, event: str) -> list[MutableMapping[str, Any]]:
    """The `event` lines `python -m app` logs at start for `settings`."""
    with structlog.testing.capture_logs() as captured:
        log_settings_at_start(settings,
                            shutdown_worst_case_s=shutdown_worst_case_seconds(settings.shutdown_grace_seconds))
    return [line for line in captured if line["event"] == event]


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
    warnings = warnings_for(settings, "max_sessions_unreachable")
    assert len(warnings) == int(warned)
    if warned:
        [warning] = warnings
        assert warning["log_level"] == "warning"
        assert (warning["max_sessions"], warning["max_connections"], warning["web_concurrency"]) == (
            max_sessions, max_connections, web_concurrency)
        assert f"= {max_connections * web_concurrency} connections" in warning["message"]


ON_RAILWAY = "0b2f4f0e-fake-deployment-id"


@pytest.mark.parametrize(("grace_s", "warned"), [(10, False), (15, False), (15.5, True), (60, True)])
def test_on_railway_a_grace_past_railway_json_draining_warns_naming_both(grace_s: float, warned: bool) -> None:
    settings = Settings(railway_deployment_id=ON_RAILWAY, shutdown_grace_seconds=grace_s)
    warnings = warnings_for(settings, "shutdown_outlasts_railway_draining")
    assert len(warnings) == int(warned)
    if warned:
        [warning] = warnings
        assert warning["log_level"] == "warning"
        assert (warning["shutdown_grace_s"], warning["draining_s"]) == (grace_s, RAILWAY_DRAINING_SECONDS)
        assert f"SHUTDOWN_GRACE_SECONDS ({grace_s:g})" in warning["message"]
        assert f"{RAILWAY_DRAINING_SECONDS} s after SIGTERM (railway.json's drainingSeconds)" in warning["message"]
        assert "at most 15," in warning["message"]


def test_off_railway_no_grace_warns() -> None:
    assert warnings_for(Settings(shutdown_grace_seconds=120), "shutdown_outlasts_railway_draining") == []


def test_railways_draining_variable_counts_when_it_is_the_shorter() -> None:
    shorter = Settings(railway_deployment_id=ON_RAILWAY, railway_deployment_draining_seconds=12)
    [warning] = warnings_for(shorter, "shutdown_outlasts_railway_draining")
    assert warning["draining_s"] == 12
    assert "(RAILWAY_DEPLOYMENT_DRAINING_SECONDS)" in warning["message"]
    assert "at most 7," in warning["message"]
    assert "raise RAILWAY_DEPLOYMENT_DRAINING_SECONDS" in warning["message"]
    longer = Settings(railway_deployment_id=ON_RAILWAY, railway_deployment_draining_seconds=60,
                      shutdown_grace_seconds=30)
    [warning] = warnings_for(longer, "shutdown_outlasts_railway_draining")
    assert warning["draining_s"] == RAILWAY_DRAINING_SECONDS


def test_railways_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAILWAY_DEPLOYMENT_ID", ON_RAILWAY)
    monkeypatch.setenv("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "30")
    settings = Settings()
    assert (settings.railway_deployment_id, settings.railway_deployment_draining_seconds) == (ON_RAILWAY, 30)
    monkeypatch.setenv("RAILWAY_DEPLOYMENT_DRAINING_SECONDS", "")
    assert Settings().railway_deployment_draining_seconds is None
