"""The tutor prompt: every level renders its own rules, the student's name and the greeting protocol."""

from __future__ import annotations

import pytest
from jinja2 import UndefinedError

from app import prompts
from app.messages import LEVELS
from app.prompts import LEVEL_RULES, tutor_instructions


@pytest.mark.parametrize("level", LEVELS)
def test_each_level_renders_its_own_rules_and_no_other_levels(level: str) -> None:
    text = tutor_instructions(name="Ana", level=level, target_language="English")  # type: ignore[arg-type]
    for rule in LEVEL_RULES[level]:
        assert f"- {rule}" in text
    for other in LEVELS:
        if other != level:
            assert not any(rule in text for rule in LEVEL_RULES[other] if rule not in LEVEL_RULES[level])
    assert f"The student's CEFR level is {level}." in text


def test_the_levels_have_distinct_rules() -> None:
    assert len({LEVEL_RULES[level] for level in LEVELS}) == len(LEVELS)


def test_the_greeting_protocol_names_the_student_in_the_target_language() -> None:
    text = tutor_instructions(name="José", level="A1", target_language="Spanish")
    assert "The student's name is José." in text
    assert "1. Greet José by name in Spanish" in text
    assert "2. Say that you are their Spanish tutor" in text
    assert '3. Ask one easy question in Spanish, such as: "How are you today?"' in text


def test_a1_rules_are_concrete() -> None:
    rules = " ".join(LEVEL_RULES["A1"]).lower()
    for must in ("slowly", "3 to 8 words", "most frequent", "one question at a time", "recast"):
        assert must in rules


def test_support_language_and_topic_appear_only_when_given() -> None:
    bare = tutor_instructions(name="Ana", level="B1", target_language="English")
    full = tutor_instructions(name="Ana", level="B1", target_language="English", support_language="Polish",
                              topic="cooking")
    assert "support language" not in bare
    assert "topic" not in bare
    assert "The student's support language is Polish." in full
    assert "Use Polish only for a single word" in full
    assert "The lesson topic is: cooking." in full


def test_a_missing_template_variable_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    template = prompts._TEMPLATES.from_string("Hello {{ nobody }}")
    monkeypatch.setattr(prompts._TEMPLATES, "get_template", lambda _name: template)
    with pytest.raises(UndefinedError):
        tutor_instructions(name="Ana", level="A1", target_language="English")
