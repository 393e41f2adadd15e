"""A tutor reply cut short before any of it was heard, driven on the state machine: `conversation.item.truncate`
may not name 0 ms, so the item is deleted upstream instead, before the feedback (or the tutor's next answer)
can read it, and its turn is kept as cut with nothing heard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from sdk_oracle import assert_valid_client_event
from test_session import (
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
from test_session_records import at, records, transcript_done

from app.lesson_state import LessonState
from app.records import TurnFinished, TurnInterrupted
from app.session import LessonSession
from app.withdrawal import Withdrawal

END = '{"type":"end"}'
REPLY = "Very good, Ana! Now tell me: what is your favourite food?"


def speaking(*, response_done_too: bool = False, transcript: bool = False) -> LessonSession:
    """A greeted lesson whose tutor reply (item_2 of resp_2, 1 s of audio) reached the page at 10.0 s and of which
    the page reports 0 ms played at 10.0 s; `response_done_too`: the reply is all said upstream (not active);
    `transcript`: its words are done too."""
    session = LessonSession(config(link_id="K1", student_id="S1"))
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 10.0)
    session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), 10.0)
    if transcript:
        session.handle_upstream(transcript_done(REPLY, item_id="item_2", response_id="resp_2"), 10.0)
    if response_done_too:
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_2",
                                 "response_id": "resp_2"}, 10.0)
        session.handle_upstream(response_done("resp_2"), 10.0)
    session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":0}', 10.0)
    return session


def sent(actions: Sequence[object]) -> list[dict[str, Any]]:
    """The client events of `actions`, each checked against the SDK's GA models."""
    events = upstream_events(actions)
    for event in events:
        assert_valid_client_event(event)
    return events


def delete_of(item_id: str, events: Sequence[dict[str, Any]]) -> dict[str, Any]:
    [delete] = [event for event in events if event["type"] == "conversation.item.delete"]
    assert delete == {"type": "conversation.item.delete", "event_id": delete["event_id"], "item_id": item_id}
    return delete


def test_a_barge_in_before_any_of_the_reply_was_heard_cancels_it_and_deletes_its_item() -> None:
    session = speaking()
    actions = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 10.0)
    events = sent(actions)
    assert [event["type"] for event in events] == ["response.cancel", "conversation.item.delete"]
    delete_of("item_2", events)
    assert browser_messages(actions) == [{"type": "audio.interrupt", "item_id": "item_2"}]
    assert logs(actions, "barge_in") == [{"item_id": "item_2", "heard_ms": 0, "received_ms": 1000}]
    # The turn is kept as cut with nothing heard: the desk shows all of it as not heard.
    [turn] = records(actions)
    assert turn == TurnFinished(lesson_id="L1", seq=2, role="tutor", text="", started_at=at(10.0),
                                ended_at=at(10.0), interrupted=True, heard_ms=0, heard_text="")


def test_a_barge_in_after_the_reply_was_partly_heard_still_truncates_it() -> None:
    session = speaking()
    session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":200}', 10.2)
    events = sent(session.handle_upstream({"type": "input_audio_buffer.speech_started"}, 10.2))
    assert [(event["type"], event.get("audio_end_ms")) for event in events] == [
        ("response.cancel", None), ("conversation.item.truncate", 200)]


def test_the_students_end_before_the_reply_was_heard_deletes_it_before_the_feedback_is_asked_for() -> None:
    session = speaking(transcript=True)
    ending = session.handle_browser_text(END, 10.0)
    events = sent(ending)
    # The reply is still being said upstream: cancelled first, deleted, and the microphone's audio dropped.
    assert [event["type"] for event in events] == [
        "response.cancel", "conversation.item.delete", "input_audio_buffer.clear"]
    delete_of("item_2", events)
    assert logs(ending, "tutor_cut_at_end") == [{"item_id": "item_2", "heard_ms": 0, "received_ms": 1000}]
    assert records(ending) == [TurnInterrupted(lesson_id="L1", seq=2, heard_ms=0, heard_text="")]
    # The page shows the reply's line cut with nothing heard, then waits for the feedback.
    assert browser_messages(ending) == [
        {"type": "audio.interrupt", "item_id": "item_2"},
        {"type": "transcript.done", "role": "tutor", "item_id": "item_2", "text": "", "interrupted": True},
        FEEDBACK_PENDING,
    ]
    # Only the cancelled reply's response.done lets the feedback's response.create go out, after the delete.
    asked = sent(session.handle_upstream(response_done("resp_2", "cancelled", reason="client_cancelled"), 10.1))
    assert [(event["type"], event["response"]["metadata"]) for event in asked] == [
        ("response.create", {"purpose": "feedback"})]


@pytest.mark.parametrize("end", ["student", "teacher"])
def test_an_end_while_a_finished_reply_plays_unheard_deletes_it_then_asks_for_the_feedback_at_once(end: str) -> None:
    session = speaking(response_done_too=True)
    if end == "student":
        ending = session.handle_browser_text(END, 10.0)
    else:
        ending = session.handle_withdrawn(Withdrawal.TEACHER_ENDED, 10.0)
    events = sent(ending)
    assert [event["type"] for event in events] == [
        "conversation.item.delete", "input_audio_buffer.clear", "response.create"]
    delete_of("item_2", events)
    assert events[-1]["response"]["metadata"] == {"purpose": "feedback"}
    [turn] = [record for record in records(ending) if isinstance(record, TurnFinished)]
    assert (turn.interrupted, turn.heard_ms, turn.heard_text) == (True, 0, "")
    assert session.state is LessonState.FEEDBACK


def test_an_end_after_the_reply_was_partly_heard_truncates_it_as_before() -> None:
    session = speaking(response_done_too=True)
    session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":300}', 10.3)
    events = sent(session.handle_browser_text(END, 10.3))
    assert [(event["type"], event.get("audio_end_ms")) for event in events] == [
        ("conversation.item.truncate", 300), ("input_audio_buffer.clear", None), ("response.create", None)]


def test_a_refused_delete_while_the_feedback_comes_is_logged_and_the_lesson_ends_with_its_feedback() -> None:
    session = speaking(response_done_too=True)
    delete = delete_of("item_2", upstream_events(session.handle_browser_text(END, 10.0)))
    refused = session.handle_upstream({"type": "error", "error": {
        "type": "invalid_request_error", "code": "item_delete_invalid_item_id",
        "message": "Error deleting item: the item with id 'item_2' does not exist.", "param": None,
        "event_id": delete["event_id"]}}, 10.1)
    assert logs(refused, "upstream_error")[0]["code"] == "item_delete_invalid_item_id"
    assert closes(refused) == []
    session.handle_upstream(feedback_created(), 10.2)
    ended = session.handle_upstream(feedback_done(), 10.5)
    assert [message["type"] for message in browser_messages(ended)] == ["feedback", "usage", "status"]


def test_a_page_that_leaves_before_any_of_the_reply_was_heard_has_it_deleted() -> None:
    session = LessonSession(config(resume_grace_s=30.0))
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 10.0)
    session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), 10.0)
    events = sent(session.handle_page_detached(10.0))
    assert [event["type"] for event in events] == ["response.cancel", "conversation.item.delete"]


def cancelled_with_output(response_id: str, item_id: str) -> dict[str, Any]:
    """The response.done of a tutor response cancelled at the end, after the server had begun its item."""
    event = response_done(response_id, "cancelled", reason="client_cancelled")
    event["response"]["output"] = [{"id": item_id, "type": "message", "role": "assistant", "status": "incomplete",
                                    "content": [{"type": "output_audio", "transcript": "Very good, Ana! Now"}]}]
    return event


def test_an_end_before_any_audio_of_the_answer_under_way_reached_the_page_deletes_what_it_said_so_far() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 10.0)
    ending = sent(session.handle_browser_text(END, 10.1))
    assert [event["type"] for event in ending] == ["response.cancel", "input_audio_buffer.clear"]
    # Its late audio never reaches the page; at its response.done its item is deleted, then the feedback asked for.
    assert session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 10.15) == ()
    done = sent(session.handle_upstream(cancelled_with_output("resp_2", "item_2"), 10.2))
    assert [event["type"] for event in done] == ["conversation.item.delete", "response.create"]
    delete_of("item_2", done)
    assert done[-1]["response"]["metadata"] == {"purpose": "feedback"}


def test_an_answer_cut_by_a_barge_in_just_before_the_end_is_not_deleted_at_its_response_done() -> None:
    session = speaking()
    session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":300}', 10.3)
    # The barge-in truncated it to the 300 ms heard; End comes before its response.done.
    session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 10.3)
    session.handle_browser_text(END, 10.35)
    done = sent(session.handle_upstream(cancelled_with_output("resp_2", "item_2"), 10.4))
    assert [event["type"] for event in done] == ["response.create"]


def test_a_tutor_turn_the_server_starts_while_the_feedback_is_asked_for_is_deleted_before_it_is_asked_again() -> None:
    session = LessonSession(config())
    greeted(session)
    [request] = [e for e in sent(session.handle_browser_text(END, 10.0)) if e["type"] == "response.create"]
    # The server had already begun a turn from audio it held: the feedback is refused as busy, that turn cancelled.
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_3"}}, 10.1)
    session.handle_upstream({"type": "error", "error": {
        "type": "invalid_request_error", "code": "conversation_already_has_active_response",
        "message": "Conversation already has an active response", "event_id": request["event_id"]}}, 10.1)
    done = sent(session.handle_upstream(cancelled_with_output("resp_3", "item_3"), 10.2))
    assert [event["type"] for event in done] == ["conversation.item.delete", "response.create"]
    delete_of("item_3", done)


def test_an_answer_the_student_spoke_over_before_any_of_its_audio_reached_the_page_is_deleted_once_cancelled() -> None:
    session = LessonSession(config())
    greeted(session)
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, 10.0)
    # speech_started with nothing playing is no barge-in here: the server cancels the answer itself.
    speech = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 10.1)
    assert upstream_events(speech) == []
    done = cancelled_with_output("resp_2", "item_2")
    done["response"]["status_details"]["reason"] = "turn_detected"
    events = sent(session.handle_upstream(done, 10.15))
    assert [event["type"] for event in events] == ["conversation.item.delete"]
    delete_of("item_2", events)


def test_an_answer_cut_by_a_barge_in_after_some_of_it_was_heard_keeps_its_truncate_at_its_response_done() -> None:
    session = speaking()
    session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":300}', 10.3)
    session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "stu_1"}, 10.3)
    done = cancelled_with_output("resp_2", "item_2")
    done["response"]["status_details"]["reason"] = "turn_detected"
    assert upstream_events(session.handle_upstream(done, 10.35)) == []
