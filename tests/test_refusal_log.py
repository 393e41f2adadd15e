"""One script retrying a refused lesson cannot flood the log: a refusal's first line is logged at once, its repeats
are counted into the next line of the same kind, and uvicorn's per-socket lines are left out at info level."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

from harness import log_lines, logged, open_lesson, relay_settings, serve_app

from app.logging import configure_logging
from app.pacing import LogThrottles
from app.settings import Settings
from app.simulator import RealtimeSimulator

ATTEMPTS = 5


def test_each_kind_logs_its_first_line_at_once_and_counts_its_repeats_into_its_next_line() -> None:
    throttles = LogThrottles(interval_s=10.0)
    assert throttles.allow("lesson_refused:invalid_request", 100.0) == 0
    assert [throttles.allow("lesson_refused:invalid_request", 100.0 + i) for i in range(3)] == [None] * 3
    # Another kind is not held back by the first one's flood.
    assert throttles.allow("lesson_refused:over_capacity", 101.0) == 0
    assert throttles.allow("lesson_refused:invalid_request", 110.0) == 3
    assert throttles.allow("lesson_refused:invalid_request", 110.5) is None
    assert throttles.allow("lesson_refused:over_capacity", 111.0) == 0


async def _refused_starts(lesson_url: str, count: int) -> list[str]:
    codes = []
    for _ in range(count):
        async with open_lesson(lesson_url) as page:
            codes.append((await page.until_type("error"))["code"])
            await page.drain_until_closed()
    return codes


async def test_a_flood_of_refused_starts_and_resumes_logs_one_line_of_each_kind(simulator: RealtimeSimulator) -> None:
    log_stream = io.StringIO()
    async with serve_app(relay_settings(simulator.url, log_level="info"), log_stream) as relay:
        bad_level = relay.lesson_url(name="Ana", level="Z9")
        assert await _refused_starts(bad_level, ATTEMPTS) == ["invalid_request"] * ATTEMPTS
        assert await _refused_starts(f"{relay.ws_url}/ws/lesson?resume=not-a-token", ATTEMPTS) == (
            ["resume_invalid"] * ATTEMPTS)
    [refused] = logged(log_stream, "lesson_refused")
    assert (refused["code"], refused["not_logged_since"]) == ("invalid_request", 0)
    [resume_refused] = logged(log_stream, "resume_refused")
    assert (resume_refused["code"], resume_refused["not_logged_since"]) == ("resume_invalid", 0)
    # Nor does uvicorn write a line per socket: the relay's own line says more.
    events = [str(line["event"]) for line in log_lines(log_stream)]
    assert "connection open" not in events
    assert not [event for event in events if "WebSocket /ws/lesson" in event]


async def test_the_count_of_the_last_refusals_held_back_is_logged_when_their_interval_ends(
        simulator: RealtimeSimulator) -> None:
    log_stream = io.StringIO()
    async with serve_app(relay_settings(simulator.url, log_level="info"), log_stream) as relay:
        relay.app.state.refusal_log = LogThrottles(interval_s=0.5)
        assert await _refused_starts(relay.lesson_url(name="Ana", level="Z9"), ATTEMPTS) == (
            ["invalid_request"] * ATTEMPTS)
        # No refusal follows: the interval's end alone logs how many were held back, until each is accounted for.
        async with asyncio.timeout(10):
            while True:
                if _accounted_for(logged(log_stream, "lesson_refused")) >= ATTEMPTS:
                    break
                await asyncio.sleep(0.05)
    lines = logged(log_stream, "lesson_refused")
    assert _accounted_for(lines) == ATTEMPTS
    assert lines[0]["not_logged_since"] == 0
    # The last line is the count alone, of no one client's refusals.
    assert {"client", "detail"} & lines[-1].keys() == set()
    assert lines[-1]["not_logged_since"] > 0


def _accounted_for(lines: list[dict[str, Any]]) -> int:
    """The refusals `lines` tell of: each logged one (with its `detail`), and each counted as not logged."""
    return sum(1 for line in lines if "detail" in line) + sum(line["not_logged_since"] for line in lines)


def test_uvicorn_lines_about_lesson_sockets_are_left_out_at_info_and_its_other_lines_kept() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_level="info", log_format="json"), stream)
    uvicorn_lines = logging.getLogger("uvicorn.error")
    uvicorn_lines.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:50000", "/ws/lesson?name=Ana")
    uvicorn_lines.info('%s - "WebSocket %s" 403', "127.0.0.1:50000", "/ws/lesson")
    uvicorn_lines.info("connection open")
    uvicorn_lines.info("connection closed")
    uvicorn_lines.info('%s - "WebSocket %s" [accepted]', "127.0.0.1:50000", "/ws/other")
    uvicorn_lines.info("Application startup complete.")
    uvicorn_lines.error("Exception in ASGI application\n")
    assert [line["event"] for line in log_lines(stream)] == [
        '127.0.0.1:50000 - "WebSocket /ws/other" [accepted]', "Application startup complete.",
        "Exception in ASGI application\n"]


def test_at_debug_level_uvicorn_lines_about_lesson_sockets_are_kept() -> None:
    stream = io.StringIO()
    configure_logging(Settings(log_level="debug", log_format="json"), stream)
    logging.getLogger("uvicorn.error").info("connection open")
    assert [line["event"] for line in log_lines(stream)] == ["connection open"]


def test_the_embedded_simulators_socket_lines_are_kept_at_debug_level_only() -> None:
    stream = io.StringIO()
    simulator_server = logging.getLogger("websockets.server")
    configure_logging(Settings(log_level="info", log_format="json"), stream)
    simulator_server.info("connection open")
    simulator_server.error("connection handler failed")
    configure_logging(Settings(log_level="debug", log_format="json"), stream)
    simulator_server.info("connection closed")
    simulator_server.debug("< TEXT '{\"type\":\"session.update\"}' [30 bytes]")
    assert [line["event"] for line in log_lines(stream)] == ["connection handler failed", "connection closed"]
