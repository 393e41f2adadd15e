"""What one lesson's page may cost the relay and the upstream: microphone pacing and rate-limited warnings.

Plain objects driven by `LessonSession` (its page input, app/page_input.py), with the time passed in (no clock
reads, no I/O):

- `TokenBucket` lets microphone audio through at about real time, with a small burst, so a client
  sending 600 s of audio in a second cannot turn one lesson place into ten minutes of paid input.
- `FrameCoalescer` joins frames smaller than `MIN_APPEND_BYTES`, so a stream of tiny frames becomes a
  few upstream `input_audio_buffer.append` events instead of one per frame.
- `LogThrottle` turns a flood of the same warning into one line per interval carrying the count of
  the lines it held back; `LogThrottles` keeps one per kind of a warning (a refusal's reason) for the server.
- `MessageCounter` counts what a page sends in each second, so one script flooding messages cannot take a
  worker's whole core from every other lesson on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from app import protocol

REAL_TIME_BYTES_PER_S = protocol.SAMPLE_RATE * 2  # PCM16 mono: 48 000 bytes a second
# A page records in real time; 20 % over absorbs clock drift between the page and the server.
PACE_FACTOR = 1.2
# How far ahead of real time a page may get at once: a network stall of up to a second, then delivered at once.
BURST_S = 1.0
# 10 ms of audio: smaller frames are held and joined (the page sends 20 ms frames, which pass untouched).
MIN_APPEND_BYTES = 10 * protocol.BYTES_PER_MS
# A repeated warning is logged at most once in this many seconds.
WARNING_INTERVAL_S = 10.0
# Messages (frames and JSON) a page may send in one second. The lesson page sends about 60 (20 ms frames and
# playback reports); a client of docs/protocol.md sending 2.5 ms frames, 400. Each costs the relay some 20 µs,
# so 500 keep a lesson's page under 1 % of a core.
MAX_PAGE_MESSAGES_PER_S = 500


class TokenBucket:
    """`take(n, now)` succeeds while the bytes taken stay within `rate` per second plus `capacity` of burst."""

    def __init__(self, *, rate: float, capacity: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self._tokens = capacity
        self._updated_at: float | None = None

    def take(self, amount: int, now: float) -> bool:
        """Spend `amount` tokens if there are that many (True), or spend nothing (False)."""
        if self._updated_at is not None:
            self._tokens = min(self.capacity, self._tokens + (now - self._updated_at) * self.rate)
        self._updated_at = now
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


def microphone_bucket() -> TokenBucket:
    """The bucket for one lesson's microphone: `PACE_FACTOR` times real time with `BURST_S` of burst."""
    return TokenBucket(rate=PACE_FACTOR * REAL_TIME_BYTES_PER_S, capacity=BURST_S * REAL_TIME_BYTES_PER_S)


class FrameCoalescer:
    """Holds frames until at least `min_bytes` are waiting, then hands them over as one chunk."""

    def __init__(self, min_bytes: int = MIN_APPEND_BYTES) -> None:
        self.min_bytes = min_bytes
        self._pending = bytearray()

    def add(self, frame: bytes) -> bytes | None:
        """The audio to send now (this frame, joined to what was held), or None while it is held."""
        if not self._pending and len(frame) >= self.min_bytes:
            return frame  # the common case: a page's 20 ms frame goes straight through, uncopied
        self._pending += frame
        if len(self._pending) < self.min_bytes:
            return None
        chunk = bytes(self._pending)
        self._pending.clear()
        return chunk


@dataclass(slots=True)
class MessageCounter:
    """Counts messages in one-second windows; `count(now)` is False once a window holds more than `limit`."""

    limit: int = MAX_PAGE_MESSAGES_PER_S
    _in_window: int = 0
    _window_ends: float = -math.inf

    def count(self, now: float) -> bool:
        if now >= self._window_ends:
            self._window_ends = now + 1.0
            self._in_window = 0
        self._in_window += 1
        return self._in_window <= self.limit


@dataclass(slots=True)
class LogThrottle:
    """One warning line per `interval_s` for a repeated event; each line says how many were held back."""

    interval_s: float = WARNING_INTERVAL_S
    suppressed: int = 0
    _next_at: float = field(default=-math.inf)

    def allow(self, now: float) -> int | None:
        """The count held back since the last line when a line may be logged now, else None (and counted)."""
        if now < self._next_at:
            self.suppressed += 1
            return None
        held_back, self.suppressed = self.suppressed, 0
        self._next_at = now + self.interval_s
        return held_back


@dataclass(slots=True)
class LogThrottles:
    """A `LogThrottle` for each kind of a repeated warning, so one kind's flood never hides another kind's first
    line. Kinds are a bounded set the server names (an event and a refusal's code), never what a client chose."""

    interval_s: float = WARNING_INTERVAL_S
    _by_kind: dict[str, LogThrottle] = field(default_factory=dict)

    def allow(self, kind: str, now: float) -> int | None:
        """As `LogThrottle.allow`, for the warnings of `kind`."""
        throttle = self._by_kind.get(kind)
        if throttle is None:
            throttle = self._by_kind[kind] = LogThrottle(self.interval_s)
        return throttle.allow(now)

    def held_back(self, kind: str) -> int:
        """How many warnings of `kind` were held back since its last line."""
        throttle = self._by_kind.get(kind)
        return 0 if throttle is None else throttle.suppressed
