"""What the student has heard of each tutor audio item: the audio sent to the page and its playback reports.

Barge-in truncates an item to what was heard (deletes it when nothing was), and the greeting counts as heard
when its items were played; both read it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app import protocol

# Page reports may fall short of the full item by a render quantum or two of rounding.
PLAYED_TOLERANCE_MS = 40
_SPACE = re.compile(r"\s")


def heard_text(text: str, heard_ms: int, audio_ms: int) -> str:
    """The words of a tutor turn's `text` the student heard, when `heard_ms` of its `audio_ms` of audio played.

    The Realtime API gives no timings for the words of the tutor's audio, so this is an estimate: the share of
    the characters equal to the share of the audio heard, with the word under way when the sound stopped kept
    whole. Nothing heard, no words."""
    if audio_ms <= 0:
        return text
    if heard_ms <= 0:
        return ""
    if heard_ms >= audio_ms - PLAYED_TOLERANCE_MS:
        return text
    reached = round(len(text) * heard_ms / audio_ms)
    if not text[:reached].strip():
        return ""
    end = _SPACE.search(text, reached)
    return (text if end is None else text[:end.start()]).rstrip()


@dataclass(slots=True)
class TutorItem:
    """One tutor audio item as sent to the page, and what the page says it has played of it."""

    item_id: str
    response_id: str
    first_sent_at: float
    turn_seq: int
    received_bytes: int = 0
    audio_done: bool = False
    played_ms: int = 0
    reported_at: float | None = None

    @property
    def received_ms(self) -> int:
        return self.received_bytes // protocol.BYTES_PER_MS

    def heard_ms(self, now: float) -> int:
        """What the student has heard by `now`: the last report advanced by the time since, capped."""
        if self.reported_at is None:
            estimate = (now - self.first_sent_at) * 1000
        elif self.played_ms >= self.received_ms:
            return self.received_ms
        else:
            estimate = self.played_ms + (now - self.reported_at) * 1000
        return max(0, min(round(estimate), self.received_ms))

    def fully_heard(self) -> bool:
        return self.audio_done and self.played_ms >= self.received_ms - PLAYED_TOLERANCE_MS


class TutorItems:
    """The tutor audio items that may still be playing, by item id, and the responses whose output is dropped
    (cancelled by a barge-in or at the lesson's end: their late deltas never reach the page), of which those
    cancelled at the end before any of their audio reached the page are `unheard_responses` (their items are
    deleted upstream at their response.done, before the feedback is asked for)."""

    def __init__(self) -> None:
        self.by_id: dict[str, TutorItem] = {}
        self.dropped_responses: set[str] = set()
        self.unheard_responses: set[str] = set()

    def add(self, item: TutorItem, now: float) -> None:
        # Only items that may still be playing matter for barge-in and the greeting; the rest are forgotten.
        self.by_id = {item_id: known for item_id, known in self.by_id.items()
                      if not (known.audio_done and known.heard_ms(now) >= known.received_ms)}
        self.by_id[item.item_id] = item

    def of_response(self, response_id: str | None) -> list[TutorItem]:
        return [item for item in self.by_id.values() if item.response_id == response_id]

    def playing(self, now: float) -> TutorItem | None:
        """The item the student may still be hearing at `now`, if any."""
        return next((item for item in self.by_id.values()
                     if item.heard_ms(now) < item.received_ms or not item.audio_done), None)

    def interrupt(self, playing: TutorItem) -> None:
        """A barge-in cut `playing` short: its response's output is dropped from now on."""
        self.dropped_responses.add(playing.response_id)
        self.by_id = {item_id: item for item_id, item in self.by_id.items()
                      if item.response_id != playing.response_id and item_id != playing.item_id}
