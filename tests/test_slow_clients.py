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
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import (
    REPO_ROOT,
    AppServer,
    SimulatorWith,
    app_stop_grace_s,
    free_port,
    log_lines,
    logged,
    open_lesson,
    process_in_own_group,
    relay_settings,
    serve_app,
)
from websockets.asyncio.client import connect

from app.links import make_lesson_token
from app.main import drain_lessons
from app.pacing import MAX_PAGE_MESSAGES_PER_S
from app.simulator import RealtimeSimulator
from bench.raw_client import (
    BINARY,
    CLOSE,
    PING,
    TEXT,
    RawWebSocket,
    client_frame,
    handshake_request,
    open_socket,
    server_frames,
)

SMALL_RECEIVE_BUFFER = 4096
SMALL_SEND_BUFFER = 16_384
LESSON_SECRET = "test-lesson-secret-not-real-0123456789"
MB = 1_000_000
# Not JSON: each one is answered with an error frame, which the stuck page never reads.
BAD_FRAME = b"not json " * 100


@contextlib.asynccontextmanager
async def stuck_page(relay: AppServer, name: str = "Mallory") -> AsyncIterator[RawWebSocket]:
    """A lesson opened by a page that reads nothing and keeps sending bad frames until the block ends, in bursts
    that stay under the messages a page may send in a second (more would end the lesson as `page_flooded`)."""
    host, port = _address(relay)
    page = await RawWebSocket.open(host, port, f"/ws/lesson?name={name}", receive_buffer=SMALL_RECEIVE_BUFFER)
    assert page.status == 101

    async def flood() -> None:
        with contextlib.suppress(OSError):
            while True:
                for _ in range(MAX_PAGE_MESSAGES_PER_S // 6):
                    await page.send(TEXT, BAD_FRAME)
                await asyncio.sleep(0.25)

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
    """Wait until every connection's ASGI task has returned and each lesson has given back its place."""
    tasks = set(relay.server.server_state.tasks)
    if tasks:
        await asyncio.wait(tasks)
    await relay.app.state.live_lessons.ended()


async def test_a_page_that_stops_reading_is_dropped_its_upstream_closed_and_its_place_given_to_the_next(
    simulator_with: SimulatorWith, log_stream: io.StringIO,
) -> None:
    async with simulator_with(audio_pace=0) as simulator, \
            relay_with_small_buffers(simulator, log_stream, max_sessions=1, browser_send_timeout_seconds=0.5,
                                     resume_grace_seconds=0.5) as relay:
        async with stuck_page(relay) as page:
            upstream = await simulator.next_connection()
            await upstream.wait_closed(timeout=20)
            await page.until_closed()
            async with asyncio.timeout(20):
                await connections_finished(relay)
        async with open_lesson(relay.lesson_url(name="Ana")) as student:
            assert (await student.until_type("lesson"))["name"] == "Ana"
            await student.hear_greeting()
    # Dropped, it was waited for like any page that went away; it did not come back.
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
    assert len(logged(log_stream, "lesson_handed_off")) == 1


async def test_a_page_that_connects_and_closes_at_once_ends_normally(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    async with serve_app(relay_settings(simulator.url, resume_grace_seconds=0.5), log_stream) as relay:
        async with connect(relay.lesson_url(name="Ana")):
            pass  # closes right after the handshake, before the relay reads anything
        upstream = await simulator.next_connection()
        await upstream.wait_closed()
        async with asyncio.timeout(20):
            await connections_finished(relay)
    [ended] = logged(log_stream, "lesson_ended")
    assert ended["reason"] == "browser_gone"
    assert [line for line in log_lines(log_stream) if line["level"] in ("error", "critical")] == []


# ---- a refused lesson costs nothing --------------------------------------------------------------------


@pytest.mark.parametrize(("query", "code", "words"), [
    ("level=A1", "invalid_request", "type your name"),
    ("name=Ana&token=forged.link", "invalid_request", "link is not valid"),
    ("name=Ana&token=EXPIRED", "invalid_request", "expired"),
])
async def test_a_refused_lesson_says_why_and_is_closed_at_once_without_waiting_on_the_client(
    simulator: RealtimeSimulator, query: str, code: str, words: str,
) -> None:
    settings = relay_settings(simulator.url, lesson_secret=LESSON_SECRET)
    async with serve_app(settings) as relay:
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200  # the lifespan has run: the link secret is set
        expired = make_lesson_token(relay.app.state.link_secret, student_id="s" * 32, link_id="k" * 32,
                                    expires_at=int(time.time()) - 60)
        host, port = _address(relay)
        page = await RawWebSocket.open(host, port, "/ws/lesson?" + query.replace("EXPIRED", expired))
        # The client never answers the close frame; uvicorn alone would wait 10 s for that answer.
        async with asyncio.timeout(5):
            frames = server_frames(await page.until_closed())
        page.close()
    [error, ended] = [json.loads(payload) for opcode, payload in frames if opcode == TEXT]
    assert (error["code"], error["fatal"]) == (code, True)
    assert words in error["message"]
    assert (ended["state"], ended["reason"]) == ("ended", code)
    [close] = [payload for opcode, payload in frames if opcode == CLOSE]
    assert int.from_bytes(close[:2], "big") == 1008
    assert simulator.connections == []


async def test_a_flooding_page_is_closed_at_once_without_the_time_a_page_gets_to_answer_the_close(
    simulator: RealtimeSimulator,
) -> None:
    # A page gets BROWSER_SEND_TIMEOUT_SECONDS to answer a close frame; one ended for flooding gets none.
    async with serve_app(relay_settings(simulator.url, browser_send_timeout_seconds=60)) as relay:
        host, port = _address(relay)
        page = await RawWebSocket.open(host, port, "/ws/lesson?name=Eve")
        await page.send_raw(client_frame(BINARY, b"\x02\x00") * (MAX_PAGE_MESSAGES_PER_S + 1))
        # The client never answers the close frame; with the page's time to answer it, uvicorn closes after 10 s.
        async with asyncio.timeout(5):
            frames = server_frames(await page.until_closed())
        page.close()
    texts = [json.loads(payload) for opcode, payload in frames if opcode == TEXT]
    assert [(m["code"], m["fatal"]) for m in texts if m["type"] == "error"] == [("too_many_messages", True)]
    [close] = [payload for opcode, payload in frames if opcode == CLOSE]
    assert int.from_bytes(close[:2], "big") == 1008


async def test_a_refused_page_that_is_still_sending_audio_gets_every_frame_of_its_refusal(
    simulator: RealtimeSimulator,
) -> None:
    # A page streams its microphone from the start: 400 kB of it arrive with the handshake, more than the
    # server reads before it refuses. Closing with those bytes unread would reset the connection, and the
    # reset would destroy the refusal's last frames on their way to the page.
    async with serve_app(relay_settings(simulator.url)) as relay:
        host, port = _address(relay)
        loop = asyncio.get_running_loop()
        sock = open_socket()
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, handshake_request(host, port, "/ws/lesson?level=A1")
                                    + client_frame(BINARY, bytes(960)) * 400)
            received = bytearray()
            async with asyncio.timeout(10):
                while chunk := await loop.sock_recv(sock, 65_536):  # a reset raises here
                    received += chunk
        finally:
            sock.close()
    frames = server_frames(bytes(received).partition(b"\r\n\r\n")[2])
    texts = [json.loads(payload) for opcode, payload in frames if opcode == TEXT]
    assert [(text["type"], text.get("code") or text.get("reason")) for text in texts] == [
        ("error", "invalid_request"), ("status", "invalid_request")]
    assert [int.from_bytes(payload[:2], "big") for opcode, payload in frames if opcode == CLOSE] == [1008]


async def test_a_refused_page_that_floods_after_its_refusal_is_dropped(simulator: RealtimeSimulator) -> None:
    # After a refusal the server reads what the page still sends for a moment, and no more than a page
    # sends in that moment: a flood is dropped instead of read at network speed.
    flood_limit, burst = 128 * MB, client_frame(PING, b"p" * 125) * 8000
    async with serve_app(relay_settings(simulator.url)) as relay:
        host, port = _address(relay)
        page = await RawWebSocket.open(host, port, "/ws/lesson?level=A1")
        sent, dropped = 0, False
        try:
            while sent < flood_limit:
                await page.send_raw(burst)
                sent += len(burst)
        except OSError:
            dropped = True
        page.close()
    assert dropped, f"{sent // MB} MB sent after the refusal, all of it read"


# ---- bounded memory per connection --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def relay_process(**environment: str) -> AsyncIterator[tuple[int, int]]:
    """`python -m app` in simulator mode as its own process on a free port, until the block ends: (port, pid)."""
    port = free_port()
    env = os.environ | {"PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "error", **environment}
    env.pop("OPENAI_API_KEY", None)
    async with process_in_own_group(sys.executable, "-m", "app", grace_s=app_stop_grace_s(env), cwd=REPO_ROOT,
                                    env=env, stdout=asyncio.subprocess.DEVNULL) as process:
        async with asyncio.timeout(30), httpx.AsyncClient() as http:
            while True:  # a readiness poll, as a load balancer does
                assert process.returncode is None, "python -m app exited at start"
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield port, process.pid


def resident_bytes(pid: int) -> int:
    """The process's resident memory, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


async def test_a_ping_flood_whose_pongs_are_never_read_is_dropped_and_the_server_stays_small() -> None:
    flood_limit, burst = 96 * MB, client_frame(PING, b"p" * 125) * 1000
    async with relay_process() as (port, pid):
        baseline = peak = resident_bytes(pid)
        page = await RawWebSocket.open("127.0.0.1", port, "/ws/lesson?name=Eve", receive_buffer=SMALL_RECEIVE_BUFFER)
        sent, dropped = 0, False
        try:
            while sent < flood_limit:
                await page.send_raw(burst)
                sent += len(burst)
                peak = max(peak, resident_bytes(pid))
        except OSError:
            dropped = True
        page.close()
    assert dropped, f"{sent // MB} MB of pings sent, the server still answering; {(peak - baseline) // MB} MB more"
    assert peak - baseline < 24 * MB


# ---- requests: size, time, and the number of connections --------------------------------------------------


async def http_exchange(relay: AppServer, request: bytes) -> bytes:
    """Send `request` on a fresh connection and read until the server closes it; what it answered."""
    loop = asyncio.get_running_loop()
    host, port = _address(relay)
    sock = open_socket()
    try:
        await loop.sock_connect(sock, (host, port))
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            await loop.sock_sendall(sock, request)
        answer = bytearray()
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionResetError):
                while chunk := await loop.sock_recv(sock, 65_536):
                    answer += chunk
        return bytes(answer)
    finally:
        sock.close()


async def test_a_request_head_that_never_ends_gets_431_and_the_connection_closes(relay: AppServer) -> None:
    answer = await http_exchange(relay, b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: " + b"a" * (4 * MB))
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_url_over_the_limit_gets_414(relay: AppServer) -> None:
    answer = await http_exchange(relay, b"GET /?token=" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 ")
    # Written by the transport, before the app: it carries the security headers all the same.
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert "x-content-type-options: nosniff" in head
    assert "content-security-policy: default-src 'none';" in head


def request_line(path: str, length: int) -> bytes:
    """A GET of `path`, padded in its query to a request line of `length` bytes without its CRLF."""
    start, end = f"GET {path}&pad=".encode(), b" HTTP/1.1"
    return start + b"a" * (length - len(start) - len(end)) + end


# The request line is counted with its CRLF, as websockets counts a handshake's: 8190 bytes + CRLF fit in 8 KiB.
@pytest.mark.parametrize(("length", "status"), [(8_190, b"200"), (8_191, b"414"), (8_192, b"414"), (8_193, b"414")])
async def test_a_request_line_at_the_url_limit_is_judged_by_that_limit_alone(
    relay: AppServer, length: int, status: bytes
) -> None:
    head = request_line("/healthz?x=1", length) + b"\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = await http_exchange(relay, head)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")


@pytest.mark.parametrize(("length", "status"), [(8_190, b"403"), (8_191, b"414")])
async def test_a_websocket_handshake_at_the_url_limit_is_answered(relay: AppServer, length: int, status: bytes) -> None:
    # A request line websockets would refuse must be refused first: websockets' own refusal is never written.
    head = request_line("/ws/lesson?name=Ana", length) + (
        b"\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n")
    # The app answers 403 (the origin is not allowed): the handshake reached it.
    assert (await http_exchange(relay, head)).startswith(b"HTTP/1.1 " + status + b" ")


async def test_a_content_length_too_long_to_be_a_number_gets_400_and_no_error_in_the_log(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    # Over 4300 digits int() raises: inside the transport's data_received that was a "Fatal error on transport"
    # with its traceback for one anonymous request, and the connection dropped unanswered.
    async with serve_app(relay_settings(simulator.url), log_stream) as relay:
        answer = await http_exchange(relay, b"POST /teacher/signin HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                     + b"9" * 5000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert [line for line in log_lines(log_stream) if line.get("level") == "error"] == []


async def test_a_half_sent_request_gets_408_after_the_request_timeout(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, request_timeout_seconds=0.5)) as relay:
        answer = await http_exchange(relay, b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_requests_with_bodies_and_keep_alive_are_followed_request_by_request(
    simulator: RealtimeSimulator,
) -> None:
    # Both body framings, pipelined on one connection: the guard must find each request after a body, or
    # the next one would be taken for a half-sent request and time out.
    pipelined = (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello there"
                 b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"5;note=x\r\nhello\r\n6\r\n there\r\n0\r\nX-Trailer: 1\r\n\r\n"
                 b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with serve_app(relay_settings(simulator.url, request_timeout_seconds=0.5)) as relay:
        answer = await http_exchange(relay, pipelined)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"405", b"405", b"200"]


async def test_at_max_connections_a_real_request_takes_the_place_of_the_oldest_half_sent_one(
    simulator: RealtimeSimulator,
) -> None:
    async with serve_app(relay_settings(simulator.url, max_connections=3)) as relay:
        half_sent = [asyncio.create_task(http_exchange(relay, b"GET / HTTP/1.1\r\nHost: x\r\n")) for _ in range(3)]
        await until_connections(relay, 3)
        async with httpx.AsyncClient(base_url=relay.base_url) as http:
            assert (await http.get("/healthz")).status_code == 200
        oldest = await half_sent[0]
        for task in half_sent[1:]:
            task.cancel()
        await asyncio.gather(*half_sent[1:], return_exceptions=True)
    assert oldest.startswith(b"HTTP/1.1 408 ")


async def test_at_max_connections_with_none_waiting_a_new_connection_gets_503(simulator: RealtimeSimulator) -> None:
    async with serve_app(relay_settings(simulator.url, max_connections=2)) as relay, \
            open_lesson(relay.lesson_url(name="Ana")) as first, open_lesson(relay.lesson_url(name="Ben")) as second:
        await first.until_type("lesson")
        await second.until_type("lesson")
        answer = await http_exchange(relay, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 503 ")


async def until_connections(relay: AppServer, count: int) -> None:
    """Poll, with a deadline, until the server holds `count` connections."""
    async with asyncio.timeout(10):
        while True:
            if len(relay.server.server_state.connections) >= count:
                return
            await asyncio.sleep(0.01)  # a poll with a deadline: accepting a connection signals nothing


def _address(relay: AppServer) -> tuple[str, int]:
    host, port = relay.base_url.removeprefix("http://").split(":")
    return host, int(port)



def handshake(path: str, header_line: bytes) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n").encode() + header_line \
        + b"\r\n\r\n"


@pytest.mark.parametrize("path", ["/ws/lesson?name=Ana", "/"])
async def test_a_header_line_over_8_kib_gets_431_even_on_a_websocket_handshake(relay: AppServer, path: str) -> None:
    # Past websockets' own line limit a handshake was left unanswered, holding its connection until the client left.
    answer = await http_exchange(relay, handshake(path, b"Origin: https://evil.example/" + b"x" * 8_200))
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_a_header_line_of_8_kib_with_its_crlf_reaches_the_app(relay: AppServer) -> None:
    origin = b"Origin: https://evil.example/"
    line = origin + b"x" * (8_192 - len(origin) - 2)
    # The app answers: the origin is not allowed.
    assert (await http_exchange(relay, handshake("/ws/lesson?name=Ana", line))).startswith(b"HTTP/1.1 403 ")
