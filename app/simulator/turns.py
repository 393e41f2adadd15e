"""Turn detection: an energy VAD over appended audio that finds where the student starts and stops.

The detector does no I/O. `TurnDetector.feed` yields SpeechStarted / SpeechStopped as it reaches them,
window by window, so the connection can send input_audio_buffer.speech_started (and cancel a response:
a barge-in) before it looks at the next window, as the real server does.
"""

from __future__ import annotations

import math
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from app.simulator.voice import BYTES_PER_SAMPLE, SAMPLE_RATE
from app.simulator.wire import JsonObject, new_id

BYTES_PER_MS = SAMPLE_RATE * BYTES_PER_SAMPLE // 1000  # 48 for PCM16 24 kHz mono
VAD_WINDOW_MS = 20
# Silence that ends a turn for semantic_vad, by eagerness (the real model decides semantically).
SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 700, "auto": 700, "high": 400}


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


def silence_that_ends_a_turn_ms(turn_detection: JsonObject) -> int:
    """How long the student must be quiet before server_vad / semantic_vad call the turn over."""
    if turn_detection["type"] == "server_vad":
        return int(turn_detection.get("silence_duration_ms", 500))
    return SEMANTIC_SILENCE_MS[turn_detection.get("eagerness", "auto")]


@dataclass(frozen=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int


@dataclass(frozen=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int


class TurnDetector:
    """Where the student's speech starts and stops in the audio appended so far."""

    def __init__(self) -> None:
        self.position_ms = 0  # audio_start_ms / audio_end_ms count from the connection's first append
        self.speech_item_id: str | None = None  # the user item of the turn being spoken, if one is
        self._pending = bytearray()  # appended audio short of a whole window
        self._quiet_ms = 0

    def skip(self, pcm: bytes) -> None:
        """Audio appended while turn detection is off: it only moves the clock."""
        self.position_ms += len(pcm) // BYTES_PER_MS

    def end_speech(self) -> None:
        """The turn was committed or the buffer cleared: the next loud window starts a new turn."""
        self.speech_item_id = None

    def feed(self, pcm: bytes, turn_detection: JsonObject) -> Iterator[SpeechStarted | SpeechStopped]:
        """Look at `pcm` window by window; yield each start and stop of speech as it is found.

        A SpeechStopped leaves the turn open until end_speech() (the commit) closes it.
        """
        self._pending += pcm
        window_bytes = VAD_WINDOW_MS * BYTES_PER_MS
        threshold = vad_rms_threshold(float(turn_detection.get("threshold", 0.5)))
        silence_ms = silence_that_ends_a_turn_ms(turn_detection)
        while len(self._pending) >= window_bytes:
            window = bytes(self._pending[:window_bytes])
            del self._pending[:window_bytes]
            window_start_ms = self.position_ms
            self.position_ms += VAD_WINDOW_MS
            loud = pcm16_rms(window) >= threshold
            if self.speech_item_id is None:
                if loud:
                    self.speech_item_id = new_id("item")
                    self._quiet_ms = 0
                    yield SpeechStarted(self.speech_item_id, window_start_ms)
                continue
            self._quiet_ms = 0 if loud else self._quiet_ms + VAD_WINDOW_MS
            if self._quiet_ms >= silence_ms:
                yield SpeechStopped(self.speech_item_id, self.position_ms)
