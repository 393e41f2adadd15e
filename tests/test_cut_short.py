"""Lessons cut short, over real sockets: a partial answer, the session's time limit, a busy upstream's wait.

Each is said to the student in plain words, and none of them is shown as a lost connection.
"""

from __future__ import annotations

import io

import pytest
from harness import (
    END_OF_TURN_FRAMES,
    SimulatorWith,
    closed_with,
    logged,
    of_type,
    open_lesson,
    pause,
    plain_words,
    relay_for,
    speak,
    tutor_events,
)

from app.simulator.behaviour import ResponseFault, SimulatorBehaviour
from app.simulator.responses import FAILED_RESPONSE_ERRORS


async def test_a_reply_cut_off_by_the_content_filter_is_said_and_the_lesson_goes_on(
    simulator_with: SimulatorWith, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    def second_reply_incomplete(self: SimulatorBehaviour, response_number: int) -> ResponseFault:
        return "incomplete" if response_number == 2 else "none"

    monkeypatch.setattr(SimulatorBehaviour, "fault_for", second_reply_incomplete)
    async with simulator_with(audio_pace=0) as simulator, relay_for(simulator, log_stream) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        upstream = await simulator.next_connection()
        heard_before = len(page.messages)
        await speak(page, 30)
        await pause(page, END_OF_TURN_FRAMES)
        # The cut-off reply is over when the tutor listens again.
        await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
        [error] = of_type(page.messages[heard_before:], "error")
        await page.send_json({"type": "end"})
        close_code = await closed_with(page)
    await upstream.wait_closed()
    assert [d["response"]["status"] for d in tutor_events(of_type(upstream.sent, "response.done"))] == [
        "completed", "incomplete"]
    assert (error["code"], error["fatal"]) == ("response_incomplete", False)
    assert error["message"].startswith("The tutor was cut off")
    assert plain_words(error["message"])
    assert close_code == 1000
    assert logged(log_stream, "lesson_ended")[0]["reason"] == "student_ended"


async def test_the_upstream_session_expiring_is_not_the_end_of_the_lesson(
    simulator_with: SimulatorWith, log_stream: io.StringIO
) -> None:
    async with simulator_with(audio_pace=0) as simulator, \
            relay_for(simulator, log_stream) as relay, open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        upstream = await simulator.next_connection()
        await upstream.expire()  # the session's maximum duration, as the real API ends it
        await page.until(lambda m: m["type"] == "status" and m["state"] == "reconnecting")
        await page.until(lambda m: m["type"] == "status" and m["state"] == "listening")
        renewed = await simulator.next_connection()
        await page.send_json({"type": "end"})
        close_code = await closed_with(page)
    await renewed.wait_closed()
    assert [e["error"]["code"] for e in of_type(upstream.sent, "error")] == ["session_expired"]
    assert of_type(page.messages, "error") == []
    assert close_code == 1000
    [lost] = logged(log_stream, "upstream_lost")
    assert lost["why"] == "session_expired"
    assert logged(log_stream, "lesson_ended")[0]["reason"] == "student_ended"


async def test_a_greeting_refused_with_a_wait_is_asked_for_again_after_it_and_the_page_is_told(
    simulator_with: SimulatorWith, log_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(FAILED_RESPONSE_ERRORS, "rate_limit_exceeded", (
        "rate_limit_exceeded", "Rate limit reached for tokens per min (TPM). Please try again in 0.3s."))
    busy = {"response_fault": "failed", "failed_code": "rate_limit_exceeded", "fault_times": 1, "audio_pace": 0}
    async with simulator_with(**busy) as simulator, relay_for(simulator, log_stream) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        upstream = await simulator.next_connection()
        await page.send_json({"type": "end"})
        close_code = await closed_with(page)
    await upstream.wait_closed()
    assert close_code == 1000
    assert len(tutor_events(of_type(upstream.received, "response.create"))) == 2
    states = [(m["state"], m.get("retry_in_ms")) for m in page.messages if m["type"] == "status"]
    assert states[:4] == [("connecting", None), ("greeting", None), ("waiting", 300), ("greeting", None)]
    assert of_type(page.messages, "error") == []
    [retry] = logged(log_stream, "greeting_retry")
    assert (retry["code"], retry["retry_in_ms"]) == ("rate_limit_exceeded", 300)
