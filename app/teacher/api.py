"""The JSON API (docs/api.md): the desk's records for scripts, behind `Authorization: Bearer <token>`, the token
being the API token the desk shows (never counted against the address) or `TEACHER_PASSWORD` (counted).

Every answer is JSON; every refusal is `{"error": …}` with its status (and `"field"` for a bad body):
401 without the right token, 404 for an unknown id, 413 for a body over the limit (refused before it is
parsed), 422 for a body that is not the JSON object asked for, 429 after repeated wrong tokens (never for
the API token), 503 while TEACHER_PASSWORD is unset or while the database does not answer (to count a
password's attempt, or to read or change the records). A refused request writes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, TypeVar

import structlog
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from app.store.models import Link
from app.teacher import exports, queries
from app.teacher.auth import TeacherAuth, bearer_token
from app.teacher.inputs import (
    ApiNewLink,
    BodyTooLarge,
    InvalidInput,
    NewStudent,
    StudentChange,
    read_json_object,
    validate,
)
from app.teacher.pages import ExportFormat, export_response
from app.teacher.sign_in_limit import SignInLimiter, SignInUnavailable
from app.teacher.web import client_address, database, end_lesson_here, end_withdrawn_here, lesson_link_url
from app.withdrawal import Withdrawal

router = APIRouter(prefix="/api")
Model = TypeVar("Model", bound=BaseModel)
log = structlog.get_logger("lesson_relay")

# Students, a student's lessons, and a lesson's turns and events come a page at a time: browser keys make tens of
# thousands of students, a link or a browser key gathers tens of thousands of lessons, a page that keeps resuming piles
# up events, and answering all at once held the worker's event loop (every lesson's audio on it) for seconds.
PER_PAGE = 100
MOST_PER_PAGE = 500
# Past any list; a larger number is no offset a page gave (and would overflow the database's integer).
_MOST_OFFSET = 1_000_000_000
Limit = Annotated[int, Query(ge=1, le=MOST_PER_PAGE)]
Offset = Annotated[int, Query(ge=0, le=_MOST_OFFSET)]


class ApiError(Exception):
    """A refused API request: answered as `{"error": message, "field"?: field}` with `status`."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return JSONResponse(body, status_code=self.status, headers=self.headers)


async def api_teacher(request: Request) -> None:
    """Let the request through with the API token or the password as its Bearer token; `ApiError` 401/429/503
    otherwise. The API token passes at once; anything else is counted as a password attempt."""
    auth: TeacherAuth | None = request.app.state.teacher_auth
    if auth is None:
        raise ApiError(503, "the teacher API is off: set TEACHER_PASSWORD to turn it on")
    client = client_address(request)
    token = bearer_token(request.headers.get("authorization"))
    if token is None:
        log.warning("teacher_api_refused", client=client, reason="no token")
        raise _token_required()
    if auth.api_token_matches(token):
        return
    limiter: SignInLimiter = request.app.state.sign_in_limiter
    try:
        attempt = await limiter.attempt(request.app.state.db, client, datetime.now(UTC))
    except SignInUnavailable:
        raise ApiError(503, "the token cannot be checked: the database is not answering; try again later") from None
    if attempt.refused:
        log.warning("teacher_api_refused", client=client, reason="too_many_failures", retry_after_s=attempt.wait_s)
        raise ApiError(429, "too many wrong tokens from this address; try again later",
                       headers={"Retry-After": attempt.retry_after})
    if not auth.password_matches(token):
        log.warning("teacher_api_refused", client=client, reason="wrong token")
        raise _token_required()
    await limiter.passed(request.app.state.db, attempt)


def _token_required() -> ApiError:
    return ApiError(401, "an Authorization: Bearer <API token> header is required (the desk's API page shows the "
                         "token)",
                    headers={"WWW-Authenticate": "Bearer"})


Authorized = Annotated[None, Depends(api_teacher)]


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        return await read_json_object(request)
    except BodyTooLarge as exc:
        raise ApiError(413, str(exc), field="body") from None
    except InvalidInput as exc:
        raise ApiError(422, exc.problem, field=exc.field) from None


def _not_found(what: str, identifier: str) -> ApiError:
    return ApiError(404, f"no {what} with id {identifier!r}")


def _link_json(request: Request, link: Link) -> dict[str, Any]:
    return {
        "id": link.id,
        "url": lesson_link_url(request, link),
        "created_at": exports.iso(link.created_at),
        "expires_at": exports.iso(link.expires_at),
        "revoked_at": exports.iso(link.revoked_at),
        "topic": link.topic,
        "support_language": link.support_language,
    }


async def _valid_body(request: Request, model: type[Model]) -> Model:
    """The request's JSON body as `model`: 413 or 422 naming the field otherwise."""
    body = await _json_body(request)
    try:
        return validate(model, body)
    except InvalidInput as exc:
        problem = exc.problem if exc.field == "body" else f"{exc.field} {exc.problem}"
        raise ApiError(422, problem, field=exc.field) from None


@router.post("/students", status_code=201)
async def create_student(request: Request, _: Authorized) -> JSONResponse:
    new = await _valid_body(request, NewStudent)
    async with database(request) as db:
        student = await queries.add_student(db, name=new.name, level=new.level, target_language=new.target_language)
        link = await queries.create_link(db, student.id, expires_at=None)
        link_url = lesson_link_url(request, link)
    log.info("teacher_student_added", student_id=student.id, cefr_level=student.level, via="api")
    return JSONResponse(exports.student_json(student) | {"link": link_url}, status_code=201)


@router.get("/students")
async def list_students(request: Request, _: Authorized,
                        limit: Limit = PER_PAGE,
                        offset: Offset = 0) -> JSONResponse:
    """Every student, archived ones too, by name, `limit` of them from the `offset`-th; `next_offset` gives the next
    page."""
    async with database(request) as db:
        # One more than asked for: whether there is a next page, without counting them all.
        summaries = await queries.student_summaries(db, archived=None, limit=limit + 1, offset=offset)
    return JSONResponse({"next_offset": offset + limit if len(summaries) > limit else None, "students": [
        exports.student_json(summary.student) | {
            "lesson_count": summary.lesson_count,
            "refused_start_count": summary.refused_start_count,
            "minutes": round(summary.seconds / 60, 2),
            "estimated_cost_usd": summary.cost_usd,
            "last_lesson_id": summary.last_lesson_id,
            "last_lesson_at": exports.iso(summary.last_lesson_at),
        }
        for summary in summaries[:limit]
    ]})


@router.patch("/students/{student_id}")
async def change_student(request: Request, _: Authorized, student_id: str) -> JSONResponse:
    """Change the student's level, archive them (ending their lesson under way, as the desk does) or restore them."""
    change = await _valid_body(request, StudentChange)
    async with database(request) as db:
        student = await queries.get_student(db, student_id)
        if student is None:
            raise _not_found("student", student_id)
        if change.level is not None:
            student.level = change.level
        archiving = change.archived is True and student.archived_at is None
        if archiving:
            student.archived_at = datetime.now(UTC)
        elif change.archived is False:
            student.archived_at = None
        changed = exports.student_json(student)
    log.info("teacher_student_changed", student_id=student_id, cefr_level=change.level, archived=change.archived,
             via="api")
    if archiving:
        end_withdrawn_here(request, Withdrawal.STUDENT_REMOVED, student_id=student_id)
    return JSONResponse(changed)


@router.get("/students/{student_id}/links")
async def list_links(request: Request, _: Authorized, student_id: str) -> JSONResponse:
    """The student's links that still open a lesson, newest first."""
    async with database(request) as db:
        if await queries.get_student(db, student_id) is None:
            raise _not_found("student", student_id)
        links = await queries.active_links(db, student_id, now=datetime.now(UTC))
        return JSONResponse({"links": [_link_json(request, link) for link in links]})


@router.post("/students/{student_id}/links", status_code=201)
async def make_link(request: Request, _: Authorized, student_id: str) -> JSONResponse:
    new = await _valid_body(request, ApiNewLink)
    expires_at = datetime.now(UTC) + timedelta(days=new.valid_days) if new.valid_days is not None else None
    async with database(request) as db:
        if await queries.get_student(db, student_id) is None:
            raise _not_found("student", student_id)
        link = await queries.create_link(db, student_id, expires_at=expires_at, topic=new.topic,
                                         support_language=new.support_language)
        made = _link_json(request, link)
    log.info("teacher_link_made", student_id=student_id, link_id=made["id"], via="api")
    return JSONResponse(made, status_code=201)


@router.post("/students/{student_id}/links/{link_id}/revoke")
async def revoke_link(request: Request, _: Authorized, student_id: str, link_id: str) -> JSONResponse:
    """Revoke the link: it opens no lesson from now on, and its lesson under way ends, as on the desk."""
    async with database(request) as db:
        if not await queries.revoke_link(db, student_id, link_id, now=datetime.now(UTC)):
            raise _not_found("lesson link", link_id)
        link = await db.get(Link, link_id)
        assert link is not None
        revoked = _link_json(request, link)
    log.info("teacher_link_revoked", student_id=student_id, link_id=link_id, via="api")
    end_withdrawn_here(request, Withdrawal.LINK_REVOKED, student_id=student_id, link_id=link_id)
    return JSONResponse(revoked)


@router.get("/students/{student_id}/lessons")
async def list_lessons(request: Request, _: Authorized, student_id: str,
                       limit: Limit = PER_PAGE,
                       offset: Offset = 0) -> JSONResponse:
    """The student's lessons, newest first, `limit` of them from the `offset`-th; `next_offset` gives the next page."""
    async with database(request) as db:
        if await queries.get_student(db, student_id) is None:
            raise _not_found("student", student_id)
        # One more than asked for: whether there is a next page, without counting them all.
        lessons = await queries.student_lessons(db, student_id, limit=limit + 1, offset=offset)
    return JSONResponse({
        "lessons": [exports.lesson_summary_json(summary.lesson) | {"event_count": summary.event_count,
                                                                   "refused_start": summary.refused_start}
                    for summary in lessons[:limit]],
        "next_offset": offset + limit if len(lessons) > limit else None,
    })


def _seconds_so_far(row: queries.LessonUnderWay, now: datetime) -> float:
    """How long the lesson has lasted: until its hand-off for a moving one, as the desk shows it."""
    if row.moving and row.lesson.duration_s is not None:
        return round(row.lesson.duration_s, 1)
    return round(max(0.0, (now - row.lesson.started_at).total_seconds()), 1)


# Before `/lessons/{lesson_id}`, which would take "under-way" for an id.
@router.get("/lessons/under-way")
async def list_lessons_under_way(request: Request, _: Authorized) -> JSONResponse:
    """The lessons running now on every instance, as the desk's Under way page lists them, newest first."""
    now = datetime.now(UTC)
    async with database(request) as db:
        rows = await queries.lessons_under_way(db, now=now, timing=request.app.state.instance_timing)
        return JSONResponse({"lessons": [
            exports.lesson_summary_json(row.lesson) | {
                "student_name": row.student_name,
                "state": "moving" if row.moving else "ending" if row.ending else "in_lesson",
                "seconds_so_far": _seconds_so_far(row, now),
                "link": _link_json(request, row.link) if row.link is not None else None,
            }
            for row in rows
        ]})


@router.get("/lessons/{lesson_id}")
async def get_lesson(request: Request, _: Authorized, lesson_id: str) -> JSONResponse:
    """The lesson with its newest turns and events; `turns_left_out` and `events_left_out` count the older ones, which
    `/turns` and `/events` give a page at a time."""
    async with database(request) as db:
        record = await queries.lesson_record(db, lesson_id)
        if record is None:
            raise _not_found("lesson", lesson_id)
        return JSONResponse(exports.lesson_json(record.lesson, events_left_out=record.events_left_out,
                                                turns_left_out=record.turns_left_out))


async def _lesson_page(request: Request, lesson_id: str, what: str, *, limit: int, offset: int,
                       rows: Callable[..., Awaitable[Sequence[Any]]],
                       as_json: Callable[[Any], dict[str, Any]]) -> JSONResponse:
    """`limit` of a lesson's `what` from the `offset`-th, as `{what: [...], "next_offset": …}`."""
    async with database(request) as db:
        if await queries.get_lesson(db, lesson_id) is None:
            raise _not_found("lesson", lesson_id)
        # One more than asked for: whether there is a next page, without counting them all.
        found = await rows(db, lesson_id, limit=limit + 1, offset=offset)
        return JSONResponse({what: [as_json(row) for row in found[:limit]],
                             "next_offset": offset + limit if len(found) > limit else None})


@router.get("/lessons/{lesson_id}/events")
async def list_lesson_events(request: Request, _: Authorized, lesson_id: str, limit: Limit = PER_PAGE,
                             offset: Offset = 0) -> JSONResponse:
    """The lesson's events in the order they happened, `limit` of them from the `offset`-th; `next_offset` gives the
    next page."""
    return await _lesson_page(request, lesson_id, "events", limit=limit, offset=offset, rows=queries.lesson_events,
                              as_json=exports.event_json)


@router.get("/lessons/{lesson_id}/turns")
async def list_lesson_turns(request: Request, _: Authorized, lesson_id: str, limit: Limit = PER_PAGE,
                            offset: Offset = 0) -> JSONResponse:
    """The lesson's turns in order, `limit` of them from the `offset`-th; `next_offset` gives the next page."""
    return await _lesson_page(request, lesson_id, "turns", limit=limit, offset=offset, rows=queries.lesson_turns,
                              as_json=exports.turn_json)


@router.get("/lessons/{lesson_id}/export")
async def export_lesson(request: Request, _: Authorized, lesson_id: str,
                        export_format: ExportFormat = "md") -> Response:
    async with database(request) as db:
        record = await queries.lesson_record(db, lesson_id)
        if record is None:
            raise _not_found("lesson", lesson_id)
        return export_response(record, export_format)


@router.post("/lessons/{lesson_id}/end", status_code=202)
async def end_lesson(request: Request, _: Authorized, lesson_id: str) -> JSONResponse:
    """End a lesson under way, as the desk's End lesson does; 409 for a lesson that has ended."""
    async with database(request) as db:
        outcome = await queries.request_end(db, lesson_id, now=datetime.now(UTC),
                                            timing=request.app.state.instance_timing)
        lesson = await queries.get_lesson(db, lesson_id) if outcome == "already_ended" else None
    if outcome is None:
        raise _not_found("lesson", lesson_id)
    if lesson is not None:
        raise ApiError(409, f"lesson {lesson_id!r} has already ended ({lesson.end_reason}): nothing was changed")
    log.info("teacher_lesson_ended", lesson_id=lesson_id, moving=outcome == "ended", lost=outcome == "ended_lost",
             via="api")
    # Ended in the records already, or by this worker: else the worker running it ends it at its next check.
    ended = outcome in ("ended", "ended_lost") or end_lesson_here(request, lesson_id) is not None
    ending = "now" if ended else "at_next_check"
    return JSONResponse({"id": lesson_id, "ending": ending}, status_code=202)


@router.delete("/students/{student_id}", status_code=204)
async def delete_student(request: Request, _: Authorized, student_id: str) -> Response:
    async with database(request) as db:
        if not await queries.delete_student(db, student_id):
            raise _not_found("student", student_id)
    log.info("teacher_student_deleted", student_id=student_id, via="api")
    end_withdrawn_here(request, Withdrawal.STUDENT_REMOVED, student_id=student_id)
    return Response(status_code=204)
