"""LessonSession: everything the product knows about a lesson, as a state machine that does no I/O.

Events go in (a browser frame, an upstream event, a timer firing, the socket closing) together with the
current monotonic time; a sequence of actions comes out (`ToUpstream`, `ToBrowser`, `ToBrowserAudio`,
`Close`, `Log`, `Record`) for the shell in `relay.py` to carry out in order. The machine never awaits and never
reads a clock, so every rule here is tested without sockets or sleeps.

Invariants:
- `session.update` is the first client event; `response.create` is sent only after `session.updated`.
- Exactly one greeting is asked for, plus at most one retry when it fails or comes back without audio.
- Microphone audio is discarded until the greeting has been heard, so noise cannot cancel it; after it,
  audio is relayed at no more than about real time (`app/pacing.py`) and tiny frames are joined.
- A lesson whose estimated cost reaches `max_cost_usd` ends, telling the student in plain words.
- A lesson that ends normally after a conversation (End, time limit, idle) asks for its feedback out of band
  first, and ends at its answer or at FEEDBACK_TIMEOUT_SECONDS; its text never reaches the transcript.
- Every `response.done` is logged with its status, status_details and usage.
- Once `Close` has been returned the machine is ENDED and ignores everything but the clock.
- The lesson outlives its sockets: a page that leaves is waited for `resume_grace_s` (the tutor cut where the
  student stopped hearing it), and a lost upstream session is replaced (at most twice before one answers) by
  one told the conversation so far, which does not greet again. `page_attached` says whether a page is there.
- What the store keeps leaves as `Record` actions at turn boundaries, never per audio frame: the lesson's
  start and end, each finished turn, and each failure with the upstream's own reason.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, assert_never

from app import messages, protocol
from app.actions import NO_ACTIONS, Action, Close, Log, OpenUpstream, ToBrowser, ToUpstream
from app.continuity import UNRETRYABLE_CODES, line_frame
from app.ending import EndingLesson, closing_actions, withdrawal_frame
from app.feedback import FeedbackExchange, FeedbackUnavailable
from app.greeting import Greeting, failure_words, retry_wait_s
from app.heard import TutorItems, heard_text
from app.lesson_config import LessonConfig
from app.lesson_state import LessonState, Timer, check_transition
from app.page_input import PageInput
from app.prompts import continued_instructions
from app.recorder import LessonRecorder
from app.resumable import ResumableLesson
from app.upstream_events import UpstreamEvents, error_fields
from app.usage import LessonUsage
from app.withdrawal import Withdrawal

# A response that ended `incomplete`, by status_details.reason.
_INCOMPLETE_WORDS = {
    "max_output_tokens": "The tutor was cut off because the answer got too long. Ask for a shorter answer.",
    "content_filter": "The tutor was cut off by the safety filter. Please say it another way.",
}
_INCOMPLETE_DEFAULT = "The tutor was cut off before finishing. Please ask again."
_EXPIRED_WORDS = "The lesson reached its time limit. Please start a new lesson to continue."
_COST_LIMIT_WORDS = "This lesson has reached the most tutor time one lesson may use, so it has ended here."
_UPSTREAM_LOST_WORDS = "The connection to the tutor was lost. Start the lesson again to continue."


class LessonSession(EndingLesson, ResumableLesson, UpstreamEvents, PageInput):
    """One lesson's protocol state. Feed it events; carry out the actions it returns, in order.

    Its base classes hold a concern each: its normal end and feedback is `EndingLesson` (app/ending.py); how it
    outlives its sockets (the page away and back, the upstream replaced, the hand-over) is `ResumableLesson`
    (app/resumable.py); how upstream events are read and routed, and the conversation they carry relayed, is
    `UpstreamEvents` (app/upstream_events.py); what the page may send is `PageInput` (app/page_input.py)."""

    # Every attribute of the machine and its base classes: over 30 in an instance dict would make it unshared,
    # 1.5 KiB a lesson. A name missing here still works, in a dict (a test keeps the list whole).
    __slots__ = (
        "_active_response_id", "_coalescer", "_deadlines", "_ending_reason", "_event_counter", "_feedback",
        "_greeted", "_greeting", "_greeting_on_return", "_items", "_microphone", "_page_left_at",
        "_page_messages", "_page_seen_lines", "_page_stalled", "_reconnect_attempts", "_reconnect_why",
        "_recorder", "_refusals", "_session_update_id", "_started_at", "_student_speaking", "_too_fast",
        "_transcript", "_usage", "config", "deadlines_changed", "discarded_frames", "ended_reason",
        "page_attached", "state",
    )

    def __init__(self, config: LessonConfig) -> None:
        self.config = config
        self.state = LessonState.CONNECTING
        self.ended_reason: str | None = None
        # Why a lesson waiting for its feedback ended (student_ended, time_limit, idle).
        self._ending_reason = ""
        self._deadlines: dict[Timer, float] = {}
        # The relay re-arms its timer only when this flips; cheaper than comparing deadlines per frame.
        self.deadlines_changed = False
        self._event_counter = 0
        self._started_at = 0.0
        self._session_update_id: str | None = None
        self._greeting = Greeting()
        self._feedback = FeedbackExchange(config.feedback_instructions)
        self._active_response_id: str | None = None
        self._items = TutorItems()
        self._usage = LessonUsage()
        self._recorder = LessonRecorder(config.lesson_id, config.started_at)
        self._init_page_input()
        self._init_resumable()

    # ---- inputs ----------------------------------------------------------------------------------

    def begin(self, now: float, *, replay: bool = False) -> Sequence[Action]:
        """The page's socket is accepted: announce the lesson and open its upstream session. A lesson carried
        over from another instance goes on (`replay`: its page asked for the transcript so far)."""
        cfg = self.config
        if cfg.carried is not None:
            return self._take_over(cfg.carried, now, replay=replay)
        self._started_at = now
        self._set_deadline(Timer.SETUP, now + self.config.upstream_timeout_s)
        self._set_deadline(Timer.LESSON_LIMIT, now + self.config.max_lesson_s)
        return (
            ToBrowser(self._lesson_frame(resumed=False)),
            ToBrowser(messages.status("connecting")),
            # `level` is the log line's own field (info, warning…): the lesson's is `cefr_level`.
            Log("info", "lesson_started", {"cefr_level": cfg.level, "simulated": cfg.simulated}),
            self._recorder.started(now, level=cfg.level, model=cfg.model, simulated=cfg.simulated,
                                   student_id=cfg.student_id, link_id=cfg.link_id,
                                   browser_key_hash=cfg.browser_key_hash, student_name=cfg.name),
            OpenUpstream(),
        )

    def handle_timeout(self, now: float) -> Sequence[Action]:
        """The clock reached `next_deadline()`: fire every timer that is due."""
        actions: list[Action] = []
        for timer, deadline in sorted(self._deadlines.items(), key=lambda entry: entry[1]):
            if deadline <= now and self.state is not LessonState.ENDED:
                self._clear_deadline(timer)
                actions.extend(self._on_timer(timer, now))
        return actions

    def handle_upstream_closed(self, code: int | None, reason: str, now: float) -> Sequence[Action]:
        """The upstream socket closed without us asking: a lesson under way gets a new session."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        fields = {"code": code, "reason": reason, "state": self.state.value}
        expired = code == 1001 and "maximum duration" in reason
        if self.state is LessonState.RECONNECTING:
            return self._reconnect_failed("upstream_closed", fields, now)
        if self.state in (LessonState.GREETING, LessonState.CONVERSING):
            return self._replace_upstream("session_expired" if expired else "upstream_closed", fields, now)
        if expired and self.state is not LessonState.FEEDBACK:
            # The 60-minute cap, when its session_expired error did not come first.
            return self._finish_expired(fields, now)
        logged = (Log("error", "upstream_closed", fields), self._recorder.event(now, "upstream_closed", fields))
        if self.state is LessonState.FEEDBACK:
            return (*logged, *self._end_with_feedback(FeedbackUnavailable("upstream_closed", fields), now))
        return (*logged, *self._finish("upstream_closed", 1011, now, error=("upstream_closed", _UPSTREAM_LOST_WORDS)))

    def handle_upstream_failed(self, code: str, student_message: str, close_code: int, now: float) -> Sequence[Action]:
        """The upstream session could not be opened (refused handshake, unreachable, timeout)."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        if self.state is LessonState.RECONNECTING and code not in UNRETRYABLE_CODES:
            return self._reconnect_failed("upstream_connect_failed", {"code": code}, now)
        return (self._recorder.event(now, "upstream_connect_failed", {"code": code}),
                *self._finish(code, close_code, now, error=(code, student_message)))

    def handle_shutdown(self, now: float) -> Sequence[Action]:
        """The server is draining for a redeploy: the lesson is handed over (the page is told it will
        reconnect, and resumes on whichever instance answers), or ends when resuming is off."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        if self.state is LessonState.FEEDBACK:
            # The lesson itself is over: it ends as it was going to, without its feedback.
            return self._end_with_feedback(FeedbackUnavailable("server_shutdown"), now)
        if self.config.resume_grace_s > 0:
            return self._hand_over(now)
        return self._finish(
            "server_shutdown", 1001, now,
            error=("server_restarting", "The lesson server is restarting. Please start the lesson again in a moment."),
        )

    def handle_replaced(self, now: float) -> Sequence[Action]:
        """The same lesson link started another lesson (a reload, another tab or device): end this one."""
        if self.state is LessonState.ENDED:
            return NO_ACTIONS
        return self._finish("replaced", 1000, now, error=(
            "lesson_replaced", "This lesson was opened again in another window or device, so it ended here."))

    @property
    def ending_already(self) -> bool:
        """Ended, or ending on its own (its feedback on its way): a teacher's withdrawal changes nothing."""
        return self.state in (LessonState.ENDED, LessonState.FEEDBACK)

    def handle_withdrawn(self, withdrawal: Withdrawal, now: float) -> Sequence[Action]:
        """The teacher revoked the lesson's link, or archived or deleted its student: the lesson ends now, without
        feedback. The teacher ended the lesson: the page is told so, then it ends as the student's End does, with
        its feedback after a conversation. One already waiting for its feedback ends as it was going to."""
        if self.ending_already:
            return NO_ACTIONS
        cfg = self.config
        logged = Log("info", "lesson_withdrawn", {"reason": withdrawal.value, "link_id": cfg.link_id,
                                                  "student_id": cfg.student_id})
        if withdrawal.with_feedback and self.state is LessonState.CONVERSING:
            # A page away now is told the same when it comes back before the lesson ends (`_told_on_return`).
            return (logged, ToBrowser(withdrawal_frame(withdrawal)), *self._end_normally(withdrawal.value, now))
        return (logged, *self._finish(withdrawal.value, 1000, now,
                                      error=(withdrawal.value, withdrawal.student_message)))

    def handle_crash(self, now: float) -> Sequence[Action]:
        """The lesson's own code raised unexpectedly: tell the student in plain words and end with 1011."""
        if self.state is LessonState.ENDED:
            return (Close(1011, "internal_error"),)
        return self._finish("internal_error", 1011, now, error=(
            "internal_error", "Something went wrong on our side and the lesson had to stop. "
                              "Please start the lesson again."))

    def next_deadline(self) -> float | None:
        """The monotonic time at which `handle_timeout` must be called next, if any."""
        self.deadlines_changed = False
        return min(self._deadlines.values(), default=None)

    # ---- what upstream events mean for the lesson ------------------------------------------------

    def _on_session_created(self, event: Mapping[str, Any], now: float) -> Sequence[Action]:
        renewed = self.state is LessonState.RECONNECTING
        if (self.state is not LessonState.CONNECTING and not renewed) or self._session_update_id is not None:
            return (Log("warning", "upstream_event_unexpected", {"type": protocol.SESSION_CREATED}),)
        if not renewed:
            self._transition(LessonState.CONFIGURING)
        self._arm_roll_over(event.get("session"), now)
        cfg = self.config
        instructions = cfg.instructions()
        if renewed:
            # Told the conversation so far, not replayed as items: the new session carries on without a greeting.
            instructions = continued_instructions(instructions, turns=self._transcript.past_turns())
        self._session_update_id = self._next_event_id()
        update = protocol.session_update(
            event_id=self._session_update_id, instructions=instructions, voice=cfg.voice,
            transcription_model=cfg.transcription_model, language_code=cfg.language_code,
            turn_detection=cfg.turn_detection, vad_eagerness=cfg.vad_eagerness,
        )
        return (
            ToUpstream(protocol.dumps(update)),
            Log("debug", "upstream_event", {"direction": "out", "type": "session.update"}),
        )

    def _on_session_updated(self, event: protocol.SessionEvent, now: float) -> Sequence[Action]:
        if self.state not in (LessonState.CONFIGURING, LessonState.RECONNECTING) or self._session_update_id is None:
            return (Log("debug", "upstream_event", {"direction": "in", "type": protocol.SESSION_UPDATED}),)
        self._clear_deadline(Timer.SETUP)
        session = event.session
        modalities = session.output_modalities or []
        voice = session.audio.output.voice if session.audio and session.audio.output else None
        log = Log("info", "session_configured", {"output_modalities": modalities, "voice": voice})
        if "audio" not in modalities:
            return (
                log,
                Log("error", "session_not_audio", {"output_modalities": modalities}),
                self._recorder.event(now, "session_not_audio", {"output_modalities": modalities}),
                *self._finish("session_not_audio", 1011, now,
                              error=("tutor_setup_failed",
                                     "The tutor could not be set up to speak. Please try again.")),
            )
        if self.state is LessonState.RECONNECTING:
            return (log, *self._upstream_replaced(now))
        self._transition(LessonState.GREETING)
        if not self.page_attached:
            # Nobody would hear it: asked for when the page is back.
            self._greeting_on_return = True
            return (log,)
        return (log, *self._request_greeting(now))

    def _request_greeting(self, now: float) -> Sequence[Action]:
        event_id = self._next_event_id()
        self._greeting.requested(event_id)
        self._set_deadline(Timer.GREETING_WATCHDOG, now + self.config.upstream_timeout_s)
        return (
            ToUpstream(protocol.dumps(protocol.response_create(event_id=event_id))),
            ToBrowser(messages.status("greeting")),
            Log("info", "greeting_requested", {"attempt": self._greeting.attempts}),
        )

    def _on_response_created(self, event: protocol.ResponseEvent, now: float) -> Sequence[Action]:
        response_id = event.response.id or ""
        self._active_response_id = response_id
        if self.state is LessonState.FEEDBACK:
            return self._on_response_created_while_ending(event.response)
        if self.state is LessonState.GREETING and self._greeting.response_id is None:
            self._greeting.response_id = response_id
            self._clear_deadline(Timer.GREETING_WATCHDOG)
        self._clear_deadline(Timer.IDLE)
        log = Log("debug", "response_created", {"response_id": response_id})
        if not self.page_attached and response_id not in self._items.dropped_responses:
            # Asked for before the page left: nobody would hear it.
            self._items.dropped_responses.add(response_id)
            return (log, ToUpstream(protocol.dumps(protocol.response_cancel(
                event_id=self._next_event_id(), response_id=response_id))))
        return (log,)

    def _on_response_done(self, event: protocol.ResponseEvent, now: float) -> Sequence[Action]:
        response = event.response
        response_id = response.id or ""
        details = response.status_details
        audio_bytes = sum(item.received_bytes for item in self._items.of_response(response_id))
        cost_before = self._usage.cost_usd(self.config.prices_per_million)
        self._usage.add(response.usage)
        cost = self._usage.cost_usd(self.config.prices_per_million)
        actions: list[Action] = [Log("info", "response_done", {
            "response_id": response_id,
            "status": response.status,
            "status_details": details.model_dump(exclude_none=True) if details else None,
            "usage": response.usage.model_dump(exclude_none=True) if response.usage else None,
            "audio_ms": audio_bytes // protocol.BYTES_PER_MS,
            "estimated_cost_usd": round(cost - cost_before, 6),
        })]
        if response.usage is not None:
            # Kept as it grows: a lesson whose instance is killed keeps its cost so far.
            actions.append(self._recorder.usage(self._usage.recorded_counts(), cost))
        if self._active_response_id == response_id:
            self._active_response_id = None
        if response.status == "completed":
            self._reconnect_attempts = 0  # this session works: a later loss gets its attempts again
        dropped = response_id in self._items.dropped_responses
        self._items.dropped_responses.discard(response_id)
        if response.status != "completed":
            # Every response that did not complete is kept with the upstream's reason (status_details).
            actions.append(self._recorder.event(now, f"response_{response.status}", {
                "response_id": response_id, "status": response.status,
                "status_details": details.model_dump(exclude_none=True) if details else None,
            }))
        if (response.status == "cancelled" and details is not None and details.reason == "turn_detected"
                and not dropped and audio_bytes == 0):
            # The student spoke before any of this answer's audio reached the page: what it had said so far is
            # deleted, so that the tutor's next answer (and the feedback) does not build on it.
            actions.extend(self._delete_output(response))
        # A lesson waiting for its feedback is already ending: its last response is not cut short.
        if (cap := self.config.max_cost_usd) is not None and self.state is not LessonState.FEEDBACK and cost >= cap:
            actions.append(Log("warning", "cost_limit_reached", {"estimated_cost_usd": cost, "max_cost_usd": cap}))
            actions.extend(self._finish("cost_limit", 1000, now, error=("cost_limit", _COST_LIMIT_WORDS)))
            return actions
        if self.state is LessonState.GREETING and response_id == self._greeting.response_id:
            if dropped and self._greeting_on_return:
                return actions  # cancelled because the page left: asked for again when it is back
            actions.extend(self._on_greeting_done(response, audio_bytes, now))
            return actions
        if self.state is LessonState.FEEDBACK:
            if self._feedback.claims(response):
                actions.extend(self._end_with_feedback(self._feedback.answer(response), now))
                return actions
            actions.extend(self._delete_unheard(response))
            if not self._feedback.asked:
                # The tutor's last response is done: only now may the feedback's response.create go out.
                actions.extend(self._ask_for_feedback(now))
            return actions
        failure_code = details.error.code if details and details.error else None
        if response.status == "failed" and failure_code in protocol.UNRECOVERABLE_CODES:
            actions.extend(self._finish("response_failed", 1011, now,
                                        error=(failure_code or "response_failed", failure_words(failure_code))))
            return actions
        if response.status == "failed":
            actions.append(ToBrowser(messages.error(
                code="response_failed", message="The tutor did not answer. Please say that again.", fatal=False)))
        if response.status == "incomplete" and not dropped:
            reason = details.reason if details else None
            actions.append(ToBrowser(messages.error(
                code="response_incomplete", message=_INCOMPLETE_WORDS.get(reason or "", _INCOMPLETE_DEFAULT),
                fatal=False)))
        if self.state is LessonState.CONVERSING:
            self._set_deadline(Timer.IDLE, now + self.config.idle_timeout_s)
            actions.append(ToBrowser(messages.status("listening")))
        return actions

    def _on_greeting_done(self, response: protocol.Response, audio_bytes: int, now: float) -> Sequence[Action]:
        details = response.status_details
        failure_code = details.error.code if details and details.error else None
        if response.status == "completed" and audio_bytes > 0:
            self._greeting.done = True
            self._greeting.audio_ms = audio_bytes // protocol.BYTES_PER_MS
            return self._open_microphone_or_arm_timer(now)
        why: dict[str, Any] = {
            "status": response.status,
            "reason": details.reason if details else None,
            "code": failure_code,
            "audio_ms": audio_bytes // protocol.BYTES_PER_MS,
            "attempt": self._greeting.attempts,
        }
        # Partial audio of a failed greeting is flushed so the retry starts from silence.
        flush = [ToBrowser(messages.audio_interrupt(item_id=item.item_id))
                 for item in self._items.of_response(response.id)]
        if self._greeting.may_retry(failure_code):
            wait_s = retry_wait_s(details.error.message if details and details.error else None)
            why["retry_in_ms"] = round(wait_s * 1000)
            retry: tuple[Action, ...] = (
                Log("warning", "greeting_retry", why), self._recorder.event(now, "greeting_retry", why), *flush)
            if wait_s == 0:
                return (*retry, *self._request_greeting(now))
            self._set_deadline(Timer.GREETING_RETRY, now + wait_s)
            return (*retry, ToBrowser(messages.waiting(reason="tutor_busy", retry_in_ms=why["retry_in_ms"])))
        return (
            Log("error", "greeting_failed", why),
            self._recorder.event(now, "greeting_failed", why),
            *flush,
            *self._finish("greeting_failed", 1011, now,
                          error=(failure_code or "greeting_failed", failure_words(failure_code))),
        )

    def _cut_tutor_short(self, now: float, *, why: str, cancel: bool, truncate: bool) -> Sequence[Action]:
        """The student stops hearing the tutor now (a barge-in, End, the page gone, the upstream gone): flush the
        page, cancel the response (`cancel`), make the item upstream what was heard (`truncate`: the upstream is
        still there to be told), and keep the turn as it was cut. Logged as `why`."""
        actions: list[Action] = []
        playing = self._items.playing(now)
        active = self._active_response_id
        if playing is None:
            if cancel and why != "barge_in" and active is not None \
                    and active not in self._items.dropped_responses:
                # An answer under way that has not reached the page yet: nobody will hear it.
                self._items.dropped_responses.add(active)
                actions.append(ToUpstream(protocol.dumps(protocol.response_cancel(
                    event_id=self._next_event_id(), response_id=active))))
            return actions
        heard_ms = playing.heard_ms(now)
        actions.append(ToBrowser(messages.audio_interrupt(item_id=playing.item_id)))
        self._items.interrupt(playing)
        if cancel and active == playing.response_id:
            actions.append(ToUpstream(protocol.dumps(protocol.response_cancel(
                event_id=self._next_event_id(), response_id=playing.response_id))))
        if truncate:
            # conversation.item.truncate may not name 0 ms: an item nothing was heard of is deleted instead, so
            # neither the tutor's next answer nor the feedback reads words the student never heard.
            event_id = self._next_event_id()
            as_heard = (protocol.item_truncate(event_id=event_id, item_id=playing.item_id, audio_end_ms=heard_ms)
                        if heard_ms > 0 else protocol.item_delete(event_id=event_id, item_id=playing.item_id))
            actions.append(ToUpstream(protocol.dumps(as_heard)))
        actions.append(Log("info", why, {
            "item_id": playing.item_id, "heard_ms": heard_ms, "received_ms": playing.received_ms,
        }))
        heard = functools.partial(heard_text, heard_ms=heard_ms, audio_ms=playing.received_ms)
        actions.append(self._kept(self._recorder.tutor_interrupted(
            playing.item_id, playing.turn_seq, heard_ms, now, recorded_text=self._transcript.text_of(playing.item_id),
            heard=heard), playing.item_id))
        # The transcript keeps what was heard (as the truncated item does upstream); the page shows it marked.
        cut = self._transcript.cut(playing.item_id, heard)
        if cut is not None:
            actions.append(ToBrowser(line_frame(cut)))
        return actions

    def _on_error(self, event: protocol.ErrorEvent, now: float) -> Sequence[Action]:
        error = event.error
        fields = error_fields(error.model_dump())
        if error.code in protocol.HARMLESS_ERROR_CODES:
            return (Log("debug", "upstream_error_harmless", fields),)
        under_way = self.state in (LessonState.GREETING, LessonState.CONVERSING)
        if error.code == protocol.SESSION_EXPIRED:
            if under_way:
                return self._replace_upstream("session_expired", fields, now)
            if self.state is LessonState.RECONNECTING:
                return self._reconnect_failed("session_expired", fields, now)
            return self._finish_expired(fields, now)
        logged = (Log("error", "upstream_error", fields), self._recorder.event(now, "upstream_error", fields))
        if error.type == "server_error" and under_way:
            return (*logged, *self._replace_upstream("server_error", fields, now))
        if self.state is LessonState.FEEDBACK:
            return (*logged, *self._on_error_while_ending(error, fields, now))
        if error.event_id is not None and error.event_id == self._session_update_id:
            return (*logged, *self._finish("session_refused", 1011, now, error=(
                "tutor_setup_failed", "The tutor could not be set up. Please tell your teacher.")))
        if error.code in protocol.UNRECOVERABLE_CODES:
            return (*logged, *self._finish("upstream_error", 1011, now,
                                           error=(error.code or "upstream_error", failure_words(error.code))))
        if (error.event_id is not None and error.event_id == self._greeting.request_id
                and self._greeting.response_id is None):
            refused = protocol.Response(id=None, status="failed", status_details=protocol.StatusDetails(
                type="failed", error=error))
            self._clear_deadline(Timer.GREETING_WATCHDOG)
            return (*logged, *self._on_greeting_done(refused, 0, now))
        return logged

    # ---- the microphone and the timers -----------------------------------------------------------

    def _open_microphone_or_arm_timer(self, now: float) -> Sequence[Action]:
        """The finished greeting was reported played: open the microphone; otherwise (re-)arm the elapsed rule."""
        greeting_items = self._items.of_response(self._greeting.response_id)
        if all(item.fully_heard() for item in greeting_items):
            return self._open_microphone(now, because="played")
        self._set_deadline(Timer.GREETING_HEARD, self._greeting.heard_at(greeting_items, now))
        return NO_ACTIONS

    def _open_microphone(self, now: float, *, because: str) -> Sequence[Action]:
        self._transition(LessonState.CONVERSING)
        self._greeted = True
        self._clear_deadline(Timer.GREETING_HEARD)
        self._set_deadline(Timer.IDLE, now + self.config.idle_timeout_s)
        return (
            ToBrowser(messages.status("listening")),
            Log("info", "microphone_open", {"because": because, "discarded_frames": self.discarded_frames}),
        )

    def _on_timer(self, timer: Timer, now: float) -> Sequence[Action]:
        match timer:
            case Timer.SETUP:
                fields = {"state": self.state.value, "timeout_s": self.config.upstream_timeout_s}
                if self.state is LessonState.RECONNECTING:
                    return self._reconnect_failed("upstream_timeout", fields, now)
                return (
                    Log("error", "upstream_setup_timeout", fields),
                    self._recorder.event(now, "upstream_setup_timeout", fields),
                    *self._finish("upstream_timeout", 1011, now, error=(
                        "upstream_timeout", "The tutor did not answer in time. Please try again.")),
                )
            case Timer.GREETING_WATCHDOG:
                fields = {"timeout_s": self.config.upstream_timeout_s, "attempt": self._greeting.attempts}
                return (
                    Log("error", "greeting_not_created", fields),
                    self._recorder.event(now, "greeting_not_created", fields),
                    *self._finish("greeting_timeout", 1011, now, error=(
                        "greeting_timeout", "The tutor did not start speaking. Please try again.")),
                )
            case Timer.GREETING_HEARD:
                if self.state is LessonState.GREETING:
                    return self._open_microphone(now, because="elapsed")
                return NO_ACTIONS
            case Timer.GREETING_RETRY:
                return self._request_greeting(now)
            case Timer.LESSON_LIMIT:
                return self._end_normally("time_limit", now)
            case Timer.IDLE:
                return self._end_normally("idle", now)
            case Timer.FEEDBACK:
                return self._end_with_feedback(
                    FeedbackUnavailable("timeout", {"timeout_s": self.config.feedback_timeout_s}), now)
            case Timer.PAGE_GRACE:
                fields = {"grace_s": self.config.resume_grace_s, "stalled": self._page_stalled}
                return (Log("info", "page_not_back", fields), *self._finish(self._page_gone_reason(), 1000, now))
            case Timer.UPSTREAM_RETRY:
                return self._open_new_upstream(now)
            case Timer.ROLL_OVER:
                return self._roll_over_if_at_a_boundary(now)
            case _:
                assert_never(timer)

    # ---- helpers ---------------------------------------------------------------------------------

    def _finish(self, reason: str, close_code: int, now: float,
                error: tuple[str, str] | None = None) -> Sequence[Action]:
        self._transition(LessonState.ENDED)
        self.ended_reason = reason
        self._deadlines.clear()
        self.deadlines_changed = True
        return (*self._held_back_warnings(), *closing_actions(
            reason=reason, close_code=close_code, duration_s=round(now - self._started_at, 3), usage=self._usage,
            prices=self.config.prices_per_million, recorder=self._recorder, now=now, error=error))

    def _finish_expired(self, fields: Mapping[str, Any], now: float) -> Sequence[Action]:
        """The upstream session reached its maximum duration: a time limit, not a lost connection."""
        return (
            Log("warning", "upstream_session_expired", fields),
            self._recorder.event(now, "upstream_session_expired", fields),
            *self._finish("session_expired", 1000, now, error=("session_expired", _EXPIRED_WORDS)),
        )

    def _transition(self, new: LessonState) -> None:
        check_transition(self.config.lesson_id, self.state, new)
        self.state = new

    def _next_event_id(self) -> str:
        self._event_counter += 1
        return f"evt_{self.config.lesson_id}_{self._event_counter}"

    def _set_deadline(self, timer: Timer, at: float) -> None:
        self._deadlines[timer] = at
        self.deadlines_changed = True

    def _clear_deadline(self, timer: Timer) -> None:
        if self._deadlines.pop(timer, None) is not None:
            self.deadlines_changed = True

