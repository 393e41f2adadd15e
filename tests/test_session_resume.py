"""A lesson that outlives its connections, driven through the machine alone: no loop, no sockets, time passed in.

The page leaves and comes back (or does not), the upstream session is lost or rolled over and replaced, the
server hands the lesson over for a redeploy, and another instance takes it over from the store.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from test_session import (
    LESSON_START,
    PCM_100MS,
    audio_delta,
    browser_messages,
    closes,
    config,
    configured,
    greeted,
    logs,
    response_done,
    upstream_events,
)

from app.actions import OpenUpstream
from app.continuity import CarriedOver, TranscriptLine
from app.heard import heard_text
from app.records import LessonEnded, LessonEventHappened, LessonStarted, Record, TurnFinished
from app.session import LessonSession, LessonState

GRACE = 30.0
SESSION_UPDATED = {"type": "session.updated", "session": {"output_modalities": ["audio"]}}


def resumable(**overrides: Any) -> LessonSession:
    return LessonSession(config(resume_token="TOKEN", resume_grace_s=GRACE, **overrides))


def records(actions: list[object] | tuple[object, ...]) -> list[Any]:
    return [a.record for a in actions if isinstance(a, Record)]


def replaced(actions: list[object] | tuple[object, ...]) -> int:
    return sum(isinstance(a, OpenUpstream) for a in actions)


def statuses(actions: list[object] | tuple[object, ...]) -> list[tuple[str, str | None]]:
    return [(m["state"], m.get("reason")) for m in browser_messages(actions) if m["type"] == "status"]


def tutor_speaking(session: LessonSession, now: float, *, response_id: str = "resp_2",
                   item_id: str = "item_2") -> None:
    """The tutor's next answer has started: 100 ms of it sent to the page."""
    session.handle_upstream({"type": "response.created", "response": {"id": response_id}}, now)
    session.handle_upstream(audio_delta(PCM_100MS, response_id=response_id, item_id=item_id), now)


def say(session: LessonSession, item_id: str, text: str, now: float) -> list[object]:
    """A student's turn: speech started and stopped, and its transcription; the actions it gave."""
    return [*session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": item_id}, now),
            *session.handle_upstream({"type": "input_audio_buffer.speech_stopped", "item_id": item_id}, now),
            *session.handle_upstream({"type": "conversation.item.input_audio_transcription.completed",
                                      "item_id": item_id, "transcript": text}, now)]


def greeting_transcript(session: LessonSession, now: float) -> None:
    session.handle_upstream({"type": "response.output_audio_transcript.done", "response_id": "resp_1",
                             "item_id": "item_1", "transcript": "Hello Ana! How are you?"}, now)


class TestPageAway:
    def test_the_lesson_frame_carries_the_resume_token_and_the_grace(self) -> None:
        [lesson, _] = browser_messages(resumable().begin(0.0))
        assert (lesson["resume_token"], lesson["resume_grace_s"], lesson["resumed"]) == ("TOKEN", GRACE, False)

    def test_a_page_that_leaves_mid_turn_cuts_the_tutor_where_it_was_heard_and_the_lesson_waits(self) -> None:
        session = resumable()
        greeted(session)
        tutor_speaking(session, 5.0)
        actions = session.handle_page_detached(5.04)
        sent = upstream_events(actions)
        assert [e["type"] for e in sent] == ["response.cancel", "conversation.item.truncate"]
        assert sent[1]["audio_end_ms"] == 40
        assert closes(actions) == []
        assert session.state is LessonState.CONVERSING
        assert session.next_deadline() == 5.04 + GRACE
        # The cancelled answer's late audio reaches nobody.
        assert session.handle_upstream(audio_delta(PCM_100MS, response_id="resp_2", item_id="item_2"), 5.1) == ()
        [turn] = [r for r in records(actions) if isinstance(r, TurnFinished)]
        assert (turn.role, turn.interrupted, turn.heard_ms) == ("tutor", True, 40)

    def test_a_page_back_within_the_grace_goes_on_listening(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_page_detached(5.0)
        actions = session.handle_page_attached(10.0, replay=False)
        [lesson] = [m for m in browser_messages(actions) if m["type"] == "lesson"]
        assert (lesson["resumed"], lesson["resume_token"]) == (True, "TOKEN")
        assert statuses(actions) == [("listening", None)]
        assert logs(actions, "page_back")[0]["away_s"] == 5.0
        assert closes(session.handle_timeout(5.0 + GRACE + 1)) == []
        # The microphone goes on being relayed.
        assert upstream_events(session.handle_browser_audio(PCM_100MS, 11.0))[0]["type"] == "input_audio_buffer.append"

    def test_a_page_that_does_not_come_back_ends_the_lesson_and_frees_the_upstream(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_page_detached(5.0)
        assert session.handle_timeout(5.0 + GRACE - 0.1) == []
        actions = session.handle_timeout(5.0 + GRACE)
        assert closes(actions)[0].reason == "browser_gone"
        assert logs(actions, "page_not_back") == [{"grace_s": GRACE, "stalled": False}]
        assert isinstance(records(actions)[-1], LessonEnded)

    def test_a_stalled_page_is_waited_for_too_and_ends_as_stalled(self) -> None:
        session = resumable()
        greeted(session)
        actions = session.handle_browser_stalled(5.0, 8.0)
        assert logs(actions, "browser_stalled")
        assert closes(actions) == []
        assert closes(session.handle_timeout(8.0 + GRACE))[0].reason == "browser_stalled"

    def test_without_a_grace_a_page_that_leaves_ends_the_lesson_at_once(self) -> None:
        session = LessonSession(config())
        greeted(session)
        assert closes(session.handle_page_detached(5.0))[0].reason == "browser_gone"

    def test_a_page_that_leaves_mid_greeting_gets_the_greeting_again_when_it_is_back(self) -> None:
        session = resumable()
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.5)
        session.handle_upstream(audio_delta(PCM_100MS), 0.5)
        actions = session.handle_page_detached(0.55)
        assert [e["type"] for e in upstream_events(actions)] == ["response.cancel", "conversation.item.truncate"]
        # The cancelled greeting is neither retried nor a failure.
        done = session.handle_upstream(response_done(status="cancelled", reason="client_cancelled"), 0.6)
        assert upstream_events(done) == []
        assert closes(done) == []
        assert session.next_deadline() == 0.55 + GRACE
        back = session.handle_page_attached(3.0, replay=False)
        assert [e["type"] for e in upstream_events(back)] == ["response.create"]
        assert statuses(back) == [("greeting", None)]
        # Microphone still held until the new greeting is heard.
        assert session.handle_browser_audio(PCM_100MS, 3.1) == ()

    def test_a_greeting_asked_for_while_the_page_is_away_is_cancelled_when_it_starts(self) -> None:
        session = resumable()
        session.begin(0.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 0.1)
        session.handle_page_detached(0.2)
        # The session is configured while the page is away: the greeting waits for it.
        assert upstream_events(session.handle_upstream(SESSION_UPDATED, 0.3)) == []
        back = session.handle_page_attached(1.0, replay=False)
        assert [e["type"] for e in upstream_events(back)] == ["response.create"]

    def test_the_turns_finished_while_away_are_sent_on_return_and_all_of_them_after_a_reload(self) -> None:
        session = resumable()
        greeted(session)
        greeting_transcript(session, 0.2)
        say(session, "item_s1", "I am fine.", 2.0)
        session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "item_s2"}, 3.0)
        session.handle_upstream({"type": "input_audio_buffer.speech_stopped", "item_id": "item_s2"}, 3.5)
        session.handle_page_detached(3.6)
        session.handle_upstream({"type": "conversation.item.input_audio_transcription.completed",
                                 "item_id": "item_s2", "transcript": "And you?"}, 3.7)
        back = [m for m in browser_messages(session.handle_page_attached(5.0, replay=False))
                if m["type"] == "transcript.done"]
        assert back == [{"type": "transcript.done", "role": "student", "item_id": "item_s2", "text": "And you?"}]
        session.handle_page_detached(6.0)
        reloaded = [(m["role"], m["item_id"], m["text"])
                    for m in browser_messages(session.handle_page_attached(7.0, replay=True))
                    if m["type"] == "transcript.done"]
        assert reloaded == [("tutor", "item_1", "Hello Ana! How are you?"), ("student", "item_s1", "I am fine."),
                            ("student", "item_s2", "And you?")]

    def test_a_second_socket_replaces_the_attached_page(self) -> None:
        session = resumable()
        greeted(session)
        tutor_speaking(session, 5.0)
        actions = session.handle_page_attached(5.05, replay=True)
        assert [e["type"] for e in upstream_events(actions)] == ["response.cancel", "conversation.item.truncate"]
        assert logs(actions, "page_back")[0]["replaced"] is True
        assert statuses(actions) == [("listening", None)]
        assert session.page_attached


class TestUpstreamReplaced:
    def test_a_lost_upstream_is_replaced_by_a_session_told_the_conversation_that_does_not_greet(self) -> None:
        session = resumable()
        greeted(session)
        greeting_transcript(session, 0.2)
        say(session, "item_s1", "I am fine, thank you.", 2.0)
        tutor_speaking(session, 3.0)
        actions = session.handle_upstream_closed(1006, "no close frame", 3.05)
        assert replaced(actions) == 1
        assert statuses(actions) == [("reconnecting", "upstream")]
        assert [m["type"] for m in browser_messages(actions)][:1] == ["audio.interrupt"]
        assert not any(m["type"] == "error" for m in browser_messages(actions))
        assert logs(actions, "upstream_lost")[0]["why"] == "upstream_closed"
        assert upstream_events(actions) == []  # nobody to tell: the session is gone
        assert session.state is LessonState.RECONNECTING
        assert session.handle_browser_audio(PCM_100MS, 3.1) == ()  # microphone held meanwhile

        update = upstream_events(session.handle_upstream({"type": "session.created", "session": {}}, 3.3))
        instructions = update[0]["session"]["instructions"]
        assert instructions.startswith("The student's name is Ana.")
        assert "Do not greet the student again" in instructions
        assert instructions.endswith('Tutor: "Hello Ana! How are you?"\nStudent: "I am fine, thank you."\n')
        back = session.handle_upstream(SESSION_UPDATED, 3.4)
        assert upstream_events(back) == []  # no greeting asked for
        assert statuses(back) == [("listening", None)]
        assert session.state is LessonState.CONVERSING
        assert upstream_events(session.handle_browser_audio(PCM_100MS, 3.5))[0]["type"] == "input_audio_buffer.append"

    def test_an_upstream_lost_before_the_greeting_was_heard_greets_on_the_new_session(self) -> None:
        session = resumable()
        configured(session)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.5)
        actions = session.handle_upstream_closed(1011, "simulated upstream failure", 0.6)
        assert replaced(actions) == 1
        session.handle_upstream({"type": "session.created", "session": {}}, 0.8)
        back = session.handle_upstream(SESSION_UPDATED, 0.9)
        assert [e["type"] for e in upstream_events(back)] == ["response.create"]
        assert session.state is LessonState.GREETING

    def test_session_expired_and_a_server_error_replace_the_session_too(self) -> None:
        for event in ({"type": "error", "error": {"type": "invalid_request_error", "code": "session_expired",
                                                  "message": "Your session hit the maximum duration of 60 minutes."}},
                      {"type": "error", "error": {"type": "server_error", "code": "server_error",
                                                  "message": "The server had an error."}}):
            session = resumable()
            greeted(session)
            actions = session.handle_upstream(event, 100.0)
            assert replaced(actions) == 1, event
            assert closes(actions) == []
            assert session.state is LessonState.RECONNECTING

    def test_two_failed_attempts_end_the_lesson_in_plain_words(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_upstream_closed(1006, "", 5.0)
        first = session.handle_upstream_failed("upstream_unavailable", "unreachable", 1014, 5.2)
        assert closes(first) == []
        assert replaced(first) == 0
        assert session.next_deadline() == 6.2  # the pause before the second attempt
        retry = session.handle_timeout(6.2)
        assert replaced(retry) == 1
        assert logs(retry, "upstream_reconnecting")[0]["attempt"] == 2
        ended = session.handle_upstream_closed(1011, "", 6.5)
        error = next(m for m in browser_messages(ended) if m["type"] == "error")
        assert (error["code"], error["fatal"]) == ("upstream_closed", True)
        assert "could not be restored" in error["message"]
        assert closes(ended)[0].reason == "upstream_closed"

    def test_a_new_session_that_never_confirms_is_an_attempt_that_failed(self) -> None:
        session = resumable(upstream_timeout_s=10.0)
        greeted(session)
        session.handle_upstream_closed(1006, "", 5.0)
        assert logs(session.handle_timeout(15.0), "upstream_reconnect_failed")[0]["failure"] == "upstream_timeout"

    def test_a_refusal_no_attempt_can_cure_ends_the_lesson_as_before(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_upstream_closed(1006, "", 5.0)
        actions = session.handle_upstream_failed("insufficient_quota", "The tutor service has run out of credit.",
                                                 1014, 5.2)
        assert closes(actions)[0].code == 1014
        assert next(m for m in browser_messages(actions) if m["type"] == "error")["code"] == "insufficient_quota"

    def test_a_replaced_session_gets_two_attempts_again_when_it_is_lost_later(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_upstream_closed(1006, "", 5.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 5.1)
        session.handle_upstream(SESSION_UPDATED, 5.2)
        tutor_speaking(session, 8.0)
        session.handle_upstream(response_done("resp_2"), 8.5)
        actions = session.handle_upstream_closed(1006, "", 50.0)
        assert logs(actions, "upstream_reconnecting")[0]["attempt"] == 1

    def test_a_session_lost_again_before_it_answers_counts_as_the_next_attempt(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_upstream_closed(1006, "", 5.0)
        session.handle_upstream({"type": "session.created", "session": {}}, 5.1)
        session.handle_upstream(SESSION_UPDATED, 5.2)
        again = session.handle_upstream_closed(1006, "", 6.0)
        assert replaced(again) == 0
        assert session.next_deadline() == 7.0
        assert replaced(session.handle_timeout(7.0)) == 1
        session.handle_upstream({"type": "session.created", "session": {}}, 7.1)
        session.handle_upstream(SESSION_UPDATED, 7.2)
        assert closes(session.handle_upstream_closed(1006, "", 8.0))[0].reason == "upstream_closed"


class TestRollOver:
    def test_the_session_is_rolled_over_at_a_turn_boundary_before_its_cap(self) -> None:
        session = resumable()
        session.begin(0.0)
        expires_at = (LESSON_START + timedelta(seconds=60)).timestamp()
        session.handle_upstream({"type": "session.created", "session": {"expires_at": expires_at}}, 0.0)
        session.handle_upstream(SESSION_UPDATED, 0.0)
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_1"}}, 0.0)
        session.handle_upstream(audio_delta(PCM_100MS), 0.0)
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_1",
                                 "response_id": "resp_1"}, 0.0)
        session.handle_upstream(response_done(), 0.0)
        session.handle_browser_text('{"type":"playback","item_id":"item_1","played_ms":100}', 0.1)
        assert session.next_deadline() == 55.0  # 55 of its 60 seconds
        # The student is speaking at that moment: not a boundary, looked at again shortly.
        session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "item_s1"}, 54.0)
        assert replaced(session.handle_timeout(55.0)) == 0
        session.handle_upstream({"type": "input_audio_buffer.speech_stopped", "item_id": "item_s1"}, 55.1)
        tutor_speaking(session, 55.2)
        assert replaced(session.handle_timeout(55.25)) == 0
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_2",
                                 "response_id": "resp_2"}, 55.3)
        session.handle_upstream(response_done("resp_2"), 55.3)
        session.handle_browser_text('{"type":"playback","item_id":"item_2","played_ms":100}', 55.4)
        actions = session.handle_timeout(55.5)
        assert replaced(actions) == 1
        assert logs(actions, "upstream_lost")[0]["why"] == "roll_over"
        assert statuses(actions) == [("reconnecting", "upstream")]
        assert not any(m["type"] == "audio.interrupt" for m in browser_messages(actions))

    def test_a_session_that_names_no_expiry_is_rolled_over_at_55_minutes(self) -> None:
        session = resumable(idle_timeout_s=10_000.0, max_lesson_s=10_000.0)
        greeted(session)
        assert session.next_deadline() == 55 * 60.0


class TestHandOver:
    def test_a_redeploy_hands_the_lesson_over_and_tells_the_page_it_will_reconnect(self) -> None:
        session = resumable()
        greeted(session)
        tutor_speaking(session, 5.0)
        actions = session.handle_shutdown(5.05)
        assert statuses(actions) == [("reconnecting", "server_restarting")]
        assert not any(m["type"] == "error" for m in browser_messages(actions))
        assert closes(actions)[0].code == 1001
        ended = records(actions)[-1]
        assert isinstance(ended, LessonEnded)
        assert ended.end_reason == "handed_off"
        assert any(isinstance(r, TurnFinished) and r.interrupted for r in records(actions))

    def test_a_lesson_resumed_on_another_worker_is_handed_over_and_its_page_here_let_go(self) -> None:
        session = resumable()
        greeted(session)
        actions = session.handle_moved(5.0)
        error = next(m for m in browser_messages(actions) if m["type"] == "error")
        assert (error["code"], error["fatal"]) == ("lesson_resumed_elsewhere", True)
        assert closes(actions)[0].code == 4001
        ended = records(actions)[-1]
        assert isinstance(ended, LessonEnded)
        assert ended.end_reason == "handed_off"
        assert logs(actions, "lesson_handed_off")[0]["why"] == "moved"

    def test_a_lesson_waiting_for_its_feedback_is_not_moved(self) -> None:
        session = resumable()
        greeted(session)
        session.handle_browser_text('{"type":"end"}', 5.0)
        assert session.handle_moved(5.1) == ()

    def test_without_resuming_a_redeploy_ends_the_lesson_as_before(self) -> None:
        session = LessonSession(config())
        greeted(session)
        actions = session.handle_shutdown(5.0)
        assert next(m for m in browser_messages(actions) if m["type"] == "error")["code"] == "server_restarting"
        assert closes(actions)[0].reason == "server_shutdown"

    def test_a_lesson_taken_over_goes_on_from_its_turns_and_usage_without_a_greeting(self) -> None:
        carried = CarriedOver(
            elapsed_s=600.0, greeted=True,
            turns=[TranscriptLine(1, "tutor", "turn-1", "Hello Ana!"), TranscriptLine(2, "student", "turn-2", "Hi.")],
            tokens={"audio_input_tokens": 100, "text_input_tokens": 10, "cached_tokens": 0,
                    "audio_output_tokens": 200, "text_output_tokens": 20})
        session = resumable(carried=carried)
        begun = session.begin(1000.0, replay=True)
        assert [m["type"] for m in browser_messages(begun)] == ["lesson", "transcript.done", "transcript.done",
                                                                "status"]
        assert browser_messages(begun)[0]["resumed"] is True
        assert replaced(begun) == 1
        assert not any(isinstance(r, LessonStarted) for r in records(begun))
        assert [r.kind for r in records(begun) if isinstance(r, LessonEventHappened)] == ["lesson_taken_over"]
        update = upstream_events(session.handle_upstream({"type": "session.created", "session": {}}, 1000.2))
        assert update[0]["session"]["instructions"].endswith('Tutor: "Hello Ana!"\nStudent: "Hi."\n')
        assert upstream_events(session.handle_upstream(SESSION_UPDATED, 1000.3)) == []
        [turn] = [r for r in records(say(session, "item_s9", "I like tea.", 1001.0)) if isinstance(r, TurnFinished)]
        assert turn.seq == 3  # the turn numbers carry on
        session.handle_upstream({"type": "response.created", "response": {"id": "resp_9"}}, 1001.1)
        session.handle_upstream(response_done("resp_9"), 1001.2)
        session.handle_browser_text('{"type":"end"}', 1010.0)  # the feedback is asked for; it never comes
        feedback_given_up = session.next_deadline()
        assert feedback_given_up is not None
        [end] = [r for r in records(session.handle_timeout(feedback_given_up)) if isinstance(r, LessonEnded)]
        assert end.duration_s == round(feedback_given_up - 400.0, 3)  # counted from the lesson's first start
        assert (end.audio_input_tokens, end.text_input_tokens, end.audio_output_tokens) == (100, 30, 208)



ANSWER = "Very good, Ana María! Now tell me: what do you like to eat?"


def answer_sent(session: LessonSession, now: float, *, text_done: bool = True) -> None:
    """The tutor's answer (item_2): 1 s of audio sent to the page at `now`, and its words (all of them, or the
    first ones only)."""
    session.handle_upstream({"type": "response.created", "response": {"id": "resp_2"}}, now)
    session.handle_upstream(audio_delta(PCM_100MS * 10, response_id="resp_2", item_id="item_2"), now)
    if text_done:
        session.handle_upstream({"type": "response.output_audio.done", "item_id": "item_2",
                                 "response_id": "resp_2"}, now)
        session.handle_upstream({"type": "response.output_audio_transcript.done", "response_id": "resp_2",
                                 "item_id": "item_2", "transcript": ANSWER}, now)
    else:
        session.handle_upstream({"type": "response.output_audio_transcript.delta", "response_id": "resp_2",
                                 "item_id": "item_2", "delta": "Nice, Ana"}, now)


def transcript_frames(actions: list[object] | tuple[object, ...]) -> list[dict[str, Any]]:
    return [m for m in browser_messages(actions) if m["type"] == "transcript.done"]


class TestWhatWasHeard:
    def test_a_turn_the_student_interrupted_is_marked_live_and_replayed_as_far_as_it_was_heard(self) -> None:
        session = resumable()
        greeted(session)
        greeting_transcript(session, 1.0)
        answer_sent(session, 5.0)
        # 300 ms of the 1 s heard when the student speaks: about the first 30 % of the words.
        barge_in = session.handle_upstream({"type": "input_audio_buffer.speech_started", "item_id": "s_1"}, 5.3)
        assert transcript_frames(barge_in) == [{"type": "transcript.done", "role": "tutor", "item_id": "item_2",
                                                "text": "Very good, Ana María!", "interrupted": True}]
        assert [e["audio_end_ms"] for e in upstream_events(barge_in) if e["type"] == "conversation.item.truncate"] \
            == [300]

        session.handle_page_detached(6.0)
        reload = session.handle_page_attached(7.0, replay=True)
        assert [(f["role"], f["text"], f.get("interrupted", False)) for f in transcript_frames(reload)] == [
            ("tutor", "Hello Ana! How are you?", False), ("tutor", "Very good, Ana María!", True)]

    def test_a_turn_cut_while_the_page_was_away_comes_back_as_heard_without_a_reload(self) -> None:
        session = resumable()
        greeted(session)
        greeting_transcript(session, 1.0)
        answer_sent(session, 5.0)
        # The page had the whole text (words run ahead of the sound) when the network went, 100 ms in.
        session.handle_page_detached(5.1)
        back = session.handle_page_attached(8.0, replay=False)
        assert [(f["text"], f.get("interrupted")) for f in transcript_frames(back)] == [("Very good,", True)]
        # Once told, it is not sent again the next time the page comes back.
        session.handle_page_detached(9.0)
        assert transcript_frames(session.handle_page_attached(10.0, replay=False)) == []

    def test_a_turn_cut_by_end_is_kept_as_heard_and_marked(self) -> None:
        session = resumable()
        greeted(session)
        answer_sent(session, 5.0, text_done=False)
        # End 500 ms into the second of audio; the words "Nice, Ana" had arrived so far.
        actions = session.handle_browser_text('{"type": "end"}', 5.5)
        messages = browser_messages(actions)
        assert [m["type"] for m in messages][:3] == ["audio.interrupt", "transcript.done", "status"]
        assert (messages[1]["text"], messages[1]["interrupted"]) == ("Nice,", True)
        assert messages[2]["state"] == "feedback"
        [turn] = [r for r in records(actions) if isinstance(r, TurnFinished)]
        assert (turn.text, turn.interrupted, turn.heard_ms, turn.heard_text) == ("Nice, Ana", True, 500, "Nice,")
        # Cancelled, then truncated to what was heard, as after a barge-in: the feedback reads only that.
        cancel, truncate, clear = upstream_events(actions)
        assert (cancel["type"], cancel["response_id"]) == ("response.cancel", "resp_2")
        assert (truncate["type"], truncate["item_id"], truncate["audio_end_ms"]) == (
            "conversation.item.truncate", "item_2", 500)
        assert clear["type"] == "input_audio_buffer.clear"
        asked = session.handle_upstream(response_done("resp_2", "cancelled", reason="client_cancelled"), 5.6)
        assert [(e["type"], e["response"]["conversation"]) for e in upstream_events(asked)] == [
            ("response.create", "none")]

    def test_a_turn_still_playing_at_end_is_truncated_before_the_feedback_is_asked_for(self) -> None:
        session = resumable()
        greeted(session)
        answer_sent(session, 5.0)
        session.handle_upstream(response_done("resp_2"), 5.0)  # all of it generated; 300 ms of it heard at End
        actions = session.handle_browser_text('{"type": "end"}', 5.3)
        sent = upstream_events(actions)
        assert [e["type"] for e in sent] == ["conversation.item.truncate", "input_audio_buffer.clear",
                                             "response.create"]
        assert (sent[0]["item_id"], sent[0]["audio_end_ms"]) == ("item_2", 300)
        assert sent[2]["response"]["metadata"]["purpose"] == "feedback"


def test_a_lesson_through_every_kind_of_break_keeps_its_state_in_slots() -> None:
    """Each live lesson holds its machine: an attribute missing from `LessonSession.__slots__` would land in an
    instance dict, and past 30 of them that dict costs 1.5 KiB a lesson."""
    session = resumable()
    greeted(session)
    greeting_transcript(session, 0.2)
    say(session, "item_s1", "I am fine, thank you.", 2.0)
    tutor_speaking(session, 3.0)
    session.handle_page_detached(3.05)
    session.handle_page_attached(4.0, replay=True)
    session.handle_upstream_closed(1006, "no close frame", 5.0)
    session.handle_upstream({"type": "session.created", "session": {}}, 5.1)
    session.handle_upstream(SESSION_UPDATED, 5.2)
    session.handle_browser_text('{"type":"end"}', 6.0)
    session.handle_timeout(6.0 + 60)
    assert session.state is LessonState.ENDED
    assert vars(session) == {}


class TestHeardText:
    def test_the_heard_share_of_the_audio_keeps_that_share_of_the_words_and_the_word_under_way(self) -> None:
        assert heard_text(ANSWER, 300, 1000) == "Very good, Ana María!"
        assert heard_text(ANSWER, 100, 1000) == "Very good,"

    def test_all_of_it_heard_within_the_tolerance_keeps_every_word_and_none_heard_keeps_none(self) -> None:
        assert heard_text(ANSWER, 990, 1000) == ANSWER
        assert heard_text(ANSWER, 1000, 0) == ANSWER
        assert heard_text(ANSWER, 0, 1000) == ""
        assert heard_text(ANSWER, 5, 1000) == ""
        # Less audio than the tolerance, none of it played: still nothing heard (the item is deleted upstream).
        assert heard_text(ANSWER, 0, 30) == ""
