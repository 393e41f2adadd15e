"""Lesson links: what `python -m app.links` accepts, and what a link fixes about its lesson."""

from __future__ import annotations

import io

import httpx
import pytest
from harness import log_lines, relay_settings, serve_app

from app.links import main as links_main
from app.simulator import RealtimeSimulator

SECRET = "test-lesson-secret-not-real-0123456789"


@pytest.mark.parametrize(("argument", "value", "problem"), [
    ("--hours", "inf", "must be above 0 and at most 8784"),
    ("--hours", "nan", "must be above 0 and at most 8784"),
    ("--hours", "-1", "must be above 0 and at most 8784"),
    ("--hours", "0", "must be above 0 and at most 8784"),
    ("--hours", "1e9", "must be above 0 and at most 8784"),
    ("--hours", "two", "'two' is not a number of hours"),
    ("--base-url", "lessons.example.org", "must be an http:// or https:// address"),
    ("--base-url", "https://lessons.example.org/?token=x", "no ? or # part"),
    ("--base-url", "javascript:alert(1)", "must be an http:// or https:// address"),
])
def test_the_links_command_refuses_bad_arguments_naming_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argument: str, value: str, problem: str
) -> None:
    monkeypatch.setenv("LESSON_SECRET", SECRET)
    with pytest.raises(SystemExit) as stopped:
        links_main(["--name", "Ana", argument, value])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argument}" in err
    assert problem in err


async def test_a_real_key_without_lesson_secret_warns_at_start(
    simulator: RealtimeSimulator, log_stream: io.StringIO
) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream):
        pass
    async with serve_app(relay_settings(simulator.url, lesson_secret=SECRET), log_stream):
        pass
    [warning] = [line for line in log_lines(log_stream) if line["event"] == "lessons_open_to_anyone"]
    assert warning["level"] == "warning"
    assert "set LESSON_SECRET" in warning["message"]


async def test_the_link_required_page_never_builds_urls_from_the_host_header(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, lesson_secret=SECRET)) as server, httpx.AsyncClient() as http:
        page = await http.get(f"{server.base_url}/", headers={"Host": "evil.example"})
    assert page.status_code == 403
    assert "evil.example" not in page.text
    assert 'href="/static/lesson.css"' in page.text
