"""The processes and pages the browser tests and tests/browser/measure.py drive.

`run_stack` starts the Realtime simulator and the app as two separate processes on free ports, the app
pointed at the simulator as if it were OpenAI, and waits until both answer; `run_simulator` and `run_app` are
its two halves, for a test that starts the app more than once (a killed instance and its replacement).
`LessonPage` opens the lesson page in headless Chromium with a WAV file as the microphone and reads the
page's test hook (`window.lessonDebug`, documented at the top of app/static/lesson-page.js).

Waiting is always a poll with a deadline on an observable condition (a port, /healthz, a file size,
a page value), never a sleep standing in for an event.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SAMPLE_RATE = 24_000
POLL_S = 0.05

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll `probe` until it returns something other than None/False; TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout}s waiting for {what}")
        time.sleep(POLL_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _listening_url(log: Path) -> str | None:
    match = re.search(r"listening on (ws://\S+)", log.read_text(errors="replace"))
    return match.group(1) if match else None


# The stack's METRICS_TOKEN: /healthz shows the open lessons only to its bearer.
METRICS_TOKEN = "browser-stack-metrics-token"


# The password of the stacks that run a teacher's desk: app_env={"TEACHER_PASSWORD": TEACHER_PASSWORD}.
TEACHER_PASSWORD = "browser-stack-teacher-password"


def http_json(url: str) -> dict[str, Any] | None:
    """The JSON body of a GET, or None while the server is not answering (any status is an answer)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body
    except urllib.error.HTTPError as exc:
        body = json.loads(exc.read())
        return body
    except OSError:
        return None


@dataclass(frozen=True)
class Stack:
    url: str
    record_dir: Path
    logs: tuple[Path, ...]
    app: subprocess.Popen[bytes]
    database: Path  # the app's lesson records (SQLite)

    def recordings(self) -> set[Path]:
        return set(self.record_dir.glob("connection-*.pcm"))

    def health(self) -> dict[str, Any]:
        body = http_json(f"{self.url}/healthz")
        assert body is not None, "the app stopped answering /healthz"
        return body

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
            for log in self.logs
        )


def teacher_api(stack: Stack, method: str, path: str, body: dict[str, str] | None = None) -> Any:
    """The teacher's JSON API of a stack started with `TEACHER_PASSWORD`."""
    request = urllib.request.Request(f"{stack.url}{path}", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"Authorization": f"Bearer {TEACHER_PASSWORD}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"null")


@dataclass(frozen=True)
class SimulatorProcess:
    url: str  # the ws:// URL it listens on
    record_dir: Path  # connection-<n>.pcm: each connection's appended audio
    log: Path


def _check_alive(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{log.read_text(errors='replace')}")


def _inherited_environment() -> dict[str, str]:
    """This process's environment without what would change the stack under a test's feet."""
    return {k: v for k, v in os.environ.items() if k not in {"LESSON_SECRET", "ALLOWED_ORIGINS", "PORT"}}


@contextlib.contextmanager
def run_process(args: Sequence[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`args` run from the repository with its output in `log`, leading a process group of its own; at the end
    of the block terminated, then past 15 s killed with the whole group (whatever it started, uvicorn's workers
    say), whatever happened in the block. One a test has already killed is only reaped, its group killed."""
    with log.open("wb") as out:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):  # nothing of the group is left
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def run_simulator(workdir: Path, *simulator_args: str) -> Iterator[SimulatorProcess]:
    """`python -m app.simulator` on a free port, recording into workdir/recordings, once it listens."""
    record_dir = workdir / "recordings"
    record_dir.mkdir(parents=True, exist_ok=True)
    log = workdir / "simulator.log"
    args = [sys.executable, "-m", "app.simulator", "--port", str(free_port()), "--record-dir", str(record_dir),
            *simulator_args]
    with run_process(args, env=_inherited_environment(), log=log) as simulator:
        # The simulator prints the URL it listens on; trust that line over the port we asked for.
        url = wait_for(lambda: _check_alive(simulator, log) or _listening_url(log),
                       timeout=30, what="the simulator's 'listening on' line")
        yield SimulatorProcess(url=url, record_dir=record_dir, log=log)


@contextlib.contextmanager
def run_app(simulator: SimulatorProcess, *, port: int, database: Path, log: Path,
            app_env: dict[str, str | None] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """The app as deployed (`python -m app`: its own server settings and connection guards) on
    127.0.0.1:`port` with its lesson records in the SQLite file `database`, pointed at `simulator` as if it
    were OpenAI, once /healthz answers; its environment has `app_env` on top of the
    stack's own (None: the variable is left out). Two of these in turn on one port and one database are an
    instance and its replacement."""
    env = _inherited_environment() | {
        "OPENAI_API_KEY": "sk-test-fake-key",
        "OPENAI_REALTIME_URL": simulator.url,
        # Every test and measurement starts a lesson from 127.0.0.1; the per-client limit is not under test.
        "LESSON_STARTS_PER_MINUTE": "1000",
        "DATABASE_URL": f"sqlite:///{database}",
        "METRICS_TOKEN": METRICS_TOKEN,
        "HOST": "127.0.0.1",
        "PORT": str(port),
    } | (app_env or {})
    env = {name: value for name, value in env.items() if value is not None}
    with run_process([sys.executable, "-m", "app"], env=env, log=log) as app:
        wait_for(lambda: _check_alive(app, log) or http_json(f"http://127.0.0.1:{port}/healthz"),
                 timeout=30, what="/healthz")
        yield app


@contextlib.contextmanager
def run_stack(workdir: Path, *simulator_args: str, app_env: dict[str, str | None] | None = None) -> Iterator[Stack]:
    """The simulator (`python -m app.simulator`) and the app (uvicorn) as processes, ready to use; the app's
    environment has `app_env` on top of the stack's own."""
    port, database, app_log = free_port(), workdir / "lessons.db", workdir / "app.log"
    with (run_simulator(workdir, *simulator_args) as simulator,
          run_app(simulator, port=port, database=database, log=app_log, app_env=app_env) as app):
        yield Stack(url=f"http://127.0.0.1:{port}", record_dir=simulator.record_dir, logs=(simulator.log, app_log),
                    app=app, database=database)


def make_wav(path: Path, *, rate: int, tone_hz: float | None, seconds: float = 10.0, pause_s: float = 0.0) -> Path:
    """A mono 16-bit WAV made with sox: a sine at half of full scale followed by `pause_s` of silence,
    or silence when tone_hz is None. Chromium's fake microphone plays it in a loop."""
    synth = ["synth", str(seconds), "sine", str(tone_hz), "gain", "-6"] if tone_hz else ["trim", "0", str(seconds)]
    pad = ["pad", "0", str(pause_s)] if pause_s else []
    subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", "-b", "16", str(path), *synth, *pad], check=True)
    return path


def launch_chromium(playwright: Playwright, microphone_wav: Path) -> Browser:
    """Headless Debian Chromium whose microphone plays `microphone_wav` in a loop."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={microphone_wav}",
        ],
    )


@dataclass
class LessonPage:
    """The lesson page in one browser tab, with what it logged as an error."""

    page: Page
    console_errors: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, browser: Browser, url: str, *, context_rate: int | None = None, processing: bool = True,
             test_config: dict[str, Any] | None = None, init_scripts: Sequence[str] = ()) -> LessonPage:
        """The page at `url`; `test_config` adds to window.lessonTestConfig, `init_scripts` run before the page's."""
        page = browser.new_page()
        lesson_page = cls(page)
        page.on("console", lesson_page._on_console)
        page.on("pageerror", lambda error: lesson_page.console_errors.append(f"pageerror: {error}"))
        config = {"sampleRate": context_rate, "processing": processing} | (test_config or {})
        page.add_init_script(f"window.lessonTestConfig = {json.dumps(config)};")
        page.add_init_script("""window.cspViolations = [];
            document.addEventListener("securitypolicyviolation",
                (event) => window.cspViolations.push(`${event.effectiveDirective} ${event.blockedURI}`));""")
        for script in init_scripts:
            page.add_init_script(script)
        page.goto(url)
        return lesson_page

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} at {message.location.get('url', '?')}")

    def start(self, name: str, level: str = "A1") -> None:
        self.page.get_by_label("Name").fill(name)
        self.page.get_by_label("Level").select_option(level)
        self.page.get_by_role("button", name="Start lesson").click()

    def csp_violations(self) -> list[str]:
        """Every Content-Security-Policy violation the page reported: 'directive blocked-uri'."""
        violations: list[str] = self.page.evaluate("window.cspViolations")
        return violations

    def debug(self, key: str) -> Any:
        return self.page.evaluate("(key) => window.lessonDebug[key]", key)

    def wait_debug(self, condition: str, *, timeout_s: float = 30) -> Any:
        """Wait until the JS expression `condition` over `d` (= window.lessonDebug) is truthy; its value."""
        handle = self.page.wait_for_function(
            f"() => {{ const d = window.lessonDebug; return ({condition}) || false; }}", timeout=timeout_s * 1000
        )
        return handle.json_value()

    def wait_greeting_played(self, *, timeout_s: float = 30) -> str:
        """The id of the first tutor item, once the playback worklet has rendered all of it."""
        item_id: str = self.wait_debug(
            "Object.keys(d.durations).find((id) => d.played[id] >= d.durations[id] * 24)", timeout_s=timeout_s
        )
        return item_id

    def wait_student_spoke(self) -> list[str]:
        """Once the transcript shows a turn of the student's: the text of every turn so far."""
        self.page.wait_for_function("() => document.querySelectorAll('#transcript .turn--student').length > 0",
                                    timeout=60_000)
        return self.page.locator("#transcript .turn").all_inner_texts()


OpenPage = Callable[..., LessonPage]


def wait_recording(stack: Stack, before: set[Path], *, seconds: float, timeout_s: float = 30) -> np.ndarray:
    """The microphone audio of the connection opened after `before`, once it holds `seconds` of audio."""
    path: Path = wait_for(lambda: next(iter(stack.recordings() - before), None), timeout=timeout_s,
                          what="the simulator's recording of the new connection")
    wanted = int(seconds * SAMPLE_RATE) * 2
    wait_for(lambda: path.stat().st_size >= wanted, timeout=timeout_s, what=f"{seconds}s of recorded microphone audio")
    data = path.read_bytes()
    return np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2").astype(np.float64)


def spectrum_db(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frequencies, level in dB relative to full scale) of a Hann-windowed block at 24 kHz."""
    window = np.hanning(len(samples))
    magnitude = np.abs(np.fft.rfft(samples * window)) / (window.sum() / 2) / 32768
    return np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE), 20 * np.log10(np.maximum(magnitude, 1e-12))


def dominant_hz(samples: np.ndarray) -> float:
    freqs, levels = spectrum_db(samples)
    return float(freqs[int(np.argmax(levels))])
