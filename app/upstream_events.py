"""UpstreamEvents: how the Realtime session's events are read and routed, a part of `LessonSession`.

A base class of `LessonSession` (app/session.py), split out by concern like `ResumableLesson`; it does no I/O
and reads no clock. It reads each server message, routes it by `type`, and carries the conversation itself:
the tutor's audio and words to the page, the student's speech and transcripts to the record. What an event
means for the lesson's course (session set-up, the greeting, response.done, errors) is `LessonSession`'s,
declared below.

- Audio and transcript deltas are most of the traffic: they are routed first, without pydantic; a delta of
  an audio item already started is one action, `ToBrowserAudio`.
- A malformed or unknown event is logged and tolerated: the lesson goes on.
- Nothing of a response dropped (cancelled, or asked for before the page left) reaches the page.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from pydantic import ValidationError

from app import messages, protocol
from app.actions import NO_ACTIONS, Action, Log, ToBrowser, ToBrowserAudio
from app.feedback import FeedbackExchange
from app.greeting import Greeting
from app.heard import TutorItem, TutorItems
from app.lesson_state import LessonState, Timer
from app.recorder import LessonRecorder
from app.records import Record


class UpstreamEvents(abc.ABC):
    """The lesson's reading of its upstream's events; `LessonSession` is the lesson."""

    # The machine's own state, kept by LessonSession, that these rules read and move.
    state: LessonState
    _items: TutorItems
    _recorder: LessonRecorder
    _greeting: Greeting
    _feedback: FeedbackExchange
    _started_at: float
    _student_speaking: bool

    # ---- what the machine provides -----------------------------------------------------------------

    @abc.abstractmethod
    def _on_session_created(self, event: Mapping[str, Any], now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _on_session_updated(self, event: protocol.SessionEvent, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _on_response_created(self, event: protocol.ResponseEvent, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _on_response_done(self, event: protocol.ResponseEvent, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _on_error(self, event: protocol.ErrorEvent, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _cut_tutor_short(self, now: float, *, why: str, cancel: bool, truncate: bool) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _clear_deadline(self, timer: Timer) -> None: ...

    # Kept by ResumableLesson, which comes before this class among LessonSession's bases.
    @abc.abstractmethod
    def _kept(self, turn: Record, item_id: str) -> Record: ...

    # ---- reading and routing -----------------------------------------------------------------------

    def handle_upstream_message(self, message: bytes, now: float) -> Sequence[Action]:
        """One server message as it came off the socket: a JSON event, or a warning in the log and nothing else."""
        try:
            event = orjson.loads(message)
        except orjson.JSONDecodeError as exc:
            return (Log("warning", "upstream_event_malformed", {"type": None, "problem": f"not JSON: {exc}"[:300]}),)
        if not isinstance(event, dict):
            return (Log("warning", "upstream_event_malformed",
                        {"type": None, "problem": f"a JSON {type(event).__name__}, not an object"}),)
        return self.handle_upstream(event, now)

    def handle_upstream(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        """One decoded server event from the Realtime session."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        event_type = event.get("type")
        # Audio and transcript deltas are most of the traffic: handled first, without pydantic.
        if event_type == protocol.AUDIO_DELTA:
            return self._on_audio_delta(event, now)
        if event_type == protocol.TRANSCRIPT_DELTA:
            return self._on_tutor_transcript(event, now, done=False)
        try:
            return self._dispatch_upstream(event_type, event, now)
        except (ValidationError, KeyError, TypeError) as exc:
            # A malformed event is logged and tolerated: the lesson goes on.
            return (Log("warning", "upstream_event_malformed", {"type": str(event_type), "problem": _problem(exc)}),)

    def _dispatch_upstream(self, event_type: object, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        match event_type:
            case protocol.SESSION_CREATED:
                return self._on_session_created(event, now)
            case protocol.SESSION_UPDATED:
                return self._on_session_updated(protocol.SessionEvent.model_validate(event), now)
            case protocol.RESPONSE_CREATED:
                return self._on_response_created(protocol.ResponseEvent.model_validate(event), now)
            case protocol.RESPONSE_DONE:
                return self._on_response_done(protocol.ResponseEvent.model_validate(event), now)
            case protocol.AUDIO_DONE:
                return self._on_audio_done(event)
            case protocol.TRANSCRIPT_DONE:
                return self._on_tutor_transcript(event, now, done=True)
            case protocol.SPEECH_STARTED:
                return self._on_speech_started(event, now)
            case protocol.SPEECH_STOPPED:
                self._student_speaking = False
                self._recorder.student_stopped(event.get("item_id", ""), now)
                return (Log("debug", "upstream_event", {"direction": "in", "type": protocol.SPEECH_STOPPED}),)
            case protocol.STUDENT_TRANSCRIPT_DELTA:
                return (ToBrowser(messages.transcript_delta(role="student", item_id=event["item_id"],
                                                            text=event.get("delta") or "")),)
            case protocol.STUDENT_TRANSCRIPT_DONE:
                return self._on_student_transcript(event["item_id"], event.get("transcript") or "", now)
            case protocol.STUDENT_TRANSCRIPT_FAILED:
                self._recorder.student_failed(event.get("item_id", ""))
                fields = error_fields(event.get("error"))
                return (Log("warning", "student_transcription_failed", fields),
                        self._recorder.event(now, "student_transcription_failed", fields))
            case protocol.ERROR:
                return self._on_error(protocol.ErrorEvent.model_validate(event), now)
            case protocol.TEXT_DELTA:
                if self._feedback.take_text(event):
                    return NO_ACTIONS
                # Text output from a tutor turn means the session is not in audio mode: the student hears nothing.
                return (Log("warning", "upstream_text_output", {"response_id": event.get("response_id")}),)
            case _:
                return (Log("debug", "upstream_event", {"direction": "in", "type": str(event_type)}),)

    # ---- the conversation: the tutor's audio and words, the student's speech -----------------------

    def _on_audio_delta(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        response_id = event.get("response_id", "")
        if response_id in self._items.dropped_responses:
            return NO_ACTIONS
        try:
            pcm = protocol.decode_audio(event["delta"])
            item_id = event["item_id"]
        except (KeyError, TypeError, ValueError):
            return (Log("warning", "upstream_event_malformed", {"type": protocol.AUDIO_DELTA}),)
        item = self._items.by_id.get(item_id)
        if item is not None:
            item.received_bytes += len(pcm)
            return (ToBrowserAudio(pcm),)
        self._items.add(TutorItem(item_id=item_id, response_id=response_id, first_sent_at=now,
                                  turn_seq=self._recorder.tutor_turn_seq(item_id, now), received_bytes=len(pcm)),
                        now)
        actions: tuple[Action, ...] = (
            ToBrowser(messages.status("tutor_speaking")),
            ToBrowser(messages.audio_start(item_id=item_id, response_id=response_id)),
            ToBrowserAudio(pcm),
        )
        if response_id == self._greeting.response_id and self._greeting.first_audio_at is None:
            self._greeting.first_audio_at = now
            if not self._greeting.audio_started:
                self._greeting.audio_started = True
                # After the audio: by the time the shell logs this, the first greeting byte is on its way.
                actions += (Log("info", "greeting_audio_started", {"after_s": round(now - self._started_at, 3)}),)
        return actions

    def _on_audio_done(self, event: Mapping[str, Any]) -> Sequence[Action]:
        item = self._items.by_id.get(event["item_id"])
        if item is None or item.response_id in self._items.dropped_responses:
            return NO_ACTIONS
        item.audio_done = True
        return (ToBrowser(messages.audio_done(item_id=item.item_id, duration_ms=item.received_ms)),)

    def _on_tutor_transcript(self, event: Mapping[str, Any], now: float, *, done: bool) -> Sequence[Action]:
        if event.get("response_id") in self._items.dropped_responses:
            return NO_ACTIONS
        item_id = event.get("item_id", "")
        if done:
            text = event.get("transcript") or ""
            turn = self._kept(self._recorder.tutor_done(item_id, text, now), item_id)
            return (ToBrowser(messages.transcript_done(role="tutor", item_id=item_id, text=text)), turn)
        delta = event.get("delta") or ""
        self._recorder.tutor_text(item_id, delta, now)
        return (ToBrowser(messages.transcript_delta(role="tutor", item_id=item_id, text=delta)),)

    def _on_student_transcript(self, item_id: str, text: str, now: float) -> Sequence[Action]:
        done = ToBrowser(messages.transcript_done(role="student", item_id=item_id, text=text))
        turn = self._recorder.student_done(item_id, text, now)
        return (done,) if turn is None else (done, self._kept(turn, item_id))

    def _on_speech_started(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        if self.state is LessonState.FEEDBACK:
            # Audio the server had before input_audio_buffer.clear: the lesson is over, nothing to interrupt.
            return (Log("debug", "upstream_event", {"direction": "in", "type": protocol.SPEECH_STARTED}),)
        self._clear_deadline(Timer.IDLE)
        self._student_speaking = True
        if item_id := event.get("item_id"):
            self._recorder.student_started(item_id, now)
        # speech_started while the tutor speaks = barge-in.
        return (Log("debug", "student_speech_started"),
                *self._cut_tutor_short(now, why="barge_in", cancel=True, truncate=True))


def error_fields(error: object) -> dict[str, Any]:
    """The parts of an upstream `error` object worth a log line (never more than these)."""
    if not isinstance(error, Mapping):
        return {"error": repr(error)[:200]}
    return {key: error.get(key) for key in ("type", "code", "message", "param", "event_id") if error.get(key)}


def _problem(exc: Exception) -> str:
    """What is wrong with a malformed event, without its values: pydantic's own text quotes the input, which may be
    a transcript of what the student said."""
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False, include_input=False)[0]
        return f"{'.'.join(str(part) for part in first['loc']) or 'event'}: {first['msg']}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
