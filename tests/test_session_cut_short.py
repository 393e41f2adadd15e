"""Lessons cut short, in plain words: partial answers, the session's time limit, a busy upstream's wait."""

from __future__ import annotations

from typing import Any

import pytest
from test_session import (
    browser_messages,
    closes,
    config,
    configured,
    greeted,
    logs,
    response_done,
    upstream_events,
)

from app.actions import Close
from app.session import LessonSession, LessonState

EXPIRY_MESSAGE = "Your session hit the maximum duration of 60 minutes."


def start_greeting(session: LessonSession) -> list[object]:
    actions = configured(session)
    actions += session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)
    return actions


def rate_limited(message: str) -> dict[str, Any]:
    return {"type": "rate_limit_exceeded", "code": "rate_limit_exceeded", "message": message}


class TestPartialAnswers:
    @pytest.mark.parametrize(("reason", "words"), [("max_output_tokens", "too long"),
                                                   ("content_filter", "safety filter")])
    def test_a_reply_that_ends_incomplete_tells_the_page_and_the_lesson_goes_on(self, reason: str, words: str) -> None:
        session = LessonSession(config())
        greeted(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 1.0)
        actions = session.handle_upstream(response_done("resp_2", status="incomplete", reason=reason), 2.0)
        [error] = [m for m in browser_messages(actions) if m["type"] == "error"]
        assert error["code"] == "response_incomplete"
        assert error["fatal"] is False
        assert error["message"].startswith("The tutor was cut off")
        assert words in error["message"]
        assert logs(actions, "response_done")[0]["status_details"] == {"type": "incomplete", "reason": reason}
        assert closes(actions) == []
        assert session.state is LessonState.CONVERSING


class TestSessionExpiry:
    def test_session_expired_before_the_lesson_is_under_way_ends_it_at_its_time_limit(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.0)
        actions = session.handle_upstream({"type": "error", "error": {
            "type": "invalid_request_error", "code": "session_expired", "message": EXPIRY_MESSAGE}}, 3600.0)
        error = browser_messages(actions)[0]
        assert (error["code"], error["fatal"]) == ("session_expired", True)
        assert "time limit" in error["message"]
        assert "lost" not in error["message"]
        assert closes(actions) == [Close(1000, "session_expired")]
        assert logs(actions, "upstream_session_expired")[0]["code"] == "session_expired"
        assert logs(actions, "lesson_ended")[0]["reason"] == "session_expired"
        # The close 1001 that follows belongs to the same ending.
        assert session.handle_upstream_closed(1001, EXPIRY_MESSAGE, 3600.1) == ()

    def test_a_close_1001_at_the_maximum_duration_says_time_limit_too(self) -> None:
        session = LessonSession(config())
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.0)
        actions = session.handle_upstream_closed(1001, EXPIRY_MESSAGE, 3600.0)
        assert browser_messages(actions)[0]["code"] == "session_expired"
        assert closes(actions) == [Close(1000, "session_expired")]
        assert logs(actions, "upstream_closed") == []
        # Any other close 1001 is still a lost connection.
        session = LessonSession(config())
        session.begin(0.0)
        actions = session.handle_upstream_closed(1001, "going away", 30.0)
        assert browser_messages(actions)[0]["code"] == "upstream_closed"
        assert closes(actions) == [Close(1011, "upstream_closed")]


class TestGreetingRetryWait:
    @pytest.mark.parametrize(("message", "wait_s"), [
        ("Rate limit reached for tokens per min. Please try again in 6.9s.", 6.9),
        ("Rate limit reached for requests per min. Please try again in 120ms.", 0.12),
        ("Rate limit reached for tokens per day. Please try again in 1m30s.", 10.0),  # bounded
    ])
    def test_a_failed_greeting_that_names_a_wait_is_asked_for_again_after_it_and_the_page_is_told(
            self, message: str, wait_s: float) -> None:
        session = LessonSession(config())
        start_greeting(session)
        actions = session.handle_upstream(response_done(status="failed", error=rate_limited(message)), 1.0)
        assert upstream_events(actions) == []
        retry_in_ms = round(wait_s * 1000)
        assert browser_messages(actions) == [
            {"type": "status", "state": "waiting", "reason": "tutor_busy", "retry_in_ms": retry_in_ms}]
        assert logs(actions, "greeting_retry")[0]["retry_in_ms"] == retry_in_ms
        assert session.next_deadline() == pytest.approx(1.0 + wait_s)
        assert session.handle_timeout(1.0 + wait_s - 0.01) == []
        retried = session.handle_timeout(1.0 + wait_s)
        assert [event["type"] for event in upstream_events(retried)] == ["response.create"]
        assert {"type": "status", "state": "greeting"} in browser_messages(retried)
        assert logs(retried, "greeting_requested") == [{"attempt": 2}]

    def test_a_refused_greeting_request_that_names_a_wait_is_retried_after_it(self) -> None:
        session = LessonSession(config())
        [create] = [e for e in upstream_events(configured(session)) if e["type"] == "response.create"]
        refusal = rate_limited("Rate limit reached for requests per min. Please try again in 2.5s.")
        actions = session.handle_upstream({"type": "error", "error": refusal | {"event_id": create["event_id"]}}, 0.5)
        assert upstream_events(actions) == []
        assert session.next_deadline() == pytest.approx(3.0)
        assert [e["type"] for e in upstream_events(session.handle_timeout(3.0))] == ["response.create"]

    def test_a_failure_that_names_no_wait_is_retried_at_once(self) -> None:
        session = LessonSession(config())
        start_greeting(session)
        actions = session.handle_upstream(response_done(
            status="failed", error={"type": "server_error", "code": "server_error", "message": "boom"}), 0.1)
        assert [e["type"] for e in upstream_events(actions)] == ["response.create"]
        assert logs(actions, "greeting_retry")[0]["retry_in_ms"] == 0
        assert "waiting" not in [m.get("state") for m in browser_messages(actions)]
