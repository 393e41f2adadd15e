"""What the simulated tutor says: a greeting by name, then short replies at the student's CEFR level.

It reads the student's name, level and language from the lines the relay's prompt always has
(app/templates/prompts/tutor.j2), so a lesson over the simulator sounds like the lesson it asked for.
"""

from __future__ import annotations

import re

_NAME_LINE = re.compile(r"The student's name is (.+?)\.[ \t]*$", re.MULTILINE)
_LEVEL_LINE = re.compile(r"The student's CEFR level is ([ABC][12])\.", re.MULTILINE)
_LANGUAGE_LINE = re.compile(r"The target language is (.+?)\.[ \t]*$", re.MULTILINE)

# Short replies by CEFR band; {name} is the student's name.
_REPLIES: dict[str, tuple[str, ...]] = {
    "A": (
        "Very good, {name}! Now tell me: what is your favourite food?",
        "Great job, {name}. Where do you live?",
        "Nice, {name}! What do you like to do at the weekend?",
        "Well done, {name}. Do you have a brother or a sister?",
    ),
    "B": (
        "That's interesting, {name}. Could you tell me a little more about it?",
        "Good point, {name}. What would you do differently next time?",
        "I see, {name}. How did that make you feel?",
        "Nicely put, {name}. Can you give me an example?",
    ),
    "C": (
        "That's a nuanced view, {name}. How would you counter the opposite argument?",
        "Fascinating, {name}. To what extent do you think that is changing?",
        "Well argued, {name}. Could you rephrase that more formally?",
        "Interesting, {name}. What assumptions lie behind that opinion?",
    ),
}


def tutor_facts(instructions: str) -> tuple[str | None, str, str]:
    """(student name, CEFR level, target language) read from the lines the relay's prompt always has."""
    name = _NAME_LINE.search(instructions)
    level = _LEVEL_LINE.search(instructions)
    language = _LANGUAGE_LINE.search(instructions)
    return (
        name.group(1).strip() if name else None,
        level.group(1) if level else "A1",
        language.group(1).strip() if language else "English",
    )


def tutor_text(instructions: str, turns_spoken: int) -> str:
    """What the tutor says after `turns_spoken` earlier turns with content: a greeting first, then replies."""
    name, level, language = tutor_facts(instructions)
    if turns_spoken == 0:
        if name is None:
            return f"Hello! I am your {language} tutor. How are you today?"
        return f"Hello {name}! I am your {language} tutor. How are you today?"
    replies = _REPLIES[level[0]]
    reply = replies[(turns_spoken - 1) % len(replies)]
    return reply.format(name=name) if name else reply.replace(", {name}", "")

