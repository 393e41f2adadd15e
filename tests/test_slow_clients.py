"""Issue 15 over real sockets: a client that stops reading, floods or dawdles holds no place and no upstream.

The adversary is `bench.raw_client.RawWebSocket`: a bare socket with a small receive buffer that speaks
the WebSocket handshake and then reads nothing. The server's sockets get a small send buffer too, so the
greeting alone (about 250 kB of audio) is more than the kernel holds on either side: the relay's sends
must wait. Tests wait on events (the upstream closing, the socket being dropped, the connection's ASGI
task ending), never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from typing import Any

from harness import AppServer, log_lines, open_lesson, relay_settings, serve_app
from websockets.asyncio.client import connect

from app.main import drain_lessons
from app.simulator import RealtimeSimulator
from bench.raw_client import TEXT, RawWebSocket

SimulatorWith = Callable[..., RealtimeSimulator]
SMALL_RECEIVE_BUFFER = 4096
SMALL_SEND_BUFFER = 16_384
# Not JSON: each one is answered with an error frame, which the stuck page never reads.
BAD_FRAME = b"not json " * 100


@contextlib.asynccontextmanager
async def stuck_page(relay: AppServer, name: str = "Mallory") -> AsyncIterator[RawWebSocket]:
    """A lesson opened by a page that reads nothing and keeps sending bad frames until the block ends."""
    host, port = relay.base_url.removeprefix("http://").split(":")
    page = await RawWebSocket.open(host, int(port), f"/ws/lesson?name={name}", receive_buffer=SMALL_RECEIVE_BUFFER)
    assert page.status == 101

    async def flood() -> None:
        with contextlib.suppress(OSError):
            while True:
                await page.send(TEXT, BAD_FRAME)

    flooding = asyncio.create_task(flood())
    try:
        yield page
    finally:
        flooding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flooding
        page.close()


@contextlib.asynccontextmanager
async def relay_with_small_buffers(simulator: RealtimeSimulator, log_stream: io.StringIO,
                                   **overrides: Any) -> AsyncIterator[AppServer]:
    async with serve_app(relay_settings(simulator.url, **overrides), log_stream,
                         send_buffer=SMALL_SEND_BUFFER) as relay:
        yield relay


async def until_a_send_would_wait(relay: AppServer) -> None:
    """Poll, with a deadline, until some connection's write buffer is past its high-water mark."""
    def paused(protocol: Any) -> bool:
        transport = protocol.transport
        return bool(transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1])

    async with asyncio.timeout(30):
        while True:
            if any(paused(protocol) for protocol in relay.server.server_state.connections):
                return
            await asyncio.sleep(0.01)  # a poll with a deadline: the transport tells only its own protocol


async def connections_finished(relay: AppServer) -> None:
    """Wait until every connection's ASGI task has returned (each lesson has given back its place)."""
    tasks = set(relay.server.server_state.tasks)
    if tasks:
        await asyncio.wait(tasks)


def logged(stream: io.StringIO, event: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(stream) if line.get("event") == event]


async def test_a_page_that_stops_reading_is_dropped_its_upstream_closed_and_its_place_given_to_the_next(
    simulator_with: SimulatorWith, log_stream: io.StringIO,
) -> None:
    async with simulator_with(audio_pace=0) as simulator, \
            relay_with_small_buffers(simulator, log_stream, max_sessions=1, browser_send_timeout_seconds=0.5) as relay:
        async with stuck_page(relay) as page:
            upstream = await simulator.next_connection()
            await upstream.wait_closed(timeout=20)
            await page.until_closed()
            async with asyncio.timeout(20):
                await connections_finished(relay)
        async with open_lesson(relay.lesson_url(name="Ana")) as student:
            assert (await student.until_type("lesson"))["name"] == "Ana"
            await student.hear_greeting()
    [stalled, *_] = logged(log_stream, "lesson_ended")
    assert stalled["reason"] == "browser_stalled"
    assert logged(log_stream, "browser_stalled")[0]["timeout_s"] == 0.5


async def test_the_time_limit_closes_the_upstream_at_once_while_the_page_is_stuck(
    simulator_with: SimulatorWith, log_stream: io.StringIO,
) -> None:
    # The page would be dropped only after 60 s: the upstream must close long before, at the time limit.
    async with simulator_with(audio_pace=0) as simulator, \
            relay_with_small_buffers(simulator, log_stream, max_lesson_seconds=3,
                                     browser_send_timeout_seconds=60) as relay:
        async with stuck_page(relay):
            upstream = await simulator.next_connection()
            await until_a_send_would_wait(relay)
            await upstream.wait_closed(timeout=20)
        async with asyncio.timeout(20):
            await connections_finished(relay)
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "time_limit"


async def test_draining_ends_a_lesson_whose_page_stopped_reading_within_the_grace(
    simulator_with: SimulatorWith, log_stream: io.StringIO,
) -> None:
    async with simulator_with(audio_pace=0) as simulator, \
            relay_with_small_buffers(simulator, log_stream, browser_send_timeout_seconds=3) as relay, \
            stuck_page(relay):
        upstream = await simulator.next_connection()
        await until_a_send_would_wait(relay)
        await drain_lessons(relay.app, 8)
        await upstream.wait_closed()
    [drained] = logged(log_stream, "drained")
    assert (drained["open_lessons_before"], drained["all_closed"]) == (1, True)
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "server_shutdown"


async def test_a_page_that_connects_and_closes_at_once_ends_normally(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream) as relay:
        async with connect(relay.lesson_url(name="Ana")):
            pass  # closes right after the handshake, before the relay reads anything
        upstream = await simulator.next_connection()
        await upstream.wait_closed()
        async with asyncio.timeout(20):
            await connections_finished(relay)
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "browser_closed"
    assert [line for line in log_lines(log_stream) if line["level"] in ("error", "critical")] == []
