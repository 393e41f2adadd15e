"""Validation of client events the way the GA Realtime API answers them.

Each check raises ClientEventError carrying the code, message and `param` the real API would send in its
`error` event; beta field names (session.modalities, session.voice, …) are unknown parameters here,
exactly as the GA interface refuses them.
"""

from __future__ import annotations

from app.simulator.turns import SEMANTIC_SILENCE_MS
from app.simulator.voice import SAMPLE_RATE
from app.simulator.wire import JsonObject

VOICES = ("alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar")
AUDIO_FORMATS = ("audio/pcm", "audio/pcmu", "audio/pcma")


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
MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
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


# --- validation of client payloads: each raises ClientEventError the way the real API answers -----


def _unknown_parameter(path: str) -> ClientEventError:
    return ClientEventError("unknown_parameter", f"Unknown parameter: '{path}'.", param=path)


def invalid_value(path: str, value: object, supported: str | None = None) -> ClientEventError:
    message = f"Invalid value: {value!r}." + (f" Supported values are: {supported}." if supported else "")
    return ClientEventError("invalid_value", message, param=path)


def expect_object(value: object, path: str) -> JsonObject:
    if not isinstance(value, dict):
        raise ClientEventError(
            "invalid_type",
            f"Invalid type for '{path}': expected an object, but got {type(value).__name__} instead.",
            param=path,
        )
    return value


def expect_keys(value: JsonObject, allowed: frozenset[str], path: str) -> None:
    for key in value:
        if key not in allowed:
            raise _unknown_parameter(f"{path}.{key}" if path else key)


def check_type(value: object, expected: type | tuple[type, ...], path: str) -> None:
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
        raise invalid_value(path, value, "an integer between 1 and 4096, or 'inf'")


def _check_format(value: object, path: str) -> None:
    audio_format = expect_object(value, path)
    expect_keys(audio_format, frozenset({"type", "rate"}), path)
    format_type = audio_format.get("type", "audio/pcm")
    if format_type not in AUDIO_FORMATS:
        raise invalid_value(f"{path}.type", format_type, ", ".join(repr(f) for f in AUDIO_FORMATS))
    if "rate" in audio_format:
        if format_type != "audio/pcm":
            raise _unknown_parameter(f"{path}.rate")
        if audio_format["rate"] != SAMPLE_RATE:
            raise invalid_value(f"{path}.rate", audio_format["rate"], str(SAMPLE_RATE))


def _check_voice(value: object, path: str) -> None:
    if isinstance(value, dict):
        expect_keys(value, frozenset({"id"}), path)
        check_type(value.get("id"), str, f"{path}.id")
    elif value not in VOICES:
        raise invalid_value(path, value, ", ".join(repr(voice) for voice in VOICES))


def _check_turn_detection(value: object, path: str) -> None:
    if value is None:
        return
    turn_detection = expect_object(value, path)
    kind = turn_detection.get("type")
    if kind not in ("server_vad", "semantic_vad"):
        raise invalid_value(f"{path}.type", kind, "'server_vad', 'semantic_vad'")
    expect_keys(turn_detection, SERVER_VAD_KEYS if kind == "server_vad" else SEMANTIC_VAD_KEYS, path)
    for key in ("create_response", "interrupt_response"):
        if key in turn_detection:
            check_type(turn_detection[key], bool, f"{path}.{key}")
    for key in ("prefix_padding_ms", "silence_duration_ms"):
        if key in turn_detection:
            check_type(turn_detection[key], int, f"{path}.{key}")
    if turn_detection.get("idle_timeout_ms") is not None:
        check_type(turn_detection["idle_timeout_ms"], int, f"{path}.idle_timeout_ms")
    if "threshold" in turn_detection:
        threshold = turn_detection["threshold"]
        check_type(threshold, (int, float), f"{path}.threshold")
        if not 0.0 <= threshold <= 1.0:
            raise invalid_value(f"{path}.threshold", threshold, "a number between 0 and 1")
    if "eagerness" in turn_detection and turn_detection["eagerness"] not in SEMANTIC_SILENCE_MS:
        raise invalid_value(f"{path}.eagerness", turn_detection["eagerness"], "'low', 'medium', 'high', 'auto'")


def _check_audio_input(value: object, path: str) -> None:
    audio_input = expect_object(value, path)
    expect_keys(audio_input, AUDIO_INPUT_KEYS, path)
    if "format" in audio_input:
        _check_format(audio_input["format"], f"{path}.format")
    if "turn_detection" in audio_input:
        _check_turn_detection(audio_input["turn_detection"], f"{path}.turn_detection")
    if audio_input.get("transcription") is not None:
        transcription = expect_object(audio_input["transcription"], f"{path}.transcription")
        expect_keys(transcription, TRANSCRIPTION_KEYS, f"{path}.transcription")
    if audio_input.get("noise_reduction") is not None:
        noise_reduction = expect_object(audio_input["noise_reduction"], f"{path}.noise_reduction")
        expect_keys(noise_reduction, NOISE_REDUCTION_KEYS, f"{path}.noise_reduction")
        if noise_reduction.get("type") not in (None, "near_field", "far_field"):
            raise invalid_value(f"{path}.noise_reduction.type", noise_reduction["type"], "'near_field', 'far_field'")


def _check_audio_output(value: object, path: str) -> None:
    audio_output = expect_object(value, path)
    expect_keys(audio_output, AUDIO_OUTPUT_KEYS, path)
    if "format" in audio_output:
        _check_format(audio_output["format"], f"{path}.format")
    if "voice" in audio_output:
        _check_voice(audio_output["voice"], f"{path}.voice")
    if "speed" in audio_output:
        speed = audio_output["speed"]
        check_type(speed, (int, float), f"{path}.speed")
        if not 0.25 <= speed <= 1.5:
            raise invalid_value(f"{path}.speed", speed, "a number between 0.25 and 1.5")


def validate_session(session: object) -> JsonObject:
    """Check a session.update's `session` the way the GA API does; return it when acceptable."""
    checked = expect_object(session, "session")
    expect_keys(checked, SESSION_KEYS, "session")
    if "type" not in checked:
        raise ClientEventError(
            "missing_required_parameter", "Missing required parameter: 'session.type'.", param="session.type"
        )
    if checked["type"] != "realtime":
        # Transcription sessions exist in the real API; a tutor never asks for one.
        raise invalid_value("session.type", checked["type"], "'realtime'")
    if "instructions" in checked:
        check_type(checked["instructions"], str, "session.instructions")
    if "output_modalities" in checked:
        _check_output_modalities(checked["output_modalities"], "session.output_modalities")
    if "max_output_tokens" in checked:
        _check_max_output_tokens(checked["max_output_tokens"], "session.max_output_tokens")
    if "audio" in checked:
        audio = expect_object(checked["audio"], "session.audio")
        expect_keys(audio, AUDIO_KEYS, "session.audio")
        if "input" in audio:
            _check_audio_input(audio["input"], "session.audio.input")
        if "output" in audio:
            _check_audio_output(audio["output"], "session.audio.output")
    return checked


def _check_metadata(value: object, path: str) -> None:
    # Up to 16 pairs of strings: keys at most 64 characters, values at most 512.
    metadata = expect_object(value, path)
    if len(metadata) > MAX_METADATA_PAIRS:
        raise invalid_value(path, f"{len(metadata)} pairs", f"at most {MAX_METADATA_PAIRS} key-value pairs")
    for key, pair_value in metadata.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise invalid_value(f"{path}.{key}", key, f"keys of at most {MAX_METADATA_KEY_CHARS} characters")
        check_type(pair_value, str, f"{path}.{key}")
        if len(pair_value) > MAX_METADATA_VALUE_CHARS:
            raise invalid_value(
                f"{path}.{key}", f"{pair_value[:20]}…", f"strings of at most {MAX_METADATA_VALUE_CHARS} characters"
            )


def validate_response_params(params: object) -> JsonObject:
    """Check a response.create's `response` (response-level overrides); return it when acceptable."""
    checked = expect_object(params, "response")
    expect_keys(checked, RESPONSE_KEYS, "response")
    if "instructions" in checked:
        check_type(checked["instructions"], str, "response.instructions")
    if "output_modalities" in checked:
        _check_output_modalities(checked["output_modalities"], "response.output_modalities")
    if "max_output_tokens" in checked:
        _check_max_output_tokens(checked["max_output_tokens"], "response.max_output_tokens")
    if "conversation" in checked:
        check_type(checked["conversation"], str, "response.conversation")
    if "metadata" in checked and checked["metadata"] is not None:
        _check_metadata(checked["metadata"], "response.metadata")
    if "audio" in checked:
        audio = expect_object(checked["audio"], "response.audio")
        expect_keys(audio, frozenset({"output"}), "response.audio")
        if "output" in audio:
            output = expect_object(audio["output"], "response.audio.output")
            expect_keys(output, frozenset({"format", "voice"}), "response.audio.output")
            if "format" in output:
                _check_format(output["format"], "response.audio.output.format")
            if "voice" in output:
                _check_voice(output["voice"], "response.audio.output.voice")
    return checked

