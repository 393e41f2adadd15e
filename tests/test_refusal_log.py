"""One script retrying a refused lesson cannot flood the log: a refusal's first line is logged at once, its repeats
are counted into the next line of the same kind, and uvicorn's per-socket lines are left out at info level."""

from __future__ import annotations

import io
import logging

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
