"""Audio frames that say who sent them: a student id and a sequence number in their first bytes.

Every simulated student sends 20 ms of PCM16 24 kHz mono (960 bytes) per frame. The first 12 bytes
(6 samples) are a marker ``MAGIC, student_id, seq`` and the rest is a quiet tone, so the echo that comes
back identifies exactly which frame it is, whatever path it took (base64 in a Realtime delta, or a binary
browser frame through a relay).
"""

from __future__ import annotations

import math
import struct
from typing import Final

SAMPLE_RATE: Final = 24_000
BYTES_PER_SAMPLE: Final = 2
FRAME_MS: Final = 20
FRAME_BYTES: Final = SAMPLE_RATE * BYTES_PER_SAMPLE * FRAME_MS // 1000  # 960

MAGIC: Final = b"LRB1"
_MARKER: Final = struct.Struct("<4sII")
MARKER_BYTES: Final = _MARKER.size  # 12


def _quiet_tone(byte_count: int) -> bytes:
    """A 440 Hz tone at about -30 dBFS: audible as audio, clearly not silence, never clipped."""
    samples = byte_count // BYTES_PER_SAMPLE
    amplitude = 1000
    return struct.pack(
        f"<{samples}h",
        *(round(amplitude * math.sin(2 * math.pi * 440 * n / SAMPLE_RATE)) for n in range(samples)),
    )


_FRAME_BODY: Final = _quiet_tone(FRAME_BYTES - MARKER_BYTES)


def marked_frame(student_id: int, seq: int) -> bytes:
    """One 20 ms PCM16 frame carrying `student_id` and `seq` in its first 12 bytes."""
    return _MARKER.pack(MAGIC, student_id, seq) + _FRAME_BODY


def read_marker(frame: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """The `(student_id, seq)` stamped on a frame by `marked_frame`, or None for unmarked audio."""
    if len(frame) < MARKER_BYTES:
        return None
    magic, student_id, seq = _MARKER.unpack_from(frame)
    if magic != MAGIC:
        return None
    return student_id, seq


def tone(duration_ms: int) -> bytes:
    """Unmarked PCM16 audio of `duration_ms` (the echo upstream's greeting)."""
    return _quiet_tone(SAMPLE_RATE * BYTES_PER_SAMPLE * duration_ms // 1000)


def pcm_duration_ms(byte_count: int) -> int:
    """Milliseconds of PCM16 24 kHz mono audio in `byte_count` bytes (48 bytes per ms)."""
    return byte_count // (SAMPLE_RATE * BYTES_PER_SAMPLE // 1000)
