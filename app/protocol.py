"""The OpenAI Realtime protocol (GA interface) as the relay speaks it.

Builders for every client event the relay sends, and pydantic models for the few server events whose
fields drive the lesson. Audio deltas are deliberately not modelled: the session reads their fields
straight from the decoded JSON, because they are most of the traffic.

The beta interface (header `OpenAI-Beta: realtime=v1`, `response.audio.delta`, top-level `modalities`,
…) is switched off upstream and is never spoken here.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
import pybase64
from pydantic import BaseModel, ConfigDict

SAMPLE_RATE = 24_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000  # PCM16 mono: 48 bytes per millisecond

# Server events the lesson acts on.
SESSION_CREATED = "session.created"
SESSION_UPDATED = "session.updated"
RESPONSE_CREATED = "response.created"
RESPONSE_DONE = "response.done"
AUDIO_DELTA = "response.output_audio.delta"
AUDIO_DONE = "response.output_audio.done"
TRANSCRIPT_DELTA = "response.output_audio_transcript.delta"
TRANSCRIPT_DONE = "response.output_audio_transcript.done"
TEXT_DELTA = "response.output_text.delta"
TEXT_DONE = "response.output_text.done"
SPEECH_STARTED = "input_audio_buffer.speech_started"
SPEECH_STOPPED = "input_audio_buffer.speech_stopped"
STUDENT_TRANSCRIPT_DELTA = "conversation.item.input_audio_transcription.delta"
STUDENT_TRANSCRIPT_DONE = "conversation.item.input_audio_transcription.completed"
STUDENT_TRANSCRIPT_FAILED = "conversation.item.input_audio_transcription.failed"
ERROR = "error"

# error.code values that are part of normal operation, not faults.
HARMLESS_ERROR_CODES = frozenset({"response_cancel_not_active"})
# The session reached its maximum duration (60 minutes): an `error` with this code, then close 1001.
SESSION_EXPIRED = "session_expired"

# failed-response or error codes that no retry can fix.
UNRECOVERABLE_CODES = frozenset({
    "insufficient_quota",
    "invalid_api_key",
    "billing_hard_limit_reached",
    "account_deactivated",
    "model_not_found",
    "unsupported_country_region_territory",
    "access_denied",
})


class _Tolerant(BaseModel):
    # Upstream events grow fields over time; unknown ones are ignored, never an error.
    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorDetail(_Tolerant):
    type: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(_Tolerant):
    type: Literal["error"]
    error: ErrorDetail


class StatusDetails(_Tolerant):
    type: str | None = None
    reason: str | None = None
    error: ErrorDetail | None = None


class CachedTokenDetails(_Tolerant):
    text_tokens: int = 0
    audio_tokens: int = 0


class InputTokenDetails(_Tolerant):
    text_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_details: CachedTokenDetails | None = None


class OutputTokenDetails(_Tolerant):
    text_tokens: int = 0
    audio_tokens: int = 0


class Usage(_Tolerant):
    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: InputTokenDetails | None = None
    output_token_details: OutputTokenDetails | None = None


class ContentPart(_Tolerant):
    type: str | None = None
    text: str | None = None
    transcript: str | None = None


class OutputItem(_Tolerant):
    id: str | None = None
    type: str | None = None
    content: list[ContentPart] | None = None


class Response(_Tolerant):
    id: str | None = None
    status: str | None = None
    status_details: StatusDetails | None = None
    usage: Usage | None = None
    output_modalities: list[str] | None = None
    # Echoed from response.create: tells an out-of-band response (the lesson's feedback) apart.
    metadata: dict[str, Any] | None = None
    output: list[OutputItem] | None = None

    def output_text(self) -> str:
        """All the `output_text` of the response's output items, joined."""
        return "".join(part.text or "" for item in self.output or () for part in item.content or ()
                       if part.type == "output_text")


class ResponseEvent(_Tolerant):
    """`response.created` and `response.done`."""

    type: str
    response: Response


class AudioOutputConfig(_Tolerant):
    voice: str | None = None


class AudioConfig(_Tolerant):
    output: AudioOutputConfig | None = None


class EffectiveSession(_Tolerant):
    instructions: str | None = None
    output_modalities: list[str] | None = None
    audio: AudioConfig | None = None


class SessionEvent(_Tolerant):
    """`session.created` and `session.updated`: the whole effective session."""

    type: str
    session: EffectiveSession


def dumps(event: dict[str, Any]) -> bytes:
    """A client event as the UTF-8 JSON text frame that carries it."""
    return orjson.dumps(event)


def session_update(
    *,
    event_id: str,
    instructions: str,
    voice: str,
    transcription_model: str,
    language_code: str | None,
    turn_detection: Literal["server_vad", "semantic_vad"],
    vad_eagerness: str,
) -> dict[str, Any]:
    """The one `session.update` of a lesson: the tutor prompt, audio-only output, PCM 24 kHz both ways."""
    detection: dict[str, Any] = (
        {"type": "semantic_vad", "eagerness": vad_eagerness}
        if turn_detection == "semantic_vad"
        else {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 700}
    )
    detection |= {"create_response": True, "interrupt_response": True}
    pcm = {"type": "audio/pcm", "rate": SAMPLE_RATE}
    return {
        "type": "session.update",
        "event_id": event_id,
        "session": {
            "type": "realtime",
            "instructions": instructions,
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": pcm,
                    "turn_detection": detection,
                    "transcription": {"model": transcription_model}
                    | ({"language": language_code} if language_code is not None else {}),
                    "noise_reduction": {"type": "near_field"},
                },
                "output": {"format": pcm, "voice": voice},
            },
        },
    }


def response_create(*, event_id: str) -> dict[str, Any]:
    # No trigger item and no response-level instructions: the session's tutor prompt asks for the greeting.
    return {"type": "response.create", "event_id": event_id}


def out_of_band_text_response(*, event_id: str, instructions: str, metadata: dict[str, str],
                               max_output_tokens: int) -> dict[str, Any]:
    """A `response.create` outside the conversation (`conversation: "none"`, nothing added to it) answered in text.

    Without `input` it sees the whole conversation; `metadata` comes back in `response.created` and
    `response.done`, which is how the answer is told apart from the tutor's turns."""
    return {
        "type": "response.create",
        "event_id": event_id,
        "response": {
            "conversation": "none",
            "output_modalities": ["text"],
            "instructions": instructions,
            "metadata": metadata,
            "max_output_tokens": max_output_tokens,
        },
    }


def input_audio_clear(*, event_id: str) -> dict[str, Any]:
    """`input_audio_buffer.clear`: drop the microphone audio the server has not turned into a turn yet."""
    return {"type": "input_audio_buffer.clear", "event_id": event_id}


def response_cancel(*, event_id: str, response_id: str) -> dict[str, Any]:
    return {"type": "response.cancel", "event_id": event_id, "response_id": response_id}


def item_truncate(*, event_id: str, item_id: str, audio_end_ms: int) -> dict[str, Any]:
    return {
        "type": "conversation.item.truncate",
        "event_id": event_id,
        "item_id": item_id,
        "content_index": 0,
        "audio_end_ms": audio_end_ms,
    }


def item_delete(*, event_id: str, item_id: str) -> dict[str, Any]:
    """`conversation.item.delete`: the item leaves the conversation (answered by `conversation.item.deleted`)."""
    return {"type": "conversation.item.delete", "event_id": event_id, "item_id": item_id}


_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'


def audio_append(pcm: bytes | bytearray | memoryview) -> bytes:
    """`input_audio_buffer.append` of `pcm`, serialised by hand: base64 needs no JSON escaping."""
    return b"".join((_APPEND_PREFIX, pybase64.b64encode(pcm), b'"}'))


def decode_audio(delta: str) -> bytes:
    """The PCM of an audio delta's base64; `ValueError` (`binascii.Error`) when it is not strict base64."""
    return pybase64.b64decode(delta, validate=True)
