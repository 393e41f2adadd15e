"""Every `end_reason` and event `kind` the app can record has words on the desk and a line in docs/api.md.

The codes are collected from the source (the arguments of the calls that end a lesson or record an event)
and from the errors whose codes become end reasons, so a new code without words fails here.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
from openai.types.realtime import RealtimeResponse

from app import errors
from app.outcomes import END_REASONS, EVENT_KINDS, NOT_FAILURES, ended_because, event_meaning, is_failure
from app.withdrawal import Withdrawal

APP = Path(__file__).parents[1] / "app"
API_DOC = Path(__file__).parents[1] / "docs" / "api.md"
_ENDING_CALLS = {"_finish", "_end_normally"}


def _module_constants(tree: ast.Module) -> dict[str, str]:
    assignments = (node for node in tree.body if isinstance(node, ast.Assign))
    return {target.id: node.value.value for node in assignments
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets if isinstance(target, ast.Name)}


def _literal(node: ast.expr, constants: dict[str, str]) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


def _calls(tree: ast.Module) -> Iterator[tuple[str, ast.Call]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            yield name, node


def _codes_in_source() -> tuple[set[str], set[str]]:
    """(end reasons, event kinds) written as literals or module constants where lessons end or events are kept."""
    reasons: set[str] = set()
    kinds: set[str] = set()
    for path in APP.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        constants = _module_constants(tree)
        for name, call in _calls(tree):
            keywords = {keyword.arg: keyword.value for keyword in call.keywords}
            if name in _ENDING_CALLS and call.args:
                reasons.add(_literal(call.args[0], constants) or "")
            if "end_reason" in keywords:
                reasons.add(_literal(keywords["end_reason"], constants) or "")
            if name == "event" and len(call.args) >= 2:
                kinds.add(_literal(call.args[1], constants) or "")
            if "kind" in keywords and name in {"LessonEventHappened", "LessonEvent"}:
                kinds.add(_literal(keywords["kind"], constants) or "")
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef) and function.name == "_page_gone_reason":
                reasons |= {node.value for node in ast.walk(function)
                            if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    return reasons - {""}, kinds - {""}


def _codes_from_errors() -> set[str]:
    """End reasons that are an upstream error's code (the session could not be opened), a refused start's, or a
    teacher's withdrawal of the lesson."""
    refusals = {errors._refusal_wording(status, upstream_code)[0]
                for status in (400, 401, 403, 404, 429, 500, 503) for upstream_code in (None, "insufficient_quota")}
    return refusals | {errors.UpstreamUnavailable.code, errors.UpstreamError.code, errors.OverCapacity.code,
                        errors.DailyBudgetReached.code, *Withdrawal}


def _response_event_kinds() -> set[str]:
    """`response_<status>` is kept for every response that did not complete."""
    literal, _none = get_args(RealtimeResponse.model_fields["status"].annotation)
    statuses = set(get_args(literal))
    return {f"response_{status}" for status in statuses - {"completed", "in_progress"}}


def test_the_collection_finds_the_codes_it_is_meant_to() -> None:
    reasons, kinds = _codes_in_source()
    assert {"student_ended", "time_limit", "idle", "browser_gone", "browser_stalled", "handed_off",
            "instance_lost", "greeting_failed"} <= reasons
    assert {"greeting_retry", "refused", "instance_lost", "lesson_taken_over", "page_away"} <= kinds
    assert _response_event_kinds() == {"response_cancelled", "response_failed", "response_incomplete"}


def test_every_end_reason_the_app_records_has_words_for_the_teacher_and_no_other() -> None:
    reasons = _codes_in_source()[0] | _codes_from_errors()
    assert sorted(reasons - END_REASONS.keys()) == [], "recorded, without words"
    assert sorted(END_REASONS.keys() - reasons) == [], "words for a code never recorded"


def test_every_event_kind_the_app_records_has_words_for_the_teacher_and_no_other() -> None:
    kinds = _codes_in_source()[1] | _response_event_kinds()
    assert sorted(kinds - EVENT_KINDS.keys()) == [], "recorded, without words"
    assert sorted(EVENT_KINDS.keys() - kinds) == [], "words for a kind never recorded"


@pytest.mark.parametrize("codes", [END_REASONS, EVENT_KINDS], ids=["end_reason", "event kind"])
def test_every_code_is_explained_in_the_api_docs(codes: dict[str, str]) -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", API_DOC.read_text(), re.MULTILINE))
    assert sorted(codes.keys() - documented) == []


def test_an_open_lesson_and_an_unknown_code_read_plainly() -> None:
    assert ended_because(None) == "Still open."
    assert ended_because("student_ended") == "The student pressed End."
    assert ended_because("from_a_newer_version") == "from_a_newer_version"
    assert event_meaning("from_a_newer_version") == "from_a_newer_version"


def test_the_events_that_are_no_failure_are_known_kinds_and_any_other_kind_is_one() -> None:
    assert EVENT_KINDS.keys() >= NOT_FAILURES
    assert not is_failure("response_cancelled")
    assert is_failure("response_failed")
    assert is_failure("a_kind_a_later_version_records")


def test_a_start_refused_for_capacity_or_rate_names_each_limit_that_refuses_so() -> None:
    # One code for three limits: the teacher is told which settings to look at, and where the event says which.
    words = ended_because("over_capacity")
    for setting in ("MAX_SESSIONS", "LESSON_STARTS_PER_MINUTE", "LINK_STARTS_PER_MINUTE"):
        assert setting in words
    assert "its event says which" in words


def test_a_cancelled_reply_is_not_said_to_be_the_student_speaking_over_it_when_the_lesson_was_ending() -> None:
    assert "usually" not in event_meaning("response_cancelled")
    assert "the lesson was ending" in event_meaning("response_cancelled")
