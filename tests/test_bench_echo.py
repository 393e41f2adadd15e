"""The bench's echo upstream and frame markers are correct (what they measure is never asserted here).

The echo upstream must speak the GA Realtime protocol faithfully, or the bench would measure a relay
against a server it does not meet in production; the markers must identify every echoed frame, or
round trips and losses would be wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from harness import bound_socket
from sdk_oracle import assert_valid_client_event, assert_valid_server_event
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.uri import parse_uri

# `bench` is not an installed package (only `app` is): import it from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.__main__ import parse_arguments, relay_cpus
from bench.callback_relay import open_callback_relay
from bench.candidates import Candidate
from bench.costs import step_costs
from bench.echo_upstream import GREETING_CHUNKS, GREETING_TRANSCRIPT, EchoSession, bound_port, serve_echo
from bench.markers import FRAME_BYTES, marked_frame, pcm_duration_ms, read_marker, tone
from bench.naive_relay import app as naive_app
from bench.naive_relay import validating_app as naive_validating_app
from bench.report import targets_check
from bench.scenarios import CrossingReport, LoadReport, Target, own_collector_off
from bench.students import BrowserStudent, DirectStudent, LoadClock, StudentResult, StudentSocket, next_frame_time
from bench.tcp_proxy import open_proxy
from bench.withdrawal_check import check_times_ms

GREETING_SEQUENCE = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    *["response.output_audio.delta", "response.output_audio_transcript.delta"] * GREETING_CHUNKS,
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
    "response.done",
]
ECHO_OPENING = [
    "response.created",
    "rate_limits.updated",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]


def _events(texts: list[str]) -> list[dict[str, Any]]:
    events = [orjson.loads(text) for text in texts]
    for event in events:
        assert_valid_server_event(event)
    return events


def _client(event: dict[str, Any]) -> str:
    assert_valid_client_event(event)
    return orjson.dumps(event).decode()


def _append(pcm: bytes) -> str:
    return _client({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()})


def _greeted() -> EchoSession:
    session = EchoSession()
    session.handle(_client({"type": "session.update", "session": {"type": "realtime", "instructions": "Tutor."}}))
    session.handle(_client({"type": "response.create"}))
    return session


def test_marked_frames_carry_student_and_sequence() -> None:
    frame = marked_frame(7, 123_456)
    assert len(frame) == FRAME_BYTES == 960
    assert read_marker(frame) == (7, 123_456)
    assert read_marker(tone(20)) is None
    assert read_marker(b"") is None
    assert pcm_duration_ms(FRAME_BYTES) == 20


def test_session_update_is_answered_with_the_whole_effective_session() -> None:
    session = EchoSession()
    created = _events([session.created()])[0]
    assert created["type"] == "session.created"
    update = {
        "type": "session.update",
        "event_id": "evt_1",
        "session": {"type": "realtime", "instructions": "Be a tutor.", "audio": {"output": {"voice": "marin"}}},
    }
    (updated,) = _events(session.handle(_client(update)))
    assert updated["type"] == "session.updated"
    assert updated["session"]["instructions"] == "Be a tutor."
    assert updated["session"]["audio"]["output"]["voice"] == "marin"
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}


def test_a_beta_field_name_is_refused_and_leaves_the_session_alone() -> None:
    session = EchoSession()
    texts = session.handle(
        '{"type":"session.update","event_id":"evt_9","session":{"type":"realtime","modalities":["audio"]}}'
    )
    (error,) = _events(texts)
    assert error["type"] == "error"
    assert error["error"]["code"] == "unknown_parameter"
    assert error["error"]["event_id"] == "evt_9"
    assert "modalities" not in session.session


def test_the_greeting_is_the_full_ga_sequence_with_audio_and_usage() -> None:
    session = EchoSession()
    session.handle(_client({"type": "session.update", "session": {"type": "realtime"}}))
    events = _events(session.handle(_client({"type": "response.create"})))
    assert [event["type"] for event in events] == GREETING_SEQUENCE
    response_ids = {event["response"]["id"] for event in events if "response" in event}
    response_ids |= {event["response_id"] for event in events if "response_id" in event}
    assert len(response_ids) == 1
    audio = b"".join(
        base64.b64decode(event["delta"]) for event in events if event["type"] == "response.output_audio.delta"
    )
    assert pcm_duration_ms(len(audio)) == 500
    transcript = "".join(
        event["delta"] for event in events if event["type"] == "response.output_audio_transcript.delta"
    )
    assert transcript == GREETING_TRANSCRIPT
    done = events[-1]["response"]
    assert done["status"] == "completed"
    assert done["usage"]["total_tokens"] > 0


def test_audio_appended_before_the_greeting_is_not_echoed() -> None:
    session = EchoSession()
    assert session.handle(_append(marked_frame(1, 0))) == []


def test_each_appended_chunk_comes_back_as_a_delta_of_one_long_lived_response() -> None:
    session = _greeted()
    first = _events(session.handle(_append(marked_frame(3, 0))))
    assert [event["type"] for event in first] == [*ECHO_OPENING, "response.output_audio.delta"]
    response_id = first[0]["response"]["id"]
    for seq in range(1, 4):
        (delta,) = _events(session.handle(_append(marked_frame(3, seq))))
        assert delta["type"] == "response.output_audio.delta"
        assert delta["response_id"] == response_id
        assert delta["item_id"] == first[-1]["item_id"]
        assert read_marker(base64.b64decode(delta["delta"])) == (3, seq)
    event_ids = [event["event_id"] for event in first]
    assert len(set(event_ids)) == len(event_ids)


def test_a_second_response_is_refused_while_the_echo_response_is_active() -> None:
    session = _greeted()
    session.handle(_append(marked_frame(0, 0)))
    (error,) = _events(session.handle(_client({"type": "response.create", "event_id": "evt_2"})))
    assert error["error"]["code"] == "conversation_already_has_active_response"
    assert error["error"]["event_id"] == "evt_2"


def test_cancel_ends_the_echo_response_and_the_next_chunk_opens_a_new_one() -> None:
    session = _greeted()
    opening = _events(session.handle(_append(marked_frame(0, 0))))
    (done,) = _events(session.handle(_client({"type": "response.cancel"})))
    assert done["type"] == "response.done"
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"]["reason"] == "client_cancelled"
    (not_active,) = _events(session.handle(_client({"type": "response.cancel"})))
    assert not_active["error"]["code"] == "response_cancel_not_active"
    reopened = _events(session.handle(_append(marked_frame(0, 1))))
    assert reopened[0]["type"] == "response.created"
    assert reopened[0]["response"]["id"] != opening[0]["response"]["id"]


def test_audio_that_would_break_the_json_is_refused() -> None:
    session = _greeted()
    (error,) = _events(session.handle('{"type":"input_audio_buffer.append","audio":"AAAA\\"}"}'))
    assert error["type"] == "error"


def test_echoes_are_counted_whether_split_or_merged() -> None:
    student = DirectStudent(4, "ws://unused", LoadClock(), compression=None)
    frames = [marked_frame(4, student.note_frame_sent(0.0)) for _ in range(4)]
    student.result.frames_sent = 4
    merged = frames[0] + frames[1]
    student.echo_audio_arrived(merged, 0.001)
    student.echo_audio_arrived(frames[2][:100], 0.002)
    student.echo_audio_arrived(frames[2][100:] + frames[3][:500], 0.003)
    assert student.result.frames_echoed == 3
    student.echo_audio_arrived(frames[3][500:], 0.004)
    student.echo_audio_arrived(frames[3], 0.005)  # the same frame twice
    student.echo_audio_arrived(marked_frame(5, 0), 0.006)  # another student's frame
    result = student.result
    assert (result.frames_echoed, result.frames_lost) == (4, 0)
    assert (result.duplicate_frames, result.misrouted_frames) == (1, 1)
    assert result.round_trips_ms == pytest.approx([1.0, 1.0, 3.0, 4.0])


@pytest.mark.parametrize("through_proxy", [False, True], ids=["direct", "through the tcp proxy"])
async def test_direct_students_greet_stream_and_get_every_frame_back(through_proxy: bool) -> None:
    async with serve_echo() as server, contextlib.AsyncExitStack() as stack:
        port = bound_port(server)
        if through_proxy:
            proxy = await stack.enter_async_context(await open_proxy(port))
            port = proxy.sockets[0].getsockname()[1]
        url = f"ws://127.0.0.1:{port}/v1/realtime?model=bench"
        clock = LoadClock(drain_seconds=5.0)
        students = [DirectStudent(student_id, url, clock, compression=None) for student_id in range(3)]
        runs = [asyncio.create_task(student.run()) for student in students]
        await asyncio.wait_for(asyncio.gather(*(student.mic_open.wait() for student in students)), 10)
        clock.stream_started.set()
        await asyncio.sleep(0.2)
        clock.stream_stopped.set()
        results = await asyncio.gather(*runs)
    for result in results:
        assert result.errors == []
        assert result.greeting_ms is not None
        assert result.frames_sent > 0
        assert result.frames_lost == 0
        assert result.misrouted_frames == result.duplicate_frames == result.unmarked_frames == 0


@pytest.mark.parametrize("naive", [naive_app, naive_validating_app], ids=["naive", "naive-pydantic"])
async def test_the_naive_relays_greet_browser_students_and_carry_every_frame(
    naive: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serve_echo() as upstream:
        monkeypatch.setenv("OPENAI_REALTIME_URL", f"ws://127.0.0.1:{bound_port(upstream)}/v1/realtime")
        sock = bound_socket()
        server = uvicorn.Server(uvicorn.Config(naive, log_config=None, lifespan="off"))
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        port = sock.getsockname()[1]
        results = await stream_browser_students(f"ws://127.0.0.1:{port}/ws/lesson?name=Bench&level=A1")
        server.should_exit = True
        await serving
        sock.close()
    assert_every_frame_carried(results)


async def test_the_callback_relay_greets_browser_students_and_carries_every_frame() -> None:
    async with serve_echo() as upstream, await open_callback_relay(bound_port(upstream)) as relay:
        port = relay.sockets[0].getsockname()[1]
        results = await stream_browser_students(f"ws://127.0.0.1:{port}/ws/lesson?name=Bench&level=A1")
    assert_every_frame_carried(results)


async def stream_browser_students(url: str) -> list[StudentResult]:
    """Three browser students greeted at `url`, then streaming for 0.2 s; their results once every echo came."""
    clock = LoadClock(drain_seconds=5.0)
    students = [BrowserStudent(student_id, url, clock, compression="deflate") for student_id in range(3)]
    runs = [asyncio.create_task(student.run()) for student in students]
    await asyncio.wait_for(asyncio.gather(*(student.mic_open.wait() for student in students)), 10)
    clock.stream_started.set()
    await asyncio.sleep(0.2)  # the length of the stream, not a synchronisation: every echo is awaited
    clock.stream_stopped.set()
    return list(await asyncio.gather(*runs))


def assert_every_frame_carried(results: list[StudentResult]) -> None:
    for result in results:
        assert result.errors == []
        assert result.greeting_ms is not None
        assert result.frames_sent > 0
        assert result.frames_lost == 0
        assert result.misrouted_frames == result.duplicate_frames == result.unmarked_frames == 0


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/v1/other", {"Authorization": "Bearer sk-test"}, 404),
    ("/v1/realtime", {}, 401),
], ids=["another path", "no credentials"])
async def test_a_handshake_the_service_would_refuse_is_refused(path: str, headers: dict[str, str],
                                                               status: int) -> None:
    async with serve_echo() as server:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{bound_port(server)}{path}", additional_headers=headers, proxy=None)
    assert refused.value.response.status_code == status


async def test_a_binary_frame_gets_an_error_event_and_the_session_goes_on() -> None:
    async with serve_echo() as server:
        url = f"ws://127.0.0.1:{bound_port(server)}/v1/realtime"
        async with connect(url, additional_headers={"Authorization": "Bearer sk-test"}, proxy=None) as ws:
            assert orjson.loads(await ws.recv())["type"] == "session.created"
            await ws.send(b"\x00\x01")
            error = orjson.loads(await ws.recv())
            assert_valid_server_event(error)
            assert error["error"]["type"] == "invalid_request_error"
            await ws.send('{"type":"response.create"}')
            greeting = [orjson.loads(await ws.recv())["type"] for _ in GREETING_SEQUENCE]
            assert greeting == GREETING_SEQUENCE


async def test_after_the_closing_handshake_the_echo_upstream_closes_the_connection() -> None:
    """The server closes TCP first (RFC 6455 §7.1.1): a client must not wait out its close timeout."""
    async with serve_echo() as server:
        url = f"ws://127.0.0.1:{bound_port(server)}/v1/realtime"
        # A close timeout longer than the test's: a server that left the connection open would fail it.
        async with connect(url, additional_headers={"Authorization": "Bearer sk-test"}, proxy=None,
                           close_timeout=600) as ws:
            await ws.recv()
            await ws.close()
        assert ws.close_code == 1000
        assert ws.transport.is_closing()


async def test_the_beta_interface_is_refused_with_close_4000() -> None:
    async with serve_echo() as server:
        url = f"ws://127.0.0.1:{bound_port(server)}/v1/realtime"
        headers = {"Authorization": "Bearer sk-test", "OpenAI-Beta": "realtime=v1"}
        async with connect(url, additional_headers=headers, proxy=None) as ws:
            error = orjson.loads(await ws.recv())
            assert error["error"]["code"] == "beta_api_shape_disabled"
            await ws.wait_closed()
            assert ws.close_code == 4000


def test_each_step_bench_costs_times_does_its_real_work() -> None:
    steps = dict(step_costs())
    [page_frame] = steps["websockets: parse the page's binary frame (masked)"]()
    assert len(page_frame.data) == FRAME_BYTES
    [upstream_frame] = steps["websockets: parse the upstream's text frame"]()
    assert orjson.loads(upstream_frame.data)["type"] == "response.output_audio.delta"
    assert len(b"".join(steps["websockets: serialise the binary frame to the page"]())) > FRAME_BYTES
    assert len(b"".join(steps["websockets: serialise the append upstream (masked)"]())) > FRAME_BYTES
    assert steps["app.ws_frames: split the page's binary frame (masked)"]() == page_frame.data
    assert steps["app.ws_frames: split the upstream's text frame"]() == upstream_frame.data
    assert len(steps["app.ws_frames: frame the binary message to the page"]()) > FRAME_BYTES
    assert len(steps["app.ws_frames: frame the append upstream (masked)"]()) > FRAME_BYTES
    assert orjson.loads(steps["serialise input_audio_buffer.append (base64 + JSON)"]())["type"] == \
        "input_audio_buffer.append"
    assert len(steps["base64-decode the delta"]()) == FRAME_BYTES


def test_target_before_needs_a_checkout_to_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_arguments(["--targets", "before,relay"])
    assert "--before DIR" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_arguments(["--targets", "before,relay", "--before", str(tmp_path)])  # no app/ in it
    (tmp_path / "app").mkdir()
    arguments = parse_arguments(["--targets", "before,relay", "--before", str(tmp_path)])
    assert arguments.targets == [Target.BEFORE, Target.RELAY]


def test_the_targets_of_issue_14_are_checked_against_the_honest_naive_relay() -> None:
    def load(target: Target, cpu: float, frames: int, idle_kib: int) -> LoadReport:
        report = LoadReport(target, lessons=150, seconds=10.0, lessons_ready=150, frames_sent=frames,
                            relay_cpu_streaming=cpu, relay_rss_before_kib=0, relay_rss_idle_kib=idle_kib)
        report.round_trip_p99_ms = 5.0
        return report

    relay, naive = load(Target.RELAY, 0.4, 75_000, 150 * 60), load(Target.NAIVE, 0.6, 75_000, 150 * 110)
    lines = targets_check([relay, naive], [], [])
    [cpu_line] = [line for line in lines if "CPU per frame" in line]
    assert cpu_line.startswith("[FAIL]")
    assert "0.67x naive" in cpu_line
    [memory_line] = [line for line in lines if "memory" in line]
    assert memory_line.startswith("[PASS]")
    assert "60 KiB" in memory_line


def test_cpu_per_frame_is_also_compared_at_the_most_lessons_both_relays_carried_within_the_limit() -> None:
    def step(target: Target, lessons: int, cpu: float, p99_ms: float) -> LoadReport:
        report = LoadReport(target, lessons=lessons, seconds=10.0, lessons_ready=lessons, frames_sent=lessons * 500,
                            relay_cpu_streaming=cpu)
        report.round_trip_p99_ms = p99_ms
        return report

    relay = CrossingReport(Target.RELAY, [step(Target.RELAY, n, n * 0.003, 2.0) for n in (50, 100, 150)], None, 150)
    naive = CrossingReport(Target.NAIVE, [step(Target.NAIVE, 50, 0.35, 3.0), step(Target.NAIVE, 100, 0.7, 6.0),
                                          step(Target.NAIVE, 150, 0.95, 40.0)], 150, 100)
    lines = targets_check([step(Target.RELAY, 150, 0.45, 2.0), step(Target.NAIVE, 150, 0.95, 40.0)], [],
                          [relay, naive])
    [below] = [line for line in lines if line.startswith("[INFO] relay CPU per frame")]
    assert below.startswith("[INFO] relay CPU per frame at 100 lessons")
    assert "60 us = 0.43x naive 140 us; at 150 naive used 95% of its core" in below


def test_a_candidate_names_its_server_checkout_and_arguments(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    candidate = Candidate.parse(f"wsproto=uvicorn@{tmp_path} --ws wsproto")
    assert (candidate.label, candidate.server, candidate.checkout) == ("wsproto", "uvicorn", tmp_path)
    assert candidate.arguments == ("--ws", "wsproto")
    with pytest.raises(argparse.ArgumentTypeError, match="server 'hypercorn'"):
        Candidate.parse("h=hypercorn")
    with pytest.raises(argparse.ArgumentTypeError, match="holds no app/"):
        Candidate.parse(f"old=app@{tmp_path / 'missing'}")


def test_one_worker_is_pinned_to_its_cpu_and_two_workers_may_use_every_cpu() -> None:
    # Started from the bench, which pins itself to the harness's CPUs, two workers left alone would share
    # the harness's one CPU instead of the machine's two.
    assert relay_cpus(Target.RELAY, 1, {0, 1}) == {1}
    assert relay_cpus(Target.BEFORE, 1, {0, 1}) == {1}
    assert relay_cpus(Target.RELAY_TWO_WORKERS, 1, {0, 1}) == {0, 1}
    assert relay_cpus(Target.RELAY_TWO_WORKERS, None, {0, 1}) is None


async def test_a_student_answers_an_event_that_came_with_the_handshake_response() -> None:
    """The echo upstream writes `session.created` right after its handshake response: both may arrive in one
    read, before the connection is handed back to the code that opened it."""
    student = DirectStudent(0, "ws://127.0.0.1:9/v1/realtime", LoadClock(), compression=None)
    socket = StudentSocket(ClientProtocol(parse_uri(student.url)), student)
    transport = RecordingTransport()
    socket.connection_made(transport)  # type: ignore[arg-type]
    request = transport.take()
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    event = b'{"type":"session.created","event_id":"event_1","session":{}}'
    socket.data_received(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n" + bytes([0x81, len(event)]) + event)
    assert socket.opened.done()
    assert orjson.loads(client_frame_payload(transport.take()))["type"] == "session.update"


class RecordingTransport:
    """Just enough of an asyncio transport to record what a protocol writes."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False

    def take(self) -> bytes:
        data, self.written = bytes(self.written), bytearray()
        return data


def client_frame_payload(frame: bytes) -> bytes:
    """The payload of one masked client frame (RFC 6455 §5.2) shorter than 64 KiB."""
    length, offset = frame[1] & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(frame[2:4], "big"), 4
    mask, payload = frame[offset:offset + 4], frame[offset + 4:offset + 4 + length]
    return bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))


def test_a_sender_behind_schedule_skips_the_frames_it_missed_and_keeps_its_own_phase() -> None:
    assert next_frame_time(1.000, 1.0004) == pytest.approx(1.020)
    assert next_frame_time(1.000, 1.085) == pytest.approx(1.100)  # the frames due at 1.02 to 1.08 are skipped
    # Two students held up by the same stall of the harness come out of it 8 ms apart, as they went in.
    first, second = next_frame_time(1.003, 1.200), next_frame_time(1.011, 1.200)
    assert second - first == pytest.approx(0.008)
    assert first > 1.200


def test_the_harness_streams_with_its_own_collector_off_and_turns_it_back_on() -> None:
    def stream_and_fail() -> None:
        with own_collector_off():
            assert not gc.isenabled()
            raise RuntimeError("a student failed")

    assert gc.isenabled()
    with pytest.raises(RuntimeError):
        stream_and_fail()
    assert gc.isenabled()


async def test_the_withdrawal_check_bench_times_the_query_that_finds_the_withdrawn_link_and_the_ended_lesson(
    tmp_path: Path,
) -> None:
    times, cpu_ms, links, lessons = await check_times_ms(f"sqlite:///{tmp_path / 'lessons.db'}", students=6,
                                                         lessons_each=2, running=4, checks=3)
    assert (len(times), links, lessons) == (3, 1, 1)
    assert cpu_ms > 0
