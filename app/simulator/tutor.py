"""What the simulated tutor says: a greeting by name, then short replies at the student's CEFR level.

It reads the student's name, level and language from the lines the relay's prompt always has
(app/templates/prompts/tutor.j2), so a lesson over the simulator sounds like the lesson it asked for.

Memory: when the instructions hold a section headed `# What you remember about <name>` (the relay writes
`… about the student`) with bullet lines (`- …`) under it, the greeting welcomes the student back, mentions
the first bullet (without its quotes) and asks about it.

Continuation: when the instructions hold a section headed `# The lesson so far` (a renewed session taking over a
lesson under way), the `Tutor:` lines under it count as turns already spoken: no greeting, the next reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The relay quotes the name ("Ana"); other clients may not (Ana).
_NAME_LINE = re.compile(r"""The student's name is (?:"([^"\n]+)"|(.+?))\.[ \t]*$""", re.MULTILINE)
_LEVEL_LINE = re.compile(r"The student's CEFR level is ([ABC][12])\.", re.MULTILINE)
_LANGUAGE_LINE = re.compile(r"The target language is (.+?)\.[ \t]*$", re.MULTILINE)
_MEMORY_HEADING = re.compile(r"^#[ \t]+What you remember about (.+?)[ \t]*$", re.MULTILINE)
_CONTINUATION_HEADING = re.compile(r"^#[ \t]+The lesson so far[ \t]*$", re.MULTILINE)


@dataclass(frozen=True)
class TutorLine:
    """One thing the tutor says, with what it is about and the word it teaches (for the lesson's feedback)."""

    text: str  # {name} is the student's name
    cue: str  # words of the line that, once spoken, mean the topic was raised
    topic: str  # the topic, as the feedback summary names it
    word: str  # a word the line introduces (it is in `text`)
    meaning: str


GREETING = TutorLine(
    "Hello {name}! I am your {language} tutor. How are you today?",
    cue="How are you", topic="how you are", word="tutor", meaning="a teacher who helps one student",
)

# Short replies by CEFR band.
REPLIES: dict[str, tuple[TutorLine, ...]] = {
    "A": (
        TutorLine("Very good, {name}! Now tell me: what is your favourite food?", cue="favourite food",
                  topic="your favourite food", word="favourite", meaning="the one you like best"),
        TutorLine("Great job, {name}. Where do you live?", cue="Where do you live",
                  topic="where you live", word="live", meaning="to have your home in a place"),
        TutorLine("Nice, {name}! What do you like to do at the weekend?", cue="weekend",
                  topic="your weekend", word="weekend", meaning="Saturday and Sunday"),
        TutorLine("Well done, {name}. Do you have a brother or a sister?", cue="brother or a sister",
                  topic="your family", word="sister", meaning="a girl or woman with the same parents as you"),
    ),
    "B": (
        TutorLine("That's interesting, {name}. Could you tell me a little more about it?", cue="a little more",
                  topic="the details of your story", word="interesting",
                  meaning="making you want to know more"),
        TutorLine("Good point, {name}. What would you do differently next time?", cue="differently",
                  topic="what you would change next time", word="differently", meaning="in another way"),
        TutorLine("I see, {name}. How did that make you feel?", cue="make you feel",
                  topic="your feelings", word="feel", meaning="to have an emotion, like happy or sad"),
        TutorLine("Nicely put, {name}. Can you give me an example?", cue="an example",
                  topic="examples from your life", word="example", meaning="one thing that shows what you mean"),
    ),
    "C": (
        TutorLine("That's a nuanced view, {name}. How would you counter the opposite argument?", cue="counter",
                  topic="answering the opposite argument", word="nuanced",
                  meaning="showing small but important differences"),
        TutorLine("Fascinating, {name}. To what extent do you think that is changing?", cue="To what extent",
                  topic="how things are changing", word="extent", meaning="how far or how much something is true"),
        TutorLine("Well argued, {name}. Could you rephrase that more formally?", cue="rephrase",
                  topic="formal language", word="rephrase", meaning="to say the same thing in other words"),
        TutorLine("Interesting, {name}. What assumptions lie behind that opinion?", cue="assumptions",
                  topic="the assumptions behind an opinion", word="assumption",
                  meaning="something you believe without proof"),
    ),
}
# Every line the tutor may say, at any level, in the order a lesson meets them.
ALL_LINES: tuple[TutorLine, ...] = (GREETING, *(line for replies in REPLIES.values() for line in replies))


def tutor_facts(instructions: str) -> tuple[str | None, str, str]:
    """(student name, CEFR level, target language) read from the lines the relay's prompt always has."""
    name = _NAME_LINE.search(instructions)
    level = _LEVEL_LINE.search(instructions)
    language = _LANGUAGE_LINE.search(instructions)
    return (
        (name.group(1) or name.group(2)).strip() if name else None,
        level.group(1) if level else "A1",
        language.group(1).strip() if language else "English",
    )


def remembered(instructions: str) -> tuple[str, list[str]] | None:
    """(the student's name, the bullets) of the instructions' memory section; None when there is none."""
    heading = _MEMORY_HEADING.search(instructions)
    if heading is None:
        return None
    bullets: list[str] = []
    for line in instructions[heading.end():].splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            break
        if stripped.startswith(("- ", "* ")) and stripped[2:].strip():
            bullets.append(stripped[2:].strip())
    return (heading.group(1), bullets) if bullets else None


def turns_already_spoken(instructions: str) -> int:
    """How many tutor turns the instructions' `# The lesson so far` section shows (0 without one)."""
    heading = _CONTINUATION_HEADING.search(instructions)
    if heading is None:
        return 0
    spoken = 0
    for line in instructions[heading.end():].splitlines():
        if line.startswith("#"):
            break
        spoken += line.startswith("Tutor: ")
    return spoken


def tutor_text(instructions: str, turns_spoken: int) -> str:
    """What the tutor says after `turns_spoken` earlier turns with content (plus those of a lesson it took
    over): a greeting first, then replies."""
    name, level, language = tutor_facts(instructions)
    turns_spoken += turns_already_spoken(instructions)
    if turns_spoken == 0:
        memory = remembered(instructions)
        if memory is not None:
            remembered_name, bullets = memory
            # The relay quotes what it remembers ("…"), as data; said aloud, the quotes go.
            thing = bullets[0].strip('"').rstrip(".!?;: ")
            return (
                f"Welcome back, {name or remembered_name}! I remember from last time: {thing}. "
                "What can you tell me about that today?"
            )
        if name is None:
            return GREETING.text.replace(" {name}", "").format(language=language)
        return GREETING.text.format(name=name, language=language)
    replies = REPLIES[level[0]]
    reply = replies[(turns_spoken - 1) % len(replies)].text
    return reply.format(name=name) if name else reply.replace(", {name}", "")
