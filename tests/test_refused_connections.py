"""A database refusing connections, over real sockets: the page and the HTTP client get the same answer whether the
refusal comes as SQLAlchemy's error or as the driver's own (asyncpg's `CannotConnectNowError` while PostgreSQL
restarts, which SQLAlchemy does not always wrap), and the log line names the reason: a link lesson refused for now
(1013), a resume told to try again, a taken-over lesson refused a place still refused in plain words, the desk's
sign-in and pages a 503. Never a 1011 or a 500."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest
from databases import STARTING_UP, Refusal, connections_refused
from harness import AppServer, closed_with, logged, open_lesson, relay_settings, serve_app
from sqlalchemy.ext.asyncio import AsyncEngine
from teacher.desk_client import PASSWORD, serve_desk
from test_links import personal_link, started_app
from test_resume import a_lesson_handed_off_with, resume_url

from app.admission import Start
from app.errors import OverCapacity
from app.simulator import RealtimeSimulator

SECRET = "test-lesson-secret-not-real-0123456789"



@pytest.fixture
async def relay_on_postgres(simulator: RealtimeSimulator, postgres_url: str,
                            log_stream: io.StringIO) -> AsyncIterator[AppServer]:
    settings = relay_settings(simulator.url, database_url=postgres_url, lesson_secret=SECRET)
    async with serve_app(settings, log_stream) as server:
        await started_app(server)
        yield server


def engine_of(server: AppServer) -> AsyncEngine:
    engine: AsyncEngine = server.app.state.db.kw["bind"]
    return engine


async def refused(url: str) -> tuple[dict[str, Any], int | None]:
    async with open_lesson(url) as page:
        error = await page.until_type("error")
        return error, await closed_with(page)


async def test_a_link_lesson_and_its_page_are_refused_for_now_naming_the_reason(
        relay_on_postgres: AppServer, refusal: Refusal, log_stream: io.StringIO) -> None:
    server = relay_on_postgres
    _, _, token = await personal_link(server.app.state)
    async with connections_refused(engine_of(server), refusal), httpx.AsyncClient() as http:
        error, code = await refused(server.lesson_url(name="Ana", token=token))
        page = await http.get(f"{server.base_url}/", params={"token": token})
    assert (error["code"], code) == ("link_unchecked", 1013)
    assert page.status_code == 503
    assert "cannot be checked just now" in page.text
    [line] = logged(log_stream, "lesson_refused")
    assert line["code"] == "link_unchecked"
    assert STARTING_UP in line["detail"]


async def test_a_resume_is_told_to_try_again_naming_the_reason(
        relay_on_postgres: AppServer, refusal: Refusal, log_stream: io.StringIO) -> None:
    server = relay_on_postgres
    token = await a_lesson_handed_off_with(server, "handedoff01", [])
    async with connections_refused(engine_of(server), refusal):
        error, code = await refused(resume_url(server, token))
    assert (error["code"], error["fatal"], code) == ("link_unchecked", False, 1013)
    [line] = logged(log_stream, "resume_not_yet")
    assert line["code"] == "link_unchecked"
    assert STARTING_UP in line["detail"]


async def test_a_lesson_taken_over_then_refused_a_place_is_refused_in_plain_words_when_it_cannot_be_given_back(
        relay_on_postgres: AppServer, refusal: Refusal, log_stream: io.StringIO) -> None:
    server = relay_on_postgres
    token = await a_lesson_handed_off_with(server, "handedoff02", [])

    async with AsyncExitStack() as outage:
        async def full_once_the_database_is_gone(start: Start, now: float) -> Any:
            # Taken over; the database stops answering before the lesson can be handed back.
            await outage.enter_async_context(connections_refused(engine_of(server), refusal))
            raise OverCapacity("no place for the lesson taken over")

        server.app.state.lessons.admit = full_once_the_database_is_gone
        error, code = await refused(resume_url(server, token))
    assert (error["code"], error["fatal"], code) == ("over_capacity", False, 1013)
    [line] = logged(log_stream, "lesson_not_given_back")
    assert line["error"] == STARTING_UP


async def test_the_desk_s_sign_in_and_pages_are_a_503_naming_the_reason(
        postgres_url: str, refusal: Refusal, log_stream: io.StringIO) -> None:
    async with serve_desk(log_stream, database_url=postgres_url) as desk:
        await desk.sign_in()
        signed_in_page = await desk.client.get("/teacher")
        async with httpx.AsyncClient(base_url=desk.server.base_url) as other:
            form = await other.get("/teacher/signin")
            async with connections_refused(engine_of(desk.server), refusal):
                page = await desk.client.get("/teacher")
                sign_in = await other.post("/teacher/signin", data={
                    "csrf_token": form.text.split('name="csrf_token" value="')[1].split('"')[0],
                    "password": PASSWORD})
    assert signed_in_page.status_code == 200
    assert (page.status_code, sign_in.status_code) == (503, 503)
    assert "its database is not answering" in page.text
    assert "its database is not answering" in sign_in.text
    [session_line] = logged(log_stream, "desk_session_unavailable")
    [sign_in_line] = logged(log_stream, "sign_in_limit_unavailable")
    assert (session_line["error"], sign_in_line["error"]) == (STARTING_UP, STARTING_UP)
