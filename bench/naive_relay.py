"""A naive relay: the baseline the real relay is measured against. Not a model to follow.

It speaks the same browser protocol on ``/ws/lesson`` (docs/protocol.md) and the same GA Realtime
protocol upstream, written the way the public one-coroutine samples are (the Twilio and Azure ones):
every upstream event goes through ``json.loads`` into a dict, audio is base64-encoded and decoded with
the standard library, both directions live in one handler closure sharing a dict of state, and nothing
on the hot path was thought about. It is correct enough for the bench (greets, holds the microphone until
the greeting's ``playback`` arrives, relays audio and transcripts) and nothing more: no barge-in, no
limits, no retries.

Two applications:

- ``app`` (target ``naive``): exactly that, the honest baseline every figure is compared with.
- ``validating_app`` (target ``naive-pydantic``): the same relay that also runs every upstream event and
  every page message through a pydantic model first, as a relay that validates at its boundary would.

Run by the bench as ``python -m uvicorn bench.naive_relay:app``; reads OPENAI_REALTIME_URL,
OPENAI_API_KEY and OPENAI_REALTIME_MODEL from the environment.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import uuid
from collections.abc import Callable
from typing import Any

import websockets
from fastapi import FastAPI, WebSocket
from pydantic import BaseModel, ConfigDict


class UpstreamEvent(BaseModel):
    """Any Realtime server event, validated whole (``validating_app`` only)."""

    model_config = ConfigDict(extra="allow")

    type: str
    event_id: str | None = None
    response_id: str | None = None
    item_id: str | None = None
    delta: str | None = None
    transcript: str | None = None
    response: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class BrowserMessage(BaseModel):
    type: str
    item_id: str | None = None
    played_ms: int | None = None


def _session_update(name: str, level: str) -> dict[str, Any]:
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "instructions": f"You are a patient English tutor. The student is {name}, level {level}.",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "turn_detection": {"type": "server_vad", "create_response": True, "interrupt_response": True},
                },
                "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin"},
            },
        },
    }


Decode = Callable[[str | bytes], dict[str, Any]]


def _validated_by(model: type[BaseModel]) -> Decode:
    def decode(raw: str | bytes) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(raw)
        model.model_validate(message)
        return message

    return decode


def naive_app(*, decode_event: Decode, decode_control: Decode, title: str) -> FastAPI:
    """The naive relay as a FastAPI app; `decode_*` turn an upstream event / page message into a dict."""
    app = FastAPI(title=title)

    @app.websocket("/ws/lesson")
    async def lesson(ws: WebSocket) -> None:
        name = ws.query_params.get("name", "student")
        level = ws.query_params.get("level", "A1")
        await ws.accept()
        await ws.send_text(
            json.dumps(
                {"type": "lesson", "lesson_id": str(uuid.uuid4()), "simulated": False, "sample_rate": 24000,
                 "name": name, "level": level}
            )
        )  # fmt: skip
        await ws.send_text(json.dumps({"type": "status", "state": "connecting"}))
        model = os.environ.get("OPENAI_REALTIME_MODEL", "gpt-realtime-2.1")
        url = os.environ["OPENAI_REALTIME_URL"] + "?model=" + model
        headers = {"Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")}
        state: dict[str, Any] = {"mic_open": False, "greeting_item": None, "item": None, "item_bytes": 0}

        async with websockets.connect(url, additional_headers=headers, max_size=None) as upstream:

            async def browser_to_upstream() -> None:
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        return
                    if message.get("bytes") is not None:
                        if state["mic_open"]:
                            audio = base64.b64encode(message["bytes"]).decode()
                            await upstream.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                        continue
                    control = decode_control(message["text"])
                    if control["type"] == "end":
                        return
                    if (
                        control["type"] == "playback"
                        and control.get("item_id") == state["greeting_item"]
                        and (control.get("played_ms") or 0) >= state.get("greeting_ms", 0)
                    ):
                        state["mic_open"] = True

            async def upstream_to_browser() -> None:
                async for raw in upstream:
                    event = decode_event(raw)
                    event_type = event["type"]
                    if event_type == "session.created":
                        await upstream.send(json.dumps(_session_update(name, level)))
                    elif event_type == "session.updated":
                        await upstream.send(json.dumps({"type": "response.create"}))
                        await ws.send_text(json.dumps({"type": "status", "state": "greeting"}))
                    elif event_type == "response.output_audio.delta":
                        if event["item_id"] != state["item"]:
                            state["item"], state["item_bytes"] = event["item_id"], 0
                            if state["greeting_item"] is None:
                                state["greeting_item"] = event["item_id"]
                            await ws.send_text(
                                json.dumps(
                                    {"type": "audio.start", "item_id": event["item_id"],
                                     "response_id": event["response_id"]}
                                )
                            )  # fmt: skip
                        audio = base64.b64decode(event["delta"])
                        state["item_bytes"] += len(audio)
                        await ws.send_bytes(audio)
                    elif event_type == "response.output_audio.done":
                        duration_ms = state["item_bytes"] // 48
                        if event["item_id"] == state["greeting_item"]:
                            state["greeting_ms"] = duration_ms
                        await ws.send_text(
                            json.dumps({"type": "audio.done", "item_id": event["item_id"], "duration_ms": duration_ms})
                        )
                    elif event_type == "response.output_audio_transcript.delta":
                        await ws.send_text(
                            json.dumps(
                                {"type": "transcript.delta", "role": "tutor", "item_id": event["item_id"],
                                 "text": event["delta"]}
                            )
                        )  # fmt: skip
                    elif event_type == "response.output_audio_transcript.done":
                        await ws.send_text(
                            json.dumps(
                                {"type": "transcript.done", "role": "tutor", "item_id": event["item_id"],
                                 "text": event["transcript"]}
                            )
                        )  # fmt: skip
                    elif event_type == "response.done":
                        await ws.send_text(json.dumps({"type": "status", "state": "listening"}))
                    elif event_type == "error":
                        error = event.get("error") or {}
                        await ws.send_text(
                            json.dumps(
                                {"type": "error", "code": error.get("code"), "message": error.get("message"),
                                 "fatal": False}
                            )
                        )  # fmt: skip

            tasks = [asyncio.create_task(browser_to_upstream()), asyncio.create_task(upstream_to_browser())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    return app


app = naive_app(decode_event=json.loads, decode_control=json.loads, title="naive relay (bench baseline)")
validating_app = naive_app(
    decode_event=_validated_by(UpstreamEvent),
    decode_control=_validated_by(BrowserMessage),
    title="naive relay validating with pydantic (bench baseline)",
)
