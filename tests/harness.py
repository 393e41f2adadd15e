"""The integration harness: the app served by uvicorn on a real port, and the page side of a lesson; and
`python -m app` as its own process, for what only a real process shows (signals, workers, the drain).

Servers in the test's process listen on sockets bound to port 0 before they start, so a client can connect at
once: the kernel queues the connection until the server accepts it. Nothing here waits on time but the
readiness poll of a served process, which binds its port itself (as a load balancer polls it).

A process a test starts leads a process group of its own (`process_in_own_group`), and when the test is done
with it, however it ends, the whole group is stopped: a supervisor's workers never outlive the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import signal
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import uvicorn
from sqlalchemy import select
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from app.main import create_app, server_config, shutdown_worst_case_seconds
from app.pacing import REAL_TIME_BYTES_PER_S
from app.settings import Settings
from app.simulator import RealtimeSimulator
from app.store.database import create_engine, database_url, session_factory
from app.store.models import Lesson, Turn

REPO_ROOT = Path(__file__).resolve().parent.parent
FAKE_KEY = "sk-test-fake-key-not-real"
# A real microphone sends in real time; the relay drops audio that runs more than a burst ahead of it.
MICROPHONE_LEAD_S = 0.5


def bound_socket(send_buffer: int | None = None) -> socket.socket:
    """A listening socket on a free port; `send_buffer` (SO_SNDBUF) is inherited by every accepted socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@dataclass
class AppServer:
    base_url: str
    ws_url: str
    app: Any
    server: uvicorn.Server

    def lesson_url(self, **query: str) -> str:
        return f"{self.ws_url}/ws/lesson?{urlencode(query)}"


@asynccontextmanager
async def serve_app(
    settings: Settings, log_stream: io.StringIO | None = None, *, send_buffer: int | None = None
) -> AsyncIterator[AppServer]:
    """The app for `settings`, served on a free port until the block ends, logging JSON to `log_stream`."""
    app = create_app(settings, log_stream=log_stream)
    sock = bound_socket(send_buffer)
    port = sock.getsockname()[1]
    config = server_config(app, settings, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield AppServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", app, server)
    finally:
        server.should_exit = True
        await task
        sock.close()


def relay_settings(upstream_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "openai_api_key": FAKE_KEY, "openai_realtime_url": upstream_url, "log_format": "json",
        "log_level": "debug", "upstream_timeout_seconds": 5, "lesson_starts_per_minute": 1000,
    }
    return Settings(**(values | overrides))


SimulatorWith = Callable[..., RealtimeSimulator]


@asynccontextmanager
async def relay_for(
    simulator: RealtimeSimulator, log_stream: io.StringIO, **overrides: Any
) -> AsyncIterator[AppServer]:
    async with serve_app(relay_settings(simulator.url, **overrides), log_stream) as server:
        yield server


@dataclass
class LessonClient:
    """The browser side of a lesson: every frame received, kept in order."""

    ws: ClientConnection
    messages: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    audio_frames: int = 0
    _audio_started_at: float | None = None
    _audio_sent_s: float = 0.0

    async def receive(self) -> dict[str, Any] | bytes:
        frame = await self.ws.recv()
        if isinstance(frame, bytes):
            self.audio += frame
            self.audio_frames += 1
            return frame
        message: dict[str, Any] = json.loads(frame)
        self.messages.append(message)
        return message

    async def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Read frames until a JSON message satisfies `predicate`; return it."""
        while True:
            frame = await self.receive()
            if isinstance(frame, dict) and predicate(frame):
                return frame

    async def until_type(self, message_type: str, **fields: Any) -> dict[str, Any]:
        return await self.until(lambda m: m["type"] == message_type and all(m.get(k) == v for k, v in fields.items()))

    async def send_audio(self, frame: bytes) -> None:
        """Send one microphone frame no faster than it would be spoken: after a head start of
        `MICROPHONE_LEAD_S`, the audio sent never runs ahead of the time since the first frame."""
        loop = asyncio.get_running_loop()
        if self._audio_started_at is None:
            self._audio_started_at = loop.time()
        ahead = self._audio_sent_s - (loop.time() - self._audio_started_at) - MICROPHONE_LEAD_S
        if ahead > 0:
            await asyncio.sleep(ahead)  # the microphone's own pace, not a synchronisation
        await self.ws.send(frame)
        self._audio_sent_s += len(frame) / REAL_TIME_BYTES_PER_S

    async def send_json(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def hear_greeting(self) -> dict[str, Any]:
        """Take the greeting to its end and report it played, as the page does; returns `audio.done`."""
        done = await self.until_type("audio.done")
        await self.send_json({"type": "playback", "item_id": done["item_id"], "played_ms": done["duration_ms"]})
        await self.until(lambda m: m["type"] == "status" and m["state"] == "listening")
        return done

    async def drain_until_closed(self) -> None:
        """Read everything left until the relay closes the socket."""
        try:
            while True:
                await self.receive()
        except ConnectionClosed:
            return


@asynccontextmanager
async def open_lesson(url: str, **connect_kwargs: Any) -> AsyncIterator[LessonClient]:
    async with connect(url, max_size=None, **connect_kwargs) as ws:
        yield LessonClient(ws)


def tutor_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Client or server events without the lesson's feedback (its out-of-band response.create, created and done)."""
    return [event for event in events if not (event.get("response") or {}).get("metadata")]


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines the app has written to `stream` so far."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]


def logged(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event` written to `stream` so far."""
    return [line for line in log_lines(stream) if line.get("event") == event]


# ---- what the page's microphone sends, and what the page is told ---------------------------------------


FRAME_MS = 20
FRAME_SAMPLES = 24 * FRAME_MS


def tone_frame(frequency_hz: float = 300.0, amplitude: int = 20_000, frame_index: int = 0) -> bytes:
    """20 ms of a loud 300 Hz sine, PCM16 LE 24 kHz: speech to the simulator's energy VAD."""
    start = frame_index * FRAME_SAMPLES
    samples = (round(amplitude * math.sin(2 * math.pi * frequency_hz * (start + n) / 24_000))
               for n in range(FRAME_SAMPLES))
    return struct.pack(f"<{FRAME_SAMPLES}h", *samples)


LOUD = [tone_frame(frame_index=i) for i in range(50)]
SILENCE = bytes(2 * FRAME_SAMPLES)
# The relay asks for server VAD with 700 ms of silence to end a turn; 1 s of it always does.
END_OF_TURN_FRAMES = 50


async def speak(page: LessonClient, frames: int) -> None:
    """Send `frames` frames of 20 ms of loud tone from the page's microphone, at the pace it is spoken."""
    for i in range(frames):
        await page.send_audio(LOUD[i % len(LOUD)])


async def pause(page: LessonClient, frames: int) -> None:
    for _ in range(frames):
        await page.send_audio(SILENCE)


def of_type(events: Iterable[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("type") == event_type]


async def closed_with(page: LessonClient) -> int | None:
    """Read what is left until the relay closes the page's socket; the close code it used."""
    await page.drain_until_closed()
    return page.ws.close_code


def plain_words(message: str) -> bool:
    """A sentence a student can read: words, no snake_case codes, no exception text."""
    return len(message.split()) >= 5 and "_" not in message and "Error" not in message


# ---- python -m app as its own process ------------------------------------------------------------------


def free_port() -> int:
    """A port free at this moment, for a server in another process (which binds it itself)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ProcessOutput:
    """The JSON lines a subprocess writes, collected as they come; `until` awaits one."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[dict[str, Any]] = []
        self.text: list[str] = []
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._collect(stream))

    async def _collect(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace")
            async with self._changed:
                self.text.append(line)
                if line.startswith("{"):
                    self.lines.append(orjson.loads(line))
                self._changed.notify_all()

    async def until(self, predicate: Callable[[list[dict[str, Any]]], bool]) -> None:
        async with asyncio.timeout(30), self._changed:
            await self._changed.wait_for(lambda: predicate(self.lines) or self._task.done())
        assert predicate(self.lines), "".join(self.text)

    def of(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("event") == event]

    async def finished(self) -> None:
        await self._task


# After SIGKILL, how long a process group may take to be gone (its processes are not all ours to reap).
GROUP_GONE_WITHIN_S = 10


def running_in_group(pgid: int) -> list[int]:
    """The processes of process group `pgid` still running (a zombie holds no port and no CPU)."""
    running = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):  # gone meanwhile
            # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses, so read after the last ')'.
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
            if int(pgrp) == pgid and state not in ("Z", "X"):
                running.append(int(stat.parent.name))
    return running


async def process_ended(pid: int) -> None:
    """Return once process `pid`, a child of this process or not, has ended."""
    try:
        handle = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended = asyncio.Event()
    loop.add_reader(handle, ended.set)  # a pidfd is readable once its process has ended
    try:
        await ended.wait()
    finally:
        loop.remove_reader(handle)
        os.close(handle)


async def stop_group(process: asyncio.subprocess.Process, grace_s: float) -> None:
    """Stop `process`, started with `start_new_session=True`, and everything it started: SIGTERM while it runs
    and up to `grace_s` for it to exit, then SIGKILL to its whole process group (a supervisor's workers stay
    in it even when the supervisor alone was killed); return once nothing of the group runs."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        # Not `wait()`: it returns only once the pipes are closed too, which its workers hold open.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process_ended(process.pid), grace_s)
    with contextlib.suppress(ProcessLookupError):  # nothing of the group is left
        os.killpg(process.pid, signal.SIGKILL)
    async with asyncio.timeout(GROUP_GONE_WITHIN_S):
        for pid in running_in_group(process.pid):
            await process_ended(pid)
        await process.wait()


def app_stop_grace_s(environment: Mapping[str, str]) -> float:
    """How long `python -m app` run with `environment` may take to exit after SIGTERM, by its own bound, and
    two seconds more: past it, it is stuck."""
    configured = environment.get("SHUTDOWN_GRACE_SECONDS")
    grace_s = float(configured) if configured else Settings.model_fields["shutdown_grace_seconds"].default
    return shutdown_worst_case_seconds(grace_s) + 2


@asynccontextmanager
async def process_in_own_group(*command: str, grace_s: float, **options: Any,
                               ) -> AsyncIterator[asyncio.subprocess.Process]:
    """`command` (with `asyncio.create_subprocess_exec`'s `options`) as the leader of a process group of its own
    until the block ends, then stopped with everything it started (`stop_group`)."""
    process = await asyncio.create_subprocess_exec(*command, start_new_session=True, **options)
    try:
        yield process
    finally:
        await stop_group(process, grace_s)


@dataclass
class AppProcess:
    """`python -m app` running as its own process: its output as it comes, and the port it serves."""

    process: asyncio.subprocess.Process
    output: ProcessOutput
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def until_ready(self) -> None:
        """Poll /healthz until it answers 200 (a readiness poll with a deadline, as a load balancer does)."""
        give_up = time.monotonic() + 20
        async with httpx.AsyncClient() as http:
            while True:
                assert self.process.returncode is None, f"python -m app exited: {''.join(self.output.text)}"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/healthz")).status_code == 200:
                        return
                assert time.monotonic() < give_up, f"python -m app never became ready: {''.join(self.output.text)}"
                await asyncio.sleep(0.1)

    async def until_workers_started(self, count: int) -> None:
        """Until `count` workers (WEB_CONCURRENCY) have logged their start."""
        await self.output.until(lambda lines: len([line for line in lines
                                                   if line.get("event") == "Application startup complete."]) == count)

    async def exited(self, timeout_s: float) -> int:
        """The exit code once the process has exited (within `timeout_s`) and all its output is read."""
        code = await asyncio.wait_for(self.process.wait(), timeout_s)
        await self.output.finished()
        return code


@asynccontextmanager
async def app_process(upstream_url: str, database_url: str, *, uvicorn_cli: bool = False,
                      **environment: str | None) -> AsyncIterator[AppProcess]:
    """`python -m app` against `upstream_url` on a free port (JSON logs at info, a 5 s drain, `environment` on
    top, None unsetting a variable) until the block ends; then stopped with its workers (`stop_group`): SIGTERM,
    and past the longest drain SIGKILL to all of them, so none outlives a test that failed. `uvicorn_cli`: served
    by `uvicorn app.main:app` instead."""
    port = free_port()
    served_by = ("-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port)) if uvicorn_cli \
        else ("-m", "app")
    env = {name: value for name, value in (os.environ | {
        "OPENAI_API_KEY": FAKE_KEY, "OPENAI_REALTIME_URL": upstream_url, "PORT": str(port), "HOST": "127.0.0.1",
        "SHUTDOWN_GRACE_SECONDS": "5", "LOG_FORMAT": "json", "LOG_LEVEL": "info", "DATABASE_URL": database_url,
    } | environment).items() if value is not None}
    process = await asyncio.create_subprocess_exec(sys.executable, *served_by, cwd=REPO_ROOT, env=env,
                                                   start_new_session=True, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.STDOUT)
    assert process.stdout is not None
    served = AppProcess(process, ProcessOutput(process.stdout), port)
    try:
        yield served
    finally:
        await stop_group(process, app_stop_grace_s(env))
        await served.output.finished()  # the workers hold the output pipe too: it ends once they are gone


async def until_lesson_stored(database: str, lesson_id: str,
                              holds: Callable[[Lesson, list[str]], bool] = lambda row, turns: True) -> None:
    """Return once the lesson's row is in the store at `database` and `holds(row, its turns' texts)`: an
    instance writes its records within a moment, and one killed after that loses none of them."""
    engine = create_engine(database_url(database))
    try:
        # Bounded well past the writer's linger: a loaded machine (a full run beside PostgreSQL) writes late.
        async with asyncio.timeout(30):
            while True:
                async with session_factory(engine)() as session:
                    row = await session.get(Lesson, lesson_id)
                    texts = list((await session.scalars(select(Turn.text).where(Turn.lesson_id == lesson_id))).all())
                if row is not None and holds(row, texts):
                    return
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
