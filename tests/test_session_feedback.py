"""The lesson's feedback in the machine: asked for out of band only at a normal end, told apart from the
tutor's turns, and the lesson ends at its answer, its failure or its timeout."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from test_session import (
    FEEDBACK,
    FEEDBACK_PENDING,
    PCM_100MS,
    audio_delta,
    browser_messages,
    closes,
    config,
    feedback_created,
    feedback_done,
    greeted,
    logs,
    response_done,
    upstream_events,
)
from test_session_records import events, records
from test_session_resume import greeting_transcript

from app.actions import Close, ToBrowser, ToBrowserAudio
from app.lesson_state import LessonState
from app.records import FeedbackGiven, LessonEnded, TurnFinished
from app.session import LessonSession
from app.withdrawal import Withdrawal

END = '{"type":"end"}'


def ended_with(session: LessonSession, reason: str, now: float = 10.0) -> list[object]:
    """A greeted session ended normally by `reason` at `now`: the actions of that end."""
    if reason == "student_ended":
        return list(session.handle_browser_text(END, now))
    return list(session.handle_timeout(now))


def feedback_requests(actions: Sequence[object]) -> list[dict[str, Any]]:
    return [event for event in upstream_events(actions)
            if event["type"] == "response.create" and event.get("response", {}).get("metadata")]


def frame_types(actions: Sequence[object]) -> list[str]:
    return [message["type"] for message in browser_messages(actions)]


# ---- when feedback is asked for ------------------------------------------------------------------


@pytest.mark.parametrize(("reason", "overrides", "now"), [
    ("student_ended", {}, 10.0),
    ("time_limit", {"max_lesson_s": 10.0}, 10.0),
    ("idle", {"idle_timeout_s": 5.0}, 5.2),
])
def test_a_normal_end_asks_the_same_session_for_feedback_out_of_band(
    reason: str, overrides: dict[str, Any], now: float
) -> None:
    session = LessonSession(config(**overrides))
    greeted(session)
    actions = ended_with(session, reason, now)
    assert browser_messages(actions) == [FEEDBACK_PENDING]
    clear, request = upstream_events(actions)
    assert clear["type"] == "input_audio_buffer.clear"
    assert request["response"] == {
        "conversation": "none", "output_modalities": ["text"], "metadata": {"purpose": "feedback"},
        "instructions": "Write the lesson's feedback as one JSON object.", "max_output_tokens": 1500,
    }
    assert "input" not in request["response"]  # without input it sees the whole conversation
    assert closes(actions) == []
    assert session.state is LessonState.FEEDBACK
    assert session.next_deadline() == pytest.approx(now + 20.0)
    assert logs(actions, "feedback_requested") == [{"ending": reason}]


@pytest.mark.parametrize(("end", "close"), [
    (lambda s: s.handle_page_detached(5.0), Close(1000, "browser_gone")),
    (lambda s: s.handle_shutdown(5.0), Close(1001, "server_shutdown")),
    (lambda s: s.handle_crash(5.0), Close(1011, "internal_error")),
    (lambda s: s.handle_upstream({"type": "error", "error": {"type": "invalid_request_error",
                                                             "code": "insufficient_quota"}}, 5.0),
     Close(1011, "upstream_error")),
], ids=["page_gone", "shutdown", "crash", "quota"])
def test_any_other_end_closes_at_once_without_feedback(
    end: Callable[[LessonSession], Sequence[object]], close: Close
) -> None:
    session = LessonSession(config())
    greeted(session)
    actions = end(session)
    assert feedback_requests(actions) == []
    assert "feedback.unavailable" not in frame_types(actions)
    assert closes(actions) == [close]


def test_an_end_before_the_conversation_began_closes_at_once() -> None:
    session = LessonSession(config())
    session.begin(0.0)
    actions = session.handle_browser_text(END, 1.0)
    assert feedback_requests(actions) == []
    assert closes(actions) == [Close(1000, "student_ended")]


# ---- the answer ----------------------------------------------------------------------------------


def test_the_feedback_reaches_the_page_before_status_ended_and_the_store_keeps_it() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    session.handle_upstream(feedback_created(), 10.1)
    actions = session.handle_upstream(feedback_done(), 11.5)
    assert frame_types(actions) == ["feedback", "usage", "status"]
    assert browser_messages(actions)[0] == {"type": "feedback", **FEEDBACK}
    assert browser_messages(actions)[2] == {"type": "status", "state": "ended", "reason": "student_ended"}
    assert [r for r in records(actions) if isinstance(r, FeedbackGiven)] == [FeedbackGiven("L1", FEEDBACK)]
    assert logs(actions, "feedback_given") == [{"ending": "student_ended", "waited_s": 1.5, "corrections": 1,
                                                "new_words": 1}]
    assert closes(actions) == [Close(1000, "student_ended")]


def test_the_text_deltas_are_the_answer_when_response_done_carries_no_output() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    session.handle_upstream(feedback_created(), 10.1)
    text = json.dumps(FEEDBACK)
    for start in range(0, len(text), 40):
        session.handle_upstream({"type": "response.output_text.delta", "response_id": "resp_fb",
                                 "item_id": "item_fb", "delta": text[start:start + 40]}, 10.2)
    done = feedback_done()
    del done["response"]["output"]
    assert browser_messages(session.handle_upstream(done, 11.0))[0] == {"type": "feedback", **FEEDBACK}


def test_too_many_corrections_and_words_are_trimmed_and_the_trim_is_logged() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    long = FEEDBACK | {"corrections": FEEDBACK["corrections"] * 7, "new_words": FEEDBACK["new_words"] * 9}
    actions = session.handle_upstream(feedback_done(json.dumps(long)), 11.0)
    feedback = browser_messages(actions)[0]
    assert (len(feedback["corrections"]), len(feedback["new_words"])) == (5, 8)
    assert logs(actions, "feedback_trimmed") == [{"given": {"corrections": 7, "new_words": 9}}]
    assert ("feedback_trimmed", {"given": {"corrections": 7, "new_words": 9}}) in events(actions)


# ---- no feedback: the lesson ends as it would have -----------------------------------------------


def unavailable(actions: Sequence[object]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The page's feedback.unavailable frame, the log line and the lesson event saying why."""
    [frame] = [m for m in browser_messages(actions) if m["type"] == "feedback.unavailable"]
    [logged] = logs(actions, "feedback_unavailable")
    [event] = [detail for kind, detail in events(actions) if kind == "feedback_unavailable"]
    assert logged == event
    assert frame_types(actions)[-2:] == ["usage", "status"]
    return frame, logged, event


def test_no_answer_within_the_timeout_ends_the_lesson_without_feedback() -> None:
    session = LessonSession(config(feedback_timeout_s=20.0))
    greeted(session)
    session.handle_browser_text(END, 10.0)
    assert session.handle_timeout(29.9) == []
    actions = session.handle_timeout(30.0)
    frame, logged, _ = unavailable(actions)
    assert frame == {"type": "feedback.unavailable", "reason": "timeout",
                     "message": "Your feedback could not be prepared this time."}
    assert logged == {"ending": "student_ended", "waited_s": 20.0, "reason": "timeout", "timeout_s": 20.0}
    assert closes(actions) == [Close(1000, "student_ended")]


def test_an_answer_that_is_not_json_is_refused_and_named() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    answer = 'You said "I goed to the market"; say "I went to the market".'
    actions = session.handle_upstream(feedback_done(answer), 11.0)
    frame, logged, event = unavailable(actions)
    assert frame["reason"] == "invalid_feedback"
    assert logged["problem"].startswith("not JSON")
    assert logged["problem"].endswith(f"{len(answer)} characters")
    # The log line and the lesson's event (kept past the transcript's retention) never quote the student.
    assert "goed" not in logged["problem"]
    assert "goed" not in event["problem"]
    assert [r for r in records(actions) if isinstance(r, FeedbackGiven)] == []
    assert closes(actions) == [Close(1000, "student_ended")]


def test_an_answer_missing_a_field_is_refused_with_the_field_named() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    without_summary = {key: value for key, value in FEEDBACK.items() if key != "summary"}
    _, logged, _ = unavailable(session.handle_upstream(feedback_done(json.dumps(without_summary)), 11.0))
    assert logged["problem"] == "summary: Field required"


@pytest.mark.parametrize(("status", "details"), [
    ("failed", {"error": {"type": "server_error", "code": "server_error", "message": "boom"}}),
    ("incomplete", {"reason": "max_output_tokens"}),
    ("cancelled", {"reason": "client_cancelled"}),
])
def test_a_feedback_response_that_did_not_complete_says_why(status: str, details: dict[str, Any]) -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    actions = session.handle_upstream(feedback_done(status=status, **details), 11.0)
    frame, logged, _ = unavailable(actions)
    assert frame["reason"] == f"response_{status}"
    assert logged["status_details"] == {"type": status, **details}
    # Like every response that did not complete, it is also kept as such.
    assert f"response_{status}" in [kind for kind, _ in events(actions)]
    assert "error" not in frame_types(actions)
    assert closes(actions) == [Close(1000, "student_ended")]


def test_a_refused_request_ends_the_lesson_without_feedback() -> None:
    session = LessonSession(config())
    greeted(session)
    [request] = feedback_requests(session.handle_browser_text(END, 10.0))
    actions = session.handle_upstream({"type": "error", "error": {
        "type": "invalid_request_error", "code": "invalid_value", "message": "bad metadata",
        "event_id": request["event_id"]}}, 10.2)
    frame, logged, _ = unavailable(actions)
    assert (frame["reason"], logged["code"]) == ("request_refused", "invalid_value")


@pytest.mark.parametrize(("end", "reason"), [
    (lambda s: s.handle_upstream_closed(1006, "", 11.0), "upstream_closed"),
    (lambda s: s.handle_shutdown(11.0), "server_shutdown"),
])
def test_losing_a_socket_while_waiting_ends_the_lesson_as_it_was_ending(
    end: Callable[[LessonSession], Sequence[object]], reason: str
) -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    actions = end(session)
    frame, _, _ = unavailable(actions)
    assert frame["reason"] == reason
    assert "error" not in frame_types(actions)
    assert closes(actions) == [Close(1000, "student_ended")]


def ended_records(actions: Sequence[object]) -> list[object]:
    return [r for r in records(actions) if isinstance(r, (FeedbackGiven, LessonEnded))]


@pytest.mark.parametrize("grace_s", [0.0, 30.0], ids=["resuming_off", "resuming_on"])
@pytest.mark.parametrize("away", [
    lambda s: s.handle_page_detached(11.0),
    lambda s: s.handle_browser_stalled(5.0, 11.0),
], ids=["page_closed", "page_stalled"])
def test_a_page_gone_while_waiting_leaves_the_lesson_waiting_and_its_feedback_is_recorded_with_its_end(
    away: Callable[[LessonSession], Sequence[object]], grace_s: float
) -> None:
    # The student closes the tab right after End, the network drops, or the page stops reading.
    session = LessonSession(config(resume_grace_s=grace_s))
    greeted(session)
    session.handle_browser_text(END, 10.0)
    session.handle_upstream(feedback_created(), 10.1)
    gone = away(session)
    assert closes(gone) == []
    assert logs(gone, "feedback_unavailable") == []
    assert logs(gone, "page_away") == [{"state": "feedback", "feedback_left_s": 19.0}]
    assert (session.state, session.page_attached) == (LessonState.FEEDBACK, False)
    # The feedback's deadline still ends the wait; no grace period is added to it.
    assert session.next_deadline() == pytest.approx(30.0)
    ended = session.handle_upstream(feedback_done(), 12.0)
    assert [type(r).__name__ for r in ended_records(ended)] == ["FeedbackGiven", "LessonEnded"]
    assert [r.feedback for r in records(ended) if isinstance(r, FeedbackGiven)] == [FEEDBACK]
    assert [r.end_reason for r in records(ended) if isinstance(r, LessonEnded)] == ["student_ended"]
    assert logs(ended, "feedback_given")[0]["ending"] == "student_ended"
    assert closes(ended) == [Close(1000, "student_ended")]


def test_a_page_gone_while_waiting_with_no_answer_ends_at_the_feedback_timeout_with_the_lessons_end_reason() -> None:
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    session.handle_browser_text(END, 10.0)
    session.handle_page_detached(11.0)
    ended = session.handle_timeout(30.0)
    frame, _, _ = unavailable(ended)
    assert frame["reason"] == "timeout"
    assert [r.end_reason for r in records(ended) if isinstance(r, LessonEnded)] == ["student_ended"]
    assert closes(ended) == [Close(1000, "student_ended")]


def test_a_page_back_while_the_feedback_is_on_its_way_takes_the_wait_over_with_the_time_left() -> None:
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    greeting_transcript(session, 0.2)
    session.handle_browser_text(END, 10.0)
    session.handle_page_detached(11.0)
    back = session.handle_page_attached(14.0, replay=False)
    assert [frame["type"] for frame in browser_messages(back)] == ["lesson", "status"]
    assert browser_messages(back)[1] == FEEDBACK_PENDING | {"timeout_s": 16.0}
    assert logs(back, "page_back") == [{"away_s": 3.0, "replaced": False, "replay": False, "state": "feedback"}]
    assert (session.state, session.page_attached) == (LessonState.FEEDBACK, True)
    session.handle_upstream(feedback_created(), 14.1)
    ended = session.handle_upstream(feedback_done(), 15.0)
    assert [frame["type"] for frame in browser_messages(ended)] == ["feedback", "usage", "status"]
    assert browser_messages(ended)[-1] == {"type": "status", "state": "ended", "reason": "student_ended"}


def test_a_lesson_its_teacher_ended_whose_page_leaves_while_waiting_ends_teacher_ended_with_its_feedback() -> None:
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    session.handle_withdrawn(Withdrawal.TEACHER_ENDED, 10.0)
    session.handle_page_detached(10.5)
    back = browser_messages(session.handle_page_attached(11.0, replay=False))
    # The page back is told what a page there was told: its teacher's words, then that the feedback comes.
    assert [(m["type"], m.get("code") or m.get("state")) for m in back] == [
        ("lesson", None), ("error", "teacher_ended"), ("status", "feedback")]
    session.handle_page_detached(11.5)
    session.handle_upstream(feedback_created(), 12.0)
    ended = session.handle_upstream(feedback_done(), 12.5)
    assert [r.feedback for r in records(ended) if isinstance(r, FeedbackGiven)] == [FEEDBACK]
    assert [r.end_reason for r in records(ended) if isinstance(r, LessonEnded)] == ["teacher_ended"]
    assert closes(ended) == [Close(1000, "teacher_ended")]


def test_a_page_replaced_while_waiting_hands_the_wait_to_the_new_page_which_gets_the_feedback() -> None:
    # A reload or a network blip just after End: the new socket resumes while the first is still attached.
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    greeting_transcript(session, 0.2)
    session.handle_browser_text(END, 10.0)
    session.handle_upstream(feedback_created(), 10.1)
    # The replaced page had every turn: the new one is not sent them again.
    attached = session.handle_page_attached(11.0, replay=False)
    assert [frame["type"] for frame in browser_messages(attached)] == ["lesson", "status"]
    assert browser_messages(attached)[1] == FEEDBACK_PENDING | {"timeout_s": 19.0}
    assert logs(attached, "page_back")[0]["replaced"] is True
    assert logs(attached, "feedback_unavailable") == []
    assert closes(attached) == []
    assert (session.state, session.page_attached) == (LessonState.FEEDBACK, True)
    ended = session.handle_upstream(feedback_done(), 12.0)
    assert [frame["type"] for frame in browser_messages(ended)] == ["feedback", "usage", "status"]
    assert browser_messages(ended)[-1] == {"type": "status", "state": "ended", "reason": "student_ended"}
    assert [r.feedback for r in records(ended) if isinstance(r, FeedbackGiven)] == [FEEDBACK]
    assert closes(ended) == [Close(1000, "student_ended")]


def test_a_page_replaced_while_waiting_after_a_reload_gets_every_turn_again() -> None:
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    greeting_transcript(session, 0.2)
    session.handle_browser_text(END, 10.0)
    reloaded = browser_messages(session.handle_page_attached(11.0, replay=True))
    assert [frame["type"] for frame in reloaded] == ["lesson", "transcript.done", "status"]
    assert reloaded[-1]["state"] == "feedback"


# ---- told apart from the tutor's turns -----------------------------------------------------------


def test_the_feedback_text_never_reaches_the_transcript_turns_or_the_text_output_warning() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    actions = list(session.handle_upstream(feedback_created(), 10.1))
    for event in ({"type": "response.output_text.delta", "response_id": "resp_fb", "item_id": "item_fb",
                   "delta": '{"summary": '},
                  {"type": "response.output_text.done", "response_id": "resp_fb", "item_id": "item_fb",
                   "text": json.dumps(FEEDBACK)}):
        actions += session.handle_upstream(event, 10.2)
    assert [a for a in actions if isinstance(a, ToBrowser)] == []
    assert logs(actions, "upstream_text_output") == []
    actions = session.handle_upstream(feedback_done(), 10.5)
    assert not [m for m in browser_messages(actions) if m["type"].startswith("transcript")]
    assert [r for r in records(actions) if isinstance(r, TurnFinished)] == []


def test_text_output_from_a_tutor_turn_still_warns() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 3.0)
    actions = session.handle_upstream({"type": "response.output_text.delta", "response_id": "resp_2",
                                       "item_id": "item_2", "delta": "Hello"}, 3.1)
    assert logs(actions, "upstream_text_output") == [{"response_id": "resp_2"}]


def test_a_tutor_turn_still_running_at_the_end_is_cancelled_and_the_feedback_asked_after_it() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 5.0)
    session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 5.1)
    actions = session.handle_timeout(5.0) + list(session.handle_browser_text(END, 5.2))
    assert [e["type"] for e in upstream_events(actions)] == ["response.cancel", "conversation.item.truncate",
                                                             "input_audio_buffer.clear"]
    assert upstream_events(actions)[0]["response_id"] == "resp_2"
    # Its late audio is not relayed, and only its response.done lets the feedback request go out.
    assert session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 5.3) == ()
    actions = session.handle_upstream(response_done("resp_2", "cancelled", reason="client_cancelled"), 5.4)
    assert len(feedback_requests(actions)) == 1
    assert closes(actions) == []


def test_a_tutor_turn_the_server_starts_while_waiting_is_cancelled_and_never_heard() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    actions = session.handle_upstream({"type": "response.created", "response": {"id": "resp_3"}}, 10.1)
    assert [(e["type"], e.get("response_id")) for e in upstream_events(actions)] == [("response.cancel", "resp_3")]
    late = session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_3", item_id="item_3"), 10.2)
    assert [a for a in late if isinstance(a, (ToBrowser, ToBrowserAudio))] == []
    # Speech the server still had is no barge-in: nothing is interrupted, cancelled or truncated.
    speech = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "u1"}, 10.3)
    assert (browser_messages(speech), upstream_events(speech)) == ([], [])


def test_a_request_refused_for_an_active_response_is_asked_again_once_that_response_is_done() -> None:
    session = LessonSession(config())
    greeted(session)
    [request] = feedback_requests(session.handle_browser_text(END, 10.0))
    busy = {"type": "error", "error": {"type": "invalid_request_error",
                                       "code": "conversation_already_has_active_response",
                                       "message": "Conversation already has an active response",
                                       "event_id": request["event_id"]}}
    assert closes(session.handle_upstream(busy, 10.1)) == []
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_3"}}, 10.1)
    [again] = feedback_requests(session.handle_upstream(response_done("resp_3", "cancelled"), 10.2))
    # A second refusal is not retried.
    frame, _, _ = unavailable(session.handle_upstream(busy | {"error": busy["error"] | {
        "event_id": again["event_id"]}}, 10.3))
    assert frame["reason"] == "request_refused"


def test_while_waiting_the_microphone_is_discarded_and_a_second_end_is_ignored() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_browser_text(END, 10.0)
    assert session.handle_browser_audio(PCM_100MS, 10.1) == ()
    assert session.discarded_frames >= 1
    assert session.handle_browser_text(END, 10.2) == ()
    assert session.state is LessonState.FEEDBACK
