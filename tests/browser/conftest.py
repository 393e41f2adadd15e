"""Fixtures for the browser tests: Chromium (Playwright), Firefox (WebDriver BiDi), the app + simulator
processes, and lesson pages.

A browser that is not installed skips its tests on a developer machine and fails them in CI (tests/ci.py),
where `.ci/run` installs it: the audio path must be proven in every browser on every CI run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bidi import BidiError
from browser_stack import CHROMIUM, LessonPage, OpenPage, Stack, launch_chromium, make_wav, run_stack
from ci import tool_unavailable
from firefox import FIREFOX, PULSEAUDIO, FirefoxLessonPage, OpenFirefox, launch_firefox, run_null_sink
from playwright.sync_api import Browser, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        tool_unavailable("The Chromium tests", "Debian's chromium", f"{CHROMIUM} is missing: apt-get install chromium")
    return CHROMIUM


@pytest.fixture
def playwright(chromium: Path) -> Iterator[Playwright]:
    # Per test: the sync API runs an event loop in this thread while it is open, and pytest-asyncio's
    # tests elsewhere in the suite cannot start theirs inside it.
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One simulator + app pair shared by the tests that do not need a special simulator."""
    with run_stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
def open_page(playwright: Playwright, tmp_path: Path) -> Iterator[OpenPage]:
    """open_page(url, tone_hz=None, wav_rate=48000, context_rate=None, tone_s=10, pause_s=0, **page_options) → a
    LessonPage on a fresh browser whose microphone loops that tone (then that pause), or silence; page_options
    go to LessonPage.open (test_config, init_scripts)."""
    browsers: list[Browser] = []

    def open_(url: str, *, tone_hz: float | None = None, wav_rate: int = 48_000, context_rate: int | None = None,
              tone_s: float = 10.0, pause_s: float = 0.0, **page_options: Any) -> LessonPage:
        wav = make_wav(tmp_path / f"mic-{len(browsers)}.wav", rate=wav_rate, tone_hz=tone_hz, seconds=tone_s,
                       pause_s=pause_s)
        browser = launch_chromium(playwright, wav)
        browsers.append(browser)
        return LessonPage.open(browser, url, context_rate=context_rate, **page_options)

    yield open_
    for browser in browsers:
        for context in browser.contexts:
            for page in context.pages:
                # A closed tab keeps its lesson for the resume grace (it may be a reload); the student ends it.
                with contextlib.suppress(PlaywrightError):
                    page.evaluate("() => { if (typeof lesson !== 'undefined' && lesson) lesson.end(); }")
        browser.close()


@pytest.fixture(scope="session")
def null_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The PulseAudio server Firefox plays into (see firefox.py), shared by the Firefox tests."""
    for tool, package in ((FIREFOX, "firefox-esr"), (PULSEAUDIO, "pulseaudio")):
        if not tool.exists():
            tool_unavailable("The Firefox tests", "Debian's firefox-esr and pulseaudio",
                             f"{tool} is missing: apt-get install {package}")
    with run_null_sink(tmp_path_factory.mktemp("pulse")) as server:
        yield server


@pytest.fixture
def open_firefox(null_sink: str, tmp_path: Path) -> Iterator[OpenFirefox]:
    """open_firefox(url, microphone_hz=0, test_config=None) → a FirefoxLessonPage in a new Firefox whose
    microphone is a tone of `microphone_hz` (0: silence); every Firefox is stopped after the test."""
    with contextlib.ExitStack() as browsers:
        pages: list[FirefoxLessonPage] = []

        def open_(url: str, *, microphone_hz: int = 0, test_config: dict[str, Any] | None = None) -> FirefoxLessonPage:
            session = browsers.enter_context(launch_firefox(tmp_path / f"firefox-{len(pages)}",
                                                            pulse_server=null_sink, microphone_hz=microphone_hz))
            pages.append(FirefoxLessonPage.open(session, url, test_config=test_config))
            return pages[-1]

        yield open_
        for page in pages:
            # A closed tab keeps its lesson for the resume grace (it may be a reload); the student ends it.
            with contextlib.suppress(BidiError, TimeoutError):
                page.evaluate("typeof lesson !== 'undefined' && lesson && lesson.end()")
