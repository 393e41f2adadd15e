"""What the lesson machine hands to the store: `Record` actions at turn boundaries, never per frame."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from test_session import LESSON_START, PCM_100MS, audio_delta, config, configured, greeted, response_done

from app.records import (
    LessonEnded,
    LessonEventHappened,
    LessonRecord,
    LessonStarted,
    Record,
    TurnFinished,
    TurnInterrupted,
    UsageSoFar,
)
from app.session import LessonSession


def records(actions: Sequence[object]) -> list[LessonRecord]:
    return [action.record for action in actions if isinstance(action, Record)]


def events(actions: Sequence[object]) -> list[tuple[str, dict[str, Any]]]:
    return [(r.kind, dict(r.detail)) for r in records(actions) if isinstance(r, LessonEventHappened)]


def at(seconds: float) -> Any:
    return LESSON_START + timedelta(seconds=seconds)


def transcript_done(text: str, *, item_id: str = "item_1", response_id: str = "resp_1") -> dict[str, Any]:
    return {"type": "response.output_audio_transcript.done", "response_id": response_id, "item_id": item_id,
            "transcript": text}


def test_the_lesson_start_names_its_student_model_and_wall_clock_start() -> None:
    session = LessonSession(config(student_id="s1", link_id="k1", simulated=True))
    assert records(session.begin(5.0)) == [LessonStarted(
        lesson_id="L1", started_at=LESSON_START, level="A1", model="gpt-realtime-2.1", simulated=True,
        student_id="s1", link_id="k1", browser_key_hash=None, student_name="Ana")]


def test_the_tutor_turn_is_recorded_when_its_transcript_is_done() -> None:
    session = LessonSession(config())
    actions = configured(session, 0.0)
    actions += session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 1.0)
    actions += session.handle_upstream(audio_delta(PCM_100MS), 1.5)
    actions += session.handle_upstream(audio_delta(PCM_100MS), 1.6)
    assert records(actions)[1:] == [], "nothing is recorded per audio frame"
    done = session.handle_upstream(transcript_done("Hello Ana!"), 2.0)
    assert records(done) == [TurnFinished(lesson_id="L1", seq=1, role="tutor", text="Hello Ana!",
                                          started_at=at(1.5), ended_at=at(2.0))]


def test_turns_are_numbered_in_the_order_they_began() -> None:
    session = LessonSession(config())
    greeted(session)
    greeting_turn = records(session.handle_upstream(transcript_done("Hi!"), 0.2))
    session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 3.0)
    session.handle_upstream({"type": "input_audio_buffer.speech_stopped", "item_id": "stu_1"}, 4.0)
    # The tutor answers before the student's transcription is done: the student's turn still comes first.
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 4.2)
    session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 4.3)
    student = records(session.handle_upstream(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "stu_1",
         "transcript": "I am fine."}, 4.5))
    tutor = records(session.handle_upstream(transcript_done("Great!", item_id="item_2", response_id="resp_2"), 4.6))
    assert [(r.seq, r.role) for r in [*greeting_turn, *student, *tutor] if isinstance(r, TurnFinished)] == [
        (1, "tutor"), (2, "student"), (3, "tutor")]
    assert student == [TurnFinished(lesson_id="L1", seq=2, role="student", text="I am fine.",
                                    started_at=at(3.0), ended_at=at(4.0))]


def test_a_student_turn_with_no_words_is_not_recorded() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 3.0)
    assert records(session.handle_upstream(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "stu_1", "transcript": " "},
        3.5)) == []


def test_a_barge_in_records_the_unfinished_tutor_turn_as_interrupted_with_the_words_heard() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 1.0)
    session.handle_upstream({"type": "response.output_audio_transcript.delta", "response_id": "resp_2",
                             "item_id": "item_2", "delta": "Let me tell "}, 1.0)
    session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), 1.0)
    actions = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 1.4)
    [turn] = records(actions)
    assert turn == TurnFinished(lesson_id="L1", seq=2, role="tutor", text="Let me tell ", started_at=at(1.0),
                                ended_at=at(1.4), interrupted=True, heard_ms=400, heard_text="Let me")


def test_a_barge_in_after_the_transcript_marks_the_recorded_turn_interrupted_with_the_words_heard() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 1.0)
    session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), 1.0)
    session.handle_upstream(transcript_done("A long story.", item_id="item_2", response_id="resp_2"), 1.1)
    actions = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 1.3)
    # 300 of 1000 ms: the first 30 % of the text, with the word under way kept whole.
    assert records(actions) == [TurnInterrupted(lesson_id="L1", seq=2, heard_ms=300, heard_text="A long")]


def test_a_response_that_did_not_complete_is_kept_with_its_status_details() -> None:
    session = LessonSession(config())
    greeted(session)
    actions = session.handle_upstream(response_done("resp_2", "incomplete", reason="max_output_tokens"), 2.0)
    assert events(actions) == [("response_incomplete", {
        "response_id": "resp_2", "status": "incomplete",
        "status_details": {"type": "incomplete", "reason": "max_output_tokens"}})]
    [event] = [r for r in records(actions) if isinstance(r, LessonEventHappened)]
    assert event.at == at(2.0)


def test_a_greeting_retry_and_failure_are_kept_with_why() -> None:
    session = LessonSession(config())
    actions = configured(session)
    actions += session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.5)
    failed = {"type": "failed", "error": {"type": "server_error", "code": "server_error", "message": "boom"}}
    first = session.handle_upstream({"type": "response.done", "response": {
        "id": "resp_1", "status": "failed", "status_details": failed}}, 1.0)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 1.5)
    second = session.handle_upstream({"type": "response.done", "response": {
        "id": "resp_2", "status": "failed", "status_details": failed}}, 2.0)
    assert [kind for kind, _ in events(first)] == ["response_failed", "greeting_retry"]
    assert [kind for kind, _ in events(second)] == ["response_failed", "greeting_failed"]
    assert events(first)[0][1]["status_details"] == failed
    assert events(second)[1][1] == {"status": "failed", "reason": None, "code": "server_error", "audio_ms": 0,
                                    "attempt": 2}
    [ended] = [r for r in records(second) if isinstance(r, LessonEnded)]
    assert ended.end_reason == "greeting_failed"


def test_an_upstream_error_is_kept_with_its_code_and_message() -> None:
    session = LessonSession(config())
    greeted(session)
    actions = session.handle_upstream({"type": "error", "error": {
        "type": "invalid_request_error", "code": "invalid_value", "message": "bad value", "param": "x"}}, 3.0)
    assert events(actions) == [("upstream_error", {"type": "invalid_request_error", "code": "invalid_value",
                                                   "message": "bad value", "param": "x"})]


def test_the_lesson_end_carries_its_reason_usage_and_cost() -> None:
    session = LessonSession(config())
    greeted(session, 0.0)
    session.handle_browser_text('{"type":"end"}', 60.0)
    *_, ended = records(session.handle_timeout(80.0))
    assert ended == LessonEnded(
        lesson_id="L1", ended_at=at(80.0), end_reason="student_ended", duration_s=80.0, audio_input_tokens=0,
        text_input_tokens=20, cached_tokens=0, cached_audio_tokens=0, cached_text_tokens=0, audio_output_tokens=8,
        text_output_tokens=2, responses=1, estimated_cost_usd=round(20 * 4 / 1e6 + 8 * 64 / 1e6 + 2 * 16 / 1e6, 6))



def test_each_response_with_usage_keeps_the_lessons_usage_and_cost_so_far() -> None:
    session = LessonSession(config())
    greeted(session, 0.0)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 5.0)
    second = records(session.handle_upstream(response_done("resp_2"), 6.0))
    without_usage = response_done("resp_3")
    del without_usage["response"]["usage"]
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_3"}}, 7.0)
    assert [r for r in records(session.handle_upstream(without_usage, 8.0)) if isinstance(r, UsageSoFar)] == []
    assert [r for r in second if isinstance(r, UsageSoFar)] == [UsageSoFar(
        lesson_id="L1", audio_input_tokens=0, text_input_tokens=40, cached_tokens=0, cached_audio_tokens=0,
        cached_text_tokens=0, audio_output_tokens=16, text_output_tokens=4, responses=2,
        estimated_cost_usd=round(40 * 4 / 1e6 + 16 * 64 / 1e6 + 4 * 16 / 1e6, 6))]  # the one without usage too

def test_a_lost_upstream_is_kept_as_an_event_and_so_is_each_failed_attempt_before_the_end() -> None:
    session = LessonSession(config())
    greeted(session)
    actions = session.handle_upstream_closed(1006, "", 5.0)
    assert events(actions) == [("upstream_lost", {"code": 1006, "reason": "", "state": "conversing",
                                                  "why": "upstream_closed"})]
    session.handle_upstream_failed("upstream_unavailable", "unreachable", 1014, 5.1)
    actions = [*session.handle_timeout(6.1), *session.handle_upstream_failed("upstream_unavailable", "", 1014, 6.2)]
    assert [type(r).__name__ for r in records(actions)] == ["LessonEventHappened", "LessonEnded"]
    assert events(actions) == [("upstream_reconnect_failed", {"code": "upstream_unavailable",
                                                              "failure": "upstream_connect_failed",
                                                              "why": "upstream_closed", "attempt": 2})]
