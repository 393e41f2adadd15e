"""Resume tokens: how a page that lost its socket finds its lesson again, here or on another instance.

A token is `base64url(payload).base64url(hmac_sha256(key, payload))`, the key derived from the app's link
secret (LESSON_SECRET, or the one kept in the store) under its own label, so a lesson link never passes for
a resume token nor the other way round. The payload binds the token to one lesson and carries what another
instance needs to rebuild that lesson's tutor (name, level, support language, topic: the same fields a
lesson request has), its lesson link if any (so that a resume of a lesson whose student was deleted with it is
refused in plain words), and its expiry: the lesson's longest possible end plus the grace. Whether the lesson
can still be resumed (its page has been away no longer than the grace, it has not ended) is decided by
its live state, or by the store when another instance handed it over.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import orjson

from app.errors import LessonError, ResumeElsewhere, ResumeNotYet, ResumeRefused
from app.settings import Settings
from app.withdrawal import Withdrawal

_KEY_LABEL = b"lesson-resume-token"
# The most lessons a worker remembers refusing a resume of for good (about 250 bytes each, 2.5 MB in all); past it
# the oldest is dropped, and a resume of it is checked against the store again.
MAX_REFUSED_REMEMBERED: Final = 10_000
# The most bytes of feedback (as JSON) those lessons' refusals hold, for each resume of them to give it again: a
# feedback is 1 to 3 KiB as a rule, at most 1500 tokens. Past it the oldest feedback is dropped (its refusal kept):
# the next resume of its lesson is checked against the store once again, which gives the feedback back.
MAX_FEEDBACK_BYTES_REMEMBERED: Final = 2 * 1024 * 1024

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ResumeClaim:
    """What a validly signed resume token says."""

    lesson_id: str
    name: str
    level: str
    support: str | None
    topic: str | None
    expires_at: int
    link_id: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signature(secret: str, payload: bytes) -> bytes:
    key = hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()
    return hmac.new(key, payload, hashlib.sha256).digest()


def resume_expiry(started_at: datetime, settings: Settings) -> int:
    """When a lesson's resume token stops working: past the lesson's longest run, a page's grace at its end, and
    the wait for the feedback of a lesson ended by its time limit (a page back then gets that feedback)."""
    return int(started_at.timestamp() + settings.max_lesson_seconds + settings.resume_grace_seconds
               + settings.feedback_timeout_seconds) + 1


def make_resume_token(secret: str, claim: ResumeClaim) -> str:
    payload = orjson.dumps({"l": claim.lesson_id, "n": claim.name, "v": claim.level, "s": claim.support,
                            "t": claim.topic, "e": claim.expires_at, "k": claim.link_id})
    return f"{_b64(payload)}.{_b64(_signature(secret, payload))}"


def verify_resume_token(token: str, secret: str, *, now: float) -> ResumeClaim:
    """The token's claim, or `ResumeRefused` when it is malformed, altered, signed elsewhere or expired."""
    try:
        payload_part, signature_part = token.split(".")
        payload, signature = _unb64(payload_part), _unb64(signature_part)
    except (ValueError, TypeError) as exc:
        raise ResumeRefused.invalid(f"malformed resume token {token[:16]!r}…") from exc
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        # Altered, or signed with another server's secret: either way not a lesson of this service.
        raise ResumeRefused.invalid("resume token signature does not match")
    try:
        data = orjson.loads(payload)
        claim = ResumeClaim(lesson_id=str(data["l"]), name=str(data["n"]), level=str(data["v"]),
                            support=_optional(data["s"]), topic=_optional(data["t"]), expires_at=int(data["e"]),
                            link_id=_optional(data.get("k")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ResumeRefused.invalid("resume token payload unreadable") from exc
    if claim.expires_at <= now:
        raise ResumeRefused.expired(f"resume token of lesson {claim.lesson_id!r} expired at {claim.expires_at}")
    return claim


def ended_refusal(lesson_id: str, end_reason: str, ended_with: tuple[str, Mapping[str, Any]] | None) -> ResumeRefused:
    """The refusal of a resume of a lesson that ended (not handed off) with `end_reason`: withdrawn in its teacher's
    words when they withdrew or ended it, ended otherwise; with its feedback and end if it ended with them."""
    if end_reason in set(Withdrawal):
        return ResumeRefused.withdrawn(f"lesson {lesson_id!r} ended: {end_reason}", Withdrawal(end_reason), ended_with)
    return ResumeRefused.ended(f"lesson {lesson_id!r} ended: {end_reason}", ended_with)


def _optional(value: object) -> str | None:
    return None if value is None else str(value)


class RefusedResumes:
    """The lessons this worker refused a resume of for good (ended, withdrawn, handed off or lost too long ago):
    none of them can become resumable again, so a resume of one is refused again from memory; one that ended with
    its feedback gives every resume that feedback and its end again, while it holds it (`max_feedback_bytes`).

    Without it every resume of an ended lesson is a write transaction on the store (the take-over's claim): one
    script repeating its own lesson's token would hold the records' database from every other lesson start,
    sign-in and record. What is kept is the refusal's words, never the exception (its traceback holds a socket).
    A link lesson's feedback is held with its link, until its token expires: a link its teacher withdraws since
    (`app.link_check` finds it) takes the feedback with it, and its resumes are refused as withdrawn.
    """

    def __init__(self, max_remembered: int = MAX_REFUSED_REMEMBERED,
                 max_feedback_bytes: int = MAX_FEEDBACK_BYTES_REMEMBERED) -> None:
        self.max_remembered = max_remembered
        self.max_feedback_bytes = max_feedback_bytes
        # Lesson id → (code, detail, student message) of its refusal, oldest first.
        self._refused: OrderedDict[str, tuple[str, str, str]] = OrderedDict()
        self._ended_with = _HeldFeedback(max_feedback_bytes)

    def remember(self, lesson_id: str, refusal: ResumeRefused, *, link: tuple[str, int] | None = None) -> None:
        """`link`: the lesson's link and when its resume token expires, for a lesson that has one."""
        self._refused[lesson_id] = (refusal.code, refusal.detail, refusal.student_message)
        self._refused.move_to_end(lesson_id)
        if refusal.ended_with is None:
            self._ended_with.drop(lesson_id)
        else:
            self._ended_with.hold(lesson_id, refusal.ended_with, link)
        if len(self._refused) > self.max_remembered:
            forgotten, _ = self._refused.popitem(last=False)
            self._ended_with.drop(forgotten)

    def held_links(self, now: float) -> set[str]:
        """The links of the lessons whose feedback is held and whose tokens still work (the others are let go)."""
        return self._ended_with.links(now)

    def links_withdrawn(self, withdrawn: Mapping[str, Withdrawal]) -> None:
        """A teacher withdrew these links (by id, and how): the feedback held of their lessons is let go, and their
        resumes are refused as withdrawn from now on."""
        for lesson_id, link_id in self._ended_with.of_links(withdrawn.keys()).items():
            withdrawal = withdrawn[link_id]
            self._ended_with.drop(lesson_id)
            self._refused[lesson_id] = (withdrawal.value, f"lesson {lesson_id!r} ended, and then its teacher withdrew "
                                        f"its link ({withdrawal})", withdrawal.student_message)

    @property
    def feedback_bytes(self) -> int:
        """What the feedback held takes, in bytes of JSON."""
        return self._ended_with.bytes

    def refuse_remembered(self, lesson_id: str) -> None:
        """Raise the `ResumeRefused` this worker gave a resume of `lesson_id` before, if it did, with the lesson's
        feedback and end if it ended with them. One whose feedback is no longer held is not refused here: it is
        checked against the store again, which gives the feedback back to be remembered."""
        known = self._refused.get(lesson_id)
        if known is None:
            return
        code, detail, student_message = known
        ended_with = None
        if self._ended_with.ended_with_feedback(lesson_id):
            ended_with = self._ended_with.get(lesson_id)
            if ended_with is None:
                return
        raise ResumeRefused(f"{detail} (refused before)", code=code, student_message=student_message,
                            ended_with=ended_with)


class _HeldFeedback:
    """The end reason of each remembered lesson that ended with its feedback, and the feedback itself (as JSON, at
    most `max_bytes` in all, the oldest dropped first)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._end_reasons: dict[str, str] = {}
        self._feedback: OrderedDict[str, bytes] = OrderedDict()
        # Lesson id → (its link, when its token expires), for those with a link.
        self._links: dict[str, tuple[str, int]] = {}
        self.bytes = 0

    def hold(self, lesson_id: str, ended_with: tuple[str, Mapping[str, Any]], link: tuple[str, int] | None) -> None:
        end_reason, feedback = ended_with
        self.drop(lesson_id)
        self._end_reasons[lesson_id] = end_reason
        if link is not None:
            self._links[lesson_id] = link
        held = orjson.dumps(feedback)
        self._feedback[lesson_id] = held
        self.bytes += len(held)
        while self.bytes > self.max_bytes:
            _, dropped = self._feedback.popitem(last=False)
            self.bytes -= len(dropped)

    def drop(self, lesson_id: str) -> None:
        self._end_reasons.pop(lesson_id, None)
        self._links.pop(lesson_id, None)
        dropped = self._feedback.pop(lesson_id, None)
        if dropped is not None:
            self.bytes -= len(dropped)

    def links(self, now: float) -> set[str]:
        for lesson_id in [lesson_id for lesson_id, (_, expires_at) in self._links.items() if expires_at <= now]:
            self.drop(lesson_id)
        return {link_id for link_id, _ in self._links.values()}

    def of_links(self, link_ids: Collection[str]) -> dict[str, str]:
        """Lesson id → link id, of the lessons held of `link_ids`."""
        return {lesson_id: link_id for lesson_id, (link_id, _) in self._links.items() if link_id in link_ids}

    def ended_with_feedback(self, lesson_id: str) -> bool:
        return lesson_id in self._end_reasons

    def get(self, lesson_id: str) -> tuple[str, Mapping[str, Any]] | None:
        """(end reason, feedback) of `lesson_id`, or None when its feedback is not held (any more)."""
        held = self._feedback.get(lesson_id)
        if held is None:
            return None
        feedback: Mapping[str, Any] = orjson.loads(held)
        return self._end_reasons[lesson_id], feedback


# What a resume that waited on another's look-up is told: an error made for it (never the first one's exception,
# whose traceback holds that resume's socket).
SharedAnswer = Callable[[], LessonError]


class ResumeLookups:
    """Concurrent resumes of one lesson on this worker share one look-up in the store (single-flight, keyed by the
    lesson): a burst of sockets opened at once with one token is one take-over transaction, not one each, and
    each gets the same answer.

    The first resume looks the lesson up (and, when it takes it over, sets it up to run here); those that come
    while it does wait for its answer. A refusal, for good or for now, is theirs too (a lesson running elsewhere is
    asked to hand over once, by the first). A lesson the first resume took over is that resume's to run: the others
    try again, as a page does, and find it running here. A look-up that ends otherwise (the first resume
    cancelled) tells the others to try again too.
    """

    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Future[SharedAnswer]] = {}

    async def look_up(self, lesson_id: str, take_over: Callable[[], Awaitable[T]]) -> T:
        """`take_over()`'s lesson, or its error; or, while another resume of `lesson_id` looks it up, that
        look-up's answer as an error of its own (`ResumeNotYet` when the other one took the lesson over)."""
        shared = self._in_flight.get(lesson_id)
        if shared is not None:
            # Shielded: a waiting resume cancelled must not cancel the answer the others wait for.
            raise (await asyncio.shield(shared))()
        shared = asyncio.get_running_loop().create_future()
        self._in_flight[lesson_id] = shared
        answer: SharedAnswer = _lookup_unfinished(lesson_id)
        try:
            taken = await take_over()
            answer = _taken_by_another(lesson_id)
            return taken
        except LessonError as exc:
            answer = _same_answer(exc)
            raise
        finally:
            del self._in_flight[lesson_id]
            shared.set_result(answer)


def _same_answer(exc: LessonError) -> SharedAnswer:
    detail, student_message = f"{exc.detail} (looked up for a resume at the same moment)", exc.student_message
    if isinstance(exc, ResumeRefused):
        code, ended_with = exc.code, exc.ended_with
        return lambda: ResumeRefused(detail, code=code, student_message=student_message, ended_with=ended_with)
    if isinstance(exc, ResumeElsewhere):
        # The first resume asked the worker running it to hand it over: the others only try again.
        return lambda: ResumeNotYet(detail, student_message=student_message)
    return lambda: _fresh_copy(exc, detail)


def _fresh_copy(exc: LessonError, detail: str) -> LessonError:
    """An error of `exc`'s kind with its fields (an upstream refusal's status too) and `detail`, without its traceback:
    built field by field, since not every kind is made from a detail and a student message alone."""
    copy = type(exc).__new__(type(exc), detail)
    copy.__dict__.update(exc.__dict__)
    copy.detail = detail
    return copy


def _taken_by_another(lesson_id: str) -> SharedAnswer:
    return lambda: ResumeNotYet(f"lesson {lesson_id!r} was taken over here by a resume at the same moment",
                                student_message="Reconnecting to your lesson…")


def _lookup_unfinished(lesson_id: str) -> SharedAnswer:
    return lambda: ResumeNotYet(f"the look-up of lesson {lesson_id!r} for a resume at the same moment did not finish",
                                student_message="Reconnecting to your lesson…")
