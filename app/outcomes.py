"""What a lesson's `end_reason` and its events' `kind` mean, in words a teacher reads on the desk.

The records keep the codes (the API, the exports and the CSV give them as they are); the desk shows these
sentences beside them. `tests/test_outcomes.py` checks that every code the lesson can record is here and in
docs/api.md.
"""

from __future__ import annotations

END_REASONS: dict[str, str] = {
    "student_ended": "The student pressed End.",
    "time_limit": "The lesson reached its longest allowed length.",
    "idle": "The student said nothing for a long time, so the lesson ended.",
    "cost_limit": "The lesson reached the most a lesson may cost.",
    "browser_gone": "The student's page closed or lost its connection and did not come back in time.",
    "browser_stalled": "The student's page stopped taking what was sent to it (a frozen tab or a very poor "
                       "connection), so the lesson ended.",
    "page_flooded": "The student's page (or a script) sent far more messages than a lesson page sends, so the "
                    "lesson was stopped.",
    "replaced": "The student's lesson link was opened again in another window or device, which went on instead.",
    "handed_off": "The server restarted for an update and handed the lesson over, but the student's page did "
                  "not come back to it.",
    "instance_lost": "The server running the lesson stopped unexpectedly, and the student's page did not come "
                     "back to it in time.",
    "server_shutdown": "The server restarted for an update while resuming lessons was switched off.",
    "link_revoked": "The teacher revoked the lesson link while the lesson was under way, so it ended.",
    "student_removed": "The teacher archived or deleted the student while the lesson was under way, so it ended.",
    "teacher_ended": "The teacher ended the lesson from the desk or the API.",
    "internal_error": "An error in the lesson server stopped the lesson.",
    "over_capacity": "The lesson could not start: every place was taken (MAX_SESSIONS), or too many lessons were "
                     "started within a minute from the student's address (LESSON_STARTS_PER_MINUTE) or with their "
                     "link (LINK_STARTS_PER_MINUTE); its event says which.",
    "daily_budget_reached": "The lesson could not start: the student's lessons of the last 24 hours already cost "
                            "the most allowed in a day (MAX_STUDENT_COST_USD_PER_DAY).",
    "session_expired": "The tutor service ended its session at its time cap.",
    "session_not_audio": "The tutor service would not speak: its session was not set up for audio.",
    "session_refused": "The tutor service refused the lesson's set-up.",
    "greeting_failed": "The tutor could not give its greeting, even after asking again.",
    "greeting_timeout": "The tutor's greeting did not start in time.",
    "response_failed": "A reply of the tutor failed and the lesson could not go on.",
    "upstream_closed": "The tutor service closed the connection and it could not be restored.",
    "upstream_error": "The tutor service reported an error the lesson could not recover from.",
    "upstream_timeout": "The tutor service did not answer in time.",
    "upstream_unavailable": "The tutor service could not be reached, or was having problems.",
    "upstream_auth": "The tutor service refused the server's credentials (its API key).",
    "insufficient_quota": "The tutor service account has run out of credit.",
    "upstream_rate_limited": "The tutor service was too busy (a rate limit).",
    "upstream_refused": "The tutor service refused to start the lesson.",
}

# Why a start can be turned away before the tutor says a word: by the relay (capacity, start rates, the student's
# daily budget: kept as a lesson of no length) or by the tutor service (refused, unreachable, unable to greet). A
# lesson that ended so with no turn recorded and no audio from the tutor is a refused start: the desk counts it apart
# from the lessons that ran. After a turn the same reason ended a lesson that ran; so it did when the tutor spoke and
# its turns are gone (deleted past RETENTION_DAYS, or lost in an outage of the records).
REFUSED_START_REASONS = frozenset({
    "over_capacity", "daily_budget_reached", "session_not_audio", "session_refused", "greeting_failed",
    "greeting_timeout", "upstream_closed", "upstream_error", "upstream_timeout", "upstream_unavailable",
    "upstream_auth", "insufficient_quota", "upstream_rate_limited", "upstream_refused",
})


EVENT_KINDS: dict[str, str] = {
    "refused": "The lesson could not start.",
    "greeting_retry": "The greeting did not come through and was asked for again.",
    "greeting_failed": "The greeting could not be given.",
    "greeting_not_created": "The tutor service did not start the greeting in time.",
    "response_cancelled": "A reply of the tutor was cancelled: the student spoke over it, their page went away, "
                          "or the lesson was ending.",
    "response_failed": "A reply of the tutor failed.",
    "response_incomplete": "A reply of the tutor was cut short by the tutor service.",
    "student_transcription_failed": "What the student said could not be written down.",
    "upstream_error": "The tutor service reported an error.",
    "upstream_closed": "The tutor service closed the connection.",
    "upstream_lost": "The connection to the tutor service was lost, or reached its time cap: a new one was opened "
                     "and told the conversation so far.",
    "upstream_connect_failed": "The tutor service could not be reached.",
    "upstream_reconnect_failed": "An attempt to reconnect to the tutor service failed.",
    "upstream_setup_timeout": "The tutor service did not confirm the lesson's set-up in time.",
    "upstream_session_expired": "The tutor service's session reached its time cap.",
    "session_not_audio": "The tutor service's session was not set up for audio.",
    "page_away": "The student's page went away (a reload, a lost network); the lesson waited for it.",
    "lesson_taken_over": "The lesson went on on another server, after a restart or a server that stopped.",
    "instance_lost": "The server running the lesson stopped unexpectedly.",
    "feedback_unavailable": "The lesson ended without feedback.",
    "feedback_trimmed": "The tutor's feedback was longer than allowed and was shortened.",
}


# Events that are part of a lesson going as it should: the desk lists them on the lesson's page but does not
# count them as failures (a barge-in cancels the tutor's reply; a reload or a redeploy brings the page back).
NOT_FAILURES = frozenset({"response_cancelled", "page_away", "lesson_taken_over", "feedback_trimmed"})


def is_failure(kind: str) -> bool:
    """Whether an event of `kind` went wrong (an unknown kind counts as one, so nothing is hidden)."""
    return kind not in NOT_FAILURES


def is_refused_start(end_reason: str | None, *, ended: bool, has_turns: bool, audio_output_tokens: int) -> bool:
    """Whether a lesson was a refused start (`REFUSED_START_REASONS`): ended, for one of those reasons, with no
    turn and no audio from the tutor."""
    return ended and not has_turns and not audio_output_tokens and end_reason in REFUSED_START_REASONS


def ended_because(end_reason: str | None) -> str:
    """The desk's words for why a lesson ended; a code this version does not know is shown as it is."""
    if end_reason is None:
        return "Still open."
    return END_REASONS.get(end_reason, end_reason)


def event_meaning(kind: str) -> str:
    """The desk's words for what a lesson event is; a kind this version does not know is shown as it is."""
    return EVENT_KINDS.get(kind, kind)
