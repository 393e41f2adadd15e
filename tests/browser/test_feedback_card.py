"""The feedback card in headless Chromium.

What these prove: after End over the real app and simulator the page says it is preparing the feedback
and then shows the card (the time from End to the card is printed, never asserted); every field is
shown as text, so model output holding HTML cannot run in the page; a lesson without feedback says so.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from browser_stack import LessonPage, OpenPage, Stack
from playwright.sync_api import WebSocketRoute, expect

pytestmark = pytest.mark.browser

HOSTILE = '<img src=x onerror="window.injected = true">'


def test_end_shows_preparing_then_the_feedback_card(stack: Stack, open_page: OpenPage) -> None:
    lesson = open_page(stack.url)
    lesson.start("Ana", "A2")
    lesson.wait_greeting_played()
    lesson.wait_debug("d.state === 'listening'")

    lesson.page.get_by_role("button", name="End lesson").click()

    card = lesson.page.locator("#feedback .feedback-card")
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".feedback-card__summary")).to_contain_text("Today we talked about how you are")
    expect(card.locator(".feedback-card__words")).to_contain_text("tutor — a teacher who helps one student")
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")
    assert lesson.debug("closeCode") == 1000
    assert lesson.console_errors == []


class FakeRelay:
    """The lesson socket answered by the test instead of the app: the page's side of the protocol only."""

    def __init__(self, resume_token: str | None = None) -> None:
        self.socket: WebSocketRoute | None = None
        self.ended = False
        self.resume_token = resume_token

    def accept(self, socket: WebSocketRoute) -> None:
        self.socket = socket
        socket.on_message(self._on_message)
        for frame in ({"type": "lesson", "lesson_id": "L1", "simulated": True, "sample_rate": 24000,
                       "name": "Ana", "level": "A2", "resume_token": self.resume_token},
                      {"type": "status", "state": "listening"}):
            self.send(frame)

    def _on_message(self, message: str | bytes) -> None:
        if isinstance(message, str) and json.loads(message).get("type") == "end":
            self.ended = True

    def send(self, frame: dict[str, Any]) -> None:
        assert self.socket is not None
        self.socket.send(json.dumps(frame))


def faked_lesson(open_page: OpenPage, stack: Stack, feedback_timeout_s: int = 20,
                 resume_token: str | None = None) -> tuple[LessonPage, FakeRelay]:
    """A page whose lesson socket is `FakeRelay`, ended by the student and waiting `feedback_timeout_s` for its
    feedback."""
    relay = FakeRelay(resume_token)
    lesson = open_page(stack.url)
    lesson.page.route_web_socket("**/ws/lesson**", relay.accept)
    lesson.start("Ana", "A2")
    lesson.wait_debug("d.state === 'listening'")
    lesson.page.get_by_role("button", name="End lesson").click()
    lesson.page.wait_for_function("() => window.lessonDebug.state === 'ending'")
    relay.send({"type": "status", "state": "feedback", "timeout_s": feedback_timeout_s})
    expect(lesson.page.locator("#feedback-status")).to_have_text("Preparing your feedback…")
    expect(lesson.page.get_by_role("status")).to_have_text("Preparing your feedback…")
    assert relay.ended
    return lesson, relay


def test_every_field_is_shown_as_text_never_as_html(stack: Stack, open_page: OpenPage) -> None:
    lesson, relay = faked_lesson(open_page, stack)
    relay.send({"type": "feedback", "summary": f"Summary {HOSTILE}",
                "corrections": [{"said": f"said {HOSTILE}", "better": f"better {HOSTILE}", "why": f"why {HOSTILE}"}],
                "new_words": [{"word": f"word {HOSTILE}", "meaning": f"meaning {HOSTILE}"}],
                "next_step": f"Next {HOSTILE}"})
    relay.send({"type": "status", "state": "ended", "reason": "student_ended"})

    card = lesson.page.locator("#feedback .feedback-card")
    expect(card).to_be_visible()
    for part, text in (("summary", "Summary"), ("said", "said"), ("better", "better"), ("why", "why"),
                       ("words", "word"), ("next", "Next")):
        expect(card.locator(f".feedback-card__{part}")).to_contain_text(f"{text} {HOSTILE}")
    expect(card.locator(".feedback-card__words")).to_contain_text(f"meaning {HOSTILE}")
    assert card.locator("img").count() == 0
    assert lesson.page.evaluate("window.injected") is None
    assert lesson.console_errors == []


def test_a_lesson_without_feedback_says_so(stack: Stack, open_page: OpenPage) -> None:
    lesson, relay = faked_lesson(open_page, stack)
    relay.send({"type": "feedback.unavailable", "reason": "timeout",
                "message": "Your feedback could not be prepared this time."})
    relay.send({"type": "status", "state": "ended", "reason": "student_ended"})

    expect(lesson.page.locator("#feedback-status")).to_have_text("Your feedback could not be prepared this time.")
    expect(lesson.page.locator("#feedback .feedback-card")).to_have_count(0)
    expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")


def test_a_feedback_the_relay_never_answers_for_is_given_up_in_plain_words_and_kept_for_a_reload(
    stack: Stack, open_page: OpenPage
) -> None:
    lesson, _relay = faked_lesson(open_page, stack, feedback_timeout_s=1, resume_token="token-of-L1")

    # Neither the feedback nor its absence comes: past the 1 s and the page's margin, the page stops waiting.
    expect(lesson.page.locator("#feedback-status")).to_have_text(
        "Your feedback is taking longer than expected. Reload this page in a minute to see it.", timeout=15_000)
    expect(lesson.page.get_by_role("status")).to_have_text("The lesson has ended.")
    expect(lesson.page.get_by_role("button", name="Start lesson")).to_be_enabled()
    assert lesson.page.get_by_role("alert").is_hidden()
    saved = lesson.page.evaluate("JSON.parse(sessionStorage.getItem('lessonResume'))")
    assert (saved["token"], saved["awaitingFeedback"]) == ("token-of-L1", True)
    assert lesson.console_errors == []
