"""The processes under measurement: the echo upstream and the relays, each in its own process; and the app
served in the bench's own process, for the benches that drive it over the Realtime simulator.

The load generator runs in the bench's own process, so what a relay costs is read from the relay's own
``/proc/<pid>`` (CPU ticks, resident memory), untouched by the students' or the upstream's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

import orjson
import uvicorn
from fastapi import FastAPI

from app.main import create_app, server_config
from app.settings import Settings

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
CLOCK_TICKS_PER_SECOND: Final = os.sysconf("SC_CLK_TCK")
PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")
STARTUP_TIMEOUT_SECONDS: Final = 30.0


@dataclass(frozen=True)
class ProcessSample:
    """CPU seconds used so far (user + system) and resident memory, of a process tree, at one moment."""

    at: float
    cpu_seconds: float
    rss_bytes: int


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant (a multi-worker server's workers, granian's worker)."""
    tree, position = [pid], 0
    while position < len(tree):
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{tree[position]}/task").iterdir():
                tree += [int(child) for child in (task / "children").read_text().split()]
        position += 1
    return tree


class ProcessProbe:
    """Reads the CPU time and resident memory of a process and its descendants from /proc (Linux)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def sample(self) -> ProcessSample:
        at = time.perf_counter()
        cpu_ticks = rss_pages = 0
        for pid in process_tree(self.pid):
            with contextlib.suppress(OSError):  # a worker that exited meanwhile
                stat = Path(f"/proc/{pid}/stat").read_text()
                # Fields after the parenthesised command name; utime and stime are fields 14 and 15 of the line.
                fields = stat[stat.rindex(")") + 2 :].split()
                cpu_ticks += int(fields[11]) + int(fields[12])
                rss_pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        return ProcessSample(at, cpu_ticks / CLOCK_TICKS_PER_SECOND, rss_pages * PAGE_BYTES)


def machine_busy_seconds() -> float:
    """CPU seconds all cores of the machine spent busy (not idle, not waiting for I/O) since boot."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle, iowait = fields[3], fields[4]
    return (sum(fields[:8]) - idle - iowait) / CLOCK_TICKS_PER_SECOND


def cpu_share(before: ProcessSample, after: ProcessSample) -> float:
    """The fraction of one core the process used between two samples (1.0 = one core busy)."""
    return (after.cpu_seconds - before.cpu_seconds) / max(after.at - before.at, 1e-9)


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


@dataclass
class ManagedProcess:
    """A child process the bench started, with where its output goes."""

    name: str
    process: subprocess.Popen[str]
    port: int
    log_path: Path | None

    @property
    def probe(self) -> ProcessProbe:
        return ProcessProbe(self.process.pid)

    def pin(self, cpus: set[int] | None) -> None:
        """Restrict the process, its threads and its workers to `cpus` (None leaves the scheduler free)."""
        if cpus is not None:
            for pid in process_tree(self.process.pid):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    with contextlib.suppress(OSError):
                        os.sched_setaffinity(int(task.name), cpus)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        kill_process_group(self.process.pid)

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def kill_process_group(leader_pid: int) -> None:
    """SIGKILL what is left of the process group a bench child leads (started with `start_new_session`):
    a relay's workers, when its supervisor did not outlive the bench's patience."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader_pid, signal.SIGKILL)


def _start_listener(name: str, command: list[str]) -> ManagedProcess:
    """Start `command`, a bench server that prints ``{"port": N}`` once it listens; returns then."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    first_line = process.stdout.readline()
    if not first_line:
        raise RuntimeError(f"the {name} exited with {process.wait()} before listening")
    return ManagedProcess(name, process, int(orjson.loads(first_line)["port"]), None)


def start_echo_upstream() -> ManagedProcess:
    """`python -m bench.echo_upstream` on a free port; returns once it listens."""
    return _start_listener("echo upstream", [sys.executable, "-m", "bench.echo_upstream", "--port", "0"])


def start_tcp_proxy(upstream_port: int) -> ManagedProcess:
    """`python -m bench.tcp_proxy` forwarding to `upstream_port`, on a free port; returns once it listens."""
    return _start_listener(
        "tcp proxy",
        [sys.executable, "-m", "bench.tcp_proxy", "--port", "0", "--upstream-port", str(upstream_port)],
    )


def start_callback_relay(upstream_port: int) -> ManagedProcess:
    """`python -m bench.callback_relay` in front of `upstream_port`, on a free port; returns once it listens."""
    return _start_listener(
        "callback relay",
        [sys.executable, "-m", "bench.callback_relay", "--port", "0", "--upstream-port", str(upstream_port)],
    )


def start_uvicorn(
    name: str,
    app: str,
    *,
    environment: Mapping[str, str],
    log_directory: Path,
    uvicorn_arguments: tuple[str, ...] = (),
    working_directory: Path = REPO_ROOT,
) -> ManagedProcess:
    """`python -m uvicorn <app>` run in `working_directory` (where `app` is imported from) on a free port with
    `environment` added; returns once it accepts TCP."""
    port = free_port()
    command = ["-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port), *uvicorn_arguments]
    return start_server(name, command, port, environment=environment, log_directory=log_directory,
                        working_directory=working_directory)


def start_granian(
    name: str,
    app: str,
    *,
    environment: Mapping[str, str],
    log_directory: Path,
    granian_arguments: tuple[str, ...] = (),
    working_directory: Path = REPO_ROOT,
) -> ManagedProcess:
    """`python -m granian` serving the ASGI `app` (one worker, uvloop) like `start_uvicorn`."""
    port = free_port()
    command = [
        "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
        "--workers", "1", "--no-access-log", "--log-level", "warning", *granian_arguments, app,
    ]  # fmt: skip
    return start_server(name, command, port, environment=environment, log_directory=log_directory,
                        working_directory=working_directory)


def start_app(
    name: str,
    *,
    module: str = "app",
    workers: int = 1,
    environment: Mapping[str, str],
    log_directory: Path,
    working_directory: Path = REPO_ROOT,
) -> ManagedProcess:
    """`python -m app` (the deployed command, or `module` serving like it) with WEB_CONCURRENCY=`workers` on
    a free port, like `start_uvicorn`."""
    port = free_port()
    served = {**environment, "WEB_CONCURRENCY": str(workers), "HOST": "127.0.0.1", "PORT": str(port)}
    return start_server(name, ["-m", module], port, environment=served, log_directory=log_directory,
                        working_directory=working_directory)


def start_server(
    name: str,
    python_arguments: list[str],
    port: int,
    *,
    environment: Mapping[str, str],
    log_directory: Path,
    working_directory: Path = REPO_ROOT,
) -> ManagedProcess:
    """`python <python_arguments>`, a server that will listen on `port`; returns once it accepts TCP there."""
    log_directory.mkdir(parents=True, exist_ok=True)
    log_path = log_directory / f"{name}.log"
    log_file: TextIO
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, *python_arguments],
            cwd=working_directory,
            env={**os.environ, **environment},
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    managed = ManagedProcess(name, process, port, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode} at start:\n{managed.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return managed
        time.sleep(0.1)
    managed.stop()
    raise RuntimeError(f"{name} did not listen on port {port} within {STARTUP_TIMEOUT_SECONDS} s")


@contextlib.contextmanager
def running(managed: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield managed
    finally:
        managed.stop()


class _Discarded(io.StringIO):
    """A text stream that keeps nothing: a plain `StringIO` would grow with every log line of a long run."""

    def write(self, text: str) -> int:
        return len(text)


@contextlib.asynccontextmanager
async def app_served_here(settings: Settings) -> AsyncIterator[int]:
    """The app served by uvicorn in this process on a loopback port of its own, its logs discarded: the port."""
    async with serving_here(create_app(settings, log_stream=_Discarded()), settings) as port:
        yield port


@contextlib.asynccontextmanager
async def serving_here(app: FastAPI, settings: Settings, *, backlog: int = 128) -> AsyncIterator[int]:
    """`app` served by uvicorn in this process on a loopback port of its own, `backlog` connects queued: the port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    server = uvicorn.Server(server_config(app, settings, lifespan="on"))
    # The socket already listens: a client may connect at once, the kernel queues it until uvicorn accepts.
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def sleep_sampling(probe: ProcessProbe | None, seconds: float, every: float = 0.5) -> list[ProcessSample]:
    """Sleep `seconds`, sampling `probe` every `every` seconds (first and last sample included)."""
    if probe is None:
        await asyncio.sleep(seconds)
        return []
    samples = [probe.sample()]
    deadline = samples[0].at + seconds
    while (remaining := deadline - time.perf_counter()) > 0:
        await asyncio.sleep(min(every, remaining))
        samples.append(probe.sample())
    return samples
