"""The lesson page in a browser Playwright cannot drive (Firefox, WebKit), read through the page's test hook.

`ScriptedLessonPage` is LessonPage's counterpart for those browsers: each driver (firefox.py over WebDriver
BiDi, webkit.py over WebDriver classic) supplies how to evaluate a JS expression, click, type, and what the
console logged as an error; the waits and the student's actions are written once, here. Waiting is a poll of
the page with a deadline, never a sleep. `run_null_sink` gives both browsers somewhere to play sound.
"""

from __future__ import annotations

import contextlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from browser_stack import run_process, wait_for

PULSEAUDIO = Path("/usr/bin/pulseaudio")
# The relay opens the microphone once the greeting has played to within this of its end (docs/protocol.md).
# These browsers' fake microphones play a steady tone, which barges in at that moment: the page drops the rest.
GREETING_HEARD_MS = 40
# Records CSP violations: installed before the page's scripts where the driver can, else right after load.
CSP_RECORDER = """window.cspViolations = window.cspViolations || [];
document.addEventListener("securitypolicyviolation",
    (event) => window.cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`));"""


def check_running(exit_code: int | None, log: Path) -> None:
    """Raise, with the process's output, when it has exited (exit_code from Popen.poll())."""
    if exit_code is not None:
        raise RuntimeError(f"exited with {exit_code}:\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def run_null_sink(workdir: Path) -> Iterator[str]:
    """A PulseAudio daemon whose only sink plays into nothing at a real device's pace; its address for
    PULSE_SERVER. Firefox starts no sound without an audio server (AudioContext.resume() never settles)."""
    socket = workdir / "native"
    args = [str(PULSEAUDIO), "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no", "-n",
            "--log-target=stderr", f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
            "--load=module-null-sink sink_name=speakers"]
    # HOME and the runtime dir keep its cookie and state out of the user's.
    env = os.environ | {"HOME": str(workdir), "XDG_RUNTIME_DIR": str(workdir), "PULSE_RUNTIME_PATH": str(workdir)}
    log = workdir / "pulseaudio.log"
    with run_process(args, env=env, log=log) as daemon:
        wait_for(lambda: check_running(daemon.poll(), log) or socket.exists(), timeout=30,
                 what="PulseAudio's socket")
        yield f"unix:{socket}"


class ScriptedLessonPage(ABC):
    """The lesson page in one browser tab."""

    @abstractmethod
    def evaluate(self, expression: str) -> Any:
        """The value of the JS `expression` (awaited when a promise), as JSON would carry it."""

    @abstractmethod
    def click(self, selector: str, *, text: str | None = None) -> None:
        """A real click (a user gesture) on the first visible element `selector` matches (whose text is `text`)."""

    @abstractmethod
    def type_into(self, selector: str, text: str) -> None:
        """Type `text` with the keyboard into the element `selector` matches."""

    @abstractmethod
    def reload(self) -> None:
        """Reload the page as the student does; returns once the new page has loaded."""

    @abstractmethod
    def go_to(self, url: str) -> None:
        """Leave the page for `url` in the same tab, as following a link does; returns once it has loaded."""

    @abstractmethod
    def go_back(self) -> None:
        """Go back in the tab's history, as the Back button does."""

    @property
    @abstractmethod
    def console_errors(self) -> list[str]:
        """Every error the page's console logged (console.error, uncaught exceptions, CSP refusals)."""

    def debug(self, key: str) -> Any:
        return self.evaluate(f"window.lessonDebug[{json.dumps(key)}]")

    def wait_for(self, expression: str, *, timeout_s: float = 30, what: str | None = None) -> Any:
        """Poll the JS `expression` until it is truthy; its value."""
        return wait_for(lambda: self.evaluate(f"({expression}) || null"), timeout=timeout_s, what=what or expression)

    def wait_debug(self, condition: str, *, timeout_s: float = 30) -> Any:
        """Wait until the JS expression `condition` over `d` (= window.lessonDebug) is truthy; its value. The
        TimeoutError shows lessonDebug as it was then."""
        try:
            return self.wait_for(f"((d) => ({condition}))(window.lessonDebug)", timeout_s=timeout_s,
                                 what=f"lessonDebug: {condition}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; lessonDebug = {self.evaluate('window.lessonDebug')}") from exc

    def wait_played(self, item_id: str, *, timeout_s: float = 30) -> None:
        """Once the playback worklet has rendered all of the tutor item `item_id`."""
        self.wait_debug(f"d.played[{item_id!r}] >= d.durations[{item_id!r}] * 24", timeout_s=timeout_s)

    def wait_greeting_played(self, *, timeout_s: float = 30) -> str:
        """The id of the first tutor item, once the playback worklet has rendered it to within GREETING_HEARD_MS
        of its end."""
        item_id: str = self.wait_debug(
            f"Object.keys(d.durations).find((id) => d.played[id] >= (d.durations[id] - {GREETING_HEARD_MS}) * 24)",
            timeout_s=timeout_s)
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
        self.type_into("#name", name)
        # Choosing an option is not typing or a click the drivers share: set it as the page would see it.
        self.evaluate(f"""(() => {{ const level = document.getElementById("level");
            level.value = {json.dumps(level)}; level.dispatchEvent(new Event("change", {{bubbles: true}})); }})()""")
        self.click_button("Start lesson")

    def click_button(self, name: str) -> None:
        """Click the visible button whose text is `name`."""
        self.click("button", text=name)

    def end_lesson_if_open(self) -> None:
        """End the page's lesson, if it has one: a closed tab keeps its lesson for the resume grace."""
        self.evaluate("typeof lesson !== 'undefined' && lesson && lesson.end()")

    @staticmethod
    def find_element(selector: str, text: str | None) -> str:
        """A JS expression: the first visible element `selector` matches whose text is `text` (any if None)."""
        return (f"[...document.querySelectorAll({json.dumps(selector)})].find((element) => "
                f"element.checkVisibility() && ({json.dumps(text)} === null || "
                f"element.innerText.trim() === {json.dumps(text)})) ?? null")


@dataclass(frozen=True)
class OtherBrowser:
    """A browser Playwright cannot drive, as the tests see it."""

    name: str
    microphone_hz: int  # the pitch its fake microphone plays, steadily
    open: Callable[[str], ScriptedLessonPage]  # open(url): the lesson page in a new browser
