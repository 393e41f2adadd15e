"""What the desk's forms and the JSON API accept: size-limited bodies and validated fields.

A body larger than `MAX_BODY_BYTES` is refused (413) from its Content-Length, or as soon as the stream
passes the limit, before any of it is parsed. Bad fields raise `InvalidInput` naming the field, which the
pages show next to the form and the API returns as 422 `{"error", "field"}`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from fastapi import Request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from app.messages import LEVELS, LessonRequest, Level

MAX_BODY_BYTES = 16 * 1024
# A link made to expire opens lessons for at most this many days.
MAX_LINK_DAYS = 365
_MAX_FORM_FIELDS = 20


class BodyTooLarge(Exception):
    """The request body is over `MAX_BODY_BYTES`; nothing of it was parsed."""


class InvalidInput(ValueError):
    """A bad body or field: `field` names it, the message says what is wrong in plain words."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or `BodyTooLarge` once it is known to exceed `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes, the limit is {limit}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"body over {limit} bytes, the limit is {limit}")
    return bytes(body)


async def read_form(request: Request) -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body as a dict (the last value of a repeated field wins)."""
    body = await read_body(request)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("form", "the form could not be read") from exc
    return dict(pairs)


async def read_json_object(request: Request) -> dict[str, Any]:
    """A JSON object body, or `InvalidInput('body', …)`."""
    body = await read_body(request)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput("body", f"not valid JSON ({exc.msg} at position {exc.pos})") from exc
    if not isinstance(data, dict):
        raise InvalidInput("body", f"must be a JSON object, not {type(data).__name__}")
    return data


def whole_number(text: str, *, most: int) -> int | None:
    """`text` as a whole number from 0 to `most` in ASCII digits, or None. `str.isdigit` alone lets through
    digits `int` refuses ("²"), and `int` refuses more than 4300 digits: either would be a 500."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(most)):
        return None
    number = int(text)
    return number if number <= most else None


def _spoken_name(name: str) -> str:
    # The same rule as the lesson page's name: the tutor says it, and it lands in the tutor's instructions.
    try:
        return LessonRequest.model_validate({"name": name}).name
    except ValidationError:
        raise ValueError("may hold only letters in at most 5 words (joined by - or ' if need be) or initials "
                         "with their dots, 40 characters in all") from None


def _lesson_option(field: str, problem: str) -> Callable[[str], str]:
    """A check of a link's `field` by the lesson page's own rule for it: it lands in the tutor's instructions."""
    def check(value: str) -> str:
        try:
            request = LessonRequest.model_validate({"name": "Student", field: value})
        except ValidationError:
            raise ValueError(problem) from None
        checked: str = getattr(request, field)
        return checked
    return check


StudentName = Annotated[str, Field(min_length=1, max_length=40), AfterValidator(_spoken_name)]
LanguageName = Annotated[str, Field(min_length=2, max_length=30, pattern=r"^[A-Za-z]+(?: [A-Za-z]+)*$")]


class NewStudent(BaseModel):
    """`POST /api/students` and the desk's add-student form."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    name: StudentName
    level: Level
    target_language: LanguageName | None = None


LinkTopic = Annotated[str, Field(min_length=1, max_length=80),
                      AfterValidator(_lesson_option("topic", "must be plain text on one line"))]
SupportLanguage = Annotated[str, Field(min_length=1, max_length=30), AfterValidator(_lesson_option(
    "support", "must be the name of a language, like Spanish (at most 3 words of letters)"))]


class NewLink(BaseModel):
    """What the desk's make-a-link form sets about the link's lessons (its validity is checked on its own)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    topic: LinkTopic | None = None
    support_language: SupportLanguage | None = None


class LevelChange(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    level: Level


class ApiNewLink(NewLink):
    """`POST /api/students/{id}/links`: as the desk's form, and for how many days the link opens lessons (none:
    until it is revoked)."""

    valid_days: int | None = Field(default=None, ge=1, le=MAX_LINK_DAYS, strict=True)


class StudentChange(BaseModel):
    """`PATCH /api/students/{id}`: a new level, archived (true) or restored (false); at least one of them."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, frozen=True)

    level: Level | None = None
    archived: StrictBool | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> StudentChange:
        if self.level is None and self.archived is None:
            raise ValueError("give level, archived or both")
        return self


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: dict[str, Any]) -> M:
    """`data` as `model`, or `InvalidInput` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(field, _problem(first)) from None


def _problem(error: Any) -> str:
    match error["type"]:
        case "missing":
            return "is required"
        case "extra_forbidden":
            return "is not a field this accepts"
        case "literal_error":
            return f"must be one of {', '.join(LEVELS)}"
        case "string_pattern_mismatch":
            return "must be a language name in the letters A to Z without accents, like Spanish"
        case "string_too_short":
            return "is required" if error["ctx"]["min_length"] == 1 else \
                f"must be at least {error['ctx']['min_length']} characters"
        case "string_too_long":
            return f"must be at most {error['ctx']['max_length']} characters"
        case "string_type" | "dict_type":
            return "must be text"
        case "int_type":
            return "must be a whole number"
        case "bool_type":
            return "must be true or false"
        case "greater_than_equal":
            return f"must be at least {error['ctx']['ge']}"
        case "less_than_equal":
            return f"must be at most {error['ctx']['le']}"
        case _:
            message: str = error["msg"]
            return message.removeprefix("Value error, ")
