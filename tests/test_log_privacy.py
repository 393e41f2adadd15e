"""Issue 15.4 over real sockets: no log line carries a lesson link's token or a student's name.

A lesson is opened the way a student opens one (the page with its link, then the socket), and refused
the ways a link or a name can be refused; then every line the app wrote, at debug level, uvicorn's own
access and WebSocket lines included, is searched for the token and the name.
"""

from __future__ import annotations

import io
import logging
import time

import httpx
import pytest
from harness import log_lines, open_lesson, relay_settings, serve_app

from app.links import make_lesson_token
from app.pacing import LogThrottles
from app.simulator import RealtimeSimulator
from app.store import queries

SECRET = "test-lesson-secret-not-real-0123456789"
NAME = "Zelda"


async def test_no_log_line_carries_a_link_token_or_a_student_name(
    simulator: RealtimeSimulator, log_stream: io.StringIO, caplog: pytest.LogCaptureFixture,
) -> None:
    # The test's own HTTP client logs its requests through the same root logger: not the app's lines.
    caplog.set_level(logging.WARNING, logger="httpx")
    settings = relay_settings(simulator.url, lesson_secret=SECRET, log_level="debug")
    async with serve_app(settings, log_stream) as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200  # the lifespan has run: the store is open
            state = relay.app.state
            # Every refusal's line is searched, not one every 10 s.
            state.refusal_log = LogThrottles(interval_s=0)
            student = await queries.create_student(state.db, name=NAME, level="A2")
            link = await queries.create_link(state.db, student_id=student.id)
            token = make_lesson_token(state.link_secret, student_id=student.id, link_id=link.id,
                                      expires_at=int(time.time()) + 3600)
            assert (await http.get("/", params={"token": token})).status_code == 200
        async with open_lesson(relay.lesson_url(name=NAME, level="A2", token=token)) as page:
            assert (await page.until_type("lesson"))["name"] == NAME
            await page.hear_greeting()
            await page.send_json({"type": "end"})
            await page.drain_until_closed()
        refusals = [
            {"name": f"{NAME}!!", "token": token},  # a name that is not a name
            {"name": NAME, "token": f"{NAME}NotALinkToken"},  # a malformed token
            {"name": NAME, "token": token[:-4] + "AAAA"},  # a token whose signature does not match
        ]
        for query in refusals:
            async with open_lesson(relay.lesson_url(**query)) as refused:
                assert (await refused.until_type("error"))["code"] == "invalid_request"
                await refused.drain_until_closed()
    lines = log_stream.getvalue().splitlines()
    assert any('"lesson_ended"' in line for line in lines)
    assert len([line for line in log_lines(log_stream) if line["event"] == "lesson_refused"]) == len(refusals)
    signature = token.split(".")[1]
    leaks = [line for line in lines if NAME in line or signature in line or token.split(".")[0] in line]
    assert leaks == []
