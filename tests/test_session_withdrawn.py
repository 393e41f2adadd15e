"""A lesson the teacher withdrew (its link revoked, its student archived or deleted) or ended from the desk, driven
on the state machine: no event loop, no sockets, time passed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from test_session import (
    FEEDBACK,
    FEEDBACK_PENDING,
    browser_messages,
    closes,
    config,
    configured,
    feedback_created,
    feedback_done,
    greeted,
    logs,
    upstream_events,
)

from app.actions import Close, Record, ToBrowser
from app.records import FeedbackGiven, LessonEnded, LessonEventHappened
from app.session import LessonSession, LessonState
from app.withdrawal import Withdrawal

END = '{"type":"end"}'


WITHOUT_FEEDBACK = [withdrawal for withdrawal in Withdrawal if not withdrawal.with_feedback]


@pytest.mark.parametrize("withdrawal", WITHOUT_FEEDBACK)
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


@pytest.mark.parametrize("withdrawal", list(Withdrawal))
def test_a_lesson_withdrawn_or_ended_before_its_greeting_ends_at_once(withdrawal: Withdrawal) -> None:
    session = LessonSession(config(link_id="K1", student_id="S1"))
    configured(session)
    actions = session.handle_withdrawn(withdrawal, 3.0)
    assert closes(actions) == [Close(1000, withdrawal.value)]
    assert browser_messages(actions)[0]["message"] == withdrawal.student_message


def test_a_lesson_its_teacher_ends_tells_the_page_then_ends_with_its_feedback_as_at_end() -> None:
    session = LessonSession(config(link_id=None, student_id="S1"))
    greeted(session)
    ending = session.handle_withdrawn(Withdrawal.TEACHER_ENDED, 30.0)
    assert browser_messages(ending) == [
        {"type": "error", "code": "teacher_ended", "message": "Your teacher has ended this lesson.", "fatal": True},
        FEEDBACK_PENDING,
    ]
    [request] = [event for event in upstream_events(ending) if event["type"] == "response.create"]
    assert request["response"]["metadata"] == {"purpose": "feedback"}
    assert logs(ending, "lesson_withdrawn") == [{"reason": "teacher_ended", "link_id": None, "student_id": "S1"}]
    assert logs(ending, "feedback_requested") == [{"ending": "teacher_ended"}]
    assert closes(ending) == []
    assert session.state is LessonState.FEEDBACK
    # A second request (the next check, or the desk again) while the feedback comes changes nothing.
    assert session.handle_withdrawn(Withdrawal.TEACHER_ENDED, 31.0) == ()
    session.handle_upstream(feedback_created(), 31.0)
    ended = session.handle_upstream(feedback_done(), 32.0)
    assert [frame["type"] for frame in browser_messages(ended)] == ["feedback", "usage", "status"]
    assert browser_messages(ended)[-1] == {"type": "status", "state": "ended", "reason": "teacher_ended"}
    records = [action.record for action in ended if isinstance(action, Record)]
    [given] = [record for record in records if isinstance(record, FeedbackGiven)]
    assert given.feedback == FEEDBACK
    [end] = [record for record in records if isinstance(record, LessonEnded)]
    assert end.end_reason == "teacher_ended"
    # Not a failure: the lesson records no event of its own for it.
    assert [record for record in records if isinstance(record, LessonEventHappened)] == []
    assert closes(ended) == [Close(1000, "teacher_ended")]


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


def present_and_returning(end: Callable[[LessonSession, float], Sequence[object]], **overrides: Any) -> tuple[
        list[dict[str, Any]], list[dict[str, Any]]]:
    """The frames a page present when `end` ends the lesson at 30 s gets from then to the close, and those a page
    away then gets from its return at 31 s to the close; each lesson's feedback answers at 32 s."""
    lesson_config = config(link_id="K1", student_id="S1", resume_grace_s=30.0, **overrides)
    present = LessonSession(lesson_config)
    greeted(present)
    present_frames = browser_messages(end(present, 30.0))
    present.handle_upstream(feedback_created(), 31.0)
    present_frames += browser_messages(present.handle_upstream(feedback_done(), 32.0))
    away = LessonSession(lesson_config)
    greeted(away)
    away.handle_page_detached(20.0)
    assert [a for a in end(away, 30.0) if isinstance(a, ToBrowser)] != []  # said to nobody: the page is away
    away.handle_upstream(feedback_created(), 30.5)
    returning = [frame for frame in browser_messages(away.handle_page_attached(31.0, replay=False))
                 if frame["type"] != "lesson"]
    returning += browser_messages(away.handle_upstream(feedback_done(), 32.0))
    return present_frames, returning


def test_a_page_away_when_its_teacher_ends_the_lesson_is_told_so_on_its_return_as_a_present_page_was() -> None:
    present, returning = present_and_returning(
        lambda session, now: session.handle_withdrawn(Withdrawal.TEACHER_ENDED, now))
    teacher_words = {"type": "error", "code": "teacher_ended", "message": "Your teacher has ended this lesson.",
                     "fatal": True}
    assert present[:2] == [teacher_words, FEEDBACK_PENDING]
    # Back a second later: the same words, then the feedback on its way within the time it has left.
    assert returning[:2] == [teacher_words, FEEDBACK_PENDING | {"timeout_s": 19.0}]
    assert [frame["type"] for frame in returning[2:]] == ["feedback", "usage", "status"]
    assert returning[2:] == present[2:]
    assert returning[-1] == {"type": "status", "state": "ended", "reason": "teacher_ended"}


def test_a_page_away_when_the_lesson_reaches_its_time_limit_is_told_its_feedback_is_coming_on_its_return() -> None:
    present, returning = present_and_returning(lambda session, now: session.handle_timeout(now), max_lesson_s=30.0)
    assert present[0] == FEEDBACK_PENDING
    assert returning[0] == FEEDBACK_PENDING | {"timeout_s": 19.0}
    assert [frame["type"] for frame in returning] == ["status", "feedback", "usage", "status"]
    assert returning[-1] == {"type": "status", "state": "ended", "reason": "time_limit"}


@pytest.mark.parametrize("withdrawal", WITHOUT_FEEDBACK)
def test_a_lesson_withdrawn_while_its_page_is_away_ends_at_once_as_withdrawn(withdrawal: Withdrawal) -> None:
    # Its page, back, finds it ended: the resume is refused in the same words, with the same end reason, from the
    # record (app/store/handover.py; tests/teacher/test_withdrawn_lessons.py).
    session = LessonSession(config(link_id="K1", student_id="S1", resume_grace_s=30.0))
    greeted(session)
    session.handle_page_detached(20.0)
    actions = session.handle_withdrawn(withdrawal, 30.0)
    [ended] = [action.record for action in actions if isinstance(action, Record)
               and isinstance(action.record, LessonEnded)]
    assert ended.end_reason == withdrawal.value
    assert closes(actions) == [Close(1000, withdrawal.value)]
    assert session.handle_page_attached(31.0, replay=False) == ()
