"""Personal lesson links: a signed token naming a student and one of their links.

A token is `base64url(payload).base64url(hmac_sha256(secret, payload))`, the payload holding the
student's id, the link's id and its expiry (or none). The secret is `LESSON_SECRET`, or when that is
unset one generated on first start and kept in the database (`app_secrets`), so links survive restarts;
the running app holds it at `app.state.link_secret`. A valid signature is not enough: the link's row is
checked when the link is used (revoked, expired, student archived or deleted) by `app.store.queries`.
Make a student and their link with:

    python -m app.links --name Ana --level A1 --hours 48 --base-url https://lessons.example.org \
        [--topic "ordering food"] [--support Spanish]

The link fixes everything the tutor's instructions say about the lesson: the student's name and level
(their record), the topic and the support language (the link's row); the page's query can change none of
it. The payload's keys are short and versioned by what they hold: `s` student id, `k` link id, `e` expiry
(Unix seconds, or null); a key added later is ignored by older servers.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode, urlsplit

import orjson
from pydantic import ValidationError

from app.logging import configure_logging
from app.messages import INVALID_LINK_WORDS, LEVELS, LessonRequest
from app.settings import Settings, load_settings


class LinkError(ValueError):
    """The lesson link is missing, altered, expired or withdrawn; `student_message` says so in plain words."""

    def __init__(self, detail: str, student_message: str) -> None:
        super().__init__(detail)
        self.student_message = student_message


@dataclass(frozen=True)
class LinkClaim:
    """What a validly signed token says; the store decides whether the link still opens a lesson."""

    student_id: str
    link_id: str
    expires_at: int | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def make_lesson_token(secret: str, *, student_id: str, link_id: str, expires_at: int | None) -> str:
    payload = orjson.dumps({"s": student_id, "k": link_id, "e": expires_at})
    return f"{_b64(payload)}.{_b64(_signature(secret, payload))}"


def verify_lesson_token(token: str, secret: str, *, now: float) -> LinkClaim:
    """The token's claim, or `LinkError` when it is missing, altered or expired."""
    if not token:
        raise LinkError("no lesson link token", "This lesson needs a link from your teacher.")
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except (ValueError, TypeError) as exc:
        raise LinkError(f"malformed lesson token ({len(token)} characters, not two base64 parts)",
                        INVALID_LINK_WORDS) from exc
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        raise LinkError("lesson token signature does not match", INVALID_LINK_WORDS)
    try:
        data = orjson.loads(payload)
        expires_at = None if data["e"] is None else int(data["e"])
        claim = LinkClaim(student_id=str(data["s"]), link_id=str(data["k"]), expires_at=expires_at)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LinkError("lesson token payload unreadable", INVALID_LINK_WORDS) from exc
    if claim.expires_at is not None and claim.expires_at <= now:
        raise LinkError(f"lesson token expired at {claim.expires_at}", EXPIRED_WORDS)
    return claim


EXPIRED_WORDS = "This lesson link has expired. Ask your teacher for a new one."


def lesson_url(base_url: str, token: str) -> str:
    """The full lesson address a student opens."""
    return f"{base_url.rstrip('/')}/?{urlencode({'token': token})}"


# A link is for a course, not forever: a year at most.
MAX_LINK_HOURS = 366 * 24


def _hours(text: str) -> float:
    """`--hours`: a finite number above 0 and at most a year."""
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours") from None
    if not math.isfinite(hours) or not 0 < hours <= MAX_LINK_HOURS:
        raise argparse.ArgumentTypeError(f"{text!r}: must be above 0 and at most {MAX_LINK_HOURS} (a year)")
    return hours


def _base_url(text: str) -> str:
    """`--base-url`: the page's public http(s) address, with no query or fragment of its own."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(f"{text!r}: must be an http:// or https:// address with a host, "
                                         "and no ? or # part")
    return text.rstrip("/")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.links",
                                     description="Add a student to the lesson records and print their lesson link.")
    parser.add_argument("--name", required=True, help="the student's name, as the tutor will say it")
    parser.add_argument("--level", default="A1", choices=LEVELS)
    parser.add_argument("--target-language", default=None, help="the language they learn, when not the server's")
    parser.add_argument("--topic", default=None, help="what the lessons are about, e.g. 'ordering food'")
    parser.add_argument("--support", default=None,
                        help="a language the tutor may use for a single word when the student is stuck")
    parser.add_argument("--hours", type=_hours, default=24.0,
                        help=f"how long the link stays valid: above 0, at most {MAX_LINK_HOURS}")
    parser.add_argument("--base-url", type=_base_url, default="http://localhost:8000",
                        help="the lesson page's public address")
    args = parser.parse_args(argv)
    try:
        request = LessonRequest.model_validate({"name": args.name, "level": args.level, "topic": args.topic,
                                                "support": args.support})
    except ValidationError as exc:
        first = exc.errors()[0]
        parser.error(f"--{first['loc'][0]} {first['input']!r}: {first['msg']}")
    settings = load_settings()
    # Stdout is the link alone (a script reads it); what the store logs on the way (a migration) goes to stderr.
    configure_logging(settings, sys.stderr)
    expires_at = datetime.now(UTC) + timedelta(hours=args.hours)
    token = asyncio.run(_create_student_link(settings, name=request.name, level=args.level,
                                             target_language=args.target_language, topic=request.topic,
                                             support_language=request.support, expires_at=expires_at))
    print(lesson_url(args.base_url, token))


async def _create_student_link(settings: Settings, *, name: str, level: str, target_language: str | None,
                               topic: str | None, support_language: str | None, expires_at: datetime) -> str:
    # Imported here: the store (SQLAlchemy, Alembic) is not needed to verify a token.
    from app.store import queries
    from app.store.runtime import opened_database

    async with opened_database(settings) as sessions:
        secret = await queries.lesson_link_secret(sessions, settings)
        student = await queries.create_student(sessions, name=name, level=level, target_language=target_language)
        link = await queries.create_link(sessions, student_id=student.id, expires_at=expires_at, topic=topic,
                                         support_language=support_language)
    return make_lesson_token(secret, student_id=student.id, link_id=link.id,
                             expires_at=math.floor(expires_at.timestamp()))


if __name__ == "__main__":
    main()
