"""A test tool that is missing skips its tests on a developer's machine and fails them in CI."""

from __future__ import annotations

import pytest
from ci import tool_unavailable


def test_a_developer_s_run_skips_with_what_is_needed_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="The Firefox tests need firefox-esr: /usr/bin/firefox-esr is gone"):
        tool_unavailable("The Firefox tests", "firefox-esr", "/usr/bin/firefox-esr is gone")


@pytest.mark.parametrize("value", ["true", "True"])
def test_a_ci_run_fails(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="The Firefox tests cannot run in CI: /usr/bin/firefox-esr is gone"):
        tool_unavailable("The Firefox tests", "firefox-esr", "/usr/bin/firefox-esr is gone")
