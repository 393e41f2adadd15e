"""The lesson page in headless Firefox (Debian's firefox-esr), driven over WebDriver BiDi (bidi.py).

Playwright drives only its own patched Firefox, so these tests start the stock browser themselves:
`launch_firefox` runs it with a fresh profile whose prefs give it a fake microphone (a sine tone of
`microphone_hz`) and let the page start audio without asking, plays its sound into the PulseAudio server
given, and connects a BiDi session.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bidi import BidiError, BidiSession, open_session
from browser_stack import free_port, run_process, wait_for
from scripted_page import CSP_RECORDER, ScriptedLessonPage, check_running

FIREFOX = Path("/usr/bin/firefox-esr")

# The prefs a student's Firefox would have after allowing the microphone and sound for the site.
FIREFOX_PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,  # the microphone is Firefox's generated tone
    "media.navigator.permission.disabled": True,  # granted without the permission prompt
    "media.autoplay.default": 0,  # sound allowed
    "media.autoplay.blocking_policy": 0,
}


@contextlib.contextmanager
def launch_firefox(workdir: Path, *, pulse_server: str, microphone_hz: int) -> Iterator[BidiSession]:
    """Headless Firefox with a fresh profile under `workdir` and a BiDi session to it; the browser (its whole
    process group) is stopped at the end of the block, whatever happened in it."""
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    prefs = FIREFOX_PREFS | {"media.navigator.audio.fake_frequency": microphone_hz}
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in prefs.items()))
    args = [str(FIREFOX), "--headless", f"--remote-debugging-port={free_port()}", "--profile", str(profile),
            "--no-remote", "about:blank"]
    log = workdir / "firefox.log"
    with run_process(args, env=os.environ | {"PULSE_SERVER": pulse_server}, log=log) as firefox:
        url = wait_for(lambda: check_running(firefox.poll(), log) or _bidi_url(log), timeout=60,
                       what="Firefox's 'WebDriver BiDi listening on' line")
        with open_session(f"{url}/session") as session:
            yield session


def _bidi_url(log: Path) -> str | None:
    match = re.search(r"WebDriver BiDi listening on (ws://\S+)", log.read_text(errors="replace"))
    return match.group(1) if match else None


class FirefoxLessonPage(ScriptedLessonPage):
    """The lesson page in the browser's first tab; its console errors come as BiDi `log.entryAdded` events."""

    def __init__(self, session: BidiSession, context: str) -> None:
        self.session = session
        self.context = context  # the tab's browsing context id

    @classmethod
    def open(cls, session: BidiSession, url: str) -> FirefoxLessonPage:
        """The page at `url`, its CSP violations recorded from before its first script runs."""
        session.subscribe("log.entryAdded")
        context: str = session.command("browsingContext.getTree")["contexts"][0]["context"]
        session.command("script.addPreloadScript", {"functionDeclaration": f"() => {{ {CSP_RECORDER} }}"})
        session.command("browsingContext.navigate", {"context": context, "url": url, "wait": "complete"})
        return cls(session, context)

    @property
    def console_errors(self) -> list[str]:
        return [f"{entry['type']}: {entry['text']}"
                for entry in (event["params"] for event in self.session.events if event["method"] == "log.entryAdded")
                if entry.get("level") == "error"]

    def evaluate(self, expression: str) -> Any:
        result = self.session.command("script.evaluate", {
            "expression": f"(async () => JSON.stringify(await ({expression})))()",
            "target": {"context": self.context}, "awaitPromise": True, "resultOwnership": "none"})
        if result["type"] == "exception":
            raise BidiError(f"{expression!r} threw: {result['exceptionDetails']['text']}")
        value = result["result"]
        return None if value["type"] == "undefined" else json.loads(value["value"])

    def reload(self) -> None:
        self.session.command("browsingContext.reload", {"context": self.context, "wait": "complete"})

    def set_offline(self, offline: bool) -> None:
        """Take the tab's network away (its sockets fail, `offline` fires), or give it back."""
        self.session.command("emulation.setNetworkConditions", {
            "networkConditions": {"type": "offline"} if offline else None, "contexts": [self.context]})

    def go_to(self, url: str) -> None:
        self.session.command("browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"})

    def go_back(self) -> None:
        """Back in the tab's history; returns once the page gone back to has loaded (traverseHistory returns
        before)."""
        left = self.evaluate("location.href")
        self.session.command("browsingContext.traverseHistory", {"context": self.context, "delta": -1})
        wait_for(lambda: self._loaded_other_than(left), timeout=30, what="the page gone back to, loaded")

    def _loaded_other_than(self, url: str) -> bool:
        try:
            return self.evaluate(f"document.readyState === 'complete' && location.href !== {json.dumps(url)}") is True
        except BidiError:  # the page is being replaced
            return False

    def click(self, selector: str, *, text: str | None = None) -> None:
        found = self.session.command("script.evaluate", {
            "expression": self.find_element(selector, text), "target": {"context": self.context},
            "awaitPromise": False})
        element = found.get("result", {})
        if element.get("type") != "node":
            raise BidiError(f"no element {selector!r}" + (f" with text {text!r}" if text else ""))
        origin = {"type": "element", "element": {"sharedId": element["sharedId"]}}
        self.session.command("input.performActions", {"context": self.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
                        {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        keys = [action for char in text for action in ({"type": "keyDown", "value": char},
                                                       {"type": "keyUp", "value": char})]
        self.session.command("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": keys}]})
