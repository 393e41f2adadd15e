"""The lesson page in headless Firefox (Debian's firefox-esr), driven over WebDriver BiDi (bidi.py).

Playwright drives only its own patched Firefox, so these tests start the stock browser themselves:
`launch_firefox` runs it with a fresh profile whose prefs give it a fake microphone (a sine tone of
`microphone_hz`; 0 is silence) and let the page start audio without asking, and connects a BiDi session.
Firefox plays sound only through an audio server: `run_null_sink` starts a PulseAudio daemon of the test's
own whose one sink plays into nothing, at the speed of a real device. `FirefoxLessonPage` is LessonPage's
counterpart: the same test hook (`window.lessonDebug`), read with `script.evaluate`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bidi import BidiError, BidiSession, open_session
from browser_stack import free_port, run_process, wait_for

FIREFOX = Path("/usr/bin/firefox-esr")
PULSEAUDIO = Path("/usr/bin/pulseaudio")

# The prefs a student's Firefox would have after allowing the microphone and sound for the site.
FIREFOX_PREFS: dict[str, object] = {
    "media.navigator.streams.fake": True,  # the microphone is Firefox's generated tone
    "media.navigator.permission.disabled": True,  # granted without the permission prompt
    "media.autoplay.default": 0,  # sound allowed
    "media.autoplay.blocking_policy": 0,
}


@contextlib.contextmanager
def run_null_sink(workdir: Path) -> Iterator[str]:
    """A PulseAudio daemon whose only sink discards what it plays; its server address for PULSE_SERVER."""
    socket = workdir / "native"
    args = [str(PULSEAUDIO), "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "-n",
            "--log-target=stderr", f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
            "--load=module-null-sink sink_name=speakers"]
    # HOME and the runtime dir keep its cookie and state out of the user's.
    env = os.environ | {"HOME": str(workdir), "XDG_RUNTIME_DIR": str(workdir), "PULSE_RUNTIME_PATH": str(workdir)}
    log = workdir / "pulseaudio.log"
    with run_process(args, env=env, log=log) as daemon:
        wait_for(lambda: _check_running(daemon.poll(), log) or socket.exists(), timeout=30,
                 what="PulseAudio's socket")
        yield f"unix:{socket}"


def _check_running(exit_code: int | None, log: Path) -> None:
    if exit_code is not None:
        raise RuntimeError(f"exited with {exit_code}:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def launch_firefox(workdir: Path, *, pulse_server: str, microphone_hz: int) -> Iterator[BidiSession]:
    """Headless Firefox with a fresh profile under `workdir` and a BiDi session to it; the browser (its whole
    process group) is stopped at the end of the block, whatever happened in it."""
    profile = workdir / "profile"
    profile.mkdir(parents=True)
    prefs = FIREFOX_PREFS | {"media.navigator.audio.fake_frequency": microphone_hz}
    (profile / "user.js").write_text("".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n"
                                             for k, v in prefs.items()))
    port = free_port()
    args = [str(FIREFOX), "--headless", f"--remote-debugging-port={port}", "--profile", str(profile), "--no-remote",
            "about:blank"]
    log = workdir / "firefox.log"
    with run_process(args, env=os.environ | {"PULSE_SERVER": pulse_server}, log=log) as firefox:
        url = wait_for(lambda: _check_running(firefox.poll(), log) or _bidi_url(log), timeout=60,
                       what="Firefox's 'WebDriver BiDi listening on' line")
        with open_session(f"{url}/session") as session:
            yield session


def _bidi_url(log: Path) -> str | None:
    match = re.search(r"WebDriver BiDi listening on (ws://\S+)", log.read_text(errors="replace"))
    return match.group(1) if match else None


@dataclass
class FirefoxLessonPage:
    """The lesson page in the browser's first tab, with the errors its console logged."""

    session: BidiSession
    context: str  # the tab's browsing context id

    @classmethod
    def open(cls, session: BidiSession, url: str, *, test_config: dict[str, Any] | None = None) -> FirefoxLessonPage:
        """The page at `url`; `test_config` is window.lessonTestConfig. CSP violations are recorded from the start."""
        session.subscribe("log.entryAdded")
        context: str = session.command("browsingContext.getTree")["contexts"][0]["context"]
        session.command("script.addPreloadScript", {"functionDeclaration": f"""() => {{
            window.lessonTestConfig = {json.dumps(test_config or {})};
            window.cspViolations = [];
            document.addEventListener("securitypolicyviolation",
                (event) => window.cspViolations.push(`${{event.effectiveDirective}} ${{event.blockedURI}}`));
        }}"""})
        session.command("browsingContext.navigate", {"context": context, "url": url, "wait": "complete"})
        return cls(session, context)

    @property
    def console_errors(self) -> list[str]:
        """Every error the page's console logged (console.error and uncaught exceptions), with where."""
        return [f"{entry['type']}: {entry['text']}"
                for entry in (event["params"] for event in self.session.events if event["method"] == "log.entryAdded")
                if entry.get("level") == "error"]

    def evaluate(self, expression: str) -> Any:
        """The value of the JS `expression` (awaited when a promise), as JSON would carry it."""
        result = self.session.command("script.evaluate", {
            "expression": f"(async () => JSON.stringify(await ({expression})))()",
            "target": {"context": self.context}, "awaitPromise": True, "resultOwnership": "none"})
        if result["type"] == "exception":
            raise BidiError(f"{expression!r} threw: {result['exceptionDetails']['text']}")
        value = result["result"]
        return None if value["type"] == "undefined" else json.loads(value["value"])

    def debug(self, key: str) -> Any:
        return self.evaluate(f"window.lessonDebug[{json.dumps(key)}]")

    def wait_for(self, expression: str, *, timeout_s: float = 30, what: str | None = None) -> Any:
        """Poll the JS `expression` until it is truthy; its value."""
        return wait_for(lambda: self.evaluate(f"({expression}) || null"), timeout=timeout_s, what=what or expression)

    def wait_debug(self, condition: str, *, timeout_s: float = 30) -> Any:
        """Wait until the JS expression `condition` over `d` (= window.lessonDebug) is truthy; its value."""
        return self.wait_for(f"((d) => ({condition}))(window.lessonDebug)", timeout_s=timeout_s,
                             what=f"lessonDebug: {condition}")

    def wait_greeting_played(self, *, timeout_s: float = 30) -> str:
        """The id of the first tutor item, once the playback worklet has rendered all of it."""
        item_id: str = self.wait_debug(
            "Object.keys(d.durations).find((id) => d.played[id] >= d.durations[id] * 24)", timeout_s=timeout_s)
        return item_id

    def texts(self, selector: str) -> list[str]:
        """The rendered text of every element `selector` matches."""
        texts: list[str] = self.evaluate(f"[...document.querySelectorAll({json.dumps(selector)})]"
                                         ".map((element) => element.innerText)")
        return texts

    def csp_violations(self) -> list[str]:
        """Every Content-Security-Policy violation the page reported: 'directive blocked-uri'."""
        violations: list[str] = self.evaluate("window.cspViolations")
        return violations

    def start(self, name: str, level: str = "A1") -> None:
        """Fill in the form as the student does and press Start lesson."""
        self.click("#name")
        self.type_text(name)
        self.evaluate(f"""(() => {{ const level = document.getElementById("level");
            level.value = {json.dumps(level)}; level.dispatchEvent(new Event("change", {{bubbles: true}})); }})()""")
        self.click_button("Start lesson")

    def click_button(self, name: str) -> None:
        """Click the visible button whose text is `name`."""
        self.click("button", text=name)

    def click(self, selector: str, *, text: str | None = None) -> None:
        """A real pointer click (a user gesture) on the first visible element `selector` matches (with `text`)."""
        found = self.session.command("script.evaluate", {
            "expression": f"[...document.querySelectorAll({json.dumps(selector)})].find((element) => "
                          f"element.checkVisibility() && ({json.dumps(text)} === null || "
                          f"element.innerText.trim() === {json.dumps(text)})) ?? null",
            "target": {"context": self.context}, "awaitPromise": False})
        element = found.get("result", {})
        if element.get("type") != "node":
            raise BidiError(f"no element {selector!r}" + (f" with text {text!r}" if text else ""))
        origin = {"type": "element", "element": {"sharedId": element["sharedId"]}}
        self.session.command("input.performActions", {"context": self.context, "actions": [{
            "type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"},
            "actions": [{"type": "pointerMove", "x": 0, "y": 0, "origin": origin},
                        {"type": "pointerDown", "button": 0}, {"type": "pointerUp", "button": 0}]}]})

    def type_text(self, text: str) -> None:
        """Type `text` with the keyboard into the focused element."""
        keys = [action for char in text for action in ({"type": "keyDown", "value": char},
                                                       {"type": "keyUp", "value": char})]
        self.session.command("input.performActions", {"context": self.context, "actions": [
            {"type": "key", "id": "keyboard", "actions": keys}]})


OpenFirefox = Callable[..., FirefoxLessonPage]
