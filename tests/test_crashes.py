"""Crashes are visible and honest: full tracebacks in the log, and a lesson that crashes says so and ends 1011."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog
from harness import log_lines, open_lesson, relay_settings, serve_app

from app.logging import REDACTED, configure_logging
from app.session import LessonSession
from app.settings import Settings
from app.simulator import RealtimeSimulator

CANARY_KEY = "sk-test-canary-in-a-traceback"


def _raise(message: str) -> None:
    raise RuntimeError(message)


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_every_logger_writes_the_full_traceback_with_secrets_redacted(log_format: str) -> None:
    stream = io.StringIO()
    configure_logging(Settings(openai_api_key=CANARY_KEY, log_format=log_format), stream)
    try:
        _raise(f"boom with {CANARY_KEY}")
    except RuntimeError as exc:
        # uvicorn's own record when an ASGI app raises, a plain stdlib logger, and one of ours.
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
        logging.getLogger("asyncio").exception("Task exception was never retrieved")
        structlog.get_logger("lesson_relay").exception("lesson_crashed")
    output = stream.getvalue()
    assert CANARY_KEY not in output
    if log_format == "json":
        lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
        assert [line["event"] for line in lines] == [
            "Exception in ASGI application", "Task exception was never retrieved", "lesson_crashed"]
        tracebacks = [line["exception"] for line in lines]
        assert all("exc_info" not in line for line in lines)
    else:
        tracebacks = output.split("Traceback (most recent call last):")[1:]
    assert len(tracebacks) == 3
    for traceback in tracebacks:
        assert "in _raise" in traceback
        assert f"RuntimeError: boom with {REDACTED}" in traceback


def test_the_teachers_password_is_redacted_like_the_key() -> None:
    stream = io.StringIO()
    password = "teacher-canary-password"
    configure_logging(Settings(teacher_password=password, log_format="json"), stream)
    try:
        _raise(f"form was password={password}")
    except RuntimeError as exc:
        logging.getLogger("uvicorn.error").error("Exception in ASGI application", exc_info=exc)
        structlog.get_logger("lesson_relay").warning("form_refused", detail=f"password={password}")
    assert password not in stream.getvalue()
    assert stream.getvalue().count(f"password={REDACTED}") == 2


async def test_an_unexpected_exception_in_a_lesson_is_logged_told_to_the_page_and_closes_both_sockets(
    simulator: RealtimeSimulator, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: LessonSession, *args: Any) -> None:
        raise RuntimeError("injected fault")

    # A bug in the machine, reached when the greeting's response.done arrives.
    monkeypatch.setattr(LessonSession, "_on_response_done", broken)
    async with serve_app(relay_settings(simulator.url), log_stream) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.until_type("audio.start")
        error = await page.until_type("error")
        await page.drain_until_closed()
        upstream = await simulator.next_connection()
        await upstream.wait_closed()
    assert page.ws.close_code == 1011
    assert error["code"] == "internal_error"
    assert error["fatal"] is True
    assert "went wrong" in error["message"]
    assert page.messages[-1] == {"type": "status", "state": "ended", "reason": "internal_error"}
    lines = log_lines(log_stream)
    [crashed] = [line for line in lines if line["event"] == "lesson_crashed"]
    assert crashed["level"] == "error"
    assert crashed["state"] == "greeting"
    assert crashed["exception"].startswith("Traceback (most recent call last):")
    assert "in broken" in crashed["exception"]
    assert crashed["exception"].rstrip().endswith("RuntimeError: injected fault")
    [ended] = [line for line in lines if line["event"] == "lesson_ended"]
    assert ended["reason"] == "internal_error"
    assert ended["lesson_id"] == crashed["lesson_id"]
    # The relay handled it: uvicorn saw no exception escape the application.
    assert not [line for line in lines if line["event"] == "Exception in ASGI application"]

