"""Fixtures for the browser tests: Chromium, the app + simulator processes, and lesson pages.

Without /usr/bin/chromium the tests are skipped on a developer machine and fail in CI (env CI set),
where `.ci/run` installs it: the audio path must be proven on every CI run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_stack import CHROMIUM, LessonPage, OpenPage, Stack, launch_chromium, make_wav, run_stack
from playwright.sync_api import Browser, Playwright, sync_playwright
from playwright.sync_api import Error as PlaywrightError

_MISSING = f"{CHROMIUM} is missing: apt-get install chromium"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # In CI the missing browser is a failure (see the `chromium` fixture), never a skip.
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        for item in items:
            if item.path.is_relative_to(Path(__file__).parent):
                item.add_marker(pytest.mark.skipif(True, reason=_MISSING))


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(_MISSING)
    return CHROMIUM


@pytest.fixture
def playwright(chromium: Path) -> Iterator[Playwright]:
    # Per test: the sync API runs an event loop in this thread while it is open, and pytest-asyncio's
    # tests elsewhere in the suite cannot start theirs inside it.
    with sync_playwright() as instance:
        yield instance


@pytest.fixture(scope="session")
def stack(chromium: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
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
