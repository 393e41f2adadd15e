"""The lesson page works under its Content-Security-Policy: a whole lesson, microphone and worklets
included, in headless Chromium without a single policy violation."""

from __future__ import annotations

import pytest
from browser_stack import OpenPage, Stack, wait_recording
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


def test_a_lesson_runs_under_the_policy_with_no_violation(stack: Stack, open_page: OpenPage) -> None:
    # A silent microphone: its frames still flow, and no barge-in can cut the greeting under test.
    lesson = open_page(stack.url)
    before = stack.recordings()
    lesson.start("Ana")

    expect(lesson.page.locator("#transcript .turn--tutor").first).to_contain_text("Ana", timeout=30_000)
    lesson.wait_greeting_played()
    wait_recording(stack, before, seconds=0.5)  # the capture worklet's frames reached the upstream
    lesson.page.get_by_role("button", name="End lesson").click()
    lesson.wait_debug("d.socket === 'closed' && d.state === 'ended'")

    assert lesson.csp_violations() == []
    assert lesson.console_errors == []
    # The listener does see violations: an inline script is refused.
    lesson.page.evaluate("""() => {
        const script = document.createElement("script");
        script.textContent = "window.inlineRan = true";
        document.head.append(script);
    }""")
    lesson.page.wait_for_function("window.cspViolations.length > 0")
    assert lesson.csp_violations()[0].startswith("script-src")
    assert lesson.page.evaluate("window.inlineRan") is None
