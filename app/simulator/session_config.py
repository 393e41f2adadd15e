"""The session a connection starts with, and how a valid session.update changes it."""

from __future__ import annotations

import copy
import time

from app.simulator.behaviour import SESSION_SECONDS
from app.simulator.voice import SAMPLE_RATE
from app.simulator.wire import JsonObject, new_id

DEFAULT_MODEL = "gpt-realtime-2.1"
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a human, "
    "but remember that you aren't a human and that you can't do human things in the real world."
)


def default_session(model: str, lifetime_seconds: float = SESSION_SECONDS) -> JsonObject:
    """The session a new connection starts with, as session.created shows it."""
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time() + lifetime_seconds),
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _turn_detection_with_defaults({"type": "server_vad"}),
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy", "speed": 1.0},
        },
    }


def _turn_detection_with_defaults(sent: JsonObject) -> JsonObject:
    if sent["type"] == "server_vad":
        defaults: JsonObject = {
            "type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500,
            "idle_timeout_ms": None, "create_response": True, "interrupt_response": True,
        }
    else:
        defaults = {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    return {**defaults, **sent}


def merge_session(current: JsonObject, update: JsonObject) -> JsonObject:
    """The effective session after `update`: only the fields sent change."""
    merged = copy.deepcopy(current)
    for key, value in update.items():
        if key != "audio":
            merged[key] = copy.deepcopy(value)
            continue
        for side, settings in value.items():
            for name, setting in settings.items():
                if name == "turn_detection" and setting is not None:
                    setting = _turn_detection_with_defaults(setting)
                elif name == "format" and setting.get("type", "audio/pcm") == "audio/pcm":
                    setting = {"type": "audio/pcm", "rate": SAMPLE_RATE}
                merged["audio"][side][name] = copy.deepcopy(setting)
    return merged


