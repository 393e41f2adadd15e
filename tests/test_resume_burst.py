"""Resumes of one lesson at the same moment: a burst of sockets opened with one resume token shares one look-up
in the store, and each gets the same answer. First `ResumeLookups` alone (no sockets), then over real sockets.

Each test holds the first look-up until every resume of the burst has arrived: from there to the look-up a resume
does not wait, so by then each has looked the lesson up or waits for the look-up of another. Nothing waits on time.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from harness import (
    AppServer,
    LessonClient,
    closed_with,
    of_type,
    open_lesson,
    relay_settings,
    serve_app,
)

from app import routes
from app.admission import LessonRegistry
from app.errors import (
    LessonError,
    ResumeElsewhere,
    ResumeNotYet,
    ResumeRefused,
    StoreUnavailable,
    UpstreamClosed,
    UpstreamRefused,
)
from app.main import drain_lessons
from app.resume import RefusedResumes, ResumeLookups
from app.simulator import RealtimeSimulator, SimulatorBehaviour

BURST = 20


# ---- the look-up shared -------------------------------------------------------------------------------------------


class Burst:
    """`size` resumes of lesson `l1` at once: the first one's look-up (`look_up`) is held until all have arrived."""

    def __init__(self, size: int, look_up: Callable[[], Any]) -> None:
        self.lookups = ResumeLookups()
        self.look_ups = 0
        self._size, self._arrived, self._all_arrived = size, 0, asyncio.Event()
        self._look_up = look_up

    async def _held_look_up(self) -> Any:
        self.look_ups += 1
        await self._all_arrived.wait()
        return await self._look_up()

    async def resume(self) -> Any:
        self._arrived += 1
        if self._arrived == self._size:
            self._all_arrived.set()
        return await self.lookups.look_up("l1", self._held_look_up)

    async def answers(self) -> list[Any]:
        return await asyncio.gather(*(self.resume() for _ in range(self._size)), return_exceptions=True)


def raising(exc: BaseException) -> Callable[[], Any]:
    async def look_up() -> Any:
        raise exc
    return look_up


async def test_resumes_at_once_share_one_look_up_and_each_gets_a_refusal_of_its_own_in_the_same_words() -> None:
    ended_with = ("student_ended", {"summary": "Well done."})
    refusal = ResumeRefused.ended("lesson 'l1' ended: student_ended", ended_with)
    burst = Burst(5, raising(refusal))
    first, *others = await burst.answers()
    assert burst.look_ups == 1
    assert first is refusal
    assert all(type(other) is ResumeRefused for other in others)
    assert [(other.code, other.student_message, other.ended_with, other.close_code) for other in others] == [
        ("lesson_ended", refusal.student_message, ended_with, 1008)] * 4
    assert len({id(other) for other in others}) == 4  # one each: a traceback never collects another's frames
    # Over once answered: the next resume looks the lesson up again.
    with pytest.raises(ResumeRefused):
        await burst.lookups.look_up("l1", raising(refusal))


@pytest.mark.parametrize(("refusal", "kind_for_the_others"), [
    (ResumeNotYet("lesson 'l1' is not in the store (yet)"), ResumeNotYet),
    (StoreUnavailable("lesson 'l1' not taken over: the store did not answer",
                      student_message="Your lesson cannot be reached just now. Reconnecting…"), StoreUnavailable),
    # The first asked the worker running it to hand it over: the others only try again.
    (ResumeElsewhere("lesson 'l1' is open on another instance"), ResumeNotYet),
])
async def test_a_refusal_for_now_is_every_resume_s_at_once(refusal: LessonError,
                                                           kind_for_the_others: type[LessonError]) -> None:
    burst = Burst(3, raising(refusal))
    first, *others = await burst.answers()
    assert burst.look_ups == 1
    assert first is refusal
    assert [(type(other), other.code, other.close_code, other.student_message) for other in others] == [
        (kind_for_the_others, refusal.code, refusal.close_code, refusal.student_message)] * 2


@pytest.mark.parametrize("failure", [
    UpstreamRefused("the tutor service refused the session: 429", status=429, upstream_code="insufficient_quota"),
    UpstreamClosed("the tutor service closed the socket", received_code=1011, received_reason="server error"),
])
async def test_an_error_with_words_of_its_own_is_every_resume_s_at_once(failure: LessonError) -> None:
    burst = Burst(3, raising(failure))
    first, *others = await burst.answers()
    assert first is failure
    assert [(type(other), other.code, other.close_code, other.student_message) for other in others] == [
        (type(failure), failure.code, failure.close_code, failure.student_message)] * 2
    assert len({id(other) for other in others}) == 2


async def test_a_lesson_taken_over_is_the_first_resume_s_and_the_others_try_again() -> None:
    async def taken() -> str:
        return "the lesson"

    burst = Burst(3, taken)
    first, *others = await burst.answers()
    assert first == "the lesson"
    assert [(type(other), other.code, other.student_message) for other in others] == [
        (ResumeNotYet, "resume_not_yet", "Reconnecting to your lesson…")] * 2


async def test_a_look_up_cancelled_tells_the_others_to_try_again_and_one_of_them_cancelled_takes_nothing_away(
) -> None:
    looking_up, never = asyncio.Event(), asyncio.Event()

    async def held() -> None:
        looking_up.set()
        await never.wait()

    burst = Burst(4, held)
    resumes = [asyncio.create_task(burst.resume()) for _ in range(4)]
    await looking_up.wait()  # all four arrived: the first looks the lesson up, the others wait for its answer
    resumes[1].cancel()  # a resume waiting for the first one's look-up goes away: the others still wait
    await asyncio.wait([resumes[1]])
    resumes[0].cancel()  # the first one's goes away while it looks the lesson up
    answers = await asyncio.gather(*resumes, return_exceptions=True)
    assert [type(answer) for answer in answers] == [
        asyncio.CancelledError, asyncio.CancelledError, ResumeNotYet, ResumeNotYet]
    assert burst.look_ups == 1
    with pytest.raises(ResumeRefused):
        await burst.lookups.look_up("l1", raising(ResumeRefused.ended("lesson 'l1' ended: student_ended")))


# ---- over real sockets --------------------------------------------------------------------------------------------


@pytest.fixture
async def simulator() -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(SimulatorBehaviour(audio_pace=0)) as sim:
        yield sim


def resume_url(server: AppServer, token: str) -> str:
    return f"{server.ws_url}/ws/lesson?{urlencode({'resume': token})}"


def hold_take_overs_until_all_verified(monkeypatch: pytest.MonkeyPatch, sockets: int) -> list[str]:
    """Every take-over of a lesson in the store waits until `sockets` resume tokens were verified: the lessons
    taken over (or looked up and refused), one entry per look-up."""
    take_overs: list[str] = []
    verified = 0
    all_verified = asyncio.Event()
    verify, take_over = routes.verify_resume_token, routes.take_over_lesson

    def counted_verify(*args: Any, **kwargs: Any) -> Any:
        nonlocal verified
        claim = verify(*args, **kwargs)
        verified += 1
        if verified == sockets:
            all_verified.set()
        return claim

    async def held_take_over(*args: Any, **kwargs: Any) -> Any:
        take_overs.append(args[1])
        await all_verified.wait()
        return await take_over(*args, **kwargs)

    monkeypatch.setattr(routes, "verify_resume_token", counted_verify)
    monkeypatch.setattr(routes, "take_over_lesson", held_take_over)
    return take_overs


async def answers_of(url: str, sockets: int,
                     until: Callable[[LessonClient], Any] = closed_with) -> list[LessonClient]:
    """`sockets` pages resuming at once with `url`, each read `until` it has its answer."""
    pages = []
    async with asyncio.TaskGroup() as group:
        for _ in range(sockets):
            async def one() -> None:
                async with open_lesson(url) as page:
                    pages.append(page)
                    await until(page)
            group.create_task(one())
    return pages


async def listening_or_refused(page: LessonClient) -> None:
    """Read until the page runs the lesson (`status listening`) or is refused and closed."""
    message = await page.until(lambda m: m["type"] == "error" or (m["type"] == "status" and m["state"] == "listening"))
    if message["type"] == "error":
        await closed_with(page)


async def test_a_burst_of_resumes_of_an_ended_lesson_is_one_look_up_in_the_store_and_each_is_refused_alike(
    relay: AppServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A script opening sockets at once with its ended lesson's token made one take-over transaction (a write) each,
    all of them before the first refusal was remembered."""
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        lesson = await page.until_type("lesson")
        await page.until_type("audio.start")
        await page.send_json({"type": "end"})
        await closed_with(page)
    await relay.app.state.records.flushed()
    # As on a worker that did not run the lesson (the one that did remembers its end): asked of the store.
    relay.app.state.refused_resumes = RefusedResumes()
    take_overs = hold_take_overs_until_all_verified(monkeypatch, BURST)
    pages = await answers_of(resume_url(relay, lesson["resume_token"]), BURST)
    assert take_overs == [lesson["lesson_id"]]
    answers = {(error["code"], error["message"], error["fatal"], page.ws.close_code)
               for page in pages for error in of_type(page.messages, "error")}
    assert answers == {("lesson_ended", "This lesson has already ended. Please start a new lesson.", True, 1008)}
    assert all([(m["type"], m.get("state")) for m in page.messages] == [("error", None), ("status", "ended")]
               for page in pages)
    # Remembered once the look-up answered: a resume after the burst is refused without one.
    [again] = await answers_of(resume_url(relay, lesson["resume_token"]), 1)
    assert [(error["code"], again.ws.close_code) for error in of_type(again.messages, "error")] == [
        ("lesson_ended", 1008)]
    assert take_overs == [lesson["lesson_id"]]


async def a_lesson_handed_over(simulator: RealtimeSimulator, log_stream: io.StringIO,
                               settings: Any) -> dict[str, Any]:
    """A lesson whose instance drained with its page there, on `settings`' store: its `lesson` frame."""
    async with serve_app(settings, log_stream) as old:
        async with open_lesson(old.lesson_url(name="Ana")) as page:
            lesson = await page.until_type("lesson")
            await page.hear_greeting()
            drain = asyncio.create_task(drain_lessons(old.app, 5))
            await closed_with(page)
        await drain
        await old.app.state.records.flushed()
    return lesson


def handovers_requested(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    handovers: list[str] = []

    async def handover_requested(self: LessonRegistry, lesson_id: str) -> None:
        handovers.append(lesson_id)

    monkeypatch.setattr(LessonRegistry, "request_handover", handover_requested)
    return handovers


async def test_a_burst_of_resumes_of_a_handed_over_lesson_takes_it_over_once_and_the_others_try_again(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One resume takes the lesson over; the others, told to try again, must not ask the replica to hand over the
    lesson this worker has just taken (another worker's, they would have thought it, as the store said)."""
    settings = relay_settings(simulator.url, database_url=f"sqlite:///{tmp_path / 'lessons.db'}")
    lesson = await a_lesson_handed_over(simulator, log_stream, settings)
    handovers = handovers_requested(monkeypatch)
    async with serve_app(settings, log_stream) as new:
        take_overs = hold_take_overs_until_all_verified(monkeypatch, BURST)
        url = resume_url(new, lesson["resume_token"])
        pages = await answers_of(url, BURST, until=listening_or_refused)
        [taken] = [page for page in pages if of_type(page.messages, "lesson")]
        assert [m["resumed"] for m in of_type(taken.messages, "lesson")] == [True]
        told_to_wait = [page for page in pages if page is not taken]
        assert {(error["code"], error["fatal"], error["message"], page.ws.close_code)
                for page in told_to_wait for error in of_type(page.messages, "error")} == {
            ("resume_not_yet", False, "Reconnecting to your lesson…", 1013)}
        assert take_overs == [lesson["lesson_id"]]
        assert handovers == []
        # One of them tries again (the page that took the lesson over has gone), and finds the lesson running here.
        async with open_lesson(url) as again:
            resumed = await again.until_type("lesson")
        assert resumed["resumed"] is True
    assert len(simulator.connections) == 2  # the old instance's session, and the one session of the take-over


async def test_a_resume_while_the_lesson_taken_over_is_being_set_up_here_waits_for_it_and_asks_no_hand_over(
    simulator: RealtimeSimulator, log_stream: io.StringIO, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claimed in the store but not yet running here (its student's memory being read), the lesson looked "open on
    another instance" to a second resume, which asked the replica to hand over the lesson this worker had just taken
    and made a second take-over transaction."""
    settings = relay_settings(simulator.url, database_url=f"sqlite:///{tmp_path / 'lessons.db'}")
    lesson = await a_lesson_handed_over(simulator, log_stream, settings)
    handovers = handovers_requested(monkeypatch)
    take_overs: list[str] = []
    reading_memory, second_verified = asyncio.Event(), asyncio.Event()
    verify, take_over, memory = routes.verify_resume_token, routes.take_over_lesson, routes.load_memory

    def verify_and_tell(*args: Any, **kwargs: Any) -> Any:
        claim = verify(*args, **kwargs)
        if reading_memory.is_set():
            second_verified.set()
        return claim

    async def counted_take_over(*args: Any, **kwargs: Any) -> Any:
        take_overs.append(args[1])
        return await take_over(*args, **kwargs)

    async def memory_once_the_second_resume_is_in(*args: Any, **kwargs: Any) -> Any:
        reading_memory.set()
        await second_verified.wait()
        return await memory(*args, **kwargs)

    monkeypatch.setattr(routes, "verify_resume_token", verify_and_tell)
    monkeypatch.setattr(routes, "take_over_lesson", counted_take_over)
    monkeypatch.setattr(routes, "load_memory", memory_once_the_second_resume_is_in)
    async with serve_app(settings, log_stream) as new:
        url = resume_url(new, lesson["resume_token"])
        async with open_lesson(url) as first:
            await reading_memory.wait()
            async with open_lesson(url) as second:
                error = await second.until_type("error")
                await closed_with(second)
            taken = await first.until_type("lesson")
    assert (error["code"], error["fatal"], second.ws.close_code) == ("resume_not_yet", False, 1013)
    assert taken["resumed"] is True
    assert take_overs == [lesson["lesson_id"]]
    assert handovers == []
