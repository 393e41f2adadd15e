"""A Realtime client for tests against the simulator: every event it reads passes the SDK oracle.

Every event read goes through `assert_valid_server_event` and every well-formed event sent through
`assert_valid_client_event`.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sdk_oracle import assert_valid_client_event, assert_valid_server_event
from websockets.asyncio.client import ClientConnection, connect

from app.simulator import RealtimeSimulator, SimulatorBehaviour
from app.simulator.voice import SAMPLE_RATE, Utterance

API_KEY = "sk-test-fake"
MODEL = "gpt-realtime-2.1"
PROMPT = (
    "You are a warm, patient English tutor giving a spoken lesson to one student.\n\n"
    "# The student\n"
    "The student's name is Ana.\n"
    "The student's CEFR level is A1.\n"
    "The target language is English.\n"
)
GA_SESSION: dict[str, Any] = {
    "type": "realtime",
    "instructions": PROMPT,
    "output_modalities": ["audio"],
    "audio": {
        "input": {
            "format": {"type": "audio/pcm", "rate": 24000},
            "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                               "silence_duration_ms": 500, "create_response": True, "interrupt_response": True},
            "transcription": {"model": "gpt-transcribe", "language": "en"},
            "noise_reduction": {"type": "near_field"},
        },
        "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
    },
}


class RealtimeTestClient:
    """A websockets client that checks every event against the SDK oracle and keeps what it read."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.events: list[dict[str, Any]] = []

    async def send(self, event: dict[str, Any], *, conforming: bool = True) -> None:
        """Send `event`; `conforming=False` for the deliberately invalid ones."""
        if conforming:
            assert_valid_client_event(event)
        await self.websocket.send(json.dumps(event))

    async def receive(self) -> dict[str, Any]:
        async with asyncio.timeout(10):
            event: dict[str, Any] = json.loads(await self.websocket.recv())
        assert_valid_server_event(event)
        assert event["event_id"].startswith("event_")
        self.events.append(event)
        return event

    async def until(self, event_type: str) -> list[dict[str, Any]]:
        """Every event up to and including the next one of `event_type`."""
        received = [await self.receive()]
        while received[-1]["type"] != event_type:
            received.append(await self.receive())
        return received

    async def configure(self, session: dict[str, Any] | None = None) -> dict[str, Any]:
        await self.send({"type": "session.update", "event_id": "evt_configure", "session": session or GA_SESSION})
        (updated,) = [event for event in await self.until("session.updated") if event["type"] == "session.updated"]
        return updated

    async def append(self, pcm: bytes, chunk_bytes: int = 4800) -> None:
        for start in range(0, len(pcm), chunk_bytes):
            audio = base64.b64encode(pcm[start : start + chunk_bytes]).decode()
            await self.send({"type": "input_audio_buffer.append", "audio": audio})


@asynccontextmanager
async def realtime_client(
    simulator: RealtimeSimulator, headers: dict[str, str] | None = None
) -> AsyncIterator[RealtimeTestClient]:
    """A connected client whose session.created has been read (and checked)."""
    async with connect(
        f"{simulator.url}?model={MODEL}",
        additional_headers=headers or {"Authorization": f"Bearer {API_KEY}"},
        max_size=None,
    ) as websocket:
        client = RealtimeTestClient(websocket)
        created = await client.receive()
        assert created["type"] == "session.created"
        yield client


@asynccontextmanager
async def running(behaviour: SimulatorBehaviour, **options: Any) -> AsyncIterator[RealtimeSimulator]:
    async with RealtimeSimulator(behaviour, **options) as simulator:
        yield simulator


def speech(text: str = "Hello, I am fine, thank you very much.") -> bytes:
    """Speech-like PCM16 for the student's microphone: loud enough for the VAD."""
    return b"".join(Utterance(text).chunks())


def silence(ms: int) -> bytes:
    return bytes(ms * SAMPLE_RATE // 1000 * 2)


def of_type(events: list[dict[str, Any]], event_type: str) -> list[dict[str, Any]]:
    return [event for event in events if event["type"] == event_type]
