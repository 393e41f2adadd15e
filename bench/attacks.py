"""python -m bench.attacks — what one anonymous client costs the server, and what a real student then waits.

    git worktree add /tmp/before <ref>
    .venv/bin/python -m bench.attacks --checkout /tmp/before                # the relay at <ref>
    .venv/bin/python -m bench.attacks                                       # this checkout
    .venv/bin/python -m bench.attacks --ws wsproto --scenarios ping_flood   # another uvicorn WebSocket protocol

Each scenario starts the relay of `--checkout` as its own process (simulator mode, loopback only), attacks it
from this process, reads the server's resident memory and open descriptors from /proc/<pid>, and times a
real student beside the attack. Every loop is bounded in time and bytes; nothing leaves the machine.

- stalled: pages that stop reading (4 kB receive buffer) and keep sending bad frames (fewer than a page may
  send in a second), one per place (MAX_SESSIONS=10, IDLE_TIMEOUT_SECONDS=10, MAX_LESSON_SECONDS=30); a
  student retries every second.
- message_flood: one lesson's page, past its greeting, sends 2-byte frames as fast as it can; how long the
  server carries it and the CPU that costs, while a real student starts a lesson beside it.
- ping_flood: 125-byte pings, pongs never read, on a lesson socket and on a refused one (bad link).
- drain: two such pages, then SIGTERM; how long until the process has exited.
- huge_header: a request header that never ends; a health probe every half second.
- half_sent: many connections that send half a request and wait; a student loads the page meanwhile.
- capped_link: one client starts lessons one after another, as fast as it can, through the personal link of a
  student whose lessons of the day cost MAX_STUDENT_COST_USD_PER_DAY (a year of lessons in the store, SQLite);
  the attempts per second, the server's CPU per attempt, and the refused lessons kept on the desk.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import orjson
from sqlalchemy import select
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.links import make_lesson_token
from app.pacing import MAX_PAGE_MESSAGES_PER_S
from app.store import queries
from app.store.database import create_engine, database_url, migrate, session_factory
from app.store.models import Lesson
from bench import run_on_uvloop
from bench.processes import REPO_ROOT, ProcessProbe, free_port, kill_process_group
from bench.raw_client import PING, TEXT, RawWebSocket, client_frame, open_socket
from bench.students import past_the_greeting

STARTUP_SECONDS: Final = 30.0
# Stops any scenario before it can take the shared machine down with it.
RSS_SAFETY_BYTES: Final = 1_500_000_000
LESSON_SECRET: Final = "bench-attacks-lesson-secret-0123456789"
MB: Final = 1_000_000


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int
    probe: ProcessProbe
    peak_rss: int = 0
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def sample(self, since: float) -> tuple[int, int]:
        """Resident memory (bytes) and open descriptors now; kept, and the peak memory updated."""
        rss = self.probe.sample().rss_bytes
        descriptors = len(os.listdir(f"/proc/{self.process.pid}/fd"))
        self.peak_rss = max(self.peak_rss, rss)
        self.samples.append((round(time.monotonic() - since, 1), rss, descriptors))
        return rss, descriptors


@contextlib.asynccontextmanager
async def serve(checkout: Path, ws: str | None, environment: dict[str, str]) -> AsyncIterator[Server]:
    """`python -m app` in `checkout` (or `uvicorn app.main:app --ws <ws>`), until the block ends."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "error", "LOG_FORMAT": "json",
           **environment}
    env.pop("OPENAI_API_KEY", None)
    command = ([sys.executable, "-m", "app"] if ws is None else
               [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                "--ws", ws, "--log-level", "error"])
    process = await asyncio.create_subprocess_exec(*command, cwd=checkout, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
    try:
        server = Server(process, port, ProcessProbe(process.pid))
        give_up = time.monotonic() + STARTUP_SECONDS
        async with httpx.AsyncClient() as http:
            while True:
                if process.returncode is not None:
                    raise RuntimeError(f"the server exited with {process.returncode} at start")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                if time.monotonic() > give_up:
                    raise RuntimeError("the server did not become ready")
                await asyncio.sleep(0.1)
        yield server
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        kill_process_group(process.pid)


async def student_admitted(port: int, path: str = "/ws/lesson?name=Ana") -> str:
    """One start of a real student's lesson: 'admitted' (tutor audio arrived), or the refusal's code."""
    try:
        async with asyncio.timeout(15), connect(f"ws://127.0.0.1:{port}{path}", max_size=None) as page:
            async for frame in page:
                if isinstance(frame, bytes):
                    return "admitted"
                message = orjson.loads(frame)
                if message["type"] == "error":
                    return str(message["code"])
    except (ConnectionClosed, InvalidStatus, OSError, TimeoutError) as exc:
        return type(exc).__name__
    return "closed"


async def while_sampling(server: Server, seconds: float, until: Callable[[], bool] = lambda: False) -> float:
    """Sample the server every half second for up to `seconds` or until `until()`; the time it took."""
    started = time.monotonic()
    while time.monotonic() - started < seconds and not until():
        rss, _ = server.sample(started)
        if rss > RSS_SAFETY_BYTES:
            break
        await asyncio.sleep(0.5)
    return time.monotonic() - started


async def stalled(checkout: Path, ws: str | None, bound_s: float) -> dict[str, Any]:
    # The student shares the attacker's address: the start rate limit is lifted so only places are measured.
    environment = {"MAX_SESSIONS": "10", "IDLE_TIMEOUT_SECONDS": "10", "MAX_LESSON_SECONDS": "30",
                   "LESSON_STARTS_PER_MINUTE": "1000"}
    async with serve(checkout, ws, environment) as server:
        pages = [await RawWebSocket.open("127.0.0.1", server.port, f"/ws/lesson?name=Eve{chr(97 + i)}",
                                         receive_buffer=4096) for i in range(10)]

        floods = [asyncio.create_task(_flood_bad_frames(page)) for page in pages]
        started = time.monotonic()
        attempts: list[str] = []
        try:
            while time.monotonic() - started < bound_s:
                server.sample(started)
                attempts.append(await student_admitted(server.port))
                if attempts[-1] == "admitted":
                    break
                await asyncio.sleep(1)
            waited = time.monotonic() - started
        finally:
            for task in floods:
                task.cancel()
            await asyncio.gather(*floods, return_exceptions=True)
            for page in pages:
                page.close()
        return {"student": attempts[-1], "student_waited_s": round(waited, 1), "bound_s": bound_s,
                "refusals": len(attempts) - (attempts[-1] == "admitted"), "peak_rss_mb": round(server.peak_rss / MB)}


async def drain(checkout: Path, ws: str | None, bound_s: float) -> dict[str, Any]:
    async with serve(checkout, ws, {}) as server:
        pages = [await RawWebSocket.open("127.0.0.1", server.port, f"/ws/lesson?name=Eve{n}", receive_buffer=4096)
                 for n in ("a", "b")]
        floods = [asyncio.create_task(_flood_bad_frames(page)) for page in pages]
        # Long enough for the greeting and the bad frames' answers to fill what the kernel holds.
        await asyncio.sleep(5)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(bound_s):
                status = await server.process.wait()
        except TimeoutError:
            status = None
        exited_after = time.monotonic() - signalled
        for task in floods:
            task.cancel()
        await asyncio.gather(*floods, return_exceptions=True)
        for page in pages:
            page.close()
        return {"exit_status": status, "exited_after_s": round(exited_after, 1), "bound_s": bound_s}


async def _flood_bad_frames(page: RawWebSocket) -> None:
    """Bad frames in bursts that stay under the messages a page may send in a second (more ends the lesson)."""
    with contextlib.suppress(OSError):
        while True:
            for _ in range(MAX_PAGE_MESSAGES_PER_S // 6):
                await page.send(TEXT, b"not json " * 100)
            await asyncio.sleep(0.25)


async def message_flood(checkout: Path, ws: str | None, bound_s: float) -> dict[str, Any]:
    async with serve(checkout, ws, {}) as server, \
            connect(f"ws://127.0.0.1:{server.port}/ws/lesson?name=Eve", max_size=None) as page:
        await past_the_greeting(page)
        sent = 0

        async def flood() -> None:
            nonlocal sent
            with contextlib.suppress(ConnectionClosed):
                while True:
                    for _ in range(100):
                        await page.send(b"\x02\x00")
                    sent += 100

        async def read_until_closed() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for _ in page:
                    pass

        before = server.probe.sample()
        flooding, reading = asyncio.create_task(flood()), asyncio.create_task(read_until_closed())
        student = asyncio.create_task(_timed(student_admitted(server.port)))
        took = await while_sampling(server, bound_s, until=reading.done)
        after = server.probe.sample()
        flooding.cancel()
        reading.cancel()
        await asyncio.gather(flooding, reading, return_exceptions=True)
        result: dict[str, Any] = {
            "messages_sent": sent, "carried_s": round(took, 2), "closed_by_server": page.close_code,
            "server_cpu_s": round(after.cpu_seconds - before.cpu_seconds, 2),
        }
        result["student"], result["student_first_audio_s"] = await student
        return result


async def ping_flood(checkout: Path, ws: str | None, bound_s: float, *, refused: bool) -> dict[str, Any]:
    environment = {"LESSON_SECRET": LESSON_SECRET} if refused else {}
    path = "/ws/lesson?name=Eve&token=forged.link" if refused else "/ws/lesson?name=Eve"
    async with serve(checkout, ws, environment) as server:
        started = time.monotonic()
        server.sample(started)
        baseline = server.peak_rss
        page = await RawWebSocket.open("127.0.0.1", server.port, path, receive_buffer=4096)
        burst = client_frame(PING, b"p" * 125) * 1000
        sent, dropped = 0, False

        async def flood() -> None:
            nonlocal sent, dropped
            try:
                while True:
                    await page.send_raw(burst)
                    sent += len(burst)
                    await asyncio.sleep(0)
            except OSError:
                dropped = True

        flooding = asyncio.create_task(flood())
        student = asyncio.create_task(_timed(student_admitted(server.port))) if not refused else None
        took = await while_sampling(server, bound_s, until=lambda: dropped or flooding.done())
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
        page.close()
        result: dict[str, Any] = {
            "sent_mb": round(sent / MB), "seconds": round(took, 1), "dropped_by_server": dropped,
            "rss_before_mb": round(baseline / MB), "peak_rss_mb": round(server.peak_rss / MB),
        }
        if student is not None:
            result["student"], result["student_first_audio_s"] = await student
        return result


async def huge_header(checkout: Path, ws: str | None, bound_s: float, limit_bytes: int) -> dict[str, Any]:
    async with serve(checkout, ws, {}) as server:
        loop = asyncio.get_running_loop()
        sock = open_socket()
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: bench\r\nX-Endless: ")
        chunk = b"a" * 65_536
        sent, closed = 0, False

        async def flood() -> None:
            nonlocal sent, closed
            try:
                while sent < limit_bytes:
                    await loop.sock_sendall(sock, chunk)
                    sent += len(chunk)
                    await asyncio.sleep(0)
            except OSError:
                closed = True

        probes: list[float] = []

        async def probe() -> None:
            async with httpx.AsyncClient(timeout=30) as http:
                while True:
                    asked = time.monotonic()
                    with contextlib.suppress(httpx.TransportError):
                        await http.get(f"http://127.0.0.1:{server.port}/healthz")
                    probes.append(time.monotonic() - asked)
                    await asyncio.sleep(0.5)

        flooding, probing = asyncio.create_task(flood()), asyncio.create_task(probe())
        took = await while_sampling(server, bound_s, until=flooding.done)
        for task in (flooding, probing):
            task.cancel()
        await asyncio.gather(flooding, probing, return_exceptions=True)
        answer = b""
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.settimeout(1)
            answer = sock.recv(100)
        sock.close()
        return {"sent_mb": round(sent / MB), "seconds": round(took, 1), "closed_by_server": closed,
                "answer": answer.split(b"\r\n", 1)[0].decode(errors="replace"),
                "peak_rss_mb": round(server.peak_rss / MB),
                "health_probes": len(probes), "slowest_health_probe_s": round(max(probes, default=0.0), 2)}


async def half_sent(checkout: Path, ws: str | None, bound_s: float, connections: int) -> dict[str, Any]:
    async with serve(checkout, ws, {}) as server:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        _, descriptors_before = server.sample(started)
        sockets: list[socket.socket] = []
        for _ in range(connections):
            sock = open_socket()
            await loop.sock_connect(sock, ("127.0.0.1", server.port))
            await loop.sock_sendall(sock, b"GET / HTTP/1.1\r\nHost: bench\r\n")
            sockets.append(sock)
        opened = time.monotonic()
        page_load = await _timed(_page_load(server.port))
        series: list[tuple[float, int]] = []
        while time.monotonic() - opened < bound_s:
            _, descriptors = server.sample(started)
            series.append((round(time.monotonic() - opened, 1), descriptors))
            if descriptors <= descriptors_before + 5:
                break
            await asyncio.sleep(1)
        for sock in sockets:
            sock.close()
        return {"connections": connections, "descriptors_before": descriptors_before,
                "descriptors_peak": max(d for _, d in series), "descriptors_last": series[-1],
                "freed_within_s": series[-1][0] if series[-1][1] <= descriptors_before + 5 else None,
                "bound_s": bound_s, "page_load": page_load[0], "page_load_s": page_load[1],
                "peak_rss_mb": round(server.peak_rss / MB)}


CAPPED_STUDENT_LESSONS: Final = 2000  # about five a day for a year, the last ten of them today
CAPPED_STUDENT_DAY_USD: Final = 5.0
CAPPED_LINK_CAP_USD: Final = "2"


async def capped_link(checkout: Path, ws: str | None, bound_s: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-capped-") as directory:
        url = f"sqlite:///{directory}/lessons.db"
        student_id, token = await _capped_student(url)
        environment = {"LESSON_SECRET": LESSON_SECRET, "DATABASE_URL": url,
                       "MAX_STUDENT_COST_USD_PER_DAY": CAPPED_LINK_CAP_USD}
        async with serve(checkout, ws, environment) as server:
            codes: Counter[str] = Counter()
            before = server.probe.sample()
            started = time.monotonic()
            while time.monotonic() - started < bound_s:
                codes[await student_admitted(server.port, f"/ws/lesson?name=Ana&token={token}")] += 1
            took = time.monotonic() - started
            after = server.probe.sample()
        refused_on_the_desk = await _lessons_refused(url, student_id)
    attempts = sum(codes.values())
    cpu_s = after.cpu_seconds - before.cpu_seconds
    return {"attempts": attempts, "seconds": round(took, 1), "attempts_per_s": round(attempts / took, 1),
            "outcomes": dict(codes), "server_cpu_s": round(cpu_s, 2),
            "server_cpu_ms_per_attempt": round(1000 * cpu_s / attempts, 2),
            "refused_lessons_on_the_desk": refused_on_the_desk}


async def _capped_student(url: str) -> tuple[str, str]:
    """A student in a new store at `url` whose lessons of the last 24 hours cost CAPPED_STUDENT_DAY_USD, and a
    token of their link: (student id, token)."""
    engine = create_engine(database_url(url))
    try:
        await migrate(engine)
        sessions = session_factory(engine)
        student = await queries.create_student(sessions, name="Ana", level="B1")
        link = await queries.create_link(sessions, student_id=student.id)
        now, today = datetime.now(UTC), 10
        async with sessions.begin() as session:
            for number in range(CAPPED_STUDENT_LESSONS):
                started_at = now - (timedelta(hours=2 * number) if number < today else timedelta(days=number / 5))
                session.add(Lesson(id=f"past-{number}", student_id=student.id, level="B1", started_at=started_at,
                                   ended_at=started_at + timedelta(minutes=20), end_reason="student_ended",
                                   model="gpt-realtime", simulated=True,
                                   estimated_cost_usd=CAPPED_STUDENT_DAY_USD / today if number < today else 0.3))
    finally:
        await engine.dispose()
    return student.id, make_lesson_token(LESSON_SECRET, student_id=student.id, link_id=link.id, expires_at=None)


async def _lessons_refused(url: str, student_id: str) -> int:
    engine = create_engine(database_url(url))
    try:
        async with session_factory(engine)() as session:
            return len((await session.scalars(
                select(Lesson.id).where(Lesson.student_id == student_id, ~Lesson.id.startswith("past-")))).all())
    finally:
        await engine.dispose()


async def _page_load(port: int) -> str:
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            return str((await http.get(f"http://127.0.0.1:{port}/")).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


async def _timed(outcome: Any) -> tuple[Any, float]:
    asked = time.monotonic()
    result = await outcome
    return result, round(time.monotonic() - asked, 2)


SCENARIOS: Final = ("stalled", "drain", "message_flood", "ping_flood", "ping_flood_refused", "huge_header",
                    "half_sent", "capped_link")


async def main(arguments: argparse.Namespace) -> None:
    checkout: Path = arguments.checkout
    for scenario in arguments.scenarios.split(","):
        if scenario == "stalled":
            result = await stalled(checkout, arguments.ws, arguments.seconds * 2)
        elif scenario == "drain":
            result = await drain(checkout, arguments.ws, arguments.seconds * 1.5)
        elif scenario == "message_flood":
            result = await message_flood(checkout, arguments.ws, arguments.seconds)
        elif scenario in ("ping_flood", "ping_flood_refused"):
            result = await ping_flood(checkout, arguments.ws, arguments.seconds, refused=scenario.endswith("refused"))
        elif scenario == "huge_header":
            result = await huge_header(checkout, arguments.ws, arguments.seconds, arguments.header_mb * MB)
        elif scenario == "half_sent":
            result = await half_sent(checkout, arguments.ws, arguments.seconds * 1.5, arguments.connections)
        elif scenario == "capped_link":
            result = await capped_link(checkout, arguments.ws, arguments.seconds)
        else:
            raise SystemExit(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
        record = {"scenario": scenario, "checkout": str(checkout), "ws": arguments.ws or "python -m app", **result}
        print(orjson.dumps(record).decode(), flush=True)


def parse_arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--checkout", type=Path, default=REPO_ROOT, help="the relay to serve (default: this one)")
    parser.add_argument("--ws", default=None,
                        help="serve with `uvicorn app.main:app --ws WS` instead of `python -m app`")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--seconds", type=float, default=40.0, help="the bound on each attack (stalled: twice)")
    parser.add_argument("--header-mb", type=int, default=250, help="the bound on the endless header")
    parser.add_argument("--connections", type=int, default=2000, help="half-sent requests opened")
    arguments = parser.parse_args(argv)
    if not (arguments.checkout / "app").is_dir():
        parser.error(f"--checkout {arguments.checkout}: not a checkout of this repository")
    return arguments


if __name__ == "__main__":
    run_on_uvloop(main(parse_arguments()))
