"""A protocol-faithful OpenAI Realtime (GA) server: the offline demo backend and the tests' upstream.

    python -m app.simulator --port 8765 [--fault failed] [--record-dir DIR] ...

It speaks the GA WebSocket interface at /v1/realtime: session.created on connect, strict
session.update validation (beta field names are refused like the real API refuses them), the full
response event sequence with speech-like audio paced faster than real time, cancellation, truncation,
an energy VAD on appended audio, and the failure modes a relay must survive (SimulatorBehaviour).

Invariants:
- every server event validates against the official SDK's server-event models (tests/sdk_oracle.py);
- one connection's events are written under one lock, so `sent` is in wire order;
- at most one response is active per connection; it stops being active as its response.done is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import copy
import http
import json
import math
import re
import signal
import sys
import time
import uuid
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlsplit

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from app.logging import configure_logging
from app.settings import load_settings
from app.voice import BYTES_PER_SAMPLE, CHUNK_SAMPLES, SAMPLE_RATE, Utterance

log = structlog.get_logger(__name__)

JsonObject = dict[str, Any]
ResponseFault = Literal["none", "failed", "cancelled", "incomplete", "empty"]

BYTES_PER_MS = SAMPLE_RATE * BYTES_PER_SAMPLE // 1000  # 48 for PCM16 24 kHz mono
MAX_APPEND_BYTES = 15 * 1024 * 1024
MIN_COMMIT_MS = 100
VAD_WINDOW_MS = 20
SESSION_SECONDS = 3600  # the real API's maximum session length
DEFAULT_MODEL = "gpt-realtime-2.1"
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a human, "
    "but remember that you aren't a human and that you can't do human things in the real world."
)
VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")
BETA_HEADER_VALUE = "realtime=v1"

# The fields the GA interface knows, level by level; anything else is an "Unknown parameter" (which
# is how beta names such as session.modalities or session.voice are refused).
SESSION_KEYS = frozenset({
    "type", "audio", "include", "instructions", "max_output_tokens", "model", "output_modalities",
    "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools", "tracing", "truncation",
})
AUDIO_KEYS = frozenset({"input", "output"})
AUDIO_INPUT_KEYS = frozenset({"format", "noise_reduction", "transcription", "turn_detection"})
AUDIO_OUTPUT_KEYS = frozenset({"format", "speed", "voice"})
SERVER_VAD_KEYS = frozenset({
    "type", "threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms",
    "create_response", "interrupt_response",
})
SEMANTIC_VAD_KEYS = frozenset({"type", "eagerness", "create_response", "interrupt_response"})
TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt", "delay", "keywords", "languages"})
NOISE_REDUCTION_KEYS = frozenset({"type", "strength"})
RESPONSE_KEYS = frozenset({
    "audio", "conversation", "input", "instructions", "max_output_tokens", "metadata",
    "output_modalities", "parallel_tool_calls", "prompt", "reasoning", "tool_choice", "tools",
})
# Extra keys each client event type may carry besides `type` and `event_id`.
CLIENT_EVENT_KEYS: dict[str, frozenset[str]] = {
    "session.update": frozenset({"session"}),
    "input_audio_buffer.append": frozenset({"audio"}),
    "input_audio_buffer.commit": frozenset(),
    "input_audio_buffer.clear": frozenset(),
    "output_audio_buffer.clear": frozenset(),
    "conversation.item.create": frozenset({"item", "previous_item_id"}),
    "conversation.item.retrieve": frozenset({"item_id"}),
    "conversation.item.delete": frozenset({"item_id"}),
    "conversation.item.truncate": frozenset({"item_id", "content_index", "audio_end_ms"}),
    "response.create": frozenset({"response"}),
    "response.cancel": frozenset({"response_id"}),
}
# Silence that ends a turn for semantic_vad, by eagerness (the real model decides semantically).
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}

# What a refused handshake answers, like api.openai.com does: (error type, code, message).
HANDSHAKE_ERRORS: dict[int, tuple[str, str | None, str]] = {
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    429: ("insufficient_quota", "insufficient_quota",
          "You exceeded your current quota, please check your plan and billing details."),
    500: ("server_error", "server_error", "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded, please try again later."),
}
# What a failed response says in status_details.error, by code: (error type, message).
FAILED_RESPONSE_ERRORS: dict[str, tuple[str, str]] = {
    "insufficient_quota": ("insufficient_quota",
                           "You exceeded your current quota, please check your plan and billing details."),
    "rate_limit_exceeded": ("rate_limit_exceeded", "Rate limit reached for tokens per min."),
    "server_error": ("server_error", "The server had an error while processing your request."),
}

_NAME_LINE = re.compile(r"The student's name is (.+?)\.[ \t]*$", re.MULTILINE)
_LEVEL_LINE = re.compile(r"The student's CEFR level is ([ABC][12])\.", re.MULTILINE)
_LANGUAGE_LINE = re.compile(r"The target language is (.+?)\.[ \t]*$", re.MULTILINE)

# Short replies by CEFR band; {name} is the student's name.
_REPLIES: dict[str, tuple[str, ...]] = {
    "A": (
        "Very good, {name}! Now tell me: what is your favourite food?",
        "Great job, {name}. Where do you live?",
        "Nice, {name}! What do you like to do at the weekend?",
        "Well done, {name}. Do you have a brother or a sister?",
    ),
    "B": (
        "That's interesting, {name}. Could you tell me a little more about it?",
        "Good point, {name}. What would you do differently next time?",
        "I see, {name}. How did that make you feel?",
        "Nicely put, {name}. Can you give me an example?",
    ),
    "C": (
        "That's a nuanced view, {name}. How would you counter the opposite argument?",
        "Fascinating, {name}. To what extent do you think that is changing?",
        "Well argued, {name}. Could you rephrase that more formally?",
        "Interesting, {name}. What assumptions lie behind that opinion?",
    ),
}


@dataclass(frozen=True)
class SimulatorBehaviour:
    """How the simulator misbehaves (or not). The defaults are a healthy, fast upstream."""

    response_fault: ResponseFault = "none"
    fault_times: int | None = 1  # how many responses, from the first, get the fault; None = every one
    failed_code: str = "server_error"  # status_details.error.code of a failed response
    cut_after_deltas: int | None = None  # close 1011 after this many audio deltas of the first response
    never_update: bool = False  # never answer session.update
    never_create: bool = False  # swallow response.create: no response.created ever
    refuse_handshake: int | None = None  # answer the HTTP handshake with this status and a JSON error
    event_delay_ms: float = 0  # delay before every server event (a slow upstream)
    audio_pace: float = 4.0  # audio sent this many times faster than real time; 0 = as fast as possible
    vad: bool = True  # energy VAD on appended audio, honouring the session's turn_detection
    session_seconds: float = SESSION_SECONDS  # then error session_expired and close 1000, like the real API

    def fault_for(self, response_number: int) -> ResponseFault:
        """The fault of the `response_number`-th response of a connection (counted from 1)."""
        if self.fault_times is None or response_number <= self.fault_times:
            return self.response_fault
        return "none"


class _ConnectionCut(Exception):
    """The simulator closed the socket on purpose (cut_after_deltas); the response stops here."""


class ClientEventError(Exception):
    """A client event the real API would refuse; becomes an `error` server event."""

    def __init__(
        self, code: str, message: str, *, param: str | None = None, error_type: str = "invalid_request_error"
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param
        self.error_type = error_type


def new_id(prefix: str) -> str:
    """An id shaped like the real API's (`event_…`, `sess_…`, `resp_…`, `item_…`, `conv_…`)."""
    return f"{prefix}_{uuid.uuid4().hex[:21]}"


def tutor_facts(instructions: str) -> tuple[str | None, str, str]:
    """(student name, CEFR level, target language) read from the lines the relay's prompt always has."""
    name = _NAME_LINE.search(instructions)
    level = _LEVEL_LINE.search(instructions)
    language = _LANGUAGE_LINE.search(instructions)
    return (
        name.group(1).strip() if name else None,
        level.group(1) if level else "A1",
        language.group(1).strip() if language else "English",
    )


def tutor_text(instructions: str, turns_spoken: int) -> str:
    """What the tutor says after `turns_spoken` earlier turns with content: a greeting first, then replies."""
    name, level, language = tutor_facts(instructions)
    if turns_spoken == 0:
        if name is None:
            return f"Hello! I am your {language} tutor. How are you today?"
        return f"Hello {name}! I am your {language} tutor. How are you today?"
    replies = _REPLIES[level[0]]
    reply = replies[(turns_spoken - 1) % len(replies)]
    return reply.format(name=name) if name else reply.replace(", {name}", "")


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


# --- validation of client payloads: each raises ClientEventError the way the real API answers -----


def _unknown_parameter(path: str) -> ClientEventError:
    return ClientEventError("unknown_parameter", f"Unknown parameter: '{path}'.", param=path)


def _invalid_value(path: str, value: object, supported: str | None = None) -> ClientEventError:
    message = f"Invalid value: {value!r}." + (f" Supported values are: {supported}." if supported else "")
    return ClientEventError("invalid_value", message, param=path)


def _expect_object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ClientEventError(
            "invalid_type",
            f"Invalid type for '{path}': expected an object, but got {type(value).__name__} instead.",
            param=path,
        )
    return value


def _expect_keys(value: JsonObject, allowed: frozenset[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise _unknown_parameter(f"{path}.{key}" if path else key)


def _check_type(value: object, expected: type | tuple[type, ...], path: str) -> None:
    # bool is an int in Python, never in JSON Schema.
    if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected)):
        raise ClientEventError("invalid_type", f"Invalid type for '{path}': got {value!r}.", param=path)


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _check_output_modalities(value: object, path: str) -> None:
    if not isinstance(value, list) or value not in (["audio"], ["text"]):
        raise ClientEventError(
            "invalid_value",
            f"Invalid modalities: {value!r}. Supported combinations are: ['text'] and ['audio'].",
            param=path,
        )


def _check_max_output_tokens(value: object, path: str) -> None:
    if value != "inf" and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 4096):
        raise _invalid_value(path, value, "an integer between 1 and 4096, or 'inf'")


def _check_format(value: object, path: str) -> None:
    audio_format = _expect_object(value, path)
    _expect_keys(audio_format, frozenset({"type", "rate"}), path)
    format_type = audio_format.get("type", "audio/pcm")
    if format_type not in AUDIO_FORMATS:
        raise _invalid_value(f"{path}.type", format_type, ", ".join(repr(f) for f in AUDIO_FORMATS))
    if "rate" in audio_format:
        if format_type != "audio/pcm":
            raise _unknown_parameter(f"{path}.rate")
        if audio_format["rate"] != SAMPLE_RATE:
            raise _invalid_value(f"{path}.rate", audio_format["rate"], str(SAMPLE_RATE))


def _check_voice(value: object, path: str) -> None:
    if isinstance(value, dict):
        _expect_keys(value, frozenset({"id"}), path)
        _check_type(value.get("id"), str, f"{path}.id")
    elif value not in VOICES:
        raise _invalid_value(path, value, ", ".join(repr(voice) for voice in VOICES))


def _check_turn_detection(value: object, path: str) -> None:
    if value is None:
        return
    turn_detection = _expect_object(value, path)
    kind = turn_detection.get("type")
    if kind not in ("server_vad", "semantic_vad"):
        raise _invalid_value(f"{path}.type", kind, "'server_vad', 'semantic_vad'")
    _expect_keys(turn_detection, SERVER_VAD_KEYS if kind == "server_vad" else SEMANTIC_VAD_KEYS, path)
    for key in ("create_response", "interrupt_response"):
        if key in turn_detection:
            _check_type(turn_detection[key], bool, f"{path}.{key}")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in turn_detection:
            _check_type(turn_detection[key], int, f"{path}.{key}")
    if turn_detection.get("idle_timeout_ms") is not None:
        _check_type(turn_detection["idle_timeout_ms"], int, f"{path}.idle_timeout_ms")
    if "threshold" in turn_detection:
        threshold = turn_detection["threshold"]
        _check_type(threshold, (int, float), f"{path}.threshold")
        if not 0.0 <= threshold <= 1.0:
            raise _invalid_value(f"{path}.threshold", threshold, "a number between 0 and 1")
    if "eagerness" in turn_detection and turn_detection["eagerness"] not in SEMANTIC_SILENCE_MS:
        raise _invalid_value(f"{path}.eagerness", turn_detection["eagerness"], "'low', 'medium', 'high', 'auto'")


def _check_audio_input(value: object, path: str) -> None:
    audio_input = _expect_object(value, path)
    _expect_keys(audio_input, AUDIO_INPUT_KEYS, path)
    if "format" in audio_input:
        _check_format(audio_input["format"], f"{path}.format")
    if "turn_detection" in audio_input:
        _check_turn_detection(audio_input["turn_detection"], f"{path}.turn_detection")
    if audio_input.get("transcription") is not None:
        transcription = _expect_object(audio_input["transcription"], f"{path}.transcription")
        _expect_keys(transcription, TRANSCRIPTION_KEYS, f"{path}.transcription")
    if audio_input.get("noise_reduction") is not None:
        noise_reduction = _expect_object(audio_input["noise_reduction"], f"{path}.noise_reduction")
        _expect_keys(noise_reduction, NOISE_REDUCTION_KEYS, f"{path}.noise_reduction")
        if noise_reduction.get("type") not in (None, "near_field", "far_field"):
            raise _invalid_value(f"{path}.noise_reduction.type", noise_reduction["type"], "'near_field', 'far_field'")


def _check_audio_output(value: object, path: str) -> None:
    audio_output = _expect_object(value, path)
    _expect_keys(audio_output, AUDIO_OUTPUT_KEYS, path)
    if "format" in audio_output:
        _check_format(audio_output["format"], f"{path}.format")
    if "voice" in audio_output:
        _check_voice(audio_output["voice"], f"{path}.voice")
    if "speed" in audio_output:
        speed = audio_output["speed"]
        _check_type(speed, (int, float), f"{path}.speed")
        if not 0.25 <= speed <= 1.5:
            raise _invalid_value(f"{path}.speed", speed, "a number between 0.25 and 1.5")


def validate_session(session: object) -> JsonObject:
    """Check a session.update's `session` the way the GA API does; return it when acceptable."""
    checked = _expect_object(session, "session")
    _expect_keys(checked, SESSION_KEYS, "session")
    if "type" not in checked:
        raise ClientEventError(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", param="session.type"
        )
    if checked["type"] != "realtime":
        # Transcription sessions exist in the real API; a tutor never asks for one.
        raise _invalid_value("session.type", checked["type"], "'realtime'")
    if "instructions" in checked:
        _check_type(checked["instructions"], str, "session.instructions")
    if "output_modalities" in checked:
        _check_output_modalities(checked["output_modalities"], "session.output_modalities")
    if "max_output_tokens" in checked:
        _check_max_output_tokens(checked["max_output_tokens"], "session.max_output_tokens")
    if "audio" in checked:
        audio = _expect_object(checked["audio"], "session.audio")
        _expect_keys(audio, AUDIO_KEYS, "session.audio")
        if "input" in audio:
            _check_audio_input(audio["input"], "session.audio.input")
        if "output" in audio:
            _check_audio_output(audio["output"], "session.audio.output")
    return checked


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


def validate_response_params(params: object) -> JsonObject:
    """Check a response.create's `response` (response-level overrides); return it when acceptable."""
    checked = _expect_object(params, "response")
    _expect_keys(checked, RESPONSE_KEYS, "response")
    if "instructions" in checked:
        _check_type(checked["instructions"], str, "response.instructions")
    if "output_modalities" in checked:
        _check_output_modalities(checked["output_modalities"], "response.output_modalities")
    if "max_output_tokens" in checked:
        _check_max_output_tokens(checked["max_output_tokens"], "response.max_output_tokens")
    if "conversation" in checked:
        _check_type(checked["conversation"], str, "response.conversation")
    if "metadata" in checked and checked["metadata"] is not None:
        _expect_object(checked["metadata"], "response.metadata")
    if "audio" in checked:
        audio = _expect_object(checked["audio"], "response.audio")
        _expect_keys(audio, frozenset({"output"}), "response.audio")
        if "output" in audio:
            output = _expect_object(audio["output"], "response.audio.output")
            _expect_keys(output, frozenset({"format", "voice"}), "response.audio.output")
            if "format" in output:
                _check_format(output["format"], "response.audio.output.format")
            if "voice" in output:
                _check_voice(output["voice"], "response.audio.output.voice")
    return checked


def pcm16_rms(pcm: bytes) -> float:
    """Root mean square of PCM16 little-endian samples (0 for no samples)."""
    samples = array("h")
    samples.frombytes(pcm[: len(pcm) // 2 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    if not samples:
        return 0.0
    return math.sqrt(sum(sample * sample for sample in samples) / len(samples))


def vad_rms_threshold(threshold: float) -> float:
    """The RMS a 20 ms window must reach to count as speech, for a session `threshold` in [0, 1].

    0.5 (the default) is -40 dBFS: quiet speech counts, a silent or near-silent microphone does not.
    """
    return float(32768 * 10 ** ((-60 + 40 * threshold) / 20))


def _usage(
    *, input_text: int, input_audio: int, cached: int, output_text: int, output_audio: int
) -> JsonObject:
    cached_text = min(cached, input_text)
    return {
        "total_tokens": input_text + input_audio + output_text + output_audio,
        "input_tokens": input_text + input_audio,
        "output_tokens": output_text + output_audio,
        "input_token_details": {
            "text_tokens": input_text,
            "audio_tokens": input_audio,
            "image_tokens": 0,
            "cached_tokens": cached,
            "cached_tokens_details": {
                "text_tokens": cached_text, "audio_tokens": cached - cached_text, "image_tokens": 0,
            },
        },
        "output_token_details": {"text_tokens": output_text, "audio_tokens": output_audio},
    }


def _text_tokens(text: str) -> int:
    return max(1, round(len(text) / 4))


@dataclass
class _Response:
    """One response from response.created to response.done."""

    id: str
    number: int
    fault: ResponseFault
    instructions: str
    facts: str  # where tutor_facts() looks for the student's name, level and language
    output_modalities: list[str]
    voice: str | JsonObject
    in_conversation: bool
    metadata: JsonObject | None
    cancel_reason: str | None = None
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SimulatedConnection:
    """One accepted Realtime connection: its state, and everything that crossed it."""

    def __init__(
        self,
        websocket: ServerConnection,
        *,
        number: int,
        behaviour: SimulatorBehaviour,
        record_path: Path | None,
        keep_history: bool,
    ) -> None:
        self.number = number  # 1 for the first connection of a simulator
        self.request_headers = websocket.request.headers if websocket.request else None
        self.received: list[JsonObject] = []
        self.sent: list[JsonObject] = []
        self.input_audio = bytearray()
        self.record_path = record_path
        self.session: JsonObject = default_session(_model_of(websocket), behaviour.session_seconds)
        self._websocket = websocket
        self._behaviour = behaviour
        self._keep_history = keep_history
        self._record: IO[bytes] | None = None
        self._log = log.bind(connection=number)
        self._send_lock = asyncio.Lock()
        self._received_changed = asyncio.Condition()
        self._sent_changed = asyncio.Condition()
        self._closed = asyncio.Event()
        self._conversation_id = new_id("conv")
        self._items: dict[str, JsonObject] = {}  # the conversation, in order
        self._item_audio_ms: dict[str, int] = {}  # assistant audio sent per item, for truncate
        self._response: _Response | None = None
        self._responses_created = 0
        self._turns_spoken = 0  # responses that said something: a failed greeting is greeted again
        self._previous_input_tokens = 0
        self._assistant_audio_sent = False  # the voice is fixed once audio was produced
        self._conversation_audio_ms = 0
        self._conversation_text_tokens = 0
        # The input audio buffer and the VAD that watches it.
        self._buffer = bytearray()
        self._vad_pending = bytearray()
        self._vad_position_ms = 0
        self._speech_item_id: str | None = None
        self._quiet_ms = 0

    # --- public helpers for tests ----------------------------------------------------------------

    # The public API takes `timeout` arguments, as the tests that use it expect (hence the noqa).
    async def wait_for(
        self, predicate: Callable[[list[JsonObject]], bool] | str, timeout: float = 5  # noqa: ASYNC109
    ) -> None:
        """Return once `predicate(received)` holds; a str waits for a client event of that type."""
        test = _type_predicate(predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout), self._received_changed:
            await self._received_changed.wait_for(lambda: test(self.received))

    async def wait_for_sent(
        self, predicate: Callable[[list[JsonObject]], bool] | str, timeout: float = 5  # noqa: ASYNC109
    ) -> None:
        """Return once `predicate(sent)` holds; a str waits for a server event of that type."""
        test = _type_predicate(predicate) if isinstance(predicate, str) else predicate
        async with asyncio.timeout(timeout), self._sent_changed:
            await self._sent_changed.wait_for(lambda: test(self.sent))

    async def wait_closed(self, timeout: float = 5) -> None:  # noqa: ASYNC109
        """Return once the connection is closed and its handler has finished."""
        async with asyncio.timeout(timeout):
            await self._closed.wait()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # --- the connection's life -------------------------------------------------------------------

    async def serve(self) -> None:
        """Run the connection until the client or the simulator closes it."""
        self._log.info("simulator_connection_open", model=self.session["model"])
        expiry: asyncio.Task[None] | None = None
        try:
            if self.record_path is not None:
                self._record = self.record_path.open("wb")
            if self.request_headers is not None and BETA_HEADER_VALUE in self.request_headers.get("OpenAI-Beta", ""):
                # The beta interface was switched off: refuse it after the handshake, like the real API.
                await self._send_error(
                    ClientEventError(
                        "beta_api_shape_disabled",
                        "The Realtime beta API shape has been disabled. Remove the 'OpenAI-Beta: realtime=v1' "
                        "header to use the GA interface.",
                    ),
                    client_event_id=None,
                )
                await self._websocket.close(4000, "beta API shape disabled")
                return
            await self._send({"type": "session.created", "session": self._session_view()})
            expiry = asyncio.create_task(self._expire_after(self._behaviour.session_seconds))
            async for message in self._websocket:
                await self._handle_message(message)
        except ConnectionClosed:
            pass
        finally:
            if expiry is not None:
                expiry.cancel()
            await self._abandon_response()
            if self._record is not None:
                self._record.close()
            self._closed.set()
            self._log.info("simulator_connection_closed", code=self._websocket.close_code)

    async def _expire_after(self, seconds: float) -> None:
        """A Realtime session lasts at most `expires_at`: then an error, and the socket closes."""
        await asyncio.sleep(seconds)
        with contextlib.suppress(ConnectionClosed):
            await self._send_error(
                ClientEventError("session_expired", f"Your session hit the maximum duration of {seconds:g} seconds."),
                client_event_id=None,
            )
            await self._websocket.close(1000, "session expired")

    async def _abandon_response(self) -> None:
        response = self._response
        if response is not None and response.task is not None and not response.task.done():
            response.task.cancel()
            await asyncio.wait({response.task})

    async def _handle_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._send_error(
                ClientEventError("invalid_request", "Binary frames are not supported; send JSON events."), None
            )
            return
        try:
            event = json.loads(message)
        except json.JSONDecodeError as exc:
            await self._send_error(ClientEventError("invalid_json", f"Invalid JSON: {exc.msg}."), None)
            return
        if not isinstance(event, dict):
            await self._send_error(ClientEventError("invalid_json", "Expected a JSON object."), None)
            return
        if self._keep_history:
            self.received.append(event)
        async with self._received_changed:
            self._received_changed.notify_all()
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        self._log.debug("simulator_event_in", type=event.get("type"))
        try:
            await self._dispatch(event)
        except ClientEventError as refusal:
            await self._send_error(refusal, client_event_id)

    async def _dispatch(self, event: JsonObject) -> None:
        event_type = event.get("type")
        if not isinstance(event_type, str) or event_type not in CLIENT_EVENT_KEYS:
            raise _invalid_value("type", event_type, ", ".join(repr(known) for known in CLIENT_EVENT_KEYS))
        _expect_keys(event, CLIENT_EVENT_KEYS[event_type] | {"type", "event_id"}, "")
        if "event_id" in event:
            _check_type(event["event_id"], str, "event_id")
        match event_type:
            case "session.update":
                await self._session_update(event)
            case "input_audio_buffer.append":
                await self._append(event)
            case "input_audio_buffer.commit":
                await self._commit(self._speech_item_id or new_id("item"))
            case "input_audio_buffer.clear":
                self._buffer.clear()
                self._speech_item_id = None
                await self._send({"type": "input_audio_buffer.cleared"})
            case "output_audio_buffer.clear":
                raise ClientEventError(
                    "invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP.", param="type"
                )
            case "conversation.item.create":
                await self._item_create(event)
            case "conversation.item.retrieve":
                item = self._item(event)
                await self._send({"type": "conversation.item.retrieved", "item": item})
            case "conversation.item.delete":
                item = self._item(event)
                del self._items[item["id"]]
                await self._send({"type": "conversation.item.deleted", "item_id": item["id"]})
            case "conversation.item.truncate":
                await self._truncate(event)
            case "response.create":
                await self._response_create(event)
            case "response.cancel":
                await self._response_cancel(event)

    # --- session ---------------------------------------------------------------------------------

    async def _session_update(self, event: JsonObject) -> None:
        if "session" not in event:
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'session'.", param="session"
            )
        update = validate_session(event["session"])
        if self._behaviour.never_update:
            self._log.info("simulator_session_update_swallowed")
            return
        voice = update.get("audio", {}).get("output", {}).get("voice")
        if voice is not None and voice != self.session["audio"]["output"]["voice"] and self._assistant_audio_sent:
            raise ClientEventError(
                "cannot_update_voice",
                "Cannot update a conversation's voice if assistant audio is present.",
                param="session.audio.output.voice",
            )
        self.session = merge_session(self.session, update)
        self._log.info("simulator_session_updated", fields=sorted(update))
        await self._send({"type": "session.updated", "session": self._session_view()})

    def _session_view(self) -> JsonObject:
        return copy.deepcopy(self.session)

    def _turn_detection(self) -> JsonObject | None:
        turn_detection: JsonObject | None = self.session["audio"]["input"]["turn_detection"]
        return turn_detection if self._behaviour.vad else None

    # --- input audio, VAD and commits ------------------------------------------------------------

    async def _append(self, event: JsonObject) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise ClientEventError("missing_required_parameter", "Missing required parameter: 'audio'.", param="audio")
        if len(audio) > MAX_APPEND_BYTES * 4 // 3 + 4:
            raise ClientEventError(
                "invalid_value", "Audio too large: an append may carry at most 15 MiB.", param="audio"
            )
        try:
            pcm = base64.b64decode(audio, validate=True)
        except binascii.Error as exc:
            raise ClientEventError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio.", param="audio"
            ) from exc
        if self._keep_history:
            self.input_audio += pcm
        if self._record is not None:
            self._record.write(pcm)
            self._record.flush()
        self._buffer += pcm
        turn_detection = self._turn_detection()
        if turn_detection is not None:
            await self._detect_speech(pcm, turn_detection)
        else:
            self._vad_position_ms += len(pcm) // BYTES_PER_MS

    async def _detect_speech(self, pcm: bytes, turn_detection: JsonObject) -> None:
        self._vad_pending += pcm
        window_bytes = VAD_WINDOW_MS * BYTES_PER_MS
        threshold = vad_rms_threshold(float(turn_detection.get("threshold", 0.5)))
        if turn_detection["type"] == "server_vad":
            silence_ms = int(turn_detection.get("silence_duration_ms", 500))
        else:
            silence_ms = SEMANTIC_SILENCE_MS[turn_detection.get("eagerness", "auto")]
        while len(self._vad_pending) >= window_bytes:
            window = bytes(self._vad_pending[:window_bytes])
            del self._vad_pending[:window_bytes]
            window_start_ms = self._vad_position_ms
            self._vad_position_ms += VAD_WINDOW_MS
            loud = pcm16_rms(window) >= threshold
            if self._speech_item_id is None:
                if loud:
                    await self._speech_started(window_start_ms, turn_detection)
                continue
            self._quiet_ms = 0 if loud else self._quiet_ms + VAD_WINDOW_MS
            if self._quiet_ms >= silence_ms:
                await self._speech_stopped(turn_detection)
        if self._speech_item_id is None:
            # Between turns the server keeps only the prefix padding, so a silent open mic costs nothing.
            keep_bytes = int(turn_detection.get("prefix_padding_ms", 300)) * BYTES_PER_MS
            del self._buffer[: max(0, len(self._buffer) - keep_bytes)]

    async def _speech_started(self, audio_start_ms: int, turn_detection: JsonObject) -> None:
        self._speech_item_id = new_id("item")
        self._quiet_ms = 0
        await self._send({
            "type": "input_audio_buffer.speech_started",
            "audio_start_ms": audio_start_ms,
            "item_id": self._speech_item_id,
        })
        # speech_started while the tutor speaks = barge-in: the server cancels the response itself.
        if self._response is not None and turn_detection.get("interrupt_response") is not False:
            await self._cancel_response(self._response, "turn_detected")

    async def _speech_stopped(self, turn_detection: JsonObject) -> None:
        item_id = self._speech_item_id
        assert item_id is not None
        await self._send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": self._vad_position_ms, "item_id": item_id}
        )
        await self._commit(item_id)
        if turn_detection.get("create_response") is not False and self._response is None:
            self._start_response({})

    async def _commit(self, item_id: str) -> None:
        buffered_ms = len(self._buffer) / BYTES_PER_MS
        if buffered_ms < MIN_COMMIT_MS:
            raise ClientEventError(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least {MIN_COMMIT_MS}ms of "
                f"audio, but buffer only has {buffered_ms:.2f}ms of audio.",
            )
        self._buffer.clear()
        self._speech_item_id = None
        previous_item_id = next(reversed(self._items), None)
        await self._send(
            {"type": "input_audio_buffer.committed", "previous_item_id": previous_item_id, "item_id": item_id}
        )
        item: JsonObject = {
            "id": item_id, "type": "message", "role": "user", "status": "completed", "object": "realtime.item",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        self._items[item_id] = item
        self._conversation_audio_ms += int(buffered_ms)
        await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id, "item": item})
        await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id, "item": item})
        transcription = self.session["audio"]["input"]["transcription"]
        if transcription is not None:
            await self._transcribe(item, buffered_ms / 1000, str(transcription.get("model") or ""))

    async def _transcribe(self, item: JsonObject, seconds: float, model: str) -> None:
        transcript = f"(I said something for {seconds:.1f} seconds)"
        item["content"][0]["transcript"] = transcript
        await self._send({
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item["id"], "content_index": 0, "delta": transcript,
        })
        if model == "whisper-1":
            usage: JsonObject = {"type": "duration", "seconds": round(seconds, 2)}
        else:
            audio_tokens = max(1, round(seconds * 10))
            output_tokens = _text_tokens(transcript)
            usage = {
                "type": "tokens", "input_tokens": audio_tokens, "output_tokens": output_tokens,
                "total_tokens": audio_tokens + output_tokens,
                "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens},
            }
        await self._send({
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item["id"], "content_index": 0, "transcript": transcript, "usage": usage,
        })

    # --- conversation items ----------------------------------------------------------------------

    def _item(self, event: JsonObject) -> JsonObject:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise ClientEventError(
                "missing_required_parameter", "Missing required parameter: 'item_id'.", param="item_id"
            )
        item = self._items.get(item_id)
        if item is None:
            raise ClientEventError("item_not_found", f"Item with item_id {item_id!r} not found.", param="item_id")
        return item

    async def _item_create(self, event: JsonObject) -> None:
        item = copy.deepcopy(_expect_object(event.get("item"), "item"))
        if item.get("type") != "message" or item.get("role") not in ("user", "assistant", "system"):
            raise ClientEventError(
                "invalid_value", "Only message items (user, assistant or system) are simulated.", param="item.type"
            )
        content = item.get("content")
        if not isinstance(content, list) or not all(isinstance(part, dict) for part in content):
            raise ClientEventError(
                "invalid_type", "Invalid type for 'item.content': expected an array.", param="item.content"
            )
        _expect_keys(item, frozenset({"id", "type", "role", "content", "status", "object"}), "item")
        item_id = item.setdefault("id", new_id("item"))
        if item_id in self._items:
            raise ClientEventError("invalid_value", f"Item with id {item_id!r} already exists.", param="item.id")
        previous_item_id = event.get("previous_item_id")
        if previous_item_id is not None and previous_item_id not in self._items:
            raise ClientEventError(
                "item_not_found", f"Item with item_id {previous_item_id!r} not found.", param="previous_item_id"
            )
        item.update(status="completed", object="realtime.item")
        previous_item_id = previous_item_id or next(reversed(self._items), None)
        self._items[item_id] = item
        self._conversation_text_tokens += sum(_text_tokens(str(part.get("text") or "")) for part in content)
        await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id, "item": item})
        await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id, "item": item})

    async def _truncate(self, event: JsonObject) -> None:
        item = self._item(event)
        content_index = event.get("content_index")
        audio_end_ms = event.get("audio_end_ms")
        _check_type(content_index, int, "content_index")
        _check_type(audio_end_ms, int, "audio_end_ms")
        assert isinstance(content_index, int)
        assert isinstance(audio_end_ms, int)
        if item["id"] not in self._item_audio_ms:
            raise ClientEventError(
                "invalid_value", "Only assistant messages with audio can be truncated.", param="item_id"
            )
        if content_index != 0:
            raise _invalid_value("content_index", content_index, "0")
        if audio_end_ms < 0:
            raise _invalid_value("audio_end_ms", audio_end_ms, "a non-negative integer")
        sent_ms = self._item_audio_ms[item["id"]]
        if audio_end_ms > sent_ms:
            raise ClientEventError(
                "invalid_value", f"Audio content of {sent_ms}ms is already shorter than {audio_end_ms}ms",
                param="audio_end_ms",
            )
        await self._send({
            "type": "conversation.item.truncated",
            "item_id": item["id"], "content_index": content_index, "audio_end_ms": audio_end_ms,
        })

    # --- responses -------------------------------------------------------------------------------

    async def _response_create(self, event: JsonObject) -> None:
        params = validate_response_params(event["response"]) if event.get("response") is not None else {}
        if self._response is not None:
            raise ClientEventError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._response.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        if self._behaviour.never_create:
            self._log.info("simulator_response_create_swallowed")
            return
        self._start_response(params)

    async def _response_cancel(self, event: JsonObject) -> None:
        response_id = event.get("response_id")
        response = self._response
        if response is None or (response_id is not None and response_id != response.id):
            raise ClientEventError(
                "response_cancel_not_active", "Cancellation failed: no active response found."
            )
        await self._cancel_response(response, "client_cancelled")

    async def _cancel_response(self, response: _Response, reason: str) -> None:
        """Stop `response` and return once its response.done (status cancelled) was sent."""
        response.cancel_reason = reason
        response.cancelled.set()
        if response.task is not None:
            await response.task

    def _start_response(self, params: JsonObject) -> None:
        self._responses_created += 1
        number = self._responses_created
        audio_output = params.get("audio", {}).get("output", {})
        response = _Response(
            id=new_id("resp"),
            number=number,
            fault=self._behaviour.fault_for(number),
            instructions=str(params.get("instructions") or self.session["instructions"]),
            # Response-level instructions may omit the student's lines; the session's still name them.
            facts=f"{params.get('instructions') or ''}\n{self.session['instructions']}",
            output_modalities=list(params.get("output_modalities") or self.session["output_modalities"]),
            voice=audio_output.get("voice", self.session["audio"]["output"]["voice"]),
            in_conversation=params.get("conversation", "auto") != "none",
            metadata=params.get("metadata"),
        )
        # Active from now on, so a second response.create is refused even before response.created.
        self._response = response
        response.task = asyncio.create_task(self._run_response(response), name=f"simulated-{response.id}")

    def _response_object(
        self, response: _Response, status: str, output: list[JsonObject], *,
        status_details: JsonObject | None = None, usage: JsonObject | None = None,
    ) -> JsonObject:
        return {
            "object": "realtime.response",
            "id": response.id,
            "status": status,
            "status_details": status_details,
            "output": output,
            "conversation_id": self._conversation_id if response.in_conversation else None,
            "output_modalities": response.output_modalities,
            "max_output_tokens": "inf",
            "audio": {"output": {"format": {"type": "audio/pcm", "rate": SAMPLE_RATE}, "voice": response.voice}},
            "usage": usage,
            "metadata": response.metadata,
        }

    async def _run_response(self, response: _Response) -> None:
        try:
            created = self._response_object(response, "in_progress", [])
            await self._send({"type": "response.created", "response": created})
            await self._send({"type": "rate_limits.updated", "rate_limits": self._rate_limits()})
            match response.fault:
                case "failed":
                    error_type, message = FAILED_RESPONSE_ERRORS.get(
                        self._behaviour.failed_code, ("invalid_request_error", "The response failed.")
                    )
                    details = {
                        "type": "failed",
                        "error": {"type": error_type, "code": self._behaviour.failed_code, "message": message},
                    }
                    zero = _usage(input_text=0, input_audio=0, cached=0, output_text=0, output_audio=0)
                    await self._finish(response, "failed", [], details, zero)
                case "cancelled":
                    await self._finish(response, "cancelled", [], {"type": "cancelled", "reason": "turn_detected"},
                                       self._usage_for(response, "", 0))
                case "incomplete":
                    await self._finish(response, "incomplete", [], {"type": "incomplete", "reason": "content_filter"},
                                       self._usage_for(response, "", 0))
                case "empty" | "none":
                    await self._stream_message(response)
        except (ConnectionClosed, _ConnectionCut):
            self._log.info("simulator_response_abandoned", response_id=response.id)
        finally:
            if self._response is response:
                self._response = None

    async def _finish(
        self, response: _Response, status: str, output: list[JsonObject],
        status_details: JsonObject, usage: JsonObject,
    ) -> None:
        event = {
            "type": "response.done",
            "response": self._response_object(response, status, output, status_details=status_details, usage=usage),
        }
        self._previous_input_tokens = int(usage["input_tokens"])
        self._log.info("simulator_response_done", response_id=response.id, status=status, details=status_details)
        await self._send(event, ends=response)

    def _usage_for(self, response: _Response, text: str, audio_ms: int) -> JsonObject:
        input_text = _text_tokens(response.instructions) + self._conversation_text_tokens
        input_audio = self._conversation_audio_ms // 100  # about 10 input audio tokens a second
        cached = self._previous_input_tokens // 64 * 64 if self._previous_input_tokens >= 1024 else 0
        return _usage(
            input_text=input_text, input_audio=input_audio, cached=min(cached, input_text + input_audio),
            output_text=_text_tokens(text) if text else 0, output_audio=audio_ms // 50,
        )

    def _rate_limits(self) -> list[JsonObject]:
        return [
            {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
            {"name": "tokens", "limit": 40000, "remaining": 38790, "reset_seconds": 1.815},
        ]

    async def _stream_message(self, response: _Response) -> None:
        """The assistant message of a response: item, content part, deltas, dones, response.done."""
        item_id = new_id("item")
        text_only = response.output_modalities == ["text"]
        item: JsonObject = {
            "id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
            "object": "realtime.item", "content": [],
        }
        previous_item_id = next(reversed(self._items), None)
        await self._send({"type": "response.output_item.added", "response_id": response.id, "output_index": 0,
                          "item": copy.deepcopy(item)})
        if response.in_conversation:
            self._items[item_id] = item
            await self._send({"type": "conversation.item.added", "previous_item_id": previous_item_id,
                              "item": copy.deepcopy(item)})
        text = "" if response.fault == "empty" else tutor_text(response.facts, self._turns_spoken)
        audio_ms = 0
        if text and text_only:
            spoken = await self._stream_text(response, item_id, text)
            item["content"] = [{"type": "output_text", "text": spoken}]
        elif text:
            spoken, audio_ms = await self._stream_audio(response, item_id, text)
            item["content"] = [{"type": "output_audio", "transcript": spoken}]
        else:
            spoken = ""
        if spoken:
            self._turns_spoken += 1
        cancelled = response.cancel_reason is not None
        usage = self._usage_for(response, spoken, audio_ms)  # before this item joins the context
        item["status"] = "incomplete" if cancelled else "completed"
        await self._send({"type": "response.output_item.done", "response_id": response.id, "output_index": 0,
                          "item": copy.deepcopy(item)})
        if response.in_conversation:
            self._conversation_text_tokens += _text_tokens(spoken) if spoken else 0
            self._conversation_audio_ms += audio_ms * 2  # assistant audio costs about twice as many tokens
            await self._send({"type": "conversation.item.done", "previous_item_id": previous_item_id,
                              "item": copy.deepcopy(item)})
        if cancelled:
            await self._finish(response, "cancelled", [item], {"type": "cancelled", "reason": response.cancel_reason},
                               usage)
        else:
            await self._finish(response, "completed", [item], {"type": "completed"}, usage)

    async def _stream_text(self, response: _Response, item_id: str, text: str) -> str:
        where = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send({"type": "response.content_part.added", **where, "part": {"type": "text", "text": ""}})
        written: list[str] = []
        for word in Utterance(text).words:
            if response.cancel_reason is not None:
                break
            written.append(word.text)
            await self._send({"type": "response.output_text.delta", **where, "delta": word.text})
        text = "".join(written).strip()
        await self._send({"type": "response.output_text.done", **where, "text": text})
        await self._send({"type": "response.content_part.done", **where, "part": {"type": "text", "text": text}})
        return text

    async def _stream_audio(self, response: _Response, item_id: str, text: str) -> tuple[str, int]:
        """Audio and transcript deltas in step, paced; returns (transcript spoken, audio ms sent)."""
        where = {"response_id": response.id, "item_id": item_id, "output_index": 0, "content_index": 0}
        await self._send({"type": "response.content_part.added", **where, "part": {"type": "audio", "transcript": ""}})
        utterance = Utterance(text)
        words = list(utterance.words)
        spoken: list[str] = []
        audio_bytes = 0
        started = time.monotonic()
        seconds_per_chunk = CHUNK_SAMPLES / SAMPLE_RATE
        self._item_audio_ms[item_id] = 0
        for deltas, chunk in enumerate(utterance.chunks(), start=1):
            if response.cancel_reason is not None:
                break
            await self._send({"type": "response.output_audio.delta", **where,
                              "delta": base64.b64encode(chunk).decode("ascii")})
            self._assistant_audio_sent = True
            audio_bytes += len(chunk)
            self._item_audio_ms[item_id] = audio_bytes // BYTES_PER_MS
            if response.number == 1 and deltas == self._behaviour.cut_after_deltas:
                self._log.info("simulator_cut", deltas=deltas)
                await self._websocket.close(1011, "simulated upstream failure")
                raise _ConnectionCut
            # A word's transcript goes out with the audio chunk its first syllable starts in.
            chunk_end_sample = audio_bytes // BYTES_PER_SAMPLE
            while words and words[0].start_sample < chunk_end_sample:
                word = words.pop(0)
                spoken.append(word.text)
                await self._send({"type": "response.output_audio_transcript.delta", **where, "delta": word.text})
            if self._behaviour.audio_pace > 0:
                deadline = started + deltas * seconds_per_chunk / self._behaviour.audio_pace
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(response.cancelled.wait(), max(0.0, deadline - time.monotonic()))
            else:
                await asyncio.sleep(0)  # let cancels and other connections in
        if response.cancel_reason is None:
            for word in words:
                spoken.append(word.text)
                await self._send({"type": "response.output_audio_transcript.delta", **where, "delta": word.text})
        transcript = "".join(spoken).strip()
        await self._send({"type": "response.output_audio.done", **where})
        await self._send({"type": "response.output_audio_transcript.done", **where, "transcript": transcript})
        await self._send({"type": "response.content_part.done", **where,
                          "part": {"type": "audio", "transcript": transcript}})
        return transcript, audio_bytes // BYTES_PER_MS

    # --- sending ---------------------------------------------------------------------------------

    async def _send(self, event: JsonObject, *, ends: _Response | None = None) -> None:
        """Send one server event (after the configured delay), in order; `ends` = its response.done."""
        async with self._send_lock:
            if self._behaviour.event_delay_ms > 0:
                await asyncio.sleep(self._behaviour.event_delay_ms / 1000)
            event = {"event_id": new_id("event"), **event}
            if ends is not None and self._response is ends:
                # No longer active as its response.done goes out: a response.create may follow at once.
                self._response = None
            self._log.debug("simulator_event_out", type=event["type"])
            await self._websocket.send(json.dumps(event))
            if self._keep_history:
                self.sent.append(event)
        async with self._sent_changed:
            self._sent_changed.notify_all()

    async def _send_error(self, refusal: ClientEventError, client_event_id: str | None) -> None:
        self._log.info("simulator_error_sent", code=refusal.code, param=refusal.param)
        await self._send({
            "type": "error",
            "error": {
                "type": refusal.error_type, "code": refusal.code, "message": refusal.message,
                "param": refusal.param, "event_id": client_event_id,
            },
        })


def _type_predicate(event_type: str) -> Callable[[list[JsonObject]], bool]:
    return lambda events: any(event.get("type") == event_type for event in events)


def _model_of(websocket: ServerConnection) -> str:
    path = websocket.request.path if websocket.request else ""
    return parse_qs(urlsplit(path).query).get("model", [DEFAULT_MODEL])[0]


def _json_response(
    connection: ServerConnection, status: int, error_type: str, code: str | None, message: str
) -> Response:
    body = json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}})
    response = connection.respond(status, body)
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class RealtimeSimulator:
    """A Realtime server on a local port; `async with RealtimeSimulator() as simulator: simulator.url`."""

    def __init__(
        self,
        behaviour: SimulatorBehaviour = SimulatorBehaviour(),
        *,
        record_dir: Path | None = None,
        keep_history: bool = True,
    ) -> None:
        """`record_dir`: write each connection's appended audio to DIR/connection-<n>.pcm (n from 1).
        `keep_history=False` keeps no `received`/`sent`/`input_audio` (for the long-running demo)."""
        self.behaviour = behaviour
        self.record_dir = record_dir
        self.keep_history = keep_history
        self.connections: list[SimulatedConnection] = []
        self._handed_out = 0
        self._new_connection = asyncio.Condition()
        self._server: Server | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        """ws://HOST:PORT/v1/realtime, once started."""
        if self._url is None:
            raise RuntimeError("the simulator is not started; call start() first")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on host:port (0 = any free port); `url` says where."""
        if self.record_dir is not None:
            self.record_dir.mkdir(parents=True, exist_ok=True)
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            compression=None,
            max_size=2 * MAX_APPEND_BYTES,
        )
        bound_host, bound_port = self._server.sockets[0].getsockname()[:2]
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._url = f"ws://{url_host}:{bound_port}/v1/realtime"
        log.info("simulator_started", url=self._url, behaviour=self.behaviour)

    async def stop(self) -> None:
        """Close every connection (1001) and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            log.info("simulator_stopped")

    async def __aenter__(self) -> RealtimeSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def next_connection(self, timeout: float = 5) -> SimulatedConnection:  # noqa: ASYNC109
        """The next accepted connection not yet handed out by this method (waits for it)."""
        async with asyncio.timeout(timeout), self._new_connection:
            await self._new_connection.wait_for(lambda: len(self.connections) > self._handed_out)
        self._handed_out += 1
        return self.connections[self._handed_out - 1]

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """The HTTP side of the handshake: path, refusals and authentication."""
        path = urlsplit(request.path).path.rstrip("/")
        if not path.endswith("/v1/realtime"):
            return _json_response(connection, 404, "invalid_request_error", "not_found", f"Unknown path {path!r}.")
        status = self.behaviour.refuse_handshake
        if status is not None:
            error_type, code, message = HANDSHAKE_ERRORS.get(
                status, ("server_error", None, f"{http.HTTPStatus(status).phrase}.")
            )
            log.info("simulator_handshake_refused", status=status)
            return _json_response(connection, status, error_type, code, message)
        bearer = request.headers.get("Authorization", "")
        has_bearer = bearer.startswith("Bearer ") and bearer.removeprefix("Bearer ").strip() != ""
        if not has_bearer and not request.headers.get("api-key", "").strip():
            return _json_response(
                connection, 401, "invalid_request_error", None,
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        return None

    async def _handle(self, websocket: ServerConnection) -> None:
        number = len(self.connections) + 1
        record_path = self.record_dir / f"connection-{number}.pcm" if self.record_dir is not None else None
        connection = SimulatedConnection(
            websocket, number=number, behaviour=self.behaviour, record_path=record_path,
            keep_history=self.keep_history,
        )
        self.connections.append(connection)
        async with self._new_connection:
            self._new_connection.notify_all()
        await connection.serve()


def _fault_times(value: str) -> int | None:
    if value == "always":
        return None
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number or 'always', got {value!r}")
    return int(value)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m app.simulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--record-dir", type=Path, help="write appended audio to DIR/connection-<n>.pcm")
    parser.add_argument("--fault", choices=["failed", "cancelled", "incomplete", "empty"])
    parser.add_argument("--fault-times", type=_fault_times, default=1, help="a number of responses, or 'always'")
    parser.add_argument("--failed-code", default="server_error")
    parser.add_argument("--refuse-handshake", type=int, metavar="STATUS")
    parser.add_argument("--event-delay-ms", type=float, default=0.0)
    parser.add_argument("--audio-pace", type=float, default=4.0)
    return parser.parse_args(argv)


async def _serve_forever(arguments: argparse.Namespace) -> None:
    behaviour = SimulatorBehaviour(
        response_fault=arguments.fault or "none",
        fault_times=arguments.fault_times,
        failed_code=arguments.failed_code,
        refuse_handshake=arguments.refuse_handshake,
        event_delay_ms=arguments.event_delay_ms,
        audio_pace=arguments.audio_pace,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    simulator = RealtimeSimulator(behaviour, record_dir=arguments.record_dir)
    await simulator.start(arguments.host, arguments.port)
    try:
        # The one line a wrapper script or test reads to find the server.
        sys.stdout.write(f"Realtime simulator listening on {simulator.url}\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await simulator.stop()


def main(argv: list[str] | None = None) -> None:
    """Run the simulator until SIGINT or SIGTERM, logging like the app (LOG_LEVEL, LOG_FORMAT)."""
    arguments = _parse_args(argv)
    configure_logging(load_settings())
    asyncio.run(_serve_forever(arguments))


if __name__ == "__main__":
    main()
