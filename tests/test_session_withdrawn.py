"""A lesson the teacher withdrew (its link revoked, its student archived or deleted), driven on the state machine:
no event loop, no sockets, time passed in."""

from __future__ import annotations

import pytest
from test_session import browser_messages, closes, config, configured, greeted, logs, upstream_events

from app.actions import Close, Record
from app.records import LessonEnded, LessonEventHappened
from app.session import LessonSession, LessonState
from app.withdrawal import Withdrawal

END = '{"type":"end"}'


@pytest.mark.parametrize("withdrawal", list(Withdrawal))
def test_a_withdrawn_lesson_ends_at_once_telling_the_page_why_in_plain_words(withdrawal: Withdrawal) -> None:
    session = LessonSession(config(link_id="K1", student_id="S1"))
    greeted(session)
    actions = session.handle_withdrawn(withdrawal, 42.0)
    frames = browser_messages(actions)
    assert [frame["type"] for frame in frames] == ["error", "usage", "status"]
    assert frames[0] == {"type": "error", "code": withdrawal.value, "message": withdrawal.student_message,
                         "fatal": True}
    assert "teacher" in frames[0]["message"]
    assert frames[2] == {"type": "status", "state": "ended", "reason": withdrawal.value}
    assert logs(actions, "lesson_withdrawn") == [{"reason": withdrawal.value, "link_id": "K1", "student_id": "S1"}]
    [ended] = [action.record for action in actions if isinstance(action, Record)
               and isinstance(action.record, LessonEnded)]
    assert (ended.end_reason, ended.duration_s) == (withdrawal.value, 42.0)
    # Nothing goes wrong in a withdrawal: no failure event for the desk to count, and no feedback asked for.
    assert [action for action in actions if isinstance(action, Record)
            and isinstance(action.record, LessonEventHappened)] == []
    assert upstream_events(actions) == []
    assert closes(actions) == [Close(1000, withdrawal.value)]
    assert (session.state, session.ended_reason) == (LessonState.ENDED, withdrawal.value)


def test_a_lesson_withdrawn_before_its_greeting_ends_too() -> None:
    session = LessonSession(config(link_id="K1", student_id="S1"))
    configured(session)
    actions = session.handle_withdrawn(Withdrawal.LINK_REVOKED, 3.0)
    assert closes(actions) == [Close(1000, "link_revoked")]


def test_a_lesson_waiting_for_its_feedback_ends_as_it_was_going_to_and_an_ended_one_ignores_it() -> None:
    session = LessonSession(config(link_id="K1", student_id="S1"))
    greeted(session)
    session.handle_browser_text(END, 10.0)
    assert session.state is LessonState.FEEDBACK
    assert session.handle_withdrawn(Withdrawal.STUDENT_REMOVED, 11.0) == ()
    assert session.state is LessonState.FEEDBACK
    ended = LessonSession(config(link_id="K1"))
    greeted(ended)
    ended.handle_withdrawn(Withdrawal.LINK_REVOKED, 5.0)
    assert ended.handle_withdrawn(Withdrawal.STUDENT_REMOVED, 6.0) == ()
    assert ended.ended_reason == "link_revoked"
