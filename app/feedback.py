"""The lesson's feedback, asked of the same Realtime session out of band when a lesson ends normally.

At a normal end (the student's End, the time limit, idleness) the machine sends one `response.create`
outside the conversation (`conversation: "none"`, text output, `metadata.purpose = "feedback"`): without
`input` it sees the whole conversation, and nothing it says is added to it. Its answer is told apart from
the tutor's turns by that metadata and then by its response id. Its text must be one JSON object,
validated here; the page gets it as a `feedback` frame and the store keeps it in `lessons.feedback`. A
failed, incomplete or invalid answer makes the feedback unavailable, with the reason; the lesson ends as
it would have.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

from app import protocol

FEEDBACK_PURPOSE = "feedback"
MAX_CORRECTIONS = 5
MAX_NEW_WORDS = 8
# Room for five corrections and eight words in any language; a longer answer ends `incomplete`.
MAX_OUTPUT_TOKENS = 1500
# The error the Realtime API gives a response.create while another response is active.
ACTIVE_RESPONSE_CODE = "conversation_already_has_active_response"

# A JSON object inside one Markdown code fence, as models sometimes write it despite being asked not to.
_FENCED = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL | re.IGNORECASE)


def _one_line(value: object) -> object:
    # Newlines and runs of spaces go: the text is shown on one line and may land in later instructions.
    return " ".join(value.split()) if isinstance(value, str) else value


Sentence = Annotated[str, StringConstraints(min_length=1, max_length=300), BeforeValidator(_one_line)]
Word = Annotated[str, StringConstraints(min_length=1, max_length=80), BeforeValidator(_one_line)]


class _FeedbackPart(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, strict=True)


class Correction(_FeedbackPart):
    said: Sentence
    better: Sentence
    why: Annotated[str, StringConstraints(max_length=300), BeforeValidator(_one_line)] = ""


class NewWord(_FeedbackPart):
    word: Word
    meaning: Sentence


class Feedback(_FeedbackPart):
    """The feedback object the model is asked for; every field is required, the lists may be empty."""

    summary: Annotated[str, StringConstraints(min_length=1, max_length=600), BeforeValidator(_one_line)]
    corrections: list[Correction] = Field(max_length=MAX_CORRECTIONS)
    new_words: list[NewWord] = Field(max_length=MAX_NEW_WORDS)
    next_step: Sentence


class InvalidFeedback(ValueError):
    """The answer is not the feedback object; the message says where and why."""


@dataclass(frozen=True)
class ParsedFeedback:
    """Valid feedback, and the lists that were longer than allowed (their length as given) and were cut."""

    feedback: Feedback
    trimmed: Mapping[str, int] = field(default_factory=dict)


def parse_feedback(text: str) -> ParsedFeedback:
    """The feedback in `text`, or `InvalidFeedback`.

    Too many corrections or new words are trimmed to the first 5 and 8 (the rest is still good
    feedback); anything else that is not the object asked for (not JSON, a field missing, of the wrong
    type, empty or too long) is refused."""
    body = text.strip()
    if fenced := _FENCED.match(body):
        body = fenced.group(1)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # Its length, never its words: prose feedback quotes what the student said, and the problem is logged
        # and kept in the lesson's events, which outlive RETENTION_DAYS.
        raise InvalidFeedback(f"not JSON ({exc}), {len(body)} characters") from None
    if not isinstance(data, dict):
        raise InvalidFeedback(f"a JSON {type(data).__name__}, not an object")
    trimmed: dict[str, int] = {}
    for key, limit in (("corrections", MAX_CORRECTIONS), ("new_words", MAX_NEW_WORDS)):
        given = data.get(key)
        if isinstance(given, list) and len(given) > limit:
            trimmed[key] = len(given)
            data[key] = given[:limit]
    try:
        feedback = Feedback.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "object"
        raise InvalidFeedback(f"{where}: {first['msg']}") from None
    return ParsedFeedback(feedback, trimmed)


@dataclass(frozen=True)
class FeedbackUnavailable:
    """Why there is no feedback: `reason` is a code (timeout, invalid_feedback, response_failed …),
    `detail` what the upstream said."""

    reason: str
    detail: Mapping[str, Any] = field(default_factory=dict)


class FeedbackExchange:
    """One lesson's feedback request and its answer; no I/O, no clock."""

    def __init__(self, instructions: Callable[[], str]) -> None:
        self.instructions = instructions
        self.request_id: str | None = None
        self.response_id: str | None = None
        self.asked_at: float | None = None
        self.refusals = 0
        # The feedback the page was given: a resume after the lesson's end is given it again.
        self.given: dict[str, Any] | None = None
        self._text: list[str] = []

    @property
    def asked(self) -> bool:
        return self.request_id is not None

    def request(self, event_id: str, now: float) -> bytes:
        """The `response.create` asking for the feedback, as the frame to send."""
        self.request_id, self.asked_at = event_id, now
        return protocol.dumps(protocol.out_of_band_text_response(
            event_id=event_id, instructions=self.instructions(), metadata={"purpose": FEEDBACK_PURPOSE},
            max_output_tokens=MAX_OUTPUT_TOKENS))

    def refused_while_busy(self) -> bool:
        """The request was refused because a tutor response was still active: True when it may be asked again
        (once) after that response is done."""
        self.refusals += 1
        self.request_id = None
        return self.refusals == 1

    def claims(self, response: protocol.Response) -> bool:
        """Whether `response` (from response.created or response.done) is the feedback; remembers its id."""
        metadata = response.metadata or {}
        if response.id is not None and response.id == self.response_id:
            return True
        if metadata.get("purpose") == FEEDBACK_PURPOSE:
            self.response_id = response.id
            return True
        return False

    def take_text(self, event: Mapping[str, Any]) -> bool:
        """Keep a `response.output_text.delta` of the feedback; False when it belongs to another response."""
        if self.response_id is None or event.get("response_id") != self.response_id:
            return False
        delta = event.get("delta")
        if isinstance(delta, str):
            self._text.append(delta)
        return True

    def answer(self, response: protocol.Response) -> ParsedFeedback | FeedbackUnavailable:
        """The feedback's `response.done`: the validated feedback, or why there is none."""
        details = response.status_details
        if response.status != "completed":
            return FeedbackUnavailable(f"response_{response.status}", {
                "status": response.status,
                "status_details": details.model_dump(exclude_none=True) if details else None,
            })
        # response.done's output is the whole text; the deltas are the fallback for a server that omits it.
        text = response.output_text() or "".join(self._text)
        try:
            return parse_feedback(text)
        except InvalidFeedback as exc:
            return FeedbackUnavailable("invalid_feedback", {"problem": str(exc)[:300]})
