"""Fixtures for the browser tests: Chromium (Playwright), Firefox (WebDriver BiDi), WebKit (WebDriver
classic), the app + simulator processes, and lesson pages.

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
from firefox import FIREFOX, FirefoxLessonPage, launch_firefox
from playwright.sync_api import Browser, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from scripted_page import PULSEAUDIO, OtherBrowser, ScriptedLessonPage, run_null_sink
from webdriver import WebDriverError
from webkit import MOCK_MICROPHONE_HUM_HZ, WEBKIT_WEBDRIVER, XVFB_RUN, WebKitLessonPage, launch_webkit, minibrowser


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
    """The PulseAudio server Firefox and WebKit play into (see scripted_page.py), shared by their tests."""
    if not PULSEAUDIO.exists():
        tool_unavailable("The Firefox and WebKit tests", "Debian's pulseaudio",
                         f"{PULSEAUDIO} is missing: apt-get install pulseaudio")
    with run_null_sink(tmp_path_factory.mktemp("pulse")) as server:
        yield server


# Firefox's fake microphone plays the tone we ask for.
FIREFOX_MICROPHONE_HZ = 440


@pytest.fixture(params=["firefox", "webkit"])
def other_browser(request: pytest.FixtureRequest, null_sink: str, tmp_path: Path) -> Iterator[OtherBrowser]:
    """Firefox (over WebDriver BiDi) or WebKit (over WebDriver classic), each with a fake microphone and sound
    into `null_sink`; every browser opened is stopped after the test, its lesson ended first."""
    name: str = request.param
    needs = {"firefox": {FIREFOX: "firefox-esr"},
             "webkit": {WEBKIT_WEBDRIVER: "webkit2gtk-driver", XVFB_RUN: "xvfb",
                        minibrowser() or Path("MiniBrowser"): "libwebkit2gtk-4.1-0"}}[name]
    for tool, package in needs.items():
        if not tool.exists():
            tool_unavailable(f"The {name} tests", f"Debian's {', '.join(needs.values())}",
                             f"{tool} is missing: apt-get install {package}")
    with contextlib.ExitStack() as browsers:
        pages: list[ScriptedLessonPage] = []

        def open_(url: str) -> ScriptedLessonPage:
            workdir = tmp_path / f"{name}-{len(pages)}"
            if name == "firefox":
                session = browsers.enter_context(launch_firefox(workdir, pulse_server=null_sink,
                                                                microphone_hz=FIREFOX_MICROPHONE_HZ))
                pages.append(FirefoxLessonPage.open(session, url))
            else:
                webdriver = browsers.enter_context(launch_webkit(workdir, pulse_server=null_sink))
                pages.append(WebKitLessonPage.open(webdriver, url))
            return pages[-1]

        yield OtherBrowser(name, FIREFOX_MICROPHONE_HZ if name == "firefox" else MOCK_MICROPHONE_HUM_HZ, open_)
        for page in pages:
            with contextlib.suppress(BidiError, WebDriverError, TimeoutError, OSError):
                page.end_lesson_if_open()
