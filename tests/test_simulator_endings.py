"""How a simulated session ends by itself: at its maximum duration, cut mid-response, or dropped.

Every event read passes the SDK oracle (realtime_client); tests wait for events, never for time.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from harness import process_in_own_group
from realtime_client import API_KEY, MODEL, RealtimeTestClient, of_type, realtime_client, running
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from app.simulator import SimulatorBehaviour

REPO = Path(__file__).resolve().parent.parent
SIXTY_MINUTES = "Your session hit the maximum duration of 60 minutes."
FEEDBACK_REQUEST = {"conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "feedback"}}


async def closed_with(client: RealtimeTestClient) -> tuple[int | None, str | None]:
    """Read (and check) events until the socket closes; its close code and reason."""
    try:
        while True:
            await client.receive()
    except ConnectionClosed:
        return client.websocket.close_code, client.websocket.close_reason


async def test_at_its_maximum_duration_a_session_says_so_and_closes_1001() -> None:
    async with running(SimulatorBehaviour(session_seconds=0)) as simulator, realtime_client(simulator) as client:
        assert client.events[0]["session"]["expires_at"] <= time.time()
        error = await client.receive()
        code, reason = await closed_with(client)
        connection = await simulator.next_connection()
        await connection.wait_closed()
    assert error["error"]["code"] == "session_expired"
    assert error["error"]["message"] == reason == "Your session hit the maximum duration of 0 seconds."
    assert code == 1001


async def test_expiring_a_session_on_demand_sends_the_real_apis_error_and_close() -> None:
    async with running(SimulatorBehaviour(audio_pace=0)) as simulator, realtime_client(simulator) as client:
        connection = await simulator.next_connection()
        await connection.expire()
        error = await client.receive()
        code, reason = await closed_with(client)
    assert error["error"] == {
        "type": "invalid_request_error", "code": "session_expired", "message": SIXTY_MINUTES,
        "param": None, "event_id": None,
    }
    assert (code, reason) == (1001, SIXTY_MINUTES)


async def test_a_drop_mid_response_ends_the_connection_without_a_close_frame() -> None:
    behaviour = SimulatorBehaviour(audio_pace=0, cut_after_deltas=2, cut_how="drop")
    async with running(behaviour) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        code, _ = await closed_with(client)
        connection = await simulator.next_connection()
        await connection.wait_closed()
    assert code == 1006
    assert len(of_type(client.events, "response.output_audio.delta")) == 2
    assert of_type(client.events, "response.done") == []


async def test_a_cut_can_pick_the_connection_and_the_response_even_out_of_band() -> None:
    behaviour = SimulatorBehaviour(audio_pace=0, cut_after_deltas=3, cut_response=2, cut_connection=2)
    async with running(behaviour) as simulator:
        async with realtime_client(simulator) as first:
            await first.configure()
            for request in ({}, FEEDBACK_REQUEST):
                await first.send({"type": "response.create", "response": request})
                assert (await first.until("response.done"))[-1]["response"]["status"] == "completed"
        async with realtime_client(simulator) as second:
            await second.configure()
            await second.send({"type": "response.create"})
            assert (await second.until("response.done"))[-1]["response"]["status"] == "completed"
            await second.send({"type": "response.create", "response": FEEDBACK_REQUEST})
            code, reason = await closed_with(second)
    assert (code, reason) == (1011, "simulated upstream failure")
    assert len(of_type(second.events, "response.output_text.delta")) == 3
    assert len(of_type(second.events, "response.done")) == 1


async def test_a_test_can_drop_a_connection_mid_response() -> None:
    async with running(SimulatorBehaviour(audio_pace=1)) as simulator, realtime_client(simulator) as client:
        await client.configure()
        await client.send({"type": "response.create"})
        await client.until("response.output_audio.delta")
        connection = await simulator.next_connection()
        connection.drop()
        code, _ = await closed_with(client)
        await connection.wait_closed()
    assert code == 1006
    assert of_type(client.events, "response.done") == []


async def test_the_standalone_command_takes_the_session_length_and_the_cut() -> None:
    async with process_in_own_group(
        sys.executable, "-m", "app.simulator", "--port", "0", "--session-seconds", "120",
        "--cut-after-deltas", "1", "--cut-how", "drop", "--audio-pace", "0",
        grace_s=10, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    ) as process:
        assert process.stdout is not None
        url = None
        async with asyncio.timeout(30):
            while url is None:
                line = (await process.stdout.readline()).decode()
                assert line, "the simulator exited before printing its URL"
                found = re.search(r"listening on (ws://\S+/v1/realtime)", line)
                url = found.group(1) if found else None
        async with connect(f"{url}?model={MODEL}", additional_headers={"Authorization": f"Bearer {API_KEY}"},
                           max_size=None) as websocket:
            client = RealtimeTestClient(websocket)
            created = await client.receive()
            await client.send({"type": "response.create"})
            code, _ = await closed_with(client)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await process.wait() == 0
    assert time.time() + 100 < created["session"]["expires_at"] <= time.time() + 120
    assert code == 1006


@pytest.mark.parametrize("flag", [["--session-seconds", "0"], ["--session-seconds", "soon"],
                                  ["--cut-after-deltas", "0"], ["--cut-how", "explode"],
                                  ["--feedback-delay-ms", "-5"], ["--event-delay-ms", "slow"]])
async def test_the_standalone_command_refuses_bad_values(flag: list[str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.simulator", "--port", "0", *flag,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 2
    assert flag[0] in stderr.decode()
