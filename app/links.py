"""Signed lesson links: when `LESSON_SECRET` is set, only a teacher's link opens a lesson.

A token is `base64url(payload).base64url(hmac_sha256(secret, payload))`, the payload holding the
student's name, level and expiry. Make one with:

    LESSON_SECRET=… python -m app.links --name Ana --level A1 --hours 48 --base-url https://lessons.example.org
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import orjson
from pydantic import ValidationError

from app.messages import LEVELS, LessonRequest
from app.settings import load_settings


class LinkError(ValueError):
    """The lesson link is missing, altered or expired; `student_message` says so in plain words."""

    def __init__(self, detail: str, student_message: str) -> None:
        super().__init__(detail)
        self.student_message = student_message


@dataclass(frozen=True)
class LessonLink:
    name: str
    level: str
    expires_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: bytes) -> bytes:
    return hmac.new(secret.encode(), payload, hashlib.sha256).digest()


def make_lesson_token(secret: str, *, name: str, level: str, expires_at: int) -> str:
    request = LessonRequest.model_validate({"name": name, "level": level})
    payload = orjson.dumps({"n": request.name, "l": request.level, "e": expires_at})
    return f"{_b64(payload)}.{_b64(_signature(secret, payload))}"


def verify_lesson_token(token: str, secret: str, *, now: float) -> LessonLink:
    """The link's contents, or `LinkError` when it is missing, altered or expired."""
    if not token:
        raise LinkError("no lesson link token", "This lesson needs a link from your teacher.")
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except (ValueError, TypeError) as exc:
        raise LinkError(f"malformed lesson token {token[:20]!r}…", "This lesson link is not valid.") from exc
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        raise LinkError("lesson token signature does not match", "This lesson link is not valid.")
    try:
        data = orjson.loads(payload)
        link = LessonLink(name=str(data["n"]), level=str(data["l"]), expires_at=int(data["e"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise LinkError("lesson token payload unreadable", "This lesson link is not valid.") from exc
    if link.expires_at <= now:
        raise LinkError(f"lesson token expired at {link.expires_at}",
                        "This lesson link has expired. Ask your teacher for a new one.")
    return link


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
    parser = argparse.ArgumentParser(prog="python -m app.links", description="Print a signed lesson link.")
    parser.add_argument("--name", required=True, help="the student's name, as the tutor will say it")
    parser.add_argument("--level", default="A1", choices=LEVELS)
    parser.add_argument("--hours", type=_hours, default=24.0,
                        help=f"how long the link stays valid: above 0, at most {MAX_LINK_HOURS}")
    parser.add_argument("--base-url", type=_base_url, default="http://localhost:8000",
                        help="the lesson page's public address")
    args = parser.parse_args(argv)
    settings = load_settings()
    if settings.lesson_secret is None:
        parser.error("LESSON_SECRET is not set: links are only needed (and only checked) when it is")
    try:
        token = make_lesson_token(settings.lesson_secret.get_secret_value(), name=args.name, level=args.level,
                                  expires_at=int(time.time() + args.hours * 3600))
    except ValidationError as exc:
        parser.error(f"--name {args.name!r}: {exc.errors()[0]['msg']}")
    print(f"{args.base_url}/?{urlencode({'token': token})}")


if __name__ == "__main__":
    main()
