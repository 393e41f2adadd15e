"""The lesson page in WebKit (Debian's WebKitGTK MiniBrowser, the engine of Safari), driven over WebDriver
classic by WebKitWebDriver (webdriver.py).

WebKitGTK has no headless mode, so `launch_webkit` runs the driver under `xvfb-run` (a virtual X display of
its own), with WebKit's mock capture devices as the microphone (a 150 Hz hum under a 1.5 kHz beep each
second), granted without a prompt in a WebDriver session, and sound allowed without a gesture; it plays into
the PulseAudio server given. WebKitGTK has no BiDi, and in automation mode MiniBrowser's console never reaches
its output (--enable-write-console-messages-to-stdout does, outside it): `WebKitLessonPage` records the
page's errors in the page itself.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from browser_stack import free_port, run_process, wait_for
from scripted_page import CSP_RECORDER, ScriptedLessonPage, check_running
from webdriver import WebDriverError, WebDriverSession, open_webdriver_session, request

WEBKIT_WEBDRIVER = Path("/usr/bin/WebKitWebDriver")
XVFB_RUN = Path("/usr/bin/xvfb-run")
# The pitch of the mock microphone's steady hum (WebKit's MockRealtimeAudioSource).
MOCK_MICROPHONE_HUM_HZ = 150
# WebDriver's name for an element reference in JSON.
ELEMENT_KEY = "element-6066-11e4-a52e-4f735466cecf"
# What the page logs as an error from the moment it is installed: console.error, uncaught exceptions and
# rejections (CSP violations: scripted_page.CSP_RECORDER).
ERROR_RECORDER = """window.consoleErrors = [];
const consoleError = console.error.bind(console);
console.error = (...args) => { window.consoleErrors.push(args.map(String).join(" ")); consoleError(...args); };
window.addEventListener("error", (event) => window.consoleErrors.push(`uncaught: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => window.consoleErrors.push(`unhandled: ${event.reason}`));"""


def minibrowser() -> Path | None:
    found = sorted(glob.glob("/usr/lib/*/webkit2gtk-4.*/MiniBrowser"))
    return Path(found[-1]) if found else None


@contextlib.contextmanager
def launch_webkit(workdir: Path, *, pulse_server: str) -> Iterator[WebDriverSession]:
    """MiniBrowser on a virtual display under WebKitWebDriver and a session to it; the driver, the display and
    the browser (one process group) are stopped at the end of the block, whatever happened in it."""
    binary = minibrowser()
    assert binary is not None, "no MiniBrowser (Debian's libwebkit2gtk-4.1-0)"
    workdir.mkdir(parents=True)
    port, log = free_port(), workdir / "webkit.log"
    args = [str(XVFB_RUN), "--auto-servernum", str(WEBKIT_WEBDRIVER), f"--port={port}"]
    with run_process(args, env=os.environ | {"PULSE_SERVER": pulse_server}, log=log) as driver:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: check_running(driver.poll(), log) or _ready(url), timeout=60, what="WebKitWebDriver")
        capabilities = {"webkitgtk:browserOptions": {"binary": str(binary), "args": [
            "--automation", "--enable-media-stream=true", "--enable-mock-capture-devices=true",
            "--enable-webaudio=true", "--autoplay-policy=allow"]}}
        with open_webdriver_session(url, capabilities) as session:
            yield session


def _ready(url: str) -> bool:
    try:
        return bool(request("GET", f"{url}/status")["ready"])
    except OSError:
        return False  # not listening yet


class WebKitLessonPage(ScriptedLessonPage):
    """The lesson page in MiniBrowser's window."""

    def __init__(self, session: WebDriverSession) -> None:
        self.session = session
        self.earlier_errors: list[str] = []  # those of the pages this tab showed before this one

    @classmethod
    def open(cls, session: WebDriverSession, url: str) -> WebKitLessonPage:
        """The page at `url`, its errors and CSP violations recorded from the end of its load on: WebDriver
        classic runs no script before the page's (those of the load are Chromium's and Firefox's to catch)."""
        session.command("POST", "/url", {"url": url})
        page = cls(session)
        page.record_errors()
        return page

    def record_errors(self) -> None:
        """Record the page's errors and CSP violations, unless it already does (a page back from the back-forward
        cache)."""
        self.evaluate(f"(() => {{ if (window.consoleErrors) return;\n{ERROR_RECORDER}\n{CSP_RECORDER} }})()")

    def keep_errors(self) -> None:
        """Move what the page recorded so far here, before it is replaced or put away."""
        self.earlier_errors += self.evaluate("window.consoleErrors.splice(0)")

    def reload(self) -> None:
        self.keep_errors()
        self.session.command("POST", "/refresh", {})  # returns once the new page has loaded
        self.record_errors()

    def go_to(self, url: str) -> None:
        self.keep_errors()
        self.session.command("POST", "/url", {"url": url})
        self.record_errors()

    def go_back(self) -> None:
        self.keep_errors()
        self.session.command("POST", "/back", {})
        self.record_errors()

    @property
    def console_errors(self) -> list[str]:
        errors: list[str] = self.evaluate("window.consoleErrors")
        return self.earlier_errors + errors

    def evaluate(self, expression: str) -> Any:
        try:
            result = self.session.execute(f"return (async () => JSON.stringify(await ({expression})))();")
        except WebDriverError as exc:
            raise WebDriverError(f"{expression!r} threw: {exc}") from exc
        return None if result is None else json.loads(result)

    def click(self, selector: str, *, text: str | None = None) -> None:
        element = self.session.execute(f"return {self.find_element(selector, text)};")
        if not isinstance(element, dict) or ELEMENT_KEY not in element:
            raise WebDriverError(f"no element {selector!r}" + (f" with text {text!r}" if text else ""))
        self.session.command("POST", f"/element/{element[ELEMENT_KEY]}/click", {})

    def type_into(self, selector: str, text: str) -> None:
        self.session.command("POST", f"/element/{self.session.find(selector)}/value", {"text": text})
