"""The lesson's feedback over real sockets with the simulator: asked of the same session at a normal end,
it reaches the page before `status` `ended` and the store keeps it; without it the lesson ends as before."""

from __future__ import annotations

import asyncio
import functools
import io
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

import pytest
from harness import (
    END_OF_TURN_FRAMES,
    AppServer,
    LessonClient,
    SimulatorWith,
    log_lines,
    logged,
    of_type,
    open_lesson,
    pause,
    relay_settings,
    serve_app,
    speak,
)
from test_records_integration import stored

from app import routes
from app.actions import Action
from app.records import LessonEnded
from app.relay import Relay
from app.session import LessonSession
from app.simulator import RealtimeSimulator
from app.simulator.connection import SimulatedConnection
from app.simulator.feedback import is_feedback_request


async def converse(page: LessonClient) -> None:
    """Hear the greeting, answer it, and hear the tutor's reply to the end."""
    await page.hear_greeting()
    await speak(page, 30)
    await pause(page, END_OF_TURN_FRAMES)
    reply = await page.until_type("audio.done")
    await page.send_json({"type": "playback", "item_id": reply["item_id"], "played_ms": reply["duration_ms"]})
    await page.until_type("status", state="listening")


async def end_and_read(server: AppServer, **settings_query: str) -> list[dict[str, Any]]:
    """A lesson that converses and ends with End: every JSON frame after the End, up to the close."""
    async with open_lesson(server.lesson_url(name="Ana", level="A2")) as page:
        await converse(page)
        before = len(page.messages)
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
        assert page.ws.close_code == 1000
        return page.messages[before:]


async def test_end_brings_the_feedback_to_the_page_before_ended_and_into_the_store(
        simulator: RealtimeSimulator, relay: AppServer, log_stream: io.StringIO) -> None:
    frames = await end_and_read(relay)
    assert [(f["type"], f.get("state")) for f in frames] == [
        ("status", "feedback"), ("feedback", None), ("usage", None), ("status", "ended")]
    feedback = {key: value for key, value in frames[1].items() if key != "type"}
    assert set(feedback) == {"summary", "corrections", "new_words", "next_step"}
    # The simulator's feedback is built from the conversation it had: its greeting and its reply.
    assert feedback["summary"].startswith("Today we talked about how you are and your favourite food.")
    assert {"word": "favourite", "meaning": "the one you like best"} in feedback["new_words"]
    assert frames[2]["responses"] == 3
    assert frames[2]["text_output_tokens"] > 0

    upstream = simulator.connections[-1]
    [request] = [e for e in of_type(upstream.received, "response.create") if "metadata" in e.get("response", {})]
    assert request["response"]["conversation"] == "none"
    assert request["response"]["output_modalities"] == ["text"]
    assert 'The student\'s name is "Ana".' in request["response"]["instructions"]
    assert "The student is learning English at CEFR level A2" in request["response"]["instructions"]

    lesson, turns, _ = await stored(relay)
    assert lesson.feedback == feedback
    assert lesson.end_reason == "student_ended"
    assert lesson.text_output_tokens == frames[2]["text_output_tokens"]
    # Its text is not a turn of the conversation.
    assert all(feedback["summary"] not in turn.text for turn in turns)
    assert [line for line in log_lines(log_stream) if line["event"] == "upstream_text_output"] == []


def hold_the_feedback_until(monkeypatch: pytest.MonkeyPatch, released: asyncio.Event) -> None:
    """The simulator answers the feedback request only once `released` is set."""
    answer = SimulatedConnection._response_create

    async def feedback_once_released(connection: SimulatedConnection, event: dict[str, Any]) -> None:
        if is_feedback_request((event.get("response") or {}).get("metadata")):
            await released.wait()
        await answer(connection, event)

    monkeypatch.setattr(SimulatedConnection, "_response_create", feedback_once_released)


def when_the_page_is_away(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Set once the lesson has been told its page went away (its socket closed, lost or stalled)."""
    away = asyncio.Event()
    detached = LessonSession.handle_page_detached

    def detached_and_told(session: LessonSession, now: float) -> Sequence[Action]:
        actions = detached(session, now)
        away.set()
        return actions

    monkeypatch.setattr(LessonSession, "handle_page_detached", detached_and_told)
    return away


async def test_a_page_replaced_just_after_end_gets_the_feedback_the_lesson_was_waiting_for(
        relay: AppServer, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # A reload or a network blip right after End: the new socket resumes while the first is still open. The
    # simulator holds the feedback until the new page is attached, so it comes while the lesson waits for it.
    new_page_attached = asyncio.Event()
    hold_the_feedback_until(monkeypatch, new_page_attached)
    async with open_lesson(relay.lesson_url(name="Ana", level="A2")) as first:
        token = (await first.until_type("lesson"))["resume_token"]
        await converse(first)
        await first.send_json({"type": "end"})
        await first.until_type("status", state="feedback")
        async with open_lesson(f"{relay.ws_url}/ws/lesson?{urlencode({'resume': token})}") as second:
            try:
                async with asyncio.timeout(20):
                    resumed = await second.until_type("lesson")
                    waiting = await second.until_type("status")
            finally:
                new_page_attached.set()  # never left holding the simulator, whatever the page got
            async with asyncio.timeout(20):
                await second.drain_until_closed()
                await first.drain_until_closed()
        lesson, _, _ = await stored(relay)
    assert resumed["resumed"] is True
    assert waiting["state"] == "feedback"
    assert 0 < waiting["timeout_s"] <= 20
    frames = second.messages[second.messages.index(waiting) + 1:]
    assert [(f["type"], f.get("state")) for f in frames] == [("feedback", None), ("usage", None), ("status", "ended")]
    assert frames[-1]["reason"] == "student_ended"
    assert second.ws.close_code == 1000
    # The replaced page is told the lesson went on elsewhere, and gets no word that the feedback is lost.
    assert [(f["code"], f["fatal"]) for f in of_type(first.messages, "error")] == [("lesson_resumed_elsewhere", True)]
    assert of_type(first.messages, "feedback.unavailable") == []
    assert first.ws.close_code == 4001
    assert lesson.feedback == {key: value for key, value in frames[0].items() if key != "type"}
    assert lesson.end_reason == "student_ended"
    assert [line for line in log_lines(log_stream) if line["event"] == "feedback_unavailable"] == []


async def test_a_tab_closed_right_after_end_leaves_the_lesson_waiting_and_its_feedback_recorded_for_the_teacher(
        simulator: RealtimeSimulator, relay: AppServer, log_stream: io.StringIO,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The feedback comes once the page has gone: the lesson must still be waiting for it then.
    away = when_the_page_is_away(monkeypatch)
    hold_the_feedback_until(monkeypatch, away)
    async with open_lesson(relay.lesson_url(name="Ana", level="A2")) as page:
        await converse(page)
        await page.send_json({"type": "end"})
        await page.until_type("status", state="feedback")
    async with asyncio.timeout(30):  # a guard against a lesson left waiting, not a measure of time
        await relay.app.state.live_lessons.ended()
    lesson, _, events = await stored(relay)
    assert lesson.feedback is not None
    assert lesson.feedback["summary"].startswith("Today we talked about how you are and your favourite food.")
    assert lesson.end_reason == "student_ended"
    assert [event.detail["state"] for event in events if event.kind == "page_away"] == ["feedback"]
    assert logged(log_stream, "feedback_unavailable") == []
    assert simulator.connections[-1].closed


async def test_a_page_whose_network_drops_while_waiting_resumes_and_takes_the_wait_over(
        relay: AppServer, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    back_attached = asyncio.Event()
    hold_the_feedback_until(monkeypatch, back_attached)
    away = when_the_page_is_away(monkeypatch)
    attached = LessonSession.handle_page_attached

    def attached_and_told(session: LessonSession, now: float, *, replay: bool) -> Sequence[Action]:
        actions = attached(session, now, replay=replay)
        back_attached.set()
        return actions

    monkeypatch.setattr(LessonSession, "handle_page_attached", attached_and_told)
    async with open_lesson(relay.lesson_url(name="Ana", level="A2")) as page:
        token = (await page.until_type("lesson"))["resume_token"]
        await converse(page)
        await page.send_json({"type": "end"})
        await page.until_type("status", state="feedback")
        page.ws.transport.abort()  # no close frame: the network is gone
    async with asyncio.timeout(30):
        await away.wait()
        async with open_lesson(f"{relay.ws_url}/ws/lesson?{urlencode({'resume': token})}") as back:
            resumed = await back.until_type("lesson")
            waiting = await back.until_type("status")
            await back.drain_until_closed()
    assert resumed["resumed"] is True
    assert waiting["state"] == "feedback"
    assert 0 < waiting["timeout_s"] <= 20
    frames = back.messages[back.messages.index(waiting) + 1:]
    assert [(f["type"], f.get("reason")) for f in frames] == [
        ("feedback", None), ("usage", None), ("status", "student_ended")]
    assert back.ws.close_code == 1000
    lesson, _, _ = await stored(relay)
    assert lesson.feedback == {key: value for key, value in frames[0].items() if key != "type"}
    assert lesson.end_reason == "student_ended"
    assert logged(log_stream, "feedback_unavailable") == []


async def test_every_page_back_after_the_lesson_ended_while_it_was_away_gets_the_feedback(
        relay: AppServer, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    # The network drops after End and the feedback comes while no page is there; then the student reloads
    # twice, or opens the lesson on a phone and a laptop.
    hold_the_feedback_until(monkeypatch, when_the_page_is_away(monkeypatch))
    async with open_lesson(relay.lesson_url(name="Ana", level="A2")) as page:
        token = (await page.until_type("lesson"))["resume_token"]
        await converse(page)
        await page.send_json({"type": "end"})
        await page.until_type("status", state="feedback")
        page.ws.transport.abort()
    async with asyncio.timeout(30):
        await relay.app.state.live_lessons.ended()
    lesson, _, _ = await stored(relay)
    answers = []
    for _ in range(3):
        async with open_lesson(f"{relay.ws_url}/ws/lesson?{urlencode({'resume': token})}") as back:
            await back.drain_until_closed()
        answers.append(([(m["type"], m.get("reason")) for m in back.messages], back.ws.close_code))
    assert answers == [([("feedback", None), ("status", "student_ended")], 1000)] * 3
    assert back.messages[0] == {"type": "feedback", **(lesson.feedback or {})}
    assert lesson.end_reason == "student_ended"


async def test_a_page_back_as_the_lesson_ends_gets_the_feedback_though_the_records_do_not_hold_the_end_yet(
        relay: AppServer, monkeypatch: pytest.MonkeyPatch) -> None:
    async with open_lesson(relay.lesson_url(name="Ana", level="A2")) as page:
        token = (await page.until_type("lesson"))["resume_token"]
        # The lesson's end is not written (a busy database): the records still show it open on this instance.
        records = relay.app.state.records
        put = records.put
        monkeypatch.setattr(records, "put", lambda record: None if isinstance(record, LessonEnded) else put(record))
        await converse(page)
        await page.send_json({"type": "end"})
        feedback = await page.until_type("feedback")
        await page.drain_until_closed()
    async with asyncio.timeout(30):
        await relay.app.state.live_lessons.ended()
    answers = []
    for _ in range(2):
        async with open_lesson(f"{relay.ws_url}/ws/lesson?{urlencode({'resume': token, 'replay': '1'})}") as back:
            await back.drain_until_closed()
        answers.append(([(m["type"], m.get("reason")) for m in back.messages], back.ws.close_code))
    assert answers == [([("feedback", None), ("status", "student_ended")], 1000)] * 2
    assert back.messages[0] == feedback
    lesson, _, _ = await stored(relay)
    assert lesson.ended_at is None  # the records were not what answered


async def test_end_while_the_tutor_speaks_truncates_its_reply_before_asking_for_feedback_on_what_was_heard(
        simulator_with: SimulatorWith, log_stream: io.StringIO) -> None:
    # Audio as fast as it comes: the whole reply is said upstream before the student has heard much of it.
    async with simulator_with(audio_pace=0) as simulator, \
            serve_app(relay_settings(simulator.url), log_stream) as server, \
            open_lesson(server.lesson_url(name="Ana", level="A2")) as page:
        await page.hear_greeting()
        await speak(page, 30)
        await pause(page, END_OF_TURN_FRAMES)
        # "Very good, Ana! Now tell me: what is your favourite food?" (4.8 s): End 400 ms into it.
        reply = await page.until_type("audio.done")
        await page.send_json({"type": "playback", "item_id": reply["item_id"], "played_ms": 400})
        await page.send_json({"type": "end"})
        feedback = await page.until_type("feedback")
        await page.drain_until_closed()
    cut = next(m for m in page.messages if m["type"] == "transcript.done" and m.get("interrupted"))
    received = simulator.connections[-1].received
    truncates = [at for at, e in enumerate(received)
                 if e["type"] == "conversation.item.truncate" and e["item_id"] == reply["item_id"]]
    [asked_at] = [at for at, e in enumerate(received)
                  if e["type"] == "response.create" and "metadata" in e.get("response", {})]
    assert len(truncates) == 1
    assert truncates[0] < asked_at
    assert 400 <= received[truncates[0]]["audio_end_ms"] < 3373  # "favourite" begins 3 373 ms into the reply
    assert "favourite" not in cut["text"]
    # The feedback reads the conversation as the student heard it: the reply's question never reached them.
    assert feedback["summary"] == "Today we talked about how you are. You answered once, Ana: a good start!"
    assert [word["word"] for word in feedback["new_words"]] == ["tutor"]


class HeldClock:
    """The relay's clock: `time.monotonic`, except that while held it stands still (and goes on from there)."""

    def __init__(self) -> None:
        self._held_at: float | None = None
        self._lost_s = 0.0

    def __call__(self) -> float:
        return self._held_at if self._held_at is not None else time.monotonic() - self._lost_s

    def hold(self) -> None:
        self._held_at = self()

    def release(self) -> None:
        assert self._held_at is not None
        self._lost_s = time.monotonic() - self._held_at
        self._held_at = None


async def test_end_before_any_of_the_reply_was_heard_deletes_it_so_the_feedback_never_reads_it(
        simulator_with: SimulatorWith, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = HeldClock()
    monkeypatch.setattr(routes, "Relay", functools.partial(Relay, clock=clock))
    async with simulator_with(audio_pace=0) as simulator, \
            serve_app(relay_settings(simulator.url), log_stream) as server:
        async with open_lesson(server.lesson_url(name="Ana", level="A2")) as page:
            await page.hear_greeting()
            await speak(page, 30)
            await pause(page, END_OF_TURN_FRAMES)
            # "Very good, Ana! Now tell me: what is your favourite food?" has all come; the page has played none of
            # it when the student ends the lesson (the clock held, so no time passes between the two).
            reply = await page.until_type("audio.done")
            await page.until_type("transcript.done", role="tutor", item_id=reply["item_id"])
            clock.hold()
            await page.send_json({"type": "playback", "item_id": reply["item_id"], "played_ms": 0})
            await page.send_json({"type": "end"})
            await page.until_type("status", state="feedback")
            clock.release()
            feedback = await page.until_type("feedback")
            await page.drain_until_closed()
        _, turns, _ = await stored(server)
    received = simulator.connections[-1].received
    for_reply = [(at, e["type"]) for at, e in enumerate(received) if e.get("item_id") == reply["item_id"]]
    [asked_at] = [at for at, e in enumerate(received)
                  if e["type"] == "response.create" and "metadata" in e.get("response", {})]
    assert [event_type for _, event_type in for_reply] == ["conversation.item.delete"]
    assert for_reply[0][0] < asked_at
    assert of_type(simulator.connections[-1].sent, "conversation.item.deleted")[0]["item_id"] == reply["item_id"]
    # The feedback reads the conversation as the student heard it: the greeting and their answer, not the reply.
    assert feedback["summary"] == "Today we talked about how you are. You answered once, Ana: a good start!"
    assert [word["word"] for word in feedback["new_words"]] == ["tutor"]
    # The page and the record keep the reply as cut with nothing heard.
    [cut] = [m for m in page.messages if m["type"] == "transcript.done" and m.get("interrupted")]
    assert (cut["item_id"], cut["text"]) == (reply["item_id"], "")
    [kept] = [turn for turn in turns if turn.role == "tutor" and turn.interrupted]
    assert "favourite food" in kept.text
    assert (kept.heard_ms, kept.heard_text) == (0, "")


async def feedback_fault_lesson(simulator_with: SimulatorWith, log_stream: io.StringIO, fault: str,
                                **settings: Any) -> tuple[list[dict[str, Any]], dict[str, Any], AppServer]:
    async with simulator_with(feedback_fault=fault) as simulator, \
            serve_app(relay_settings(simulator.url, **settings), log_stream) as server:
        frames = await end_and_read(server)
        lesson, _, events = await stored(server)
        [why] = [event.detail for event in events if event.kind == "feedback_unavailable"]
        assert lesson.feedback is None
        assert lesson.end_reason == "student_ended"
    return frames, why, server


async def test_a_feedback_that_is_not_json_leaves_the_lesson_ending_as_before(
        simulator_with: SimulatorWith, log_stream: io.StringIO) -> None:
    frames, why, _ = await feedback_fault_lesson(simulator_with, log_stream, "invalid_json")
    assert [(f["type"], f.get("reason")) for f in frames] == [
        ("status", None), ("feedback.unavailable", "invalid_feedback"), ("usage", None), ("status", "student_ended")]
    assert why["problem"].startswith("not JSON")


async def test_a_failed_feedback_response_is_kept_with_its_status_details(
        simulator_with: SimulatorWith, log_stream: io.StringIO) -> None:
    frames, why, _ = await feedback_fault_lesson(simulator_with, log_stream, "failed")
    assert frames[1]["reason"] == "response_failed"
    assert why["status_details"]["error"]["code"] == "server_error"
    [logged] = [line for line in log_lines(log_stream) if line["event"] == "feedback_unavailable"]
    assert logged["reason"] == "response_failed"


async def test_an_unanswered_feedback_request_ends_the_lesson_at_the_timeout(
        simulator_with: SimulatorWith, log_stream: io.StringIO) -> None:
    frames, why, _ = await feedback_fault_lesson(simulator_with, log_stream, "never",
                                                 feedback_timeout_seconds=0.5)
    assert frames[0] == {"type": "status", "state": "feedback", "timeout_s": 0.5}
    assert frames[1]["reason"] == "timeout"
    assert why["timeout_s"] == 0.5
