"""A teacher withdraws a running lesson: its link revoked, its student archived or deleted, or the lesson ended
from the desk.

A withdrawn link opens no new lesson (`app.store.queries.student_for_link`), and a lesson it already opened
ends too, at once, without feedback (the teacher took the link back; the tutor is not asked for more), telling
its page in plain words; its record keeps why (`end_reason`), and a resume of it is refused in the same words.
A lesson its teacher ended (`lessons.end_requested_at`) ends as the student's End does, with its feedback, and
its link goes on working. A lesson already waiting for its feedback (ended by End, the time limit or idleness)
finishes as it was going to. `app.link_check` finds the lessons to end.
"""

from __future__ import annotations

import enum


class Withdrawal(enum.StrEnum):
    """Why a teacher withdrew a lesson: its `end_reason`, and the code of the `error` frame its page gets."""

    LINK_REVOKED = "link_revoked"
    STUDENT_REMOVED = "student_removed"  # archived or deleted
    TEACHER_ENDED = "teacher_ended"  # from the desk or the API, this lesson alone

    @property
    def student_message(self) -> str:
        return _WORDS[self]

    @property
    def with_feedback(self) -> bool:
        """Whether the lesson ends as the student's End does, asking the tutor for its feedback first."""
        return self is Withdrawal.TEACHER_ENDED


_WORDS = {
    Withdrawal.LINK_REVOKED: "Your teacher has withdrawn this lesson link, so the lesson has ended. "
                             "Ask your teacher for a new link if you need one.",
    Withdrawal.STUDENT_REMOVED: "Your teacher has closed your lessons here, so this lesson has ended. "
                                "Please ask your teacher.",
    Withdrawal.TEACHER_ENDED: "Your teacher has ended this lesson.",
}
