"""The tutor's instructions (`app/templates/prompts/tutor.j2`), with what the tutor remembers about a
returning student (`memory.j2`), and the request for the lesson's feedback (`feedback.j2`).

The level rules follow the CEFR descriptors: concrete speaking rules the model can follow, one list
per level. The template is rendered with StrictUndefined so a missing variable fails loudly at once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.feedback import MAX_CORRECTIONS, MAX_NEW_WORDS
from app.memory import RememberedLesson
from app.messages import Level, Role

LEVEL_RULES: dict[str, tuple[str, ...]] = {
    "A1": (
        "Speak slowly and clearly, with short pauses between sentences.",
        "Use sentences of 3 to 8 words, in the present tense.",
        "Use only the most frequent everyday words.",
        "Ask one question at a time, often a yes/no or either/or question.",
        "Repeat or rephrase instead of explaining; never give grammar lectures.",
        "When the student makes a mistake, repeat their sentence correctly in a friendly way (a gentle recast).",
        "Allow long silences; praise every effort.",
    ),
    "A2": (
        "Speak at a slow-to-normal pace.",
        "Use short sentences joined with and, but or because.",
        "Use simple past and future forms.",
        "Ask open questions about routines, family, shopping, work and the local area.",
        "Recast mistakes; now and then name a pattern in one short sentence.",
    ),
    "B1": (
        "Speak at a natural pace.",
        "Use everyday idioms and explain them with an example.",
        "Ask follow-up why and how questions about opinions, plans and stories.",
        "Correct only mistakes that block meaning or keep coming back.",
        "Let the student do most of the talking.",
    ),
    "B2": (
        "Speak at a normal pace and register.",
        "Discuss viewpoints, advantages and disadvantages, and hypothetical situations.",
        "Push for precision and range: suggest synonyms and connectors.",
        "Give brief feedback on recurring errors at natural breaks.",
    ),
    "C1": (
        "Speak at a native pace.",
        "Discuss abstract, academic and professional topics.",
        "Work on nuance, tone and register; challenge the student's arguments.",
        "Give feedback on style and collocation.",
    ),
    "C2": (
        "Be an equal conversation partner at a native pace.",
        "Explore subtle points of usage, humour, idiom and cultural reference.",
        "Give feedback only when asked or on rare slips.",
    ),
}

GREETING_QUESTIONS: dict[str, str] = {
    "A1": "How are you today?",
    "A2": "How was your day?",
    "B1": "What did you do last weekend?",
    "B2": "What would you like to talk about today?",
    "C1": "What would you like to talk about today?",
    "C2": "What would you like to talk about today?",
}

_TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates" / "prompts"),
    undefined=StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
)
# Text from outside the template enters it as a JSON string: quoted, with nothing that could close the quotes.
_TEMPLATES.filters["quoted"] = lambda value: json.dumps(str(value), ensure_ascii=False)


# The memory section's bound, heading included: it rides along in every lesson's instructions.
MEMORY_MAX_CHARS = 1200
# How much of each remembered lesson goes in, richest first: (corrections, new words) per lesson.
_MEMORY_DETAIL = ((3, 6), (2, 4), (1, 2), (0, 0))


def tutor_instructions(
    *,
    name: str,
    level: Level,
    target_language: str,
    support_language: str | None = None,
    topic: str | None = None,
    memory: Sequence[RememberedLesson] = (),
) -> str:
    """The `instructions` of the lesson's `session.update`: greeting protocol plus the level's rules; for a
    returning student (`memory`: their last lessons, newest first) what the tutor remembers and a
    welcome-back greeting."""
    return _TEMPLATES.get_template("tutor.j2").render(
        name=name,
        level=level,
        target_language=target_language,
        support_language=support_language,
        topic=topic,
        level_rules=LEVEL_RULES[level],
        greeting_question=GREETING_QUESTIONS[level],
        memory=memory_section(memory),
    )


@dataclass(frozen=True)
class TutorMemory:
    """What a lesson's instructions hold of the student's last lessons: `lessons` as they go in (newest first, each
    feedback with only the corrections and words that fit), and `text`, the section itself ("" without lessons)."""

    lessons: list[RememberedLesson]
    text: str


def tutor_memory(lessons: Sequence[RememberedLesson]) -> TutorMemory:
    """The memory section from `lessons` (newest first), at most MEMORY_MAX_CHARS long: at the richest detail
    (corrections and words per lesson, `_MEMORY_DETAIL`) at which the newest lesson fits, as many of the newest
    lessons as fit; "" and no lessons when none fits even without corrections and words."""
    for corrections, words in _MEMORY_DETAIL:
        for count in range(len(lessons), 0, -1):
            shown = [_trimmed(lesson, corrections, words) for lesson in lessons[:count]]
            text = _render_memory(shown)
            if len(text) <= MEMORY_MAX_CHARS:
                return TutorMemory(shown, text)
    return TutorMemory([], "")


def memory_section(lessons: Sequence[RememberedLesson]) -> str:
    """`# What you remember about the student`: the text of `tutor_memory(lessons)`."""
    return tutor_memory(lessons).text


def _trimmed(lesson: RememberedLesson, corrections: int, words: int) -> RememberedLesson:
    feedback = lesson.feedback.model_copy(update={"corrections": lesson.feedback.corrections[:corrections],
                                                  "new_words": lesson.feedback.new_words[:words]})
    return replace(lesson, feedback=feedback)


def _render_memory(lessons: Sequence[RememberedLesson]) -> str:
    shown: list[dict[str, Any]] = [{
        "date": f"{lesson.started_at.day} {lesson.started_at:%B %Y}",
        "summary": lesson.feedback.summary,
        "new_words": lesson.feedback.new_words,
        "corrections": lesson.feedback.corrections,
        "next_step": lesson.feedback.next_step,
    } for lesson in lessons]
    return _TEMPLATES.get_template("memory.j2").render(lessons=shown).strip()


def feedback_instructions(*, name: str, level: Level, target_language: str, support_language: str | None = None) -> str:
    """The `instructions` of the out-of-band `response.create` that asks for the lesson's feedback object."""
    return _TEMPLATES.get_template("feedback.j2").render(
        name=name, level=level, target_language=target_language, support_language=support_language,
        max_corrections=MAX_CORRECTIONS, max_new_words=MAX_NEW_WORDS,
    )


class PastTurn(NamedTuple):
    role: Role
    # What the student heard of it: of a tutor turn cut short, only its first words.
    text: str
    cut: bool = False


# A renewed session gets the end of the conversation, bounded: long lessons must not swell its instructions.
CONTINUATION_MAX_TURNS = 30
CONTINUATION_MAX_CHARS = 6000
CONTINUATION_TURN_CHARS = 500


def continued_instructions(instructions: str, *, turns: Sequence[PastTurn]) -> str:
    """`instructions` plus the recent conversation, for an upstream session that takes over a lesson under way:
    the last `CONTINUATION_MAX_TURNS` turns (each cut to `CONTINUATION_TURN_CHARS`, and quoted: the student's
    words are data, never instructions) that fit in `CONTINUATION_MAX_CHARS`, and the rule not to greet again."""
    kept: list[PastTurn] = []
    size = 0
    for turn in reversed(turns[-CONTINUATION_MAX_TURNS:]):
        text = " ".join(turn.text.split())
        if len(text) > CONTINUATION_TURN_CHARS:
            text = text[: CONTINUATION_TURN_CHARS - 1] + "…"
        if not text:
            continue
        size += len(text) + 10
        if size > CONTINUATION_MAX_CHARS:
            break
        kept.append(PastTurn(turn.role, text, turn.cut))
    kept.reverse()
    return _TEMPLATES.get_template("continuation.j2").render(
        instructions=instructions, turns=kept, omitted=len(kept) < len([t for t in turns if t.text.strip()]),
    )
