"""A lesson that survives, over real sockets: the page dropped and back, the upstream lost or rolled over and
replaced, a redeploy handing the lesson to another instance, an instance killed and its lesson taken over,
and resumes refused or racing.

The relay runs under uvicorn on port 0 against the Realtime simulator; tests wait on frames and events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import signal
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from harness import (
    END_OF_TURN_FRAMES,
    AppServer,
    LessonClient,
    SimulatorWith,
    app_process,
    closed_with,
    logged,
    of_type,
    open_lesson,
    pause,
    plain_words,
    relay_for,
    relay_settings,
    serve_app,
    speak,
    until_lesson_stored,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from websockets.asyncio.client import connect

from app import routes
from app.admission import RESUMES_PER_LESSON_PER_MINUTE, LocalPlaces, StartRateLimiter
from app.main import drain_lessons
from app.relay import Relay
from app.resume import RefusedResumes, ResumeClaim, make_resume_token
from app.simulator import RealtimeSimulator, SimulatorBehaviour
from app.store.database import create_engine, database_url, session_factory
from app.store.models import Lesson, LessonEvent, Turn

Messages = list[dict[str, Any]]


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    """The `relay` fixture's simulator, here sending audio at once: these tests wait on frames, not on the pace."""
    async with RealtimeSimulator(SimulatorBehaviour(audio_pace=0)) as sim:
        yield sim


def resume_url(server: AppServer | str, token: str, *, replay: bool = False) -> str:
    base = server if isinstance(server, str) else server.ws_url
    query = {"resume": token} | ({"replay": "1"} if replay else {})
    return f"{base}/ws/lesson?{urlencode(query)}"


async def until_status(page: LessonClient, state: str) -> dict[str, Any]:
    return await page.until(lambda m: m["type"] == "status" and m["state"] == state)


async def lesson_heard(page: LessonClient) -> dict[str, Any]:
    """The page's `lesson` frame, once it has heard the greeting (the microphone is open)."""
    lesson = await page.until_type("lesson")
    await page.hear_greeting()
    return lesson


async def a_lesson_whose_page_drops(relay: AppServer) -> dict[str, Any]:
    """A lesson whose page hears the greeting, then loses its network (no close frame): its `lesson` frame."""
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await lesson_heard(page)
        page.ws.transport.abort()
    return lesson


async def a_lesson_left_by_a_drained_instance(simulator: RealtimeSimulator, database: str,
                                              log_stream: io.StringIO) -> dict[str, Any]:
    """A lesson whose instance drained (a redeploy) with its page still there, its records written: its
    `lesson` frame, whose resume token another instance on `database` can take the lesson over with."""
    async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as old:
        async with open_lesson(old.lesson_url(name="Ana")) as page:
            lesson = await lesson_heard(page)
            drain = asyncio.create_task(drain_lessons(old.app, 5))
            await until_status(page, "reconnecting")
            await closed_with(page)
        await drain
        await old.app.state.records.flushed()
    return lesson


async def a_turn(page: LessonClient) -> dict[str, Any]:
    """The student says something and the tutor answers: the answer's `transcript.done`."""
    await speak(page, 30)
    await pause(page, END_OF_TURN_FRAMES)
    return await page.until_type("transcript.done", role="tutor")


async def resumed_turn_and_end(back: LessonClient) -> tuple[dict[str, Any], dict[str, Any]]:
    """A page that resumed: its `lesson` frame (read already or next), then a turn once it listens, then End;
    (`lesson`, the answer)."""
    resumed = next(iter(of_type(back.messages, "lesson")), None) or await back.until_type("lesson")
    await until_status(back, "listening")
    answer = await a_turn(back)
    await back.send_json({"type": "end"})
    await closed_with(back)
    return resumed, answer


def statuses(messages: Messages) -> list[str]:
    return [f"{m['state']}:{m['reason']}" if m.get("reason") else m["state"]
            for m in messages if m["type"] == "status"]


# ---- the page away and back ----------------------------------------------------------------------


async def test_a_page_dropped_mid_turn_comes_back_to_the_same_lesson_and_it_goes_on(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    async with simulator_with(audio_pace=1.0) as simulator, relay_for(simulator, log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            lesson = await lesson_heard(page)
            await speak(page, 30)
            await pause(page, END_OF_TURN_FRAMES)
            await page.until_type("audio.start")  # the tutor is answering, in real time
            page.ws.transport.abort()  # the network goes: no close frame
        upstream = await simulator.next_connection()
        await upstream.wait_for("response.cancel")  # nobody hears the tutor any more: cut at once
        async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
            resumed, answer = await resumed_turn_and_end(back)
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert answer["text"]
    assert len(simulator.connections) == 1  # one upstream session all along
    assert [line["away_s"] > 0 for line in logged(log_stream, "page_back")] == [True]
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "student_ended"


async def test_a_page_dropped_mid_greeting_hears_the_greeting_when_it_is_back(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    async with simulator_with(audio_pace=1.0) as simulator, relay_for(simulator, log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            lesson = await page.until_type("lesson")
            await page.until_type("audio.start")
            page.ws.transport.abort()
        upstream = await simulator.next_connection()
        await upstream.wait_for("response.cancel")
        async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
            await until_status(back, "greeting")
            await back.hear_greeting()
    # The cut greeting's words so far, then the whole greeting asked for again.
    cut, greeting = of_type(back.messages, "transcript.done")
    assert cut["item_id"] != greeting["item_id"]
    assert "Ana" in greeting["text"]
    assert len(of_type(upstream.received, "response.create")) == 2  # asked again for the page that is back
    assert len(simulator.connections) == 1


async def test_a_page_away_for_5_seconds_comes_back_to_the_same_lesson(
    simulator: RealtimeSimulator, relay: AppServer, log_stream: io.StringIO
) -> None:
    lesson = await a_lesson_whose_page_drops(relay)
    await asyncio.sleep(5)  # the page is away this long: the absence under test, not a synchronisation
    async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
        resumed = await back.until_type("lesson")
        await until_status(back, "listening")
        answer = await a_turn(back)
    assert resumed["lesson_id"] == lesson["lesson_id"]
    assert answer["text"]
    assert len(simulator.connections) == 1
    [back_line] = logged(log_stream, "page_back")
    assert back_line["away_s"] >= 5


async def test_a_reloaded_page_gets_the_transcript_so_far(relay: AppServer) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await lesson_heard(page)
        reply = await a_turn(page)
        student = next(m for m in page.messages if m["type"] == "transcript.done" and m["role"] == "student")
        before = [m for m in page.messages if m["type"] == "transcript.done"]
        await page.ws.close(1001)  # a reload: the browser closes the socket going away
    async with open_lesson(resume_url(relay, lesson["resume_token"], replay=True)) as reloaded:
        await until_status(reloaded, "listening")
    replayed = of_type(reloaded.messages, "transcript.done")
    assert [(m["role"], m["text"]) for m in replayed[:2]] == [(m["role"], m["text"]) for m in before[:2]]
    assert [m["role"] for m in replayed] == ["tutor", "student", "tutor"]
    assert replayed[1]["item_id"] == student["item_id"]
    # The reload cut the answer while it played: it comes back as far as the student heard it, marked.
    assert replayed[2]["item_id"] == reply["item_id"]
    assert replayed[2]["interrupted"] is True
    assert reply["text"].startswith(replayed[2]["text"])
    assert len(replayed[2]["text"]) < len(reply["text"])


# ---- the upstream lost or rolled over ------------------------------------------------------------


async def test_an_upstream_cut_mid_response_is_replaced_by_a_session_told_the_conversation_that_does_not_greet(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    cut = {"cut_after_deltas": 3, "cut_response": 2, "cut_connection": 1, "audio_pace": 0}
    async with simulator_with(**cut) as simulator, relay_for(simulator, log_stream) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        greeting = next(m for m in page.messages if m["type"] == "transcript.done")
        await speak(page, 30)
        await pause(page, END_OF_TURN_FRAMES)
        await until_status(page, "reconnecting")
        await until_status(page, "listening")
        first, renewed = await simulator.next_connection(), await simulator.next_connection()
        answer = await a_turn(page)
    await first.wait_closed()
    received = [e["type"] for e in renewed.received]
    assert received[0] == "session.update"
    instructions = renewed.received[0]["session"]["instructions"]
    assert "# The lesson so far" in instructions
    assert f"Tutor: {json.dumps(greeting['text'], ensure_ascii=False)}" in instructions
    assert "response.create" not in received  # no second greeting
    assert not answer["text"].startswith("Hello")
    assert of_type(page.messages, "error") == []
    assert "reconnecting:upstream" in statuses(page.messages)
    [lost] = logged(log_stream, "upstream_lost")
    assert (lost["why"], lost["code"]) == ("upstream_closed", 1011)


async def test_a_lesson_longer_than_the_session_cap_goes_on_across_two_sessions(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    """The simulator's sessions last 6 s: the relay rolls over at a turn boundary before the cap, and the
    student sees nothing but "Reconnecting to your tutor…"."""
    async with simulator_with(audio_pace=0, session_seconds=6) as simulator, \
            relay_for(simulator, log_stream) as relay, open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        first = await simulator.next_connection()
        await until_status(page, "reconnecting")
        await until_status(page, "listening")
        second = await simulator.next_connection()
        answer = await a_turn(page)
        await page.send_json({"type": "end"})
        await closed_with(page)
    await first.wait_closed()
    assert of_type(first.sent, "error") == []  # rolled over before the cap: never expired
    # No greeting on the new session: its only response.create is the lesson's feedback at the end.
    assert [e for e in second.received if e["type"] == "response.create"
            and not (e.get("response") or {}).get("metadata")] == []
    assert answer["text"]
    assert of_type(page.messages, "error") == []
    after_greeting = statuses(page.messages)[statuses(page.messages).index("listening"):]
    assert after_greeting[:3] == ["listening", "reconnecting:upstream", "listening"]
    [lost] = logged(log_stream, "upstream_lost")
    assert lost["why"] == "roll_over"
    assert logged(log_stream, "lesson_ended")[0]["reason"] == "student_ended"


class RefuseOnce:
    """A simulator's behaviour that refuses the next handshake with 503, and no other."""

    def __init__(self, behaviour: SimulatorBehaviour) -> None:
        self._behaviour = behaviour
        self.refused = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._behaviour, name)

    @property
    def refuse_handshake(self) -> int | None:
        if self.refused.is_set():
            return None
        self.refused.set()
        return 503


async def test_a_lesson_left_with_no_socket_at_all_is_still_there_when_its_page_comes_back(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    """The page is away while the upstream session is rolled over and the first new one is refused: until the
    next attempt the lesson has neither a page nor an upstream socket, and it must wait for both."""
    async with simulator_with(audio_pace=0, session_seconds=6) as simulator, \
            relay_for(simulator, log_stream) as relay:
        lesson = await a_lesson_whose_page_drops(relay)
        first = await simulator.next_connection()
        refusing = RefuseOnce(simulator.behaviour)
        simulator.behaviour = refusing  # type: ignore[assignment]
        await asyncio.wait_for(refusing.refused.wait(), 30)  # the roll-over, 5.5 s into the 6 s session
        async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
            resumed, answer = await resumed_turn_and_end(back)
    await first.wait_closed()
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert answer["text"]
    assert [line["attempt"] for line in logged(log_stream, "upstream_reconnect_failed")] == [1]
    assert logged(log_stream, "lesson_ended")[0]["reason"] == "student_ended"


async def test_the_page_leg_sends_small_frames_at_once(relay: AppServer) -> None:
    """`reconnecting` then `listening` are two small frames in a row: with Nagle's algorithm on, the second
    (and every control frame that follows another) would wait for the page's delayed ACK, 40 ms on Linux."""
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.until_type("lesson")
        [connection] = relay.server.server_state.connections
        sock = connection.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


# ---- resumes refused or racing -------------------------------------------------------------------


async def refused(url: str) -> tuple[dict[str, Any], int | None, Messages]:
    async with open_lesson(url) as page:
        error = await page.until_type("error")
        code = await closed_with(page)
    return error, code, page.messages


async def test_tampered_foreign_expired_and_ended_tokens_are_refused_in_plain_words(
    simulator: RealtimeSimulator, relay: AppServer, log_stream: io.StringIO
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await page.until_type("lesson")
        await page.until_type("audio.start")
        await page.send_json({"type": "end"})
        await closed_with(page)
    await relay.app.state.records.flushed()
    token = lesson["resume_token"]
    secret = relay.app.state.link_secret
    claim = ResumeClaim(lesson_id=lesson["lesson_id"], name="Ana", level="A1", support=None, topic=None,
                        expires_at=1)
    cases = {
        "tampered": resume_url(relay, token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")),
        "foreign": resume_url(relay, make_resume_token("another-servers-secret-0123456789abcdef", claim)),
        "expired": resume_url(relay, make_resume_token(secret, claim)),
        "ended": resume_url(relay, token),
    }
    answers = {case: await refused(url) for case, url in cases.items()}
    codes = {case: (error["code"], error["fatal"], code) for case, (error, code, _) in answers.items()}
    assert codes == {"tampered": ("resume_invalid", True, 1008), "foreign": ("resume_invalid", True, 1008),
                     "expired": ("resume_expired", True, 1008), "ended": ("lesson_ended", True, 1008)}
    for error, _, messages in answers.values():
        assert plain_words(error["message"])
        assert messages[-1]["type"] == "status"
        assert messages[-1]["state"] == "ended"
    assert len(simulator.connections) == 1  # no refused resume opened an upstream session
    # One line per code: the second `resume_invalid` is counted into that code's next line.
    assert sorted(line["code"] for line in logged(log_stream, "resume_refused")) == [
        "lesson_ended", "resume_expired", "resume_invalid"]


async def test_a_token_of_an_ended_lesson_repeated_is_refused_from_memory_without_a_write_to_the_store(
    relay: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each take-over attempt is a write transaction: a script repeating its own ended lesson's token must not
    hold the records' database from every other lesson start, sign-in and record."""
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await page.until_type("lesson")
        await page.until_type("audio.start")
        await page.send_json({"type": "end"})
        await closed_with(page)
    await relay.app.state.records.flushed()
    # As on a worker that did not run the lesson (the one that did remembers its end): asked of the store.
    relay.app.state.refused_resumes = RefusedResumes()
    take_overs: list[str] = []
    take_over = routes.take_over_lesson

    async def counted(*args: Any, **kwargs: Any) -> Any:
        take_overs.append(args[1])
        return await take_over(*args, **kwargs)

    monkeypatch.setattr(routes, "take_over_lesson", counted)
    answers = [await refused(resume_url(relay, lesson["resume_token"])) for _ in range(5)]
    assert {(error["code"], error["message"], code) for error, code, _ in answers} == {
        ("lesson_ended", "This lesson has already ended. Please start a new lesson.", 1008)}
    assert take_overs == [lesson["lesson_id"]]


async def test_a_page_that_resumes_as_its_lesson_closes_is_closed_too_never_left_hanging(
    relay: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume attaches between the lesson's last close and the end of its tasks: the task that would serve it is
    cancelled before it starts, and its socket must still be closed (it waited for the lesson forever)."""
    close_all, attach = Relay._close_all, Relay.attach
    closing, attached = asyncio.Event(), asyncio.Event()

    async def close_then_wait_for_the_resume(self: Relay) -> None:
        await close_all(self)
        if self._closing and not attached.is_set():
            closing.set()
            await attached.wait()

    def attach_and_tell(self: Relay, page: Any, *, replay: bool) -> None:
        attached.set()
        # Attached just after the lesson's closing task has ended, before its task group has heard of it.
        asyncio.get_running_loop().call_soon(functools.partial(attach, self, page, replay=replay))

    monkeypatch.setattr(Relay, "_close_all", close_then_wait_for_the_resume)
    monkeypatch.setattr(Relay, "attach", attach_and_tell)
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await lesson_heard(page)
        await page.send_json({"type": "end"})
        await closed_with(page)
    await closing.wait()
    async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
        await asyncio.wait_for(closed_with(back), 30)  # a guard against the hang, not a measure of time
    assert back.ws.close_code != 1000  # not a lesson that ended for it: the page tries again, and is told
    await relay.app.state.records.flushed()
    # The lesson ended with its feedback: a resume now gets it and the end, from the lesson record.
    async with open_lesson(resume_url(relay, lesson["resume_token"])) as again:
        code = await closed_with(again)
    assert [(m["type"], m.get("reason")) for m in again.messages] == [("feedback", None), ("status", "student_ended")]
    assert code == 1000


async def test_a_running_lesson_resumed_too_often_is_refused_for_now_so_its_records_and_log_stay_bounded(
    relay: AppServer, log_stream: io.StringIO
) -> None:
    """Each resume is a page away and back, written to the lesson's records: a script repeating its own token made
    thousands a minute, every one a row of the lesson and two log lines."""
    relay.app.state.page_resumes = StartRateLimiter(per_minute=3)
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await lesson_heard(page)
        for _ in range(3):
            async with open_lesson(resume_url(relay, lesson["resume_token"])) as back:
                resumed = await back.until_type("lesson")
                assert resumed["resumed"] is True
        # A guard, not a measure of time: a resume let through answers with no error at all.
        error, code, _ = await asyncio.wait_for(refused(resume_url(relay, lesson["resume_token"])), 30)
    assert (error["code"], error["fatal"], code) == ("resume_not_yet", False, 1013)
    assert error["message"] == "Reconnecting to your lesson…"
    assert len(logged(log_stream, "page_back")) == 3


async def test_a_lesson_taken_over_too_often_is_refused_for_now_before_the_records_are_asked(
    relay: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A take-over spends no start of the client or the link: a script repeating its token is held, as for a
    running lesson, by the lesson's resumes in a minute."""
    relay.app.state.page_resumes = StartRateLimiter(per_minute=2)
    asked: list[str] = []
    take_over = routes._take_over

    async def counted(state: Any, claim: ResumeClaim) -> Any:
        asked.append(claim.lesson_id)
        return await take_over(state, claim)

    monkeypatch.setattr(routes, "_take_over", counted)
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{relay.base_url}/healthz")).status_code == 200  # started: its secret is read
    unknown = ResumeClaim(lesson_id="notyetknown2", name="Ana", level="A1", support=None, topic=None,
                          expires_at=2_000_000_000)
    token = make_resume_token(relay.app.state.link_secret, unknown)
    answers = [await refused(resume_url(relay, token)) for _ in range(3)]
    assert [(error["code"], error["fatal"], code) for error, code, _ in answers] == [
        ("resume_not_yet", False, 1013)] * 3
    assert asked == ["notyetknown2"] * 2


async def test_a_resume_that_may_succeed_later_is_refused_for_now_and_the_page_tries_again(
    simulator: RealtimeSimulator, relay: AppServer
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await lesson_heard(page)
        unknown = ResumeClaim(lesson_id="notyetknown1", name="Ana", level="A1", support=None, topic=None,
                              expires_at=2_000_000_000)
        # Signed here, but its lesson is in no store yet: its first record may still be on its way.
        not_yet, not_yet_code, not_yet_messages = await refused(
            resume_url(relay, make_resume_token(relay.app.state.link_secret, unknown)))
        drain = asyncio.create_task(drain_lessons(relay.app, 5))
        await until_status(page, "reconnecting")
        await closed_with(page)
    # This instance is restarting: the page is to find the one that answers next.
    draining, draining_code, draining_messages = await refused(resume_url(relay, lesson["resume_token"]))
    await drain
    for error, code, messages in ((not_yet, not_yet_code, not_yet_messages),
                                  (draining, draining_code, draining_messages)):
        assert (error["code"], error["fatal"], code) == ("resume_not_yet", False, 1013)
        assert not any(m["type"] == "status" and m["state"] == "ended" for m in messages)
    assert len(simulator.connections) == 1


async def test_two_resumes_at_once_leave_one_page_and_one_upstream_session(
    simulator: RealtimeSimulator, relay: AppServer
) -> None:
    lesson = await a_lesson_whose_page_drops(relay)
    url = resume_url(relay, lesson["resume_token"])
    async with connect(url, max_size=None) as one, connect(url, max_size=None) as two:
        pages = {asyncio.create_task(page.until_type("error")): page
                 for page in (LessonClient(one), LessonClient(two))}
        done, pending = await asyncio.wait(pages, return_when=asyncio.FIRST_COMPLETED)
        for waiting in pending:
            waiting.cancel()  # cancelling recv() loses no frame
        [replaced] = done
        error, let_go = replaced.result(), pages[replaced]
        [kept] = [pages[waiting] for waiting in pending]
        answer = await a_turn(kept)
        await let_go.drain_until_closed()
    assert (error["code"], error["fatal"]) == ("lesson_resumed_elsewhere", True)
    assert plain_words(error["message"])
    assert let_go.ws.close_code == 4001
    assert of_type(kept.messages, "error") == []
    assert [m["resumed"] for m in of_type(kept.messages, "lesson")] == [True]
    assert answer["text"]
    assert len(simulator.connections) == 1


# ---- a redeploy ------------------------------------------------------------------------------------


def taken_over_counts(server: AppServer) -> dict[str, float]:
    """The server's lesson_relay_lessons_taken_over_total, by from_lost_instance."""
    return {sample.labels["from_lost_instance"]: sample.value
            for family in text_string_to_metric_families(server.app.state.metrics.exposition().decode())
            for sample in family.samples if sample.name == "lesson_relay_lessons_taken_over_total"}


async def test_a_redeploy_hands_the_lesson_to_the_instance_that_answers_which_goes_on_from_the_store(
    simulator_with: SimulatorWith, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    async with simulator_with(audio_pace=0) as simulator:
        async with app_process(simulator.url, database) as old:
            await old.until_ready()
            # The new instance starts while the old one serves (Railway's overlap), on the same store.
            async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as new:
                async with open_lesson(f"{old.ws_url}/ws/lesson?name=Ana") as page:
                    lesson = await lesson_heard(page)
                    reply = await a_turn(page)
                    old.process.send_signal(signal.SIGTERM)
                    told = await until_status(page, "reconnecting")
                    close_code = await closed_with(page)
                assert await old.exited(20) == 0, old.output.text
                async with open_lesson(resume_url(new, lesson["resume_token"])) as back:
                    resumed, answer = await resumed_turn_and_end(back)
                await new.app.state.records.flushed()
        renewed = simulator.connections[-1]
    # One session on each instance: the new one opened the lesson's upstream session once, at once.
    assert len(simulator.connections) == 2
    assert logged(log_stream, "upstream_reconnect_failed") == []
    assert told["reason"] == "server_restarting"
    assert of_type(page.messages, "error") == []
    assert close_code == 1001
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    instructions = renewed.received[0]["session"]["instructions"]
    # The redeploy cut the reply while it played: the new session is told what the page last showed of it.
    shown = [m for m in page.messages if m["type"] == "transcript.done" and m["item_id"] == reply["item_id"]][-1]
    told_as = "Tutor (cut off)" if shown.get("interrupted") else "Tutor"
    assert shown["text"] == "" or f"{told_as}: {json.dumps(shown['text'], ensure_ascii=False)}" in instructions
    assert shown["text"] == reply["text"] or json.dumps(reply["text"], ensure_ascii=False) not in instructions
    assert [e for e in renewed.received if e["type"] == "response.create"
            and not (e.get("response") or {}).get("metadata")] == []  # no greeting on the new instance
    assert answer["text"]
    engine = create_engine(database_url(database))
    try:
        async with session_factory(engine)() as session:
            row = await session.get(Lesson, lesson["lesson_id"])
            seqs = (await session.scalars(select(Turn.seq).where(Turn.lesson_id == lesson["lesson_id"])
                                          .order_by(Turn.seq))).all()
            kinds = (await session.scalars(select(LessonEvent.kind).where(LessonEvent.lesson_id == lesson["lesson_id"])
                                           )).all()
    finally:
        await engine.dispose()
    assert row is not None
    assert row.end_reason == "student_ended"
    assert list(seqs) == list(range(1, len(seqs) + 1))
    assert len(seqs) >= 5
    assert "lesson_taken_over" in kinds
    assert taken_over_counts(new) == {"false": 1, "true": 0}
    assert pytest.approx(row.duration_s, abs=1) == (row.ended_at - row.started_at).total_seconds()


async def a_lesson_handed_off_with(server: AppServer, lesson_id: str, turns: list[dict[str, Any]]) -> str:
    """What an instance that drained leaves in the store: lesson `lesson_id` handed off with `turns` (Turn fields
    but its lesson and times); its resume token, for Ana at A2."""
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.base_url}/healthz")).status_code == 200  # started: its store migrated
    now = datetime.now(UTC)
    async with server.app.state.db.begin() as session:
        session.add(Lesson(id=lesson_id, level="A2", started_at=now - timedelta(minutes=1), model="m",
                           simulated=True, ended_at=now, end_reason="handed_off", instance_id="gone"))
        await session.flush()
        session.add_all([Turn(lesson_id=lesson_id, seq=seq, started_at=now, ended_at=now, **turn)
                         for seq, turn in enumerate(turns, start=1)])
    claim = ResumeClaim(lesson_id=lesson_id, name="Ana", level="A2", support=None, topic=None,
                        expires_at=int(now.timestamp()) + 3600)
    return make_resume_token(server.app.state.link_secret, claim)


async def test_a_reply_cut_before_a_hand_over_is_taken_over_as_the_student_heard_it_marked_and_told_so(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    said = "Pizza is great. Do you make it at home, or do you buy it in a shop near you?"
    async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as new:
        # Drained mid-reply: the reply kept whole, with the words the student heard.
        token = await a_lesson_handed_off_with(new, "cutlesson01", [
            {"role": "tutor", "text": "Hello Ana! What food do you like?"},
            {"role": "student", "text": "I like pizza."},
            {"role": "tutor", "text": said, "interrupted": True, "heard_ms": 1500,
             "heard_text": "Pizza is great. Do you make"},
        ])
        async with open_lesson(resume_url(new, token, replay=True)) as back:
            await until_status(back, "listening")
    renewed = simulator.connections[-1]
    replayed = [(m["role"], m["text"], m.get("interrupted", False)) for m in of_type(back.messages, "transcript.done")]
    assert replayed == [("tutor", "Hello Ana! What food do you like?", False), ("student", "I like pizza.", False),
                        ("tutor", "Pizza is great. Do you make", True)]
    instructions = renewed.received[0]["session"]["instructions"]
    assert 'Tutor (cut off): "Pizza is great. Do you make"' in instructions
    assert "at home" not in instructions  # never heard: the tutor is not told it said it


async def test_a_greeting_a_hand_over_cut_before_it_was_heard_is_given_again_on_the_instance_that_takes_over(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as new:
        # Drained just as the greeting began: the greeting cut, nothing of it heard.
        token = await a_lesson_handed_off_with(new, "cutgreeting", [
            {"role": "tutor", "text": "Hello Ana! How", "interrupted": True, "heard_ms": 0, "heard_text": ""},
        ])
        async with open_lesson(resume_url(new, token)) as back:
            first = await back.until(lambda m: m["type"] == "status" and m["state"] in ("greeting", "listening"))
            assert first["state"] == "greeting"  # not straight to listening, as if the greeting had been heard
            await back.hear_greeting()
    statuses = [m["state"] for m in of_type(back.messages, "status")]
    assert statuses.index("greeting") < statuses.index("listening")
    greeting = of_type(back.messages, "transcript.done")[-1]
    assert (greeting["role"], greeting.get("interrupted", False)) == ("tutor", False)
    assert "Ana" in greeting["text"]


async def test_a_lesson_handed_to_an_instance_with_no_place_for_it_is_taken_over_there_once_a_place_frees(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    lesson = await a_lesson_left_by_a_drained_instance(simulator, database, log_stream)
    async with serve_app(relay_settings(simulator.url, database_url=database, max_sessions=1), log_stream) as new:
        async with open_lesson(new.lesson_url(name="Ben")) as other:
            await other.until_type("lesson")
            full, full_code, _ = await refused(resume_url(new, lesson["resume_token"]))
            await other.send_json({"type": "end"})
            await closed_with(other)
        await new.app.state.live_lessons.ended()
        # The refused resume had claimed the lesson: kept claimed, every later resume found it "running
        # elsewhere" and was refused until the grace ran out.
        async with open_lesson(resume_url(new, lesson["resume_token"])) as back:
            resumed, answer = await resumed_turn_and_end(back)
    assert (full["code"], full["fatal"], full_code) == ("over_capacity", False, 1013)
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert answer["text"]


async def test_a_lesson_refused_a_take_over_for_the_minute_is_given_back_and_taken_over_after_it(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    lesson = await a_lesson_left_by_a_drained_instance(simulator, database, log_stream)
    async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as new:
        places: LocalPlaces = new.app.state.lessons.places
        for _ in range(RESUMES_PER_LESSON_PER_MINUTE):  # as if moved between a replica's workers all minute
            places.take_over_limiter.record(lesson["lesson_id"], time.monotonic())
        not_yet, not_yet_code, _ = await refused(resume_url(new, lesson["resume_token"]))
        places.take_over_limiter = StartRateLimiter(RESUMES_PER_LESSON_PER_MINUTE)  # the minute has passed
        # Kept claimed, every later resume would find it "running elsewhere" until the grace ran out.
        async with open_lesson(resume_url(new, lesson["resume_token"])) as back:
            resumed, answer = await resumed_turn_and_end(back)
    assert (not_yet["code"], not_yet["fatal"], not_yet_code) == ("resume_not_yet", False, 1013)
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert answer["text"]


async def test_a_lesson_taken_over_by_a_resume_that_fails_before_it_runs_is_given_back_for_the_next(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    lesson = await a_lesson_left_by_a_drained_instance(simulator, database, log_stream)
    async with serve_app(relay_settings(simulator.url, database_url=database), log_stream) as new:
        load_memory = routes.load_memory

        async def failing_once(*args: Any, **kwargs: Any) -> Any:
            monkeypatch.setattr(routes, "load_memory", load_memory)
            raise RuntimeError("the lesson could not be built")

        monkeypatch.setattr(routes, "load_memory", failing_once)
        async with open_lesson(resume_url(new, lesson["resume_token"])) as failed:
            await closed_with(failed)
        # Kept claimed, every later resume would find it "running elsewhere" until the grace ran out.
        async with open_lesson(resume_url(new, lesson["resume_token"])) as back:
            resumed, answer = await resumed_turn_and_end(back)
    assert of_type(failed.messages, "lesson") == []
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert answer["text"]


def audio_output_tokens(response_done_lines: list[dict[str, Any]]) -> int:
    return sum(line["usage"]["output_token_details"]["audio_tokens"] for line in response_done_lines)


async def resumed_when_taken_over(url: str, refusals: list[dict[str, Any]]) -> AsyncIterator[LessonClient]:
    """Resume as the page does, again and again while refused for now (each refusal kept), until it is taken
    over: the page of the resumed lesson."""
    async with asyncio.timeout(20):
        while True:
            async with open_lesson(url) as page:
                first = await page.until(lambda m: m["type"] in ("lesson", "error"))
                if first["type"] == "lesson":
                    yield page
                    return
                refusals.append(first)
                await closed_with(page)
            await asyncio.sleep(0.25)


async def test_a_lesson_whose_instance_is_killed_is_taken_over_once_that_instance_is_lost_and_goes_on(
    simulator_with: SimulatorWith, log_stream: io.StringIO, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    lost_after_s = 3
    refusals: list[dict[str, Any]] = []
    async with simulator_with(audio_pace=0) as simulator:
        async with app_process(simulator.url, database, INSTANCE_LOST_AFTER_SECONDS=str(lost_after_s)) as old:
            await old.until_ready()
            async with serve_app(relay_settings(simulator.url, database_url=database,
                                                instance_lost_after_seconds=lost_after_s), log_stream) as new:
                async with open_lesson(f"{old.ws_url}/ws/lesson?name=Ana") as page:
                    lesson = await lesson_heard(page)
                    reply = await a_turn(page)
                    # The reply's transcript reaches the page before its response.done is logged: the greeting's
                    # and the reply's are both counted only once both lines are read.
                    await old.output.until(lambda lines: [line.get("event") for line in lines].count(
                        "response_done") == 2)
                    used_there = audio_output_tokens(old.output.of("response_done"))
                    await until_lesson_stored(database, lesson["lesson_id"], lambda row, turns: (
                        reply["text"] in turns and row.audio_output_tokens == used_there))
                    old.process.kill()  # no SIGTERM: nothing is handed over
                    await closed_with(page)
                async with contextlib.aclosing(
                        resumed_when_taken_over(resume_url(new, lesson["resume_token"]), refusals)) as pages:
                    back = await anext(pages)
                    resumed, answer = await resumed_turn_and_end(back)
                await new.app.state.records.flushed()
                instance_id = new.app.state.instance_id
        renewed = simulator.connections[-1]
    # Right after the kill the old instance may only be slow: the page is told to try again, then taken over.
    assert refusals
    assert {(r["code"], r["fatal"]) for r in refusals} == {("resume_not_yet", False)}
    assert (resumed["lesson_id"], resumed["resumed"]) == (lesson["lesson_id"], True)
    assert f"Tutor: {json.dumps(reply['text'], ensure_ascii=False)}" in renewed.received[0]["session"]["instructions"]
    assert len(simulator.connections) == 2
    assert logged(log_stream, "upstream_reconnect_failed") == []
    assert [e for e in renewed.received if e["type"] == "response.create"
            and not (e.get("response") or {}).get("metadata")] == []  # no second greeting
    assert answer["text"]
    [taken_over] = logged(log_stream, "lesson_taken_over")
    assert taken_over["from_lost_instance"] is True
    assert taken_over_counts(new) == {"false": 0, "true": 1}
    engine = create_engine(database_url(database))
    try:
        async with session_factory(engine)() as session:
            row = await session.get(Lesson, lesson["lesson_id"])
            event = await session.scalar(select(LessonEvent).where(LessonEvent.lesson_id == lesson["lesson_id"],
                                                                   LessonEvent.kind == "lesson_taken_over"))
    finally:
        await engine.dispose()
    assert row is not None
    assert event is not None
    assert (row.end_reason, row.instance_id) == ("student_ended", instance_id)
    # What the lesson used before the kill is counted in its cost with what it used after.
    used_here = audio_output_tokens(logged(log_stream, "response_done"))
    assert used_there > 0
    assert row.audio_output_tokens == used_there + used_here
    # So are its responses: the two before the kill, and those after.
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["responses"] == row.responses == 2 + len(logged(log_stream, "response_done"))
    assert event.detail["from_lost_instance"] is True
