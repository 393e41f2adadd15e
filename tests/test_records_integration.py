"""A lesson over real sockets leaves its record in the store (SQLite and PostgreSQL), and a database
that goes away mid-lesson does not disturb the lesson."""

from __future__ import annotations

import io
from typing import Any

from databases import CuttableProxy
from harness import END_OF_TURN_FRAMES, AppServer, SimulatorWith, open_lesson, pause, relay_settings, serve_app, speak
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.main import create_app
from app.records import DiscardRecords
from app.simulator import RealtimeSimulator
from app.store.database import create_engine, database_url, session_factory
from app.store.models import Lesson, LessonEvent, Turn
from app.store.writer import RecordWriter


async def stored(server: AppServer) -> tuple[Lesson, list[Turn], list[LessonEvent]]:
    """The one lesson in the store once the writer has written everything the lesson left."""
    await server.app.state.records.flushed()
    sessions: async_sessionmaker[AsyncSession] = server.app.state.db
    async with sessions() as session:
        lesson = (await session.scalars(select(Lesson))).one()
        turns = list((await session.scalars(select(Turn).order_by(Turn.seq))).all())
        events = list((await session.scalars(select(LessonEvent).order_by(LessonEvent.id))).all())
    return lesson, turns, events


async def converse_and_end(server: AppServer, **query: str) -> dict[str, Any]:
    """Hear the greeting, answer it, hear the reply start, end the lesson; returns the usage frame."""
    async with open_lesson(server.lesson_url(name="Ana", level="A2", **query)) as page:
        await page.hear_greeting()
        await speak(page, 30)
        await pause(page, END_OF_TURN_FRAMES)
        reply = await page.until_type("audio.done")
        await page.send_json({"type": "playback", "item_id": reply["item_id"], "played_ms": reply["duration_ms"]})
        await page.send_json({"type": "end"})
        usage = await page.until_type("usage")
        await page.drain_until_closed()
        assert page.ws.close_code == 1000
        return usage


async def test_a_lesson_leaves_its_turns_usage_and_greeting_retry_in_the_store(
        simulator_with: SimulatorWith, store_url: str, log_stream: io.StringIO) -> None:
    async with simulator_with(response_fault="failed", fault_times=1) as simulator, \
            serve_app(relay_settings(simulator.url, database_url=store_url), log_stream) as server:
        usage = await converse_and_end(server)
        lesson, turns, events = await stored(server)
    assert (lesson.level, lesson.end_reason, lesson.model, lesson.simulated) == (
        "A2", "student_ended", "gpt-realtime-2.1", False)
    assert lesson.ended_at is not None
    assert lesson.ended_at > lesson.started_at
    assert (lesson.audio_output_tokens, lesson.text_output_tokens, lesson.audio_input_tokens) == (
        usage["audio_output_tokens"], usage["text_output_tokens"], usage["audio_input_tokens"])
    assert lesson.audio_output_tokens > 0
    assert lesson.estimated_cost_usd == usage["estimated_cost_usd"] > 0
    assert [turn.role for turn in turns] == ["tutor", "student", "tutor"]
    assert all(turn.text for turn in turns)
    assert all(turn.lesson_id == lesson.id for turn in turns)
    assert [event.kind for event in events] == ["response_failed", "greeting_retry"]
    assert events[0].detail["status_details"]["error"]["code"] == "server_error"
    assert events[1].detail["attempt"] == 1


async def test_a_failed_greeting_leaves_its_status_details(
        simulator_with: SimulatorWith, store_url: str, log_stream: io.StringIO) -> None:
    async with simulator_with(response_fault="failed", fault_times=None, failed_code="server_error") as simulator, \
            serve_app(relay_settings(simulator.url, database_url=store_url), log_stream) as server:
        async with open_lesson(server.lesson_url(name="Ana")) as page:
            await page.until(lambda m: m["type"] == "error" and m.get("fatal"))
            await page.drain_until_closed()
        lesson, _turns, events = await stored(server)
    assert lesson.end_reason == "greeting_failed"
    kinds = [event.kind for event in events]
    assert kinds == ["response_failed", "greeting_retry", "response_failed", "greeting_failed"]
    failed = events[2].detail["status_details"]
    assert (failed["type"], failed["error"]["code"]) == ("failed", "server_error")
    assert events[3].detail == {"status": "failed", "reason": None, "code": "server_error", "audio_ms": 0,
                                "attempt": 2}


async def test_the_database_going_away_mid_lesson_does_not_disturb_the_lesson(
        simulator_with: SimulatorWith, postgres_behind_proxy: tuple[str, CuttableProxy],
        log_stream: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    async with simulator_with() as simulator, \
            serve_app(relay_settings(simulator.url, database_url=url), log_stream) as server:
        async with open_lesson(server.lesson_url(name="Ana")) as page:
            await page.hear_greeting()
            proxy.cut()
            await speak(page, 30)
            await pause(page, END_OF_TURN_FRAMES)
            reply = await page.until_type("audio.done")
            await page.send_json({"type": "end"})
            usage = await page.until_type("usage")
            await page.drain_until_closed()
        assert page.ws.close_code == 1000
        assert reply["duration_ms"] > 0
        assert usage["audio_output_tokens"] > 0
        await proxy.refused.wait()  # the writer met the outage
        proxy.restore()
        lesson, turns, _ = await stored(server)
    assert lesson.end_reason == "student_ended"
    assert [turn.role for turn in turns] == ["tutor", "student", "tutor"]
    assert server.app.state.records.dropped == 0


async def test_an_app_given_a_record_sink_hands_lessons_records_to_it_instead_of_the_writer(
        simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    """The bench's `relay-unrecorded` baseline: the same app, its records discarded."""
    settings = relay_settings(simulator.url)
    app = create_app(settings, log_stream=log_stream, record_sink=DiscardRecords())
    async with app.router.lifespan_context(app):
        assert isinstance(app.state.records, DiscardRecords)
    recorded = create_app(settings, log_stream=log_stream)
    async with recorded.router.lifespan_context(recorded):
        assert isinstance(recorded.state.records, RecordWriter)


async def test_records_still_queued_at_shutdown_are_written_before_the_app_stops(
        simulator: RealtimeSimulator, store_url: str, log_stream: io.StringIO) -> None:
    async with serve_app(relay_settings(simulator.url, database_url=store_url), log_stream) as server, \
            open_lesson(server.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
    # No flush asked for: the shutdown itself wrote what the lesson left.
    engine = create_engine(database_url(store_url))
    try:
        async with session_factory(engine)() as session:
            lesson = (await session.scalars(select(Lesson))).one()
            turns = (await session.scalars(select(Turn))).all()
    finally:
        await engine.dispose()
    assert lesson.end_reason == "student_ended"
    assert [turn.role for turn in turns] == ["tutor"]
