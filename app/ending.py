"""How a lesson ends, as the actions that end it, in the order the page must get them: the feedback (or
word that there is none), the usage frame, `status` `ended`, then the close; with them the log lines and
the records of the lesson's feedback and end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app import messages
from app.actions import Action, Close, Log, ToBrowser
from app.feedback import FeedbackUnavailable, ParsedFeedback
from app.recorder import LessonRecorder
from app.usage import LessonUsage


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
