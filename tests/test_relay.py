"""The core lesson path over real sockets: page client → relay (uvicorn, port 0) → Realtime simulator."""

from __future__ import annotations

import asyncio
import base64
import io
import sys
from collections.abc import Callable
from typing import Any

from harness import (
    AppServer,
    bound_socket,
    log_lines,
    of_type,
    open_lesson,
    process_in_own_group,
    relay_settings,
    serve_app,
    tutor_events,
)
from sdk_oracle import assert_valid_client_event

from app.settings import Settings
from app.simulator import RealtimeSimulator


async def test_the_tutor_greets_the_student_by_name_with_audio_and_transcript(
    relay: AppServer, simulator: RealtimeSimulator
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana", level="A1")) as page:
        lesson = await page.until_type("lesson")
        done = await page.until_type("audio.done")
        transcript = await page.until_type("transcript.done", role="tutor")
    assert lesson["name"] == "Ana"
    assert lesson["simulated"] is False
    assert "Ana" in transcript["text"]
    assert done["duration_ms"] == len(page.audio) // 48 > 1000
    states = [m["state"] for m in page.messages if m["type"] == "status"]
    assert states[:3] == ["connecting", "greeting", "tutor_speaking"]


async def test_session_update_comes_first_then_exactly_one_response_create_and_no_trigger_item(
    relay: AppServer, simulator: RealtimeSimulator
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
    upstream = await simulator.next_connection()
    await upstream.wait_closed()
    types = [e["type"] for e in tutor_events(upstream.received)]
    assert types[0] == "session.update"
    assert types.count("response.create") == 1
    assert "conversation.item.create" not in types
    assert upstream.received[0]["session"]["instructions"].count('The student\'s name is "Ana".') == 1
    assert upstream.request_headers is not None
    assert upstream.request_headers["Authorization"] == "Bearer sk-test-fake-key-not-real"
    assert "OpenAI-Beta" not in upstream.request_headers


async def test_tutor_audio_reaches_the_page_byte_exact(relay: AppServer, simulator: RealtimeSimulator) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
    upstream = await simulator.next_connection()
    sent_audio = b"".join(base64.b64decode(e["delta"]) for e in of_type(upstream.sent, "response.output_audio.delta"))
    assert bytes(page.audio) == sent_audio
    assert len(sent_audio) > 48_000  # more than a second of speech


async def test_student_audio_reaches_the_upstream_byte_exact(relay: AppServer, simulator: RealtimeSimulator) -> None:
    frames = [bytes([n % 251, n % 13]) * 480 for n in range(25)]  # 25 frames of 20 ms, all different
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.hear_greeting()
        for frame in frames:
            await page.ws.send(frame)
        upstream = await simulator.next_connection()
        await upstream.wait_for(lambda events: len(of_type(events, "input_audio_buffer.append")) == len(frames))
    assert bytes(upstream.input_audio) == b"".join(frames)


async def test_microphone_audio_before_the_greeting_is_heard_is_not_relayed(
    relay: AppServer, simulator: RealtimeSimulator
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.until_type("audio.start")
        await page.ws.send(bytes(960))
        await page.hear_greeting()
        await page.ws.send(b"\x01\x00" * 480)
        upstream = await simulator.next_connection()
        await upstream.wait_for("input_audio_buffer.append")
    assert bytes(upstream.input_audio) == b"\x01\x00" * 480


async def test_transcript_deltas_reach_the_page_in_order(relay: AppServer, simulator: RealtimeSimulator) -> None:
    async with open_lesson(relay.lesson_url(name="Ana")) as page:
        await page.until_type("transcript.done", role="tutor")
    upstream = await simulator.next_connection()
    sent = [e["delta"] for e in of_type(upstream.sent, "response.output_audio_transcript.delta")]
    received = [m["text"] for m in page.messages if m["type"] == "transcript.delta" and m["role"] == "tutor"]
    assert received == sent
    assert len(sent) > 3


async def test_a_failed_greeting_reaches_the_log_with_status_details_and_the_page_as_an_error(
    simulator_with: Callable[..., Any], log_stream: io.StringIO
) -> None:
    async with simulator_with(response_fault="failed", fault_times=None, failed_code="server_error") as simulator, \
            serve_app(relay_settings(simulator.url), log_stream) as server, \
            open_lesson(server.lesson_url(name="Ana")) as page:
        error = await page.until_type("error")
        await page.drain_until_closed()
    assert error["fatal"] is True
    assert error["message"]
    assert page.ws.close_code == 1011
    logged = log_lines(log_stream)
    done = [line for line in logged if line["event"] == "response_done"]
    assert [line["status"] for line in done] == ["failed", "failed"]
    assert done[0]["status_details"]["error"]["code"] == "server_error"
    assert all(line["lesson_id"] == done[0]["lesson_id"] for line in done)
    [failed] = [line for line in logged if line["event"] == "greeting_failed"]
    assert failed["code"] == "server_error"
    assert failed["attempt"] == 2


async def test_every_event_the_relay_sends_upstream_is_a_valid_ga_client_event(
    relay: AppServer, simulator: RealtimeSimulator
) -> None:
    async with open_lesson(relay.lesson_url(name="Ana", level="B2", support="Spanish", topic="travel")) as page:
        await page.hear_greeting()
        await page.ws.send(b"\x10\x00" * 960)
        upstream = await simulator.next_connection()
        await upstream.wait_for("input_audio_buffer.append")
        await page.send_json({"type": "end"})
        await page.drain_until_closed()
    await upstream.wait_closed()
    assert {e["type"] for e in upstream.received} >= {"session.update", "response.create", "input_audio_buffer.append"}
    for event in upstream.received:
        assert_valid_client_event(event)


async def test_a_standalone_simulator_process_stands_in_for_openai(tmp_path: Any) -> None:
    """OPENAI_API_KEY and OPENAI_REALTIME_URL pointing at any GA Realtime server: the same lesson."""
    probe = bound_socket()
    port = probe.getsockname()[1]
    probe.close()
    async with process_in_own_group(sys.executable, "-m", "app.simulator", "--port", str(port), grace_s=10,
                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) as process:
        assert process.stdout is not None
        url = ""
        while not url:
            line = (await process.stdout.readline()).decode()
            assert line, "the simulator exited without printing its URL"
            url = next((word.strip("\"',") for word in line.split() if "ws://" in word), "")
        url = url[url.index("ws://"):]
        assert url == f"ws://127.0.0.1:{port}/v1/realtime"
        async with serve_app(relay_settings(url)) as server, open_lesson(server.lesson_url(name="Zoë")) as page:
            transcript = await page.until_type("transcript.done", role="tutor")
        assert "Zoë" in transcript["text"]
        assert len(page.audio) > 48_000


async def test_without_a_key_the_embedded_simulator_gives_the_lesson(log_stream: io.StringIO) -> None:
    settings = Settings(openai_api_key=None, log_format="json")
    async with serve_app(settings, log_stream) as server, open_lesson(server.lesson_url(name="Kenji")) as page:
        lesson = await page.until_type("lesson")
        transcript = await page.until_type("transcript.done", role="tutor")
    assert lesson["simulated"] is True
    assert "Kenji" in transcript["text"]
    assert len(page.audio) > 48_000
    assert any(line["event"] == "simulator_mode" for line in log_lines(log_stream))


async def test_the_embedded_simulators_server_writes_no_line_per_lesson_at_info(log_stream: io.StringIO) -> None:
    settings = Settings(openai_api_key=None, log_format="json", log_level="info")
    async with serve_app(settings, log_stream) as server:
        async with open_lesson(server.lesson_url(name="Kenji")) as page:
            await page.until_type("transcript.done", role="tutor")
            await page.send_json({"type": "end"})
            await page.until_type("usage")
            await page.drain_until_closed()
        assert await server.app.state.lessons.drain(5)
    events = [line["event"] for line in log_lines(log_stream)]
    assert "lesson_ended" in events
    # websockets' lines about the simulator's connections (uvicorn's about the page's are left out already).
    assert not {"connection open", "connection closed"} & set(events)
    assert not [event for event in events if event.startswith("server ")]
    # Nor the simulator's own routine lines: upstream_connected, session_configured, response_done say as much.
    assert [event for event in events if event.startswith("simulator_")] == ["simulator_started", "simulator_mode",
                                                                              "simulator_stopped"]


async def test_lesson_started_logs_the_lessons_level_beside_the_lines_own(
    simulator: RealtimeSimulator, log_stream: io.StringIO,
) -> None:
    async with serve_app(relay_settings(simulator.url), log_stream) as server, \
            open_lesson(server.lesson_url(name="Ana", level="B2")) as page:
        await page.until_type("lesson")
    [started] = [line for line in log_lines(log_stream) if line["event"] == "lesson_started"]
    assert (started["cefr_level"], started["level"]) == ("B2", "info")
