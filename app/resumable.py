"""ResumableLesson: how a lesson outlives its connections, the part of `LessonSession` that says so.

A base class of `LessonSession` (app/session.py), split out by concern; like the machine it does no I/O and
reads no clock. It keeps its own state (whether a page is attached, the conversation so far, the attempts at
a new upstream session) and works the machine's through what `LessonSession` provides, declared below.

- A page that leaves is waited for `resume_grace_s`: the tutor is cut where the student stopped hearing it,
  nothing is relayed, and the lesson ends `browser_gone` (or `browser_stalled`) when no page resumes it.
  A page that leaves while the feedback is on its way leaves the lesson waiting for it as before: it ends with
  its feedback recorded and the end reason it was ending with, whether a page came back by then or not.
- A lost (or expiring, or about to expire) upstream session is replaced by one told the conversation so far,
  which does not greet again; at most `MAX_RECONNECT_ATTEMPTS` before a session completes a response.
- On a redeploy the lesson is handed over (ended here as `handed_off`); another instance takes it over.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any

from app import messages, protocol
from app.actions import NO_ACTIONS, Action, Close, Log, OpenUpstream, ToBrowser
from app.continuity import (
    MAX_RECONNECT_ATTEMPTS,
    RECONNECT_BACKOFF_S,
    ROLL_OVER_RECHECK_S,
    CarriedOver,
    Transcript,
    roll_over_after_s,
)
from app.greeting import Greeting
from app.heard import TutorItems
from app.lesson_config import LessonConfig
from app.lesson_state import LessonState, Timer
from app.recorder import LessonRecorder
from app.records import Record, TurnFinished
from app.usage import LessonUsage

# A redeploy closes the page's socket with this: the page resumes on whichever instance answers.
_RESTARTING = Close(1001, "server_restarting")
_NOT_RESTORED_WORDS = ("The connection to the tutor was lost and could not be restored. "
                       "Please start a new lesson.")


class ResumableLesson(abc.ABC):
    """The lesson's rules for its connections coming and going; `LessonSession` is the lesson."""

    # The machine's own state, kept by LessonSession, that these rules read and move.
    config: LessonConfig
    state: LessonState
    ended_reason: str | None
    deadlines_changed: bool
    _deadlines: dict[Timer, float]
    _recorder: LessonRecorder
    _greeting: Greeting
    _usage: LessonUsage
    _started_at: float
    _session_update_id: str | None
    _items: TutorItems
    _active_response_id: str | None

    def _init_resumable(self) -> None:
        self.page_attached = True
        self._page_left_at = 0.0
        self._page_stalled = False
        self._page_seen_lines = 0
        self._greeting_on_return = False
        self._transcript = Transcript()
        self._greeted = False  # the greeting was heard once: a new upstream session does not greet again
        self._reconnect_attempts = 0
        self._reconnect_why = ""
        self._student_speaking = False

    # ---- what the machine provides -----------------------------------------------------------------

    @abc.abstractmethod
    def _set_deadline(self, timer: Timer, at: float) -> None: ...

    @abc.abstractmethod
    def _clear_deadline(self, timer: Timer) -> None: ...

    @abc.abstractmethod
    def _transition(self, new: LessonState) -> None: ...

    @abc.abstractmethod
    def _cut_tutor_short(self, now: float, *, why: str, cancel: bool, truncate: bool) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _request_greeting(self, now: float) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _finish(self, reason: str, close_code: int, now: float,
                error: tuple[str, str] | None = None) -> Sequence[Action]: ...

    @abc.abstractmethod
    def _told_on_return(self, now: float) -> Sequence[Action]: ...

    # ---- the page away and back --------------------------------------------------------------------

    def handle_page_detached(self, now: float) -> Sequence[Action]:
        """The page's socket went away (network lost, tab reloaded or closed): the lesson waits for it for the
        grace period, relays nothing to it, and cuts the tutor short where the student stopped hearing. While the
        feedback is on its way the lesson waits for that instead (`_page_away_while_ending`)."""
        if self.state is LessonState.ENDED or not self.page_attached:
            return NO_ACTIONS
        if self.state is LessonState.FEEDBACK:
            return self._page_away_while_ending(now)
        if self.config.resume_grace_s <= 0:
            return self._finish(self._page_gone_reason(), 1008 if self._page_stalled else 1000, now)
        actions: list[Action] = list(self._page_away(now, {"grace_s": self.config.resume_grace_s}))
        actions += self._cut_tutor_short(now, why="page_away", cancel=True, truncate=True)
        if self.state is LessonState.GREETING:
            # The student has not heard the greeting: it is asked for again when the page is back.
            self._greeting_on_return = True
            for timer in (Timer.GREETING_WATCHDOG, Timer.GREETING_HEARD, Timer.GREETING_RETRY):
                self._clear_deadline(timer)
        self._clear_deadline(Timer.IDLE)
        self._set_deadline(Timer.PAGE_GRACE, now + self.config.resume_grace_s)
        return actions

    def _page_away(self, now: float, fields: Mapping[str, Any]) -> Sequence[Action]:
        """No page is attached from `now`: what it had seen is remembered for its return; logged and recorded."""
        self.page_attached = False
        self._page_left_at = now
        self._page_seen_lines = len(self._transcript.lines)
        self._transcript.forget_cuts()
        logged = {"state": self.state.value, **fields}
        return Log("info", "page_away", logged), self._recorder.event(now, "page_away", logged)

    def _page_away_while_ending(self, now: float) -> Sequence[Action]:
        """The page left while the feedback is on its way: the lesson still waits for it, to the same deadline and
        whether resuming is on or off, for the lesson's record (its teacher reads it there). A page back by then
        takes the wait over; one back after the end gets the feedback from the record. No grace period: the
        feedback's deadline ends the wait, with the end reason the lesson was ending with."""
        left_s = self._deadlines.get(Timer.FEEDBACK, now) - now
        return self._page_away(now, {"feedback_left_s": round(max(0.0, left_s), 3)})

    def handle_page_attached(self, now: float, *, replay: bool) -> Sequence[Action]:
        """A page resumed the lesson (a replaced page counts as gone first): it gets the lesson frame, the turns it
        missed (all of them with `replay`) and where the lesson is; the lesson goes on."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        replaced = self.page_attached
        actions: list[Action] = []
        if replaced:
            actions += self.handle_page_detached(now)
        if self.ended_reason is not None:
            return actions  # resuming is off: the replaced page ended the lesson
        self.page_attached = True
        self._page_stalled = False
        self._clear_deadline(Timer.PAGE_GRACE)
        # A turn cut while the page was away comes again, as heard; a reloaded page gets every turn.
        missed = self._transcript.frames(0 if replay else self._page_seen_lines)
        actions += [
            ToBrowser(self._lesson_frame(resumed=True)),
            Log("info", "page_back", {"away_s": round(now - self._page_left_at, 3), "replaced": replaced,
                                      "replay": replay, "state": self.state.value}),
            *(ToBrowser(frame) for frame in missed),
        ]
        match self.state:
            case LessonState.RECONNECTING:
                actions.append(ToBrowser(messages.status("reconnecting", "upstream")))
            case LessonState.CONNECTING | LessonState.CONFIGURING:
                actions.append(ToBrowser(messages.status("connecting")))
            case LessonState.GREETING:
                if self._greeting_on_return and self._session_update_id is not None:
                    self._greeting_on_return = False
                    self._greeting.attempts = 0
                    actions += self._request_greeting(now)
                else:
                    actions.append(ToBrowser(messages.status("greeting")))
            case LessonState.CONVERSING:
                self._set_deadline(Timer.IDLE, now + self.config.idle_timeout_s)
                actions.append(ToBrowser(messages.status("listening")))
            case LessonState.FEEDBACK:
                # Ended while the page was away (its teacher, the time limit), or a page away (or replaced) after
                # the end: told as a page that was there.
                actions += self._told_on_return(now)
        return actions

    def handle_browser_stalled(self, timeout_s: float, now: float) -> Sequence[Action]:
        """A send to the page did not finish within `timeout_s` (it stopped reading): the shell has dropped
        its connection. Like a page that went away; if it does not come back the lesson ends `browser_stalled`."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        self._page_stalled = True
        return (
            Log("warning", "browser_stalled", {"timeout_s": timeout_s, "state": self.state.value}),
            *self.handle_page_detached(now),
        )


    # ---- the upstream replaced, the lesson handed over and taken over ------------------------------

    def _lesson_frame(self, *, resumed: bool) -> dict[str, Any]:
        cfg = self.config
        return messages.lesson(lesson_id=cfg.lesson_id, simulated=cfg.simulated, name=cfg.name, level=cfg.level,
                               sample_rate=protocol.SAMPLE_RATE, resume_token=cfg.resume_token,
                               resume_grace_s=cfg.resume_grace_s, resumed=resumed)

    def _kept(self, turn: Record, item_id: str) -> Record:
        """A finished turn's record, kept in the lesson's transcript too."""
        if isinstance(turn.record, TurnFinished):
            self._transcript.add(turn.record.seq, turn.record.role, item_id, turn.record.text)
        return turn

    def _page_gone_reason(self) -> str:
        return "browser_stalled" if self._page_stalled else "browser_gone"

    def _take_over(self, carried: CarriedOver, now: float, *, replay: bool) -> Sequence[Action]:
        """Begin a lesson taken over from another instance: its clock, turns and usage carry on, and a new upstream
        session is opened as for a lost one."""
        self._started_at = now - carried.elapsed_s
        self._greeted = carried.greeted
        self._usage.carry(carried.tokens)
        for line in carried.turns:
            self._transcript.add(line.seq, line.role, line.item_id, line.text, cut=line.cut)
        self._set_deadline(Timer.LESSON_LIMIT, self._started_at + self.config.max_lesson_s)
        self._transition(LessonState.RECONNECTING)
        self._reconnect_why = "taken_over"
        last_seq = max((line.seq for line in carried.turns), default=0)
        return (
            ToBrowser(self._lesson_frame(resumed=True)),
            *(ToBrowser(frame) for frame in (self._transcript.frames() if replay else ())),
            ToBrowser(messages.status("reconnecting", "upstream")),
            Log("info", "lesson_taken_over", {"elapsed_s": round(carried.elapsed_s, 3), "turns": len(carried.turns),
                                              "replay": replay, "from_lost_instance": carried.from_lost_instance}),
            self._recorder.taken_over(now, elapsed_s=carried.elapsed_s, last_seq=last_seq,
                                      from_lost_instance=carried.from_lost_instance),
            *self._next_attempt(now),
        )

    def _replace_upstream(self, why: str, fields: Mapping[str, Any], now: float) -> Sequence[Action]:
        """The upstream session is lost (or about to be, at its cap): the lesson goes on with a new one, told the
        conversation so far. What the tutor was saying is cut where the student stopped hearing it."""
        logged = {**fields, "why": why, "state": self.state.value}
        actions: list[Action] = [
            Log("warning", "upstream_lost", logged), self._recorder.event(now, "upstream_lost", logged),
            *self._cut_tutor_short(now, why="tutor_cut_off", cancel=False, truncate=False),
        ]
        if self.state is LessonState.GREETING and not self.page_attached:
            self._greeting_on_return = True
        for timer in (Timer.IDLE, Timer.GREETING_WATCHDOG, Timer.GREETING_HEARD, Timer.GREETING_RETRY,
                      Timer.ROLL_OVER):
            self._clear_deadline(timer)
        self._active_response_id = None
        self._items = TutorItems()
        self._student_speaking = False
        self._transition(LessonState.RECONNECTING)
        self._reconnect_why = why
        return (*actions, ToBrowser(messages.status("reconnecting", "upstream")), *self._next_attempt(now))

    def _next_attempt(self, now: float) -> Sequence[Action]:
        """A new upstream session: the first attempt at once, the next after a pause; none past the last.
        Attempts count from the last session that completed a response, so a session lost again and again
        before it answers ends the lesson instead of looping."""
        if self._reconnect_attempts >= MAX_RECONNECT_ATTEMPTS:
            return self._finish("upstream_closed", 1011, now, error=("upstream_closed", _NOT_RESTORED_WORDS))
        self._reconnect_attempts += 1
        if self._reconnect_attempts == 1:
            return self._open_new_upstream(now)
        self._set_deadline(Timer.UPSTREAM_RETRY, now + RECONNECT_BACKOFF_S * 2 ** (self._reconnect_attempts - 2))
        return NO_ACTIONS

    def _open_new_upstream(self, now: float) -> Sequence[Action]:
        self._session_update_id = None
        self._greeting.request_id = None
        self._greeting.response_id = None
        self._set_deadline(Timer.SETUP, now + self.config.upstream_timeout_s)
        return (Log("info", "upstream_reconnecting", {"why": self._reconnect_why,
                                                      "attempt": self._reconnect_attempts}),
                OpenUpstream())

    def _reconnect_failed(self, failure: str, fields: Mapping[str, Any], now: float) -> Sequence[Action]:
        """An attempt at a new upstream session failed: one more after a pause, then the lesson ends."""
        logged = {**fields, "failure": failure, "why": self._reconnect_why, "attempt": self._reconnect_attempts}
        self._clear_deadline(Timer.SETUP)
        return (Log("warning", "upstream_reconnect_failed", logged),
                self._recorder.event(now, "upstream_reconnect_failed", logged), *self._next_attempt(now))

    def _upstream_replaced(self, now: float) -> Sequence[Action]:
        """The new session confirmed its configuration: the lesson goes on where it was, without a greeting
        once the greeting was heard."""
        actions: list[Action] = [Log("info", "upstream_replaced", {"why": self._reconnect_why,
                                                                   "attempt": self._reconnect_attempts})]
        if not self._greeted:
            self._transition(LessonState.GREETING)
            self._greeting.attempts = 0
            if not self.page_attached:
                self._greeting_on_return = True
                return actions
            return (*actions, *self._request_greeting(now))
        self._transition(LessonState.CONVERSING)
        if self.page_attached:
            self._set_deadline(Timer.IDLE, now + self.config.idle_timeout_s)
        return (*actions, ToBrowser(messages.status("listening")))

    def _arm_roll_over(self, session: object, now: float) -> None:
        """`session.created` says when the session expires: replace it before then, at a turn boundary."""
        expires_at = session.get("expires_at") if isinstance(session, Mapping) else None
        expires_in_s = None
        if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
            expires_in_s = expires_at - self._recorder.wall(now).timestamp()
        self._set_deadline(Timer.ROLL_OVER, now + roll_over_after_s(expires_in_s))

    def _roll_over_if_at_a_boundary(self, now: float) -> Sequence[Action]:
        """At a turn boundary (the tutor has finished and been heard, the student is not speaking) roll the
        upstream session over; otherwise look again shortly."""
        if (self.state is not LessonState.CONVERSING or self._active_response_id is not None
                or self._items.playing(now) is not None or self._student_speaking):
            self._set_deadline(Timer.ROLL_OVER, now + ROLL_OVER_RECHECK_S)
            return NO_ACTIONS
        return self._replace_upstream("roll_over", {}, now)

    def handle_moved(self, now: float) -> Sequence[Action]:
        """A page resumes this lesson on another worker of the replica: hand the lesson over, for that page to
        take it over from the store. A page still attached here is told the lesson went on elsewhere, as a
        page a newer socket replaces is, so that two tabs do not pull the lesson back and forth."""
        if self.state in (LessonState.ENDED, LessonState.FEEDBACK):
            return NO_ACTIONS
        told = messages.error(code="lesson_resumed_elsewhere", fatal=True,
                              message="This lesson went on in another window or tab.")
        return self._hand_over(now, why="moved", told=told, close=Close(4001, "resumed_elsewhere"))

    def _hand_over(self, now: float, *, why: str = "server_restarting", told: Mapping[str, Any] | None = None,
                   close: Close = _RESTARTING) -> Sequence[Action]:
        """The lesson leaves this instance as `handed_off` (its turns, usage and time so far in the store). On a
        redeploy its page is told the server restarts and that it reconnects: no `status ended`."""
        cut = self._cut_tutor_short(now, why="tutor_cut_off", cancel=False, truncate=False)
        self._transition(LessonState.ENDED)
        self.ended_reason = "handed_off"
        self._deadlines.clear()
        self.deadlines_changed = True
        duration_s = round(now - self._started_at, 3)
        cost = self._usage.cost_usd(self.config.prices_per_million)
        tokens = self._usage.tokens_by_kind()
        return (
            *cut,
            ToBrowser(messages.status("reconnecting", "server_restarting") if told is None else told),
            Log("info", "lesson_handed_off", {"why": why, "duration_s": duration_s,
                                              "page_attached": self.page_attached, "estimated_cost_usd": cost,
                                              **tokens}),
            self._recorder.ended(now, end_reason="handed_off", duration_s=duration_s,
                                 usage=self._usage.recorded_counts(), estimated_cost_usd=cost),
            close,
        )
