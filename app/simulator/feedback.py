"""The lesson feedback the simulated tutor writes when asked for it out of band.

A response is a feedback request when its `metadata.purpose` is "feedback" (the relay tags its request
so; the real model would go by the instructions, which the simulator cannot read). The answer is one JSON
object, {"summary", "corrections": [{"said", "better", "why"}], "new_words": [{"word", "meaning"}],
"next_step"}, built only from the conversation the connection actually had: the topics the tutor raised
and the words it used, and the mistakes in what the student said (typed text or transcripts).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from app.simulator.tutor import ALL_LINES, tutor_facts
from app.simulator.wire import JsonObject

FEEDBACK_PURPOSE = "feedback"
MAX_CORRECTIONS = 5
MAX_NEW_WORDS = 8
_SENTENCE = re.compile(r"[^.!?]+[.!?]*")


@dataclass(frozen=True)
class _Mistake:
    """A learner's mistake the simulated tutor can spot: `pattern` found in a sentence becomes `better`."""

    pattern: re.Pattern[str]
    better: str  # a re.sub replacement
    why: str


_MISTAKES = (
    _Mistake(re.compile(r"\bI am agree\b", re.IGNORECASE), "I agree",
             "'Agree' is a verb: say 'I agree', without 'am'."),
    _Mistake(re.compile(r"\bI have (\d+) years\b(?! old)", re.IGNORECASE), r"I am \1 years old",
             "In English you are an age: 'I am 20 years old'."),
    _Mistake(re.compile(r"\b(he|she|it) have\b", re.IGNORECASE), r"\1 has",
             "With he, she or it, 'have' becomes 'has'."),
    _Mistake(re.compile(r"\b(he|she|it) (go|do)\b", re.IGNORECASE), r"\1 \2es",
             "With he, she or it, the verb takes -es: 'she goes'."),
    _Mistake(re.compile(r"\b(he|she|it) (like|want|live|work|play|speak|read)\b", re.IGNORECASE), r"\1 \2s",
             "With he, she or it, the verb takes -s: 'she likes'."),
    _Mistake(re.compile(r"\bpeople is\b", re.IGNORECASE), "people are",
             "'People' is plural: 'people are'."),
    _Mistake(re.compile(r"\bI am (student|teacher|doctor|engineer|nurse|cook)\b", re.IGNORECASE), r"I am a \1",
             "Use 'a' before a job: 'I am a student'."),
    _Mistake(re.compile(r"\bmore good\b", re.IGNORECASE), "better",
             "'Good' has its own comparative: 'better', not 'more good'."),
    _Mistake(re.compile(r"\bI like very much (\w+)", re.IGNORECASE), r"I like \1 very much",
             "'Very much' goes after the thing you like."),
    _Mistake(re.compile(r"\byesterday I go\b", re.IGNORECASE), "yesterday I went",
             "For the past, use the past tense: 'I went'."),
)


def is_feedback_request(metadata: JsonObject | None) -> bool:
    """Whether a response.create's metadata asks for the lesson's feedback."""
    return metadata is not None and metadata.get("purpose") == FEEDBACK_PURPOSE


def lesson_feedback(items: Iterable[JsonObject], instructions: str) -> JsonObject:
    """The feedback object for a conversation of `items`; `instructions` name the student."""
    name, _, _ = tutor_facts(instructions)
    tutor_said: list[str] = []
    student_said: list[str] = []
    student_turns = 0
    for item in items:
        role = item.get("role")
        if role == "assistant":
            tutor_said += [text for part in item.get("content", []) if (text := _text_of(part))]
        elif role == "user":
            student_turns += 1
            student_said += [text for part in item.get("content", []) if (text := _text_of(part))]
    topics = _topics(tutor_said)
    corrections = _corrections(student_said)
    return {
        "summary": _summary(topics, student_turns, name),
        "corrections": corrections,
        "new_words": _new_words(tutor_said),
        "next_step": _next_step(topics, corrections),
    }


def feedback_text(items: Iterable[JsonObject], instructions: str) -> str:
    """The feedback as the response's text: one JSON object."""
    return json.dumps(lesson_feedback(items, instructions), ensure_ascii=False)


def not_feedback_text(instructions: str) -> str:
    """What a model that ignored the JSON format would write instead (for feedback_fault="invalid_json")."""
    name, _, _ = tutor_facts(instructions)
    return f"What a lovely lesson, {name}! See you next time." if name else "What a lovely lesson! See you next time."


def _text_of(part: JsonObject) -> str:
    text = part.get("text") if part.get("type") in ("input_text", "output_text") else part.get("transcript")
    return text.strip() if isinstance(text, str) else ""


def _topics(tutor_said: list[str]) -> list[str]:
    """The topics the tutor raised, in the order it raised them."""
    topics: list[str] = []
    for text in tutor_said:
        for line in ALL_LINES:
            if line.cue.lower() in text.lower() and line.topic not in topics:
                topics.append(line.topic)
    return topics


def _new_words(tutor_said: list[str]) -> list[JsonObject]:
    words: list[JsonObject] = []
    for text in tutor_said:
        for line in ALL_LINES:
            used = re.search(rf"\b{re.escape(line.word)}\b", text, re.IGNORECASE)
            if used and all(word["word"] != line.word for word in words):
                words.append({"word": line.word, "meaning": line.meaning})
    return words[:MAX_NEW_WORDS]


def _corrections(student_said: list[str]) -> list[JsonObject]:
    corrections: list[JsonObject] = []
    for text in student_said:
        for sentence in (match.group().strip() for match in _SENTENCE.finditer(text)):
            for mistake in _MISTAKES:
                if mistake.pattern.search(sentence):
                    better = mistake.pattern.sub(functools.partial(_fixed, replacement=mistake.better), sentence)
                    correction = {"said": sentence, "better": better, "why": mistake.why}
                    if correction not in corrections:
                        corrections.append(correction)
    return corrections[:MAX_CORRECTIONS]


def _fixed(found: re.Match[str], replacement: str) -> str:
    """`replacement` for `found`, capitalised when what it replaces was ("Yesterday I go" → "Yesterday I went")."""
    fixed = found.expand(replacement)
    return fixed[0].upper() + fixed[1:] if found.group()[0].isupper() else fixed


def _summary(topics: list[str], student_turns: int, name: str | None) -> str:
    if topics:
        shown = topics[:3]
        listed = shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} and {shown[-1]}"
        first = f"Today we talked about {listed}."
    else:
        first = "Today we started a new lesson."
    if student_turns == 0:
        second = "You did not answer yet, and that is fine."
    elif student_turns == 1:
        second = f"You answered once, {name}: a good start!" if name else "You answered once: a good start!"
    else:
        second = f"You answered {student_turns} times: well done, {name}!" if name else (
            f"You answered {student_turns} times: well done!"
        )
    return f"{first} {second}"


def _next_step(topics: list[str], corrections: list[JsonObject]) -> str:
    if corrections:
        return f"Practise saying: \"{corrections[0]['better']}\""
    if topics:
        return f"Next time, tell me more about {topics[-1]}."
    return "Next time, answer my first question with a full sentence."
