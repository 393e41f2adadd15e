"""GET /metrics (Prometheus text format) and /healthz, read over real sockets after real lessons."""

from __future__ import annotations

import asyncio
import io
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from harness import END_OF_TURN_FRAMES, AppServer, logged, open_lesson, pause, relay_settings, serve_app, speak
from prometheus_client.parser import text_string_to_metric_families

from app.actions import Log
from app.logging import REDACTED, configure_logging
from app.loop_lag import INTERVAL_S as LOOP_LAG_INTERVAL_S
from app.metrics import LessonMetrics
from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import Instance, Lesson, utcnow

TOKEN = "metrics-test-token-not-a-secret"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def scrape(relay: AppServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample /metrics serves, by (name, labels)."""
    async with httpx.AsyncClient(base_url=relay.base_url) as http:
        response = await http.get("/metrics", headers=BEARER)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_a_lesson_count_it_from_start_to_end_with_its_tokens_and_cost(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            await page.hear_greeting()
            during = await scrape(relay)
            await page.send_json({"type": "end"})
            usage = await page.until_type("usage")
            await page.drain_until_closed()
        assert await relay.app.state.lessons.drain(5)
        after = await scrape(relay)
    assert value(during, "lesson_relay_lessons_open") == 1
    assert value(after, "lesson_relay_lessons_open") == 0
    assert value(after, "lesson_relay_lessons_started_total") == 1
    assert value(after, "lesson_relay_lessons_ended_total", reason="student_ended") == 1
    assert value(after, "lesson_relay_greetings_total", outcome="heard") == 1
    assert value(after, "lesson_relay_greetings_total", outcome="failed") == 0
    assert value(after, "lesson_relay_responses_total", status="completed") == 2  # the greeting, the feedback
    assert value(after, "lesson_relay_feedback_total", outcome="given") == 1
    assert value(after, "lesson_relay_upstream_connect_seconds_count") == 1
    assert value(after, "lesson_relay_first_audio_seconds_count") == 1
    assert value(after, "lesson_relay_first_audio_seconds_sum") > 0
    # The same tokens and cost the lesson reported to the page at its end.
    assert usage["audio_output_tokens"] > 0
    assert value(after, "lesson_relay_tokens_total", kind="audio_output") == usage["audio_output_tokens"]
    assert value(after, "lesson_relay_tokens_total", kind="text_input") == usage["text_input_tokens"]
    assert value(after, "lesson_relay_estimated_cost_usd_total") == pytest.approx(usage["estimated_cost_usd"])


def cached_input_tokens(log_stream: io.StringIO) -> int:
    """The cached input tokens of every response the lesson has logged as done so far."""
    return sum(((line.get("usage") or {}).get("input_token_details") or {}).get("cached_tokens", 0)
               for line in logged(log_stream, "response_done"))


async def test_a_lesson_whose_responses_read_a_cached_prefix_goes_on_and_counts_its_cost(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    # Once the conversation passes 1 024 tokens the simulator, like the Realtime API, serves its start from the
    # cache: the cost of that response must still be counted, and the lesson go on to its end.
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            await page.hear_greeting()
            for _ in range(8):
                await speak(page, 30)
                await pause(page, END_OF_TURN_FRAMES)
                reply = await page.until_type("audio.done")
                await page.send_json({"type": "playback", "item_id": reply["item_id"],
                                      "played_ms": reply["duration_ms"]})
                await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
                if cached_input_tokens(log_stream) > 0:
                    break
            assert cached_input_tokens(log_stream) > 0
            await page.send_json({"type": "end"})
            usage = await page.until_type("usage")
            await page.drain_until_closed()
            assert page.ws.close_code == 1000
        after = await scrape(relay)
    assert logged(log_stream, "lesson_crashed") == []
    assert all(line["estimated_cost_usd"] >= 0 for line in logged(log_stream, "response_done"))
    assert value(after, "lesson_relay_lessons_ended_total", reason="student_ended") == 1
    assert value(after, "lesson_relay_estimated_cost_usd_total") == pytest.approx(usage["estimated_cost_usd"])


async def test_the_event_loop_lag_is_observed_from_startup(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN)) as relay:
        started = await scrape(relay)  # answered: the lifespan has started the probe
        # Timers fire in the order they are due: once this sleep is over, the probe's first timer has fired.
        await asyncio.sleep(LOOP_LAG_INTERVAL_S * 1.2)
        after = await scrape(relay)
    assert ("lesson_relay_event_loop_lag_seconds_count", frozenset()) in started
    assert value(after, "lesson_relay_event_loop_lag_seconds_count") >= 1


async def test_metrics_count_resumed_pages_replaced_sessions_and_handed_over_lessons(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            lesson = await page.until_type("lesson")
            await page.hear_greeting()
            page.ws.transport.abort()
        async with open_lesson(f"{relay.ws_url}/ws/lesson?resume={lesson['resume_token']}") as back:
            await back.until(lambda m: m["type"] == "status" and m["state"] == "listening")
            await (await simulator.next_connection()).expire()
            await back.until(lambda m: m["type"] == "status" and m["state"] == "reconnecting")
            await back.until(lambda m: m["type"] == "status" and m["state"] == "listening")
            assert await relay.app.state.lessons.drain(5)
        after = await scrape(relay)
    assert value(after, "lesson_relay_resumes_total", kind="page") == 1
    assert value(after, "lesson_relay_upstream_lost_total", why="session_expired") == 1
    assert value(after, "lesson_relay_lessons_handed_off_total") == 1
    assert value(after, "lesson_relay_lessons_open") == 0


async def test_a_sweep_that_ends_the_lessons_of_a_lost_instance_counts_each_of_them(
    simulator: RealtimeSimulator, tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'lessons.db'}"
    engine = create_engine(database_url(database))
    await migrate(engine)
    killed_at = utcnow() - timedelta(hours=1)
    async with session_factory(engine).begin() as session:
        session.add(Instance(id="killed", started_at=killed_at - timedelta(hours=1), seen_at=killed_at))
        await session.flush()
        session.add_all([Lesson(id=lesson_id, level="B1", started_at=killed_at - timedelta(minutes=10),
                                model="gpt-realtime", simulated=True, instance_id="killed")
                         for lesson_id in ("L1", "L2")])
    await engine.dispose()
    # The app sweeps once as it starts, before it answers the scrape.
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN, database_url=database)) as relay:
        after = await scrape(relay)
    assert value(after, "lesson_relay_lessons_lost_with_instance_total") == 2
    assert value(after, "lesson_relay_lessons_taken_over_total", from_lost_instance="true") == 0


def test_take_overs_are_counted_by_whether_the_lesson_was_left_by_a_lost_instance() -> None:
    metrics = LessonMetrics()
    for from_lost_instance in (True, True, False):
        metrics.observe(Log("info", "lesson_taken_over", {"elapsed_s": 12.5, "turns": 3, "replay": False,
                                                          "from_lost_instance": from_lost_instance}))
    samples = {(sample.name, frozenset(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(metrics.exposition().decode())
               for sample in family.samples}
    assert value(samples, "lesson_relay_lessons_taken_over_total", from_lost_instance="true") == 2
    assert value(samples, "lesson_relay_lessons_taken_over_total", from_lost_instance="false") == 1
    assert value(samples, "lesson_relay_resumes_total", kind="taken_over") == 3


async def test_metrics_after_a_failed_greeting_count_the_retry_the_failure_and_the_failed_responses(
    simulator_with: Any, log_stream: io.StringIO
) -> None:
    async with simulator_with(response_fault="failed", fault_times=None, audio_pace=0) as simulator, \
            serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            error = await page.until_type("error")
            await page.drain_until_closed()
        assert await relay.app.state.lessons.drain(5)
        after = await scrape(relay)
    assert error["fatal"] is True
    assert value(after, "lesson_relay_greetings_total", outcome="retried") == 1
    assert value(after, "lesson_relay_greetings_total", outcome="failed") == 1
    assert value(after, "lesson_relay_greetings_total", outcome="heard") == 0
    assert value(after, "lesson_relay_responses_total", status="failed") == 2
    assert value(after, "lesson_relay_lessons_ended_total", reason="greeting_failed") == 1
    assert value(after, "lesson_relay_first_audio_seconds_count") == 0


async def test_a_lesson_without_its_feedback_is_counted_by_why(simulator_with: Any, log_stream: io.StringIO) -> None:
    async with simulator_with(feedback_fault="invalid_json") as simulator, \
            serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana")) as page:
            await page.hear_greeting()
            await page.send_json({"type": "end"})
            await page.until_type("feedback.unavailable")
            await page.drain_until_closed()
        assert await relay.app.state.lessons.drain(5)
        after = await scrape(relay)
    assert value(after, "lesson_relay_feedback_total", outcome="invalid_feedback") == 1
    assert value(after, "lesson_relay_feedback_total", outcome="given") == 0


async def test_refused_lessons_are_counted_by_code(simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(relay.lesson_url(name="Ana", level="Z9")) as page:
            await page.until_type("error")
            await page.drain_until_closed()
        after = await scrape(relay)
    assert value(after, "lesson_relay_refusals_total", code="invalid_request") == 1
    assert value(after, "lesson_relay_lessons_started_total") == 0


async def test_refused_resumes_are_counted_with_refused_lessons_and_its_help_says_so(
        simulator: RealtimeSimulator, log_stream: io.StringIO) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN), log_stream) as relay:
        async with open_lesson(f"{relay.ws_url}/ws/lesson?resume=not-a-token") as page:
            await page.until_type("error")
            await page.drain_until_closed()
        after = await scrape(relay)
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            exposition = (await http.get("/metrics", headers=BEARER)).text
    assert value(after, "lesson_relay_refusals_total", code="resume_invalid") == 1
    [refusals] = [family for family in text_string_to_metric_families(exposition)
                  if family.name == "lesson_relay_refusals"]
    assert "resumes refused" in refusals.documentation


async def test_metrics_need_the_bearer_token_when_one_is_set(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN)) as relay, \
            httpx.AsyncClient(base_url=relay.base_url) as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer not-the-token"})
        basic = await http.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"})
        right = await http.get("/metrics", headers=BEARER)
    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert "lesson_relay" not in missing.text
    assert right.status_code == 200
    assert "lesson_relay_lessons_open" in right.text


async def test_healthz_tells_anyone_only_ready_and_the_token_holder_the_details(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token=TOKEN)) as relay, \
            httpx.AsyncClient(base_url=relay.base_url) as http:
        public = await http.get("/healthz")
        wrong = await http.get("/healthz", headers={"Authorization": "Bearer not-the-token"})
        private = await http.get("/healthz", headers=BEARER)
    assert (public.status_code, public.json()) == (200, {"status": "ok"})
    assert wrong.json() == {"status": "ok"}
    assert private.json() == {"status": "ok", "open_lessons": 0, "simulated": False}


async def test_without_a_metrics_token_metrics_are_open_and_healthz_shows_no_details(
    simulator: RealtimeSimulator,
) -> None:
    async with serve_app(relay_settings(simulator.url, metrics_token="")) as relay, \
            httpx.AsyncClient(base_url=relay.base_url) as http:
        metrics = await http.get("/metrics")
        health = await http.get("/healthz", headers=BEARER)
    assert metrics.status_code == 200
    assert "lesson_relay_lessons_started_total 0.0" in metrics.text
    # Alerts on a take-over from a lost instance see its first one as an increase from 0.
    assert 'lesson_relay_lessons_taken_over_total{from_lost_instance="true"} 0.0' in metrics.text
    assert health.json() == {"status": "ok"}


def test_the_metrics_token_never_reaches_a_log_line() -> None:
    # TEACHER_PASSWORD's redaction (a field and a traceback) is tested with the other secrets in test_crashes.py.
    stream = io.StringIO()
    configure_logging(Settings(metrics_token=TOKEN, log_format="json"), stream)
    structlog.get_logger("lesson_relay").warning("probe", header=f"Bearer {TOKEN}")
    assert TOKEN not in stream.getvalue()
    assert REDACTED in stream.getvalue()


def test_the_counters_of_a_closed_set_of_labels_start_at_zero_so_that_their_first_count_is_an_increase() -> None:
    samples = {(sample.name, frozenset(sample.labels.items())): sample.value
               for family in text_string_to_metric_families(LessonMetrics().exposition().decode())
               for sample in family.samples}
    for name, label, values in [
        ("lesson_relay_greetings_total", "outcome", ("heard", "retried", "failed")),
        ("lesson_relay_records_dropped_total", "cause", ("queue_full", "database_unavailable", "refused", "shutdown")),
        ("lesson_relay_resumes_total", "kind", ("page", "taken_over")),
        ("lesson_relay_upstream_lost_total", "why",
         ("upstream_closed", "session_expired", "server_error", "roll_over")),
        ("lesson_relay_lessons_taken_over_total", "from_lost_instance", ("true", "false")),
    ]:
        for label_value in values:
            # Present, not merely absent (which `value` would also read as 0).
            assert samples[(name, frozenset({(label, label_value)}))] == 0
