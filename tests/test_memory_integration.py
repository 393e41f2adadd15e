"""A tutor that remembers, over real sockets with the simulator: the first lesson's feedback goes into the
next lesson's `session.update` instructions, and the simulated tutor welcomes the student back with it;
a store that is down at the start means a first-lesson greeting, not a failed lesson."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from databases import CuttableProxy
from harness import AppServer, logged, open_lesson, relay_settings, serve_app
from test_feedback_integration import converse
from test_links import SECRET, personal_link, started_app

from app.simulator import RealtimeSimulator

HEADING = "# What you remember about the student"


async def lesson_with_feedback(server: AppServer, query: dict[str, str]) -> dict[str, Any]:
    """A first lesson that converses and ends with End; its feedback frame, once the store has it."""
    async with open_lesson(server.lesson_url(**query)) as page:
        await converse(page)
        await page.send_json({"type": "end"})
        feedback = await page.until_type("feedback")
        await page.drain_until_closed()
    await server.app.state.records.flushed()
    return feedback


async def greeting_of_next_lesson(server: AppServer, query: dict[str, str]) -> str:
    """The tutor's first words in a new lesson, which the student then ends."""
    async with open_lesson(server.lesson_url(**query)) as page:
        greeting = await page.until_type("transcript.done", role="tutor")
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
    text: str = greeting["text"]
    return text


def instructions(simulator: RealtimeSimulator, connection: int) -> str:
    update = next(e for e in simulator.connections[connection].received if e["type"] == "session.update")
    text: str = update["session"]["instructions"]
    return text


@pytest.mark.parametrize("who", ["browser", "link"])
async def test_the_next_lesson_remembers_the_first_and_welcomes_the_student_back(
        simulator: RealtimeSimulator, log_stream: io.StringIO, who: str) -> None:
    settings = relay_settings(simulator.url, **({"lesson_secret": SECRET} if who == "link" else {}))
    async with serve_app(settings, log_stream) as server:
        if who == "link":
            _, _, token = await personal_link(await started_app(server), name="Ana", level="A2")
            query = {"name": "Ana", "token": token}
        else:
            query = {"name": "Ana", "level": "A2", "student_key": "a" * 32}
        feedback = await lesson_with_feedback(server, query)
        greeting = await greeting_of_next_lesson(server, query)
    first, second = instructions(simulator, 0), instructions(simulator, 1)
    assert HEADING not in first
    assert f"{HEADING}\n" in second
    assert f"- {json.dumps(feedback['summary'], ensure_ascii=False)}\n" in second
    assert "welcome them back" in second
    # The summary of the first lesson names its topics: how you are, and your favourite food.
    said = feedback["summary"].rstrip(".!")
    assert greeting.startswith(f"Welcome back, Ana! I remember from last time: {said}. ")
    assert "your favourite food" in greeting


async def test_another_student_is_not_remembered(simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream) as server:
        await lesson_with_feedback(server, {"name": "Ana", "student_key": "a" * 32})
        greeting = await greeting_of_next_lesson(server, {"name": "Ben", "student_key": "b" * 32})
    assert HEADING not in instructions(simulator, 1)
    assert greeting.startswith("Hello Ben!")


async def test_a_store_that_is_down_at_the_start_means_a_first_lesson_greeting_and_the_lesson_goes_on(
        simulator: RealtimeSimulator, postgres_behind_proxy: tuple[str, CuttableProxy],
        log_stream: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    query = {"name": "Ana", "student_key": "a" * 32}
    async with serve_app(relay_settings(simulator.url, database_url=url), log_stream) as server:
        await lesson_with_feedback(server, query)
        proxy.cut()
        greeting = await greeting_of_next_lesson(server, query)
        proxy.restore()
    assert greeting.startswith("Hello Ana!")
    assert HEADING not in instructions(simulator, 1)
    [unavailable] = logged(log_stream, "memory_unavailable")
    [_, second] = logged(log_stream, "lesson_started")
    # Said of the lesson that started without its memory.
    assert (unavailable["lesson_id"], unavailable["client"]) == (second["lesson_id"], "127.0.0.1")
