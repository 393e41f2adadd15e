"""How a lesson ends, as the actions that end it, in the order the page must get them: the feedback (or
word that there is none), the usage frame, `status` `ended`, then the close; with them the log lines and
the records of the lesson's feedback and end.

`EndingLesson`, a base class of `LessonSession` (app/session.py) split out by concern as `ResumableLesson` is, holds
the normal end: after a conversation the tutor's answer under way is cancelled and cut where the student stopped
hearing it, the feedback is asked for, and the lesson ends once it comes (or does not). Like the machine it does no
I/O and reads no clock; it works the machine's state through what `LessonSession` provides, declared below."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from app import messages, protocol
from app.actions import NO_ACTIONS, Action, Close, Log, ToBrowser, ToUpstream
from app.feedback import ACTIVE_RESPONSE_CODE, FeedbackExchange, FeedbackUnavailable, ParsedFeedback
from app.heard import TutorItems
from app.lesson_config import LessonConfig
from app.lesson_state import LessonState, Timer
from app.recorder import LessonRecorder
from app.usage import LessonUsage
from app.withdrawal import Withdrawal


def feedback_actions(outcome: ParsedFeedback | FeedbackUnavailable, *, recorder: LessonRecorder,
                     fields: Mapping[str, Any], now: float) -> list[Action]:
    """The feedback for the page and the store, or why there is none for the page, the log and the lesson's
    events; `fields` (the ending, how long the answer took) go in the log line."""
    if isinstance(outcome, FeedbackUnavailable):
        why = {**fields, "reason": outcome.reason, **outcome.detail}
        return [ToBrowser(messages.feedback_unavailable(reason=outcome.reason)),
                Log("warning", "feedback_unavailable", why),
                recorder.event(now, "feedback_unavailable", why)]
    content = outcome.feedback.model_dump()
    actions: list[Action] = [
        ToBrowser(messages.feedback(content)),
        recorder.feedback(content),
        Log("info", "feedback_given", {**fields, "corrections": len(content["corrections"]),
                                       "new_words": len(content["new_words"])}),
    ]
    if outcome.trimmed:
        # Longer lists than asked for are cut to their first entries, not refused.
        trimmed = {"given": dict(outcome.trimmed)}
        actions += [Log("warning", "feedback_trimmed", trimmed), recorder.event(now, "feedback_trimmed", trimmed)]
    return actions


def withdrawal_frame(withdrawal: Withdrawal) -> dict[str, Any]:
    """The fatal `error` frame telling the page in plain words that its teacher withdrew or ended the lesson."""
    return messages.error(code=withdrawal.value, message=withdrawal.student_message, fatal=True)


def closing_actions(*, reason: str, close_code: int, duration_s: float, usage: LessonUsage,
                    prices: Mapping[str, float], recorder: LessonRecorder, now: float,
                    error: tuple[str, str] | None) -> list[Action]:
    """The fatal `error` frame if any, what the lesson used, `status` `ended`, `lesson_ended`, the end record and
    the close."""
    cost = usage.cost_usd(prices)
    totals = usage.totals()
    actions: list[Action] = []
    if error is not None:
        actions.append(ToBrowser(messages.error(code=error[0], message=error[1], fatal=True)))
    actions += [
        ToBrowser({"type": "usage", **totals, "duration_s": duration_s, "estimated_cost_usd": cost}),
        ToBrowser(messages.status("ended", reason)),
        Log("info", "lesson_ended", {"reason": reason, "duration_s": duration_s, **totals, "estimated_cost_usd": cost}),
        recorder.ended(now, end_reason=reason, duration_s=duration_s, usage=usage.recorded_counts(),
                       estimated_cost_usd=cost),
        Close(close_code, reason),
    ]
    return actions


class EndingLesson(abc.ABC):
    """The lesson's normal end and its feedback; `LessonSession` is the lesson."""

    # The machine's own state, kept by LessonSession, that the end reads and moves.
    config: LessonConfig
    state: LessonState
    _deadlines: dict[Timer, float]
    _recorder: LessonRecorder
    _feedback: FeedbackExchange
    _items: TutorItems
    _active_response_id: str | None
    # Why a lesson waiting for its feedback ends (student_ended, time_limit, idle, teacher_ended).
    _ending_reason: str

    # ---- what the machine provides -----------------------------------------------------------------

    @abc.abstractmethod
    def _transition(self, new: LessonState) -> None: ...

    @abc.abstractmethod
    def _set_deadline(self, timer: Timer, at: float) -> None: ...

    @abc.abstractmethod
    def _next_event_id(self) -> str: ...

    @abc.abstractmethod
    def _cut_tutor_short(self, now: float, *, why: str, cancel: bool, truncate: bool) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _finish(self, reason: str, close_code: int, now: float,
                error: tuple[str, str] | None = None) -> Sequence[Action]: ...

    @property
    def ended_with(self) -> tuple[str, Mapping[str, Any]] | None:
        """The end reason and the feedback of a lesson that ended with its feedback; None for any other."""
        given = self._feedback.given
        return None if given is None or self.state is not LessonState.ENDED else (self._ending_reason, given)

    # ---- the normal end and its feedback -----------------------------------------------------------

    def _end_normally(self, reason: str, now: float) -> Sequence[Action]:
        """The student's End, the time limit or idleness: after a conversation, the feedback is asked for first."""
        if self.state is not LessonState.CONVERSING:
            return self._finish(reason, 1000, now)
        active = self._active_response_id
        if (active is not None and active not in self._items.dropped_responses
                and not self._items.of_response(active)):
            # An answer none of whose audio has reached the page: what it said so far is deleted at its end.
            self._items.unheard_responses.add(active)
        # One response at a time: the tutor's is cancelled, and the feedback asked for at its response.done.
        cancelled = self._cancel_while_ending(active) if active is not None else ()
        # The student stops hearing the tutor here: its turn is kept as heard, and its item truncated to that, or
        # deleted when none of it was heard (after the cancel, as for a barge-in), all before the feedback's
        # response.create, so the feedback, which reads the conversation, sees only what the student heard.
        cut = self._cut_tutor_short(now, why="tutor_cut_at_end", cancel=False, truncate=True)
        self._transition(LessonState.FEEDBACK)
        self._ending_reason = reason
        self._deadlines.clear()
        self._set_deadline(Timer.FEEDBACK, now + self.config.feedback_timeout_s)
        actions: list[Action] = [
            *cancelled,
            *cut,
            ToBrowser(messages.feedback_pending(timeout_s=self.config.feedback_timeout_s)),
            # The microphone is no longer relayed; what the server holds of it must not become a turn.
            ToUpstream(protocol.dumps(protocol.input_audio_clear(event_id=self._next_event_id()))),
        ]
        return actions if active is not None else (*actions, *self._ask_for_feedback(now))

    def _told_on_return(self, now: float) -> Sequence[Action]:
        """What a page that comes back while the feedback is on its way is told, as it was told had it been there:
        the teacher's words when the teacher ended the lesson, then that the feedback comes, within the time left.
        The feedback (or word that there is none) and the end reason follow when it comes."""
        told: list[Action] = []
        if self._ending_reason in set(Withdrawal):
            told.append(ToBrowser(withdrawal_frame(Withdrawal(self._ending_reason))))
        left_s = self._deadlines.get(Timer.FEEDBACK, now) - now
        told.append(ToBrowser(messages.feedback_pending(timeout_s=round(max(0.0, left_s), 3))))
        return told

    def _ask_for_feedback(self, now: float) -> Sequence[Action]:
        return (ToUpstream(self._feedback.request(self._next_event_id(), now)),
                Log("info", "feedback_requested", {"ending": self._ending_reason}))

    def _cancel_while_ending(self, response_id: str) -> Sequence[Action]:
        self._items.dropped_responses.add(response_id)
        return (ToUpstream(protocol.dumps(protocol.response_cancel(event_id=self._next_event_id(),
                                                                   response_id=response_id))),
                Log("info", "response_cancelled_for_feedback", {"response_id": response_id}))

    def _on_response_created_while_ending(self, response: protocol.Response) -> Sequence[Action]:
        if self._feedback.claims(response):
            return (Log("debug", "feedback_created", {"response_id": response.id}),)
        # A tutor turn the server started from audio it had before the end: nobody is listening any more.
        self._items.unheard_responses.add(response.id or "")
        return self._cancel_while_ending(response.id or "")

    def _delete_unheard(self, response: protocol.Response) -> Sequence[Action]:
        """The response.done of a tutor response cancelled at the end before the student heard any of it: its
        output items are deleted upstream (before the feedback is asked for), as an item cut with nothing heard
        is, so that the feedback does not read what it had said so far."""
        if response.id not in self._items.unheard_responses:
            return NO_ACTIONS
        self._items.unheard_responses.discard(response.id)
        return self._delete_output(response)

    def _delete_output(self, response: protocol.Response) -> Sequence[Action]:
        """`conversation.item.delete` for each output item of a response nobody heard."""
        return tuple(ToUpstream(protocol.dumps(protocol.item_delete(event_id=self._next_event_id(), item_id=item.id)))
                     for item in response.output or () if item.id is not None)

    def _on_error_while_ending(self, error: protocol.ErrorDetail, fields: Mapping[str, Any],
                               now: float) -> Sequence[Action]:
        if error.event_id is None or error.event_id != self._feedback.request_id:
            return NO_ACTIONS
        if error.code == ACTIVE_RESPONSE_CODE and self._feedback.refused_while_busy():
            # Asked again at the active response's response.done (which the server still sends).
            return NO_ACTIONS
        return self._end_with_feedback(FeedbackUnavailable("request_refused", fields), now)

    def _end_with_feedback(self, outcome: ParsedFeedback | FeedbackUnavailable, now: float) -> Sequence[Action]:
        """The page gets the feedback (or word that there is none) before `status` `ended`; the store keeps it."""
        asked_at = self._feedback.asked_at
        fields = {"ending": self._ending_reason, "waited_s": None if asked_at is None else round(now - asked_at, 3)}
        if isinstance(outcome, ParsedFeedback):
            self._feedback.given = outcome.feedback.model_dump()
        return (*feedback_actions(outcome, recorder=self._recorder, fields=fields, now=now),
                *self._finish(self._ending_reason, 1000, now))
