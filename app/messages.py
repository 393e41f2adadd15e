"""The browser ⇄ relay wire format (docs/protocol.md).

Binary frames are PCM16 LE mono 24 kHz both ways. Text frames are JSON objects told apart by `type`.
What the page may send is an allowlist validated here; anything else is refused with an error frame.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

LEVELS = ("A1", "A2", "B1", "B2", "C1", "C2")
Level = Literal["A1", "A2", "B1", "B2", "C1", "C2"]

# What a name looks like (lesson.js's NAME_PATTERN mirrors it): at most MAX_NAME_WORDS words of at most
# MAX_NAME_LENGTH characters in all, each word either letters (with their accents) joined by single hyphens
# or apostrophes, straight or curly ("Jean-Luc", "O'Brien") or initials ("J.", "J.R.R."). A dot may only follow a
# single letter, so nothing shaped like a sentence ("Ana. Speak only French.") passes, while
# "María de los Ángeles" and "J. R. R. Tolkien" do.
MAX_NAME_WORDS = 5
MAX_NAME_LENGTH = 40
# A word's shape: each letter or combining mark becomes "L", anything else stays as it is.
_NAME_WORD_SHAPE = re.compile(r"^(?:L+(?:['\u2019-]L+)*|(?:L\.)+)$")
# A language name: one to three words of letters ("Spanish", "Brazilian Portuguese").
_LANGUAGE = re.compile(r"^[^\W\d_]+(?: [^\W\d_]+){0,2}$")


def _word_shape(word: str) -> str:
    return "".join("L" if unicodedata.category(ch)[0] in "LM" else ch for ch in word)


def name_problem(name: str) -> str | None:
    """Why `name` is not a name, or None when it is one (runs of spaces count as one)."""
    if any(ch.isspace() and ch != " " for ch in name):
        return "holds a line break or a tab; a name is one line of words separated by spaces"
    words = name.split()
    if len(words) > MAX_NAME_WORDS:
        return f"has {len(words)} words; a name has at most {MAX_NAME_WORDS}"
    for word in words:
        if not _NAME_WORD_SHAPE.match(_word_shape(word)):
            return (f"word {word!r} is not part of a name: letters, joined by - or ' if need be, "
                    "or an initial with its dot")
    return None


class LessonRequest(BaseModel):
    """The query of `/ws/lesson`: who the student is and what lesson they want."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    level: Level = "A1"
    support: str | None = Field(default=None, min_length=1, max_length=30)
    topic: str | None = Field(default=None, min_length=1, max_length=80)
    token: str | None = Field(default=None, max_length=1000)
    # The open page's random key, kept in the browser's localStorage: the same browser is the same student.
    student_key: str | None = Field(default=None, min_length=16, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")

    @field_validator("name")
    @classmethod
    def _name_is_a_name(cls, name: str) -> str:
        # The name is spoken by the tutor and lands in its instructions (quoted, as data): it must look like one.
        name = unicodedata.normalize("NFC", name)
        if (problem := name_problem(name)) is not None:
            raise ValueError(f"name {name!r} {problem}")
        return " ".join(name.split())

    @field_validator("support")
    @classmethod
    def _support_is_a_language(cls, support: str | None) -> str | None:
        if support is not None and not _LANGUAGE.match(support):
            raise ValueError(f"support language {support!r} must be a language name")
        return support

    @field_validator("topic")
    @classmethod
    def _topic_is_printable(cls, topic: str | None) -> str | None:
        if topic is not None and not topic.isprintable():
            raise ValueError(f"topic {topic!r} must be printable text")
        return topic


# What the student reads when their lesson link is damaged or forged: what to check, and who can help.
INVALID_LINK_WORDS = ("This lesson link is not valid. Check that you opened the whole link, or ask your teacher "
                      "for a new one.")

# What the student reads when a lesson parameter is refused; the log gets pydantic's own wording.
_PARAMETER_WORDS = {
    "name": "Please type your name: at most 5 words of letters (a hyphen, an apostrophe or an initial's dot "
            "is fine), 40 characters in all.",
    "level": "Please choose a level from A1 to C2.",
    "support": "The support language must be the name of a language, like Spanish (at most 3 words).",
    "topic": "The topic must be short plain text (at most 80 characters).",
    "token": INVALID_LINK_WORDS,
    "student_key": "This page's student key is not valid. Please reload the page.",
}


class InvalidLessonRequest(ValueError):
    """A bad `/ws/lesson` query: the message names the parameter, `student_message` is plain words."""

    def __init__(self, parameter: str, problem: str) -> None:
        super().__init__(f"{parameter}: {problem}")
        self.parameter = parameter
        self.student_message = _PARAMETER_WORDS.get(parameter, "The lesson link is not valid.")


def parse_lesson_request(query: dict[str, str]) -> LessonRequest:
    """Validate the query, raising `InvalidLessonRequest` naming the first bad parameter."""
    try:
        return LessonRequest.model_validate({key: value for key, value in query.items() if value != ""})
    except ValidationError as exc:
        first = exc.errors()[0]
        parameter = ".".join(str(part) for part in first["loc"]) or "query"
        raise InvalidLessonRequest(parameter, first["msg"]) from exc


# ---- page → relay -------------------------------------------------------------------------------


class _Inbound(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Playback(_Inbound):
    """How much of a tutor item the student has heard."""

    type: Literal["playback"]
    item_id: str = Field(min_length=1, max_length=128)
    played_ms: int = Field(ge=0, le=3_600_000)


class End(_Inbound):
    type: Literal["end"]


BrowserMessage = Annotated[Playback | End, Field(discriminator="type")]
_BROWSER_MESSAGE: TypeAdapter[Playback | End] = TypeAdapter(BrowserMessage)


class InvalidMessage(ValueError):
    """A text frame from the page that is not one of the allowed messages."""


def parse_browser_message(text: str) -> Playback | End:
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not JSON: {text[:80]!r}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise InvalidMessage(f"not a JSON object with a string 'type': {text[:80]!r}")
    if data["type"] not in ("playback", "end"):
        raise InvalidMessage(f"unknown message type {data['type'][:60]!r}; allowed: 'playback', 'end'")
    try:
        return _BROWSER_MESSAGE.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or data["type"]
        raise InvalidMessage(f"{data['type']!r} message: {where}: {first['msg']}") from exc


# ---- relay → page -------------------------------------------------------------------------------

StatusState = Literal["connecting", "greeting", "waiting", "tutor_speaking", "listening", "feedback",
                      "reconnecting", "ended"]
Role = Literal["tutor", "student"]


def lesson(*, lesson_id: str, simulated: bool, name: str, level: str, sample_rate: int, resume_token: str,
           resume_grace_s: float, resumed: bool) -> dict[str, Any]:
    """The lesson is accepted (`resumed`: it goes on); a page that loses its socket may come back within
    `resume_grace_s` with `resume_token`."""
    return {
        "type": "lesson", "lesson_id": lesson_id, "simulated": simulated,
        "sample_rate": sample_rate, "name": name, "level": level,
        "resumed": resumed, "resume_token": resume_token, "resume_grace_s": resume_grace_s,
    }


def status(state: StatusState, reason: str | None = None) -> dict[str, Any]:
    if reason is None:
        return {"type": "status", "state": state}
    return {"type": "status", "state": state, "reason": reason}


def waiting(*, reason: str, retry_in_ms: int) -> dict[str, Any]:
    """The greeting is asked for again in `retry_in_ms`, as long as the upstream asked us to wait."""
    return {"type": "status", "state": "waiting", "reason": reason, "retry_in_ms": retry_in_ms}


def audio_start(*, item_id: str, response_id: str) -> dict[str, Any]:
    return {"type": "audio.start", "item_id": item_id, "response_id": response_id}


def audio_done(*, item_id: str, duration_ms: int) -> dict[str, Any]:
    return {"type": "audio.done", "item_id": item_id, "duration_ms": duration_ms}


def audio_interrupt(*, item_id: str) -> dict[str, Any]:
    return {"type": "audio.interrupt", "item_id": item_id}


def transcript_delta(*, role: Role, item_id: str, text: str) -> dict[str, Any]:
    return {"type": "transcript.delta", "role": role, "item_id": item_id, "text": text}


def transcript_done(*, role: Role, item_id: str, text: str, interrupted: bool = False) -> dict[str, Any]:
    """A finished turn; `interrupted`: a tutor turn cut short, `text` being what the student heard of it."""
    frame = {"type": "transcript.done", "role": role, "item_id": item_id, "text": text}
    return frame | {"interrupted": True} if interrupted else frame


def error(*, code: str, message: str, fatal: bool) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message, "fatal": fatal}


def feedback_pending(*, timeout_s: float) -> dict[str, Any]:
    """`status` `feedback`: the lesson is over and its feedback comes within `timeout_s` (or word that it will not)."""
    return {"type": "status", "state": "feedback", "timeout_s": timeout_s}


def feedback(content: Mapping[str, Any]) -> dict[str, Any]:
    """The lesson's feedback: `summary`, `corrections` [{said, better, why}], `new_words` [{word, meaning}],
    `next_step`; sent before `status` `ended`."""
    return {"type": "feedback", **content}


def feedback_unavailable(*, reason: str) -> dict[str, Any]:
    return {"type": "feedback.unavailable", "reason": reason,
            "message": "Your feedback could not be prepared this time."}
