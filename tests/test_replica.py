"""WEB_CONCURRENCY: several workers behind one port, with one replica's limits and one drain.

The places are tested twice: in process, the supervisor's side of the workers' channels (the start rate
and places given back by a worker that dies); and end to end, `python -m app` with two workers as a
subprocess, where the lesson after MAX_SESSIONS is refused whichever worker takes it, SIGTERM drains
the lessons of both workers, the lesson of a worker that is killed is taken over by the replica, and a
student deleted through either worker has their lesson ended on whichever runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
import pytest
import structlog
from databases import CuttableProxy
from harness import (
    LessonClient,
    ProcessOutput,
    app_process,
    closed_with,
    open_lesson,
    plain_words,
    until_lesson_stored,
)
from prometheus_client.parser import text_string_to_metric_families
from test_feedback_integration import hold_the_feedback_until

from app.admission import RESUMES_PER_LESSON_PER_MINUTE, LocalPlaces, Start
from app.errors import OverCapacity, ResumeNotYet
from app.logging import configure_logging
from app.replica import PlaceKeeper, SupervisorPlaces
from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.store.database import create_engine, database_url, session_factory
from app.store.models import Lesson


@contextlib.asynccontextmanager
async def worker_channels(keeper: PlaceKeeper, count: int) -> AsyncIterator[list[SupervisorPlaces]]:
    """`count` workers' views of the places, each served by `keeper` over its own socket pair."""
    pairs = [socket.socketpair() for _ in range(count)]
    served = [keeper.serve(index, ours) for index, (ours, _) in enumerate(pairs)]
    workers = [SupervisorPlaces(theirs) for _, theirs in pairs]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.close()
        await asyncio.gather(*served)


def start(lesson_id: str, client: str, link_id: str | None = None) -> Start:
    return Start(lesson_id=lesson_id, client=client, link_id=link_id)


async def test_the_start_rate_and_the_places_count_across_workers() -> None:
    keeper = PlaceKeeper(LocalPlaces(max_lessons=3, starts_per_minute=2))
    async with worker_channels(keeper, 2) as [first, second]:
        await first.take(start("L1", "10.0.0.1"), 0.0)
        await second.take(start("L2", "10.0.0.1"), 1.0)
        with pytest.raises(OverCapacity, match="started more than 2 lessons"):
            await first.take(start("L3", "10.0.0.1"), 2.0)  # the client's third start in a minute, on either worker
        await second.take(start("L4", "10.0.0.2"), 3.0)
        with pytest.raises(OverCapacity, match="3 lessons open, MAX_SESSIONS is 3"):
            await first.take(start("L5", "10.0.0.3"), 4.0)
        second.give_back(start("L2", "10.0.0.1"))
        await first.take(start("L6", "10.0.0.3"), 5.0)  # after the give-back: the channel keeps order per worker


async def test_a_lesson_taken_over_on_another_worker_holds_a_place_and_spends_no_start() -> None:
    keeper = PlaceKeeper(LocalPlaces(max_lessons=1, starts_per_minute=1, link_starts_per_minute=1))
    async with worker_channels(keeper, 2) as [first, second]:
        await first.take(start("L1", "10.0.0.1", "link-1"), 0.0)
        first.give_back(start("L1", "10.0.0.1", "link-1"))
        await second.take(Start("L1", "10.0.0.1", "link-1", taken_over=True), 1.0)
        with pytest.raises(OverCapacity, match="1 lessons open, MAX_SESSIONS is 1"):
            await first.take(Start("L2", "10.0.0.2", taken_over=True), 2.0)


async def test_a_lesson_moved_between_workers_is_taken_over_at_most_30_times_a_minute_in_the_whole_replica() -> None:
    # Each take-over is a new upstream session: a script moving one lesson between the workers is bounded once for
    # the replica, not once per worker, and a take-over refused for it spends nothing and holds no place.
    keeper = PlaceKeeper(LocalPlaces(max_lessons=2, starts_per_minute=1))
    moved = Start("L1", "10.0.0.1", taken_over=True)
    async with worker_channels(keeper, 2) as workers:
        for move in range(RESUMES_PER_LESSON_PER_MINUTE):
            worker = workers[move % 2]
            await worker.take(moved, float(move))
            worker.give_back(moved)
        with pytest.raises(ResumeNotYet, match="taken over 30 times in a minute") as refused:
            await workers[0].take(moved, 40.0)
        assert refused.value.student_message == "Reconnecting to your lesson…"
        await workers[1].take(Start("L2", "10.0.0.2", taken_over=True), 41.0)
        await workers[0].take(Start("L3", "10.0.0.3"), 42.0)  # the refusal held no place: two lessons fit


async def test_the_places_of_a_worker_that_dies_are_given_back() -> None:
    keeper = PlaceKeeper(LocalPlaces(max_lessons=2, starts_per_minute=100))
    async with worker_channels(keeper, 2) as [first, second]:
        await first.take(start("L1", "10.0.0.1", "link-1"), 0.0)
        await first.take(start("L2", "10.0.0.2"), 0.0)
        with pytest.raises(OverCapacity):
            await second.take(start("L3", "10.0.0.3"), 0.0)
        first.close()  # as when the worker's process dies
        await keeper.worker_gone(0)
        await second.take(start("L3", "10.0.0.3"), 1.0)
        # The dead worker's link lesson is gone too: a new start of that link replaces nothing.
        replaced: list[str] = []
        second.on_replaced = replaced.append
        await second.take(start("L4", "10.0.0.1", "link-1"), 2.0)
        assert replaced == []


async def test_a_link_started_again_on_another_worker_ends_its_lesson_on_the_first() -> None:
    keeper = PlaceKeeper(LocalPlaces(max_lessons=1, starts_per_minute=100, link_starts_per_minute=2))
    async with worker_channels(keeper, 2) as [first, second]:
        replaced_on_first: asyncio.Queue[str] = asyncio.Queue()
        first.on_replaced = replaced_on_first.put_nowait
        await first.take(start("L1", "10.0.0.1", "link-1"), 0.0)
        # The replica is full, but the new start takes over the place of the lesson it replaces.
        await second.take(start("L2", "10.0.0.2", "link-1"), 1.0)
        assert await replaced_on_first.get() == "L1"
        first.give_back(start("L1", "10.0.0.1", "link-1"))  # the replaced lesson ends
        with pytest.raises(OverCapacity, match="link 'link-1' started more than 2 lessons"):
            await first.take(start("L3", "10.0.0.1", "link-1"), 2.0)


async def test_a_lesson_resumed_on_another_worker_is_asked_of_the_worker_that_runs_it() -> None:
    keeper = PlaceKeeper(LocalPlaces(max_lessons=5, starts_per_minute=100))
    async with worker_channels(keeper, 2) as [first, second]:
        handed_over_by_first: asyncio.Queue[str] = asyncio.Queue()
        first.on_handover = handed_over_by_first.put_nowait
        second.on_handover = lambda lesson_id: pytest.fail(f"the second worker does not run {lesson_id}")
        await first.take(start("L1", "10.0.0.1"), 0.0)
        await second.request_handover("L1")
        assert await handed_over_by_first.get() == "L1"


async def _lesson_on_its_worker(url: str, output: ProcessOutput,
                                stack: contextlib.AsyncExitStack) -> tuple[LessonClient, int] | None:
    """Open a lesson and hear its greeting: the page and the worker that took it; None if it was refused."""
    page = await stack.enter_async_context(open_lesson(url))
    first = await page.until(lambda m: m["type"] in ("lesson", "error"))
    if first["type"] == "error":
        await closed_with(page)
        return None
    await page.hear_greeting()
    lesson_id = first["lesson_id"]
    await output.until(lambda lines: any(line.get("lesson_id") == lesson_id and line.get("event") == "lesson_started"
                                         for line in lines))
    [started] = [line for line in output.of("lesson_started") if line["lesson_id"] == lesson_id]
    return page, started["worker"]


async def test_two_workers_hold_max_sessions_for_the_replica_and_drain_on_sigterm(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           MAX_SESSIONS="2", LESSON_STARTS_PER_MINUTE="1000") as served:
        output = served.output
        url = f"{served.ws_url}/ws/lesson?name=Ana"
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            # Until the two open lessons are on different workers: a lesson on the same worker as the one
            # kept is ended again (its place may come back a moment later: a refusal then is retried).
            kept: list[tuple[LessonClient, int]] = []
            for _ in range(60):
                opened = await _lesson_on_its_worker(url, output, stack)
                if opened is None:
                    continue
                if kept and opened[1] == kept[0][1]:
                    await opened[0].send_json({"type": "end"})
                    await closed_with(opened[0])
                    continue
                kept.append(opened)
                if len(kept) == 2:
                    break
            assert sorted(worker for _, worker in kept) == [0, 1], output.text

            for _ in range(4):  # whichever worker takes it
                async with open_lesson(url) as late:
                    refusal = await late.until_type("error")
                    assert (refusal["code"], await closed_with(late)) == ("over_capacity", 1013)
            assert plain_words(refusal["message"])

            served.process.send_signal(signal.SIGTERM)
            for page, _ in kept:
                # Each worker hands its lesson over: the page is told it will reconnect.
                told = await page.until(lambda m: m["type"] == "status" and m["state"] == "reconnecting")
                assert (told["reason"], await closed_with(page)) == ("server_restarting", 1001)
        assert await served.exited(30) == 0, "".join(output.text)
    drained = output.of("drained")
    assert sorted((line["worker"], line["open_lessons_before"], line["all_closed"]) for line in drained) == [
        (0, 1, True), (1, 1, True)]
    assert output.of("replica_stopped")[0]["exit_codes"] == [0, 0]
    assert sorted(line["worker"] for line in output.of("startup_heap_frozen")) == [0, 1]


@pytest.mark.parametrize(("upstream", "warnings"), [
    # A real key without LESSON_SECRET or METRICS_TOKEN, and FORWARDED_ALLOW_IPS=*.
    ({}, ("upstream_configured", "lessons_open_to_anyone", "metrics_open_to_anyone",
          "client_address_chosen_by_client")),
    # No key: each worker starts its own simulator.
    ({"OPENAI_API_KEY": None, "OPENAI_REALTIME_URL": None}, ("simulator_mode", "client_address_chosen_by_client")),
])
async def test_two_workers_log_the_upstream_and_each_start_warning_once_for_the_replica(
    simulator: RealtimeSimulator, tmp_path: Path, upstream: dict[str, str | None], warnings: tuple[str, ...]
) -> None:
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           FORWARDED_ALLOW_IPS="*", **upstream) as served:
        await served.until_workers_started(2)
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(30) == 0, "".join(served.output.text)
    for warning in warnings:
        assert len(served.output.of(warning)) == 1, "".join(served.output.text)


async def test_every_worker_answers_metrics_for_the_whole_replica(simulator: RealtimeSimulator, tmp_path: Path) -> None:
    token = "replica-metrics-token"
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           LESSON_STARTS_PER_MINUTE="1000", METRICS_TOKEN=token) as served:
        output = served.output
        url = f"{served.ws_url}/ws/lesson?name=Ana"
        await served.until_workers_started(2)
        # Lessons, one after the other, until each worker has had two (connections land on workers at random).
        lessons_on = {0: 0, 1: 0}
        for _ in range(60):
            async with contextlib.AsyncExitStack() as stack:
                opened = await _lesson_on_its_worker(url, output, stack)
                assert opened is not None, output.text
                page, worker = opened
                await page.send_json({"type": "end"})
                await closed_with(page)
            lessons_on[worker] += 1
            if min(lessons_on.values()) >= 2:
                break
        total = sum(lessons_on.values())
        assert min(lessons_on.values()) >= 2, output.text
        await output.until(lambda lines: len([line for line in lines if line.get("event") == "lesson_ended"]) == total)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
            scrapes = []
            for _ in range(6):  # a new connection each: whichever worker the kernel gives it answers
                response = await http.get("/metrics", headers={"Authorization": f"Bearer {token}",
                                                               "Connection": "close"})
                assert response.status_code == 200
                scrapes.append({(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                                for family in text_string_to_metric_families(response.text)
                                for sample in family.samples})
            # A worker killed in the middle of a lesson: its open lesson is no longer counted.
            async with contextlib.AsyncExitStack() as stack:
                opened = await _lesson_on_its_worker(url, output, stack)
                assert opened is not None, output.text
                [started] = [line for line in output.of("lesson_started") if line["worker"] == opened[1]][-1:]
                os.kill(started["pid"], signal.SIGKILL)
                await output.until(lambda lines: any(line.get("event") == "worker_exited" for line in lines))
                response = await http.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        # Its replacement is up before the replica is stopped (a worker stopped while starting exits 1).
        await served.until_workers_started(3)
        open_after_kill = [sample.value for family in text_string_to_metric_families(response.text)
                           for sample in family.samples if sample.name == "lesson_relay_lessons_open"]
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(30) == 0, "".join(output.text)
    assert open_after_kill == [0.0]
    for samples in scrapes:
        assert samples[("lesson_relay_lessons_started_total", ())] == total
        assert samples[("lesson_relay_lessons_ended_total", (("reason", "student_ended"),))] == total
        assert samples[("lesson_relay_greetings_total", (("outcome", "heard"),))] == total
        assert samples[("lesson_relay_first_audio_seconds_count", ())] == total


async def test_every_worker_answers_healthz_with_the_whole_replicas_open_lessons(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    token = "replica-metrics-token"
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           LESSON_STARTS_PER_MINUTE="1000", METRICS_TOKEN=token) as served:
        output = served.output
        url = f"{served.ws_url}/ws/lesson?name=Ana"
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            # Lessons kept open until each worker runs at least one (connections land on workers at random).
            workers: list[int] = []
            while len(set(workers)) < 2:
                assert len(workers) < 40, output.text
                opened = await _lesson_on_its_worker(url, output, stack)
                assert opened is not None, output.text
                workers.append(opened[1])
            answers = []
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
                # A new connection each time, until both workers have answered (the kernel picks one at random).
                while {line["worker"] for line in _health_checks(output)} != {0, 1}:
                    assert len(answers) < 40, output.text
                    response = await http.get("/healthz", headers={"Authorization": f"Bearer {token}",
                                                                   "Connection": "close"})
                    answers.append(response.json())
                    await output.until(lambda lines: len(_health_checks(output)) == len(answers))
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(30) == 0, "".join(output.text)
    assert answers == [{"status": "ok", "open_lessons": len(workers), "simulated": False}] * len(answers)


def _health_checks(output: ProcessOutput) -> list[dict[str, object]]:
    """uvicorn's access lines of GET /healthz, each with the worker that answered."""
    return [line for line in output.lines if "GET /healthz" in str(line.get("event"))]


class WriteRecorder(io.StringIO):
    """A stream that remembers each write call: what another process's output could land between."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


def test_each_log_line_is_one_write_so_that_workers_sharing_stdout_never_splice_lines() -> None:
    stream = WriteRecorder()
    configure_logging(Settings(log_format="json"), stream)
    structlog.get_logger("lesson_relay").info("lesson_started", level="A1")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    assert len(stream.writes) == 2
    for written in stream.writes:
        assert written.endswith("\n")
        orjson.loads(written)


async def _resume_until_back(base: str, token: str, stack: contextlib.AsyncExitStack) -> tuple[LessonClient, int]:
    """Resume as lesson.js does: try again after 0.5, 1, 2, 4, 4 … s while the answer is "not yet"; the page that
    got its lesson back and how many attempts it took."""
    for attempt in range(1, 8):
        page = await stack.enter_async_context(open_lesson(f"{base}/ws/lesson?resume={token}"))
        first = await page.until(lambda m: m["type"] in ("lesson", "error"))
        if first["type"] == "lesson":
            return page, attempt
        assert (first["code"], first["fatal"]) == ("resume_not_yet", False)
        assert await closed_with(page) == 1013
        await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 4))  # the page's own pause before its next attempt
    raise AssertionError("the lesson never came back")


async def test_a_page_resumes_its_lesson_whichever_worker_its_socket_lands_on(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           LESSON_STARTS_PER_MINUTE="1000") as served:
        output = served.output
        base = served.ws_url
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            page = await stack.enter_async_context(open_lesson(f"{base}/ws/lesson?name=Ana"))
            lesson = await page.until_type("lesson")
            await page.hear_greeting()
            attempts = []
            # Each dropped page comes back on whichever worker the kernel gives its new connection to.
            for _ in range(6):
                page.ws.transport.abort()
                page, tries = await _resume_until_back(base, lesson["resume_token"], stack)
                attempts.append(tries)
                assert (page.messages[0]["lesson_id"], page.messages[0]["resumed"]) == (lesson["lesson_id"], True)
                await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
            await page.send_json({"type": "end"})
            await page.until(lambda m: m["type"] == "status" and m["state"] == "ended")
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(30) == 0, "".join(output.text)
    moved = [line for line in output.of("lesson_handed_off") if line.get("why") == "moved"]
    # Every hand-over to another worker was taken over there; the lesson ended once, as the student ended it.
    assert len(output.of("lesson_taken_over")) == len(moved)
    assert [line["reason"] for line in output.of("lesson_ended")] == ["student_ended"]
    assert all(tries <= 4 for tries in attempts), attempts


async def test_a_resume_that_reaches_the_other_worker_while_the_feedback_is_on_its_way_ends_with_the_feedback(
    simulator: RealtimeSimulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulator (in this process) holds the feedback until a resume has reached the worker not running the
    # lesson, which is told to try again: the lesson's own worker still waits for the feedback, with no page.
    reached_the_other_worker = asyncio.Event()
    hold_the_feedback_until(monkeypatch, reached_the_other_worker)
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    async with app_process(simulator.url, database, WEB_CONCURRENCY="2", LESSON_STARTS_PER_MINUTE="1000") as served:
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            page = await stack.enter_async_context(open_lesson(f"{served.ws_url}/ws/lesson?name=Ana"))
            lesson = await page.until_type("lesson")
            resume = f"{served.ws_url}/ws/lesson?{urlencode({'resume': lesson['resume_token']})}"
            await page.hear_greeting()
            await page.send_json({"type": "end"})
            await page.until(lambda m: m["type"] == "status" and m["state"] == "feedback")
            page.ws.transport.abort()  # the network drops during the wait
            for _ in range(20):  # each resume lands on either worker, as the kernel spreads connections
                back = await stack.enter_async_context(open_lesson(resume))
                first = await back.until(lambda m: m["type"] in ("lesson", "error"))
                if first["type"] == "error":
                    assert (first["code"], first["fatal"], await closed_with(back)) == ("resume_not_yet", False, 1013)
                    break
                # On the lesson's own worker: it took the wait over. Its network drops too.
                await back.until(lambda m: m["type"] == "status" and m["state"] == "feedback")
                back.ws.transport.abort()
            else:
                raise AssertionError("no resume reached the other worker")
            reached_the_other_worker.set()
            for attempt in range(1, 8):  # the page tries again as lesson.js does while it is told "not yet"
                back = await stack.enter_async_context(open_lesson(resume))
                code = await closed_with(back)
                if code != 1013:
                    break
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 4))  # the page's own pause before its next attempt
        await until_lesson_stored(database, lesson["lesson_id"], lambda row, _: row.ended_at is not None)
        engine = create_engine(database_url(database))
        try:
            async with session_factory(engine)() as session:
                row = await session.get(Lesson, lesson["lesson_id"])
        finally:
            await engine.dispose()
    assert row is not None
    # A page back during the wait also gets the lesson's usage; one back just after the end gets the record's words.
    got = [(m["type"], m.get("reason")) for m in back.messages if m["type"] not in ("transcript.done", "usage")]
    assert got[-2:] == [("feedback", None), ("status", "student_ended")]
    assert code == 1000
    assert back.messages[[m["type"] for m in back.messages].index("feedback")] == {"type": "feedback", **row.feedback}
    assert row.end_reason == "student_ended"


async def test_deleting_a_student_ends_their_lesson_whichever_worker_runs_it(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    password = "replica-test-password-not-real"
    async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           LESSON_STARTS_PER_MINUTE="1000", TEACHER_PASSWORD=password,
                           LINK_CHECK_SECONDS="1") as served, \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}",
                              headers={"Authorization": f"Bearer {password}"}) as api:
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            lessons = []
            # Four lessons and four deletions, each landing on either worker: a deletion that reaches the worker
            # running its student's lesson ends it at once, one that reaches the other worker at that one's check.
            for name in ("Ana", "Bea", "Cy", "Dan"):
                student = (await api.post("/api/students", json={"name": name, "level": "A2"})).json()
                token = parse_qs(urlsplit(student["link"]).query)["token"][0]
                page = await stack.enter_async_context(open_lesson(f"{served.ws_url}/ws/lesson?name=x&token={token}"))
                started = await page.until_type("lesson")
                await page.hear_greeting()
                lessons.append((student["id"], page, started["lesson_id"]))
            for student_id, _, _ in lessons:
                assert (await api.delete(f"/api/students/{student_id}")).status_code == 204
            async with asyncio.timeout(15):
                errors = [await page.until_type("error") for _, page, _ in lessons]
                for _, page, _ in lessons:
                    await closed_with(page)
        withdrawn = {line["lesson_id"]: line for line in served.output.of("lesson_withdrawn")}
    assert [error["code"] for error in errors] == ["student_removed"] * 4
    assert [page.ws.close_code for _, page, _ in lessons] == [1000] * 4
    assert sorted(withdrawn) == sorted(lesson_id for _, _, lesson_id in lessons)
    assert {line["reason"] for line in withdrawn.values()} == {"student_removed"}


async def test_a_lesson_on_a_worker_that_is_killed_is_taken_over_by_the_replica_and_goes_on(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    async with app_process(simulator.url, database, WEB_CONCURRENCY="2", LESSON_STARTS_PER_MINUTE="1000",
                           INSTANCE_LOST_AFTER_SECONDS="2") as served:
        output = served.output
        base = served.ws_url
        await served.until_workers_started(2)
        async with contextlib.AsyncExitStack() as stack:
            page = await stack.enter_async_context(open_lesson(f"{base}/ws/lesson?name=Ana"))
            lesson = await page.until_type("lesson")
            await page.hear_greeting()
            await until_lesson_stored(database, lesson["lesson_id"], lambda row, turns: bool(turns))
            [started] = [line for line in output.of("lesson_started") if line["lesson_id"] == lesson["lesson_id"]]
            os.kill(started["pid"], signal.SIGKILL)  # out of memory, say: nothing is handed over
            await closed_with(page)
            page, _ = await _resume_until_back(base, lesson["resume_token"], stack)
            assert (page.messages[0]["lesson_id"], page.messages[0]["resumed"]) == (lesson["lesson_id"], True)
            await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
            await page.send_json({"type": "end"})
            await page.until(lambda m: m["type"] == "status" and m["state"] == "ended")
        await served.until_workers_started(3)  # the killed worker's replacement
        served.process.send_signal(signal.SIGTERM)
        assert await served.exited(30) == 0, "".join(output.text)
    [taken_over] = output.of("lesson_taken_over")
    assert taken_over["from_lost_instance"] is True
    assert [line["reason"] for line in output.of("lesson_ended")] == ["student_ended"]


def listening_sockets_on(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (each worker's, with SO_REUSEPORT, is one)."""
    local = f"0100007F:{port:04X}"
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return sum(1 for row in rows if row[1] == local and row[3] == "0A")  # 0A: LISTEN


async def test_a_worker_that_cannot_start_while_the_database_is_away_is_started_again_after_growing_pauses(
    simulator: RealtimeSimulator, postgres_behind_proxy: tuple[str, CuttableProxy]
) -> None:
    url, proxy = postgres_behind_proxy
    async with app_process(simulator.url, url, WEB_CONCURRENCY="2") as served:
        output = served.output
        await served.until_workers_started(2)
        proxy.cut()
        first_workers = output.of("Application startup complete.")
        [victim, _] = first_workers
        os.kill(victim["pid"], signal.SIGKILL)  # out of memory, say, while the database is away
        await output.until(lambda lines: len([line for line in lines if line.get("event") == "worker_exited"]) == 3)
        # In its pause (2 s from that line) no socket of the failed worker takes connections nobody would accept.
        assert listening_sockets_on(served.port) == 1
        proxy.restore()
        # The database back, the replacement serves (it logs this once it listens). On a loaded machine one more
        # start may have failed before the database came back: the first three exits are checked below.
        first_pids = {line["pid"] for line in first_workers}
        try:
            await output.until(lambda lines: any(line.get("event") == "startup_heap_frozen"
                                                 and line.get("pid") not in first_pids for line in lines))
        except TimeoutError:
            pytest.fail("the replacement did not serve once the database was back:\n" + "".join(output.text))
        assert listening_sockets_on(served.port) == 2
        served.process.send_signal(signal.SIGTERM)
        await served.exited(30)
    exits = output.of("worker_exited")
    assert {line["worker"] for line in exits} == {victim["worker"]}
    # Killed after it served: replaced at once. Its replacement's starts failed: again after 1 s, then 2 s.
    assert [(line["start_failed"], line["restart_in_s"]) for line in exits[:3]] == [
        (False, 0.0), (True, 1.0), (True, 2.0)]


class FailedHere(Exception):
    """A test failing while its app process runs."""


def children(pid: int) -> list[int]:
    """The processes `pid` started that are still its children (its workers, multiprocessing's resource tracker)."""
    return [int(child) for listed in Path(f"/proc/{pid}/task").glob("*/children")
            for child in listed.read_text().split()]


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie does not: it holds no port and no CPU)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


@pytest.mark.parametrize("supervisor_killed", [False, True], ids=["running", "supervisor_killed"])
async def test_a_test_failing_with_two_workers_running_leaves_none_of_them_running(
    simulator: RealtimeSimulator, tmp_path: Path, supervisor_killed: bool
) -> None:
    started: list[int] = []
    output: list[ProcessOutput] = []

    async def fail_with_two_workers() -> None:
        async with app_process(simulator.url, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2") as served:
            output.append(served.output)
            await served.until_workers_started(2)
            started.extend(children(served.process.pid))
            if supervisor_killed:  # as a test of a killed instance does: its workers are left without it
                served.process.kill()
            raise FailedHere

    with pytest.raises(FailedHere):
        await fail_with_two_workers()
    workers = {line["pid"] for line in output[0].of("Application startup complete.")}
    assert len(workers) == 2
    assert workers <= set(started)
    assert [pid for pid in started if running(pid)] == []
