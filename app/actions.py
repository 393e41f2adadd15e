"""What the lesson machine asks its shell to do: the actions `LessonSession` returns, in order.

The shell (`relay.py`) carries each one out before reading the next event: a client event to the
Realtime session, a JSON message or audio to the page, a close, a log line, or a record for the store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.records import Record


@dataclass(frozen=True, slots=True)
class ToUpstream:
    """Send this client event, serialised as UTF-8 JSON, to the Realtime session."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class ToBrowser:
    """Send this JSON message to the page."""

    message: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ToBrowserAudio:
    """Send these PCM16 bytes to the page as one binary frame."""

    pcm: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """End the lesson: close the page's socket with `code` and the upstream session."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Log:
    level: Literal["debug", "info", "warning", "error"]
    event: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open an upstream session for the lesson: at its start, or in place of one lost or rolled over. One still
    open is let go first (closed, unheard from now on)."""


Action = ToUpstream | ToBrowser | ToBrowserAudio | Close | Log | Record | OpenUpstream
NO_ACTIONS: tuple[Action, ...] = ()
