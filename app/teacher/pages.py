"""The desk's pages (GET): students, the lessons under way, one student, one lesson (and its whole transcript and
events, a page at a time), failures by day, the exports, and the API token for scripts.

Every page needs a signed-in teacher (`Teacher`; the list the lessons under way page updates itself with,
`TeacherForScript`); an unknown id is a 404 page. Pages only read.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.memory import remembered_lessons
from app.messages import LEVELS, MAX_NAME_LENGTH
from app.prompts import tutor_memory
from app.students import LessonStudent
from app.teacher import exports, queries
from app.teacher.web import (
    DESK_PATH,
    DeskError,
    Teacher,
    TeacherForScript,
    database,
    link_view,
    public_base_url,
    render,
    teacher_auth,
)

router = APIRouter()

FAILURE_WINDOWS_DAYS = (7, 30, 90, 365)
# The failures page lists this many, the newest; it counts all of them.
FAILURES_LISTED = 500
# The students page lists this many students, by name, with links to the others.
STUDENTS_PER_PAGE = 100
# And this many archived students, by name, with links to the others: browser keys make tens of thousands.
ARCHIVED_PER_PAGE = 100
# A student's page lists this many lessons, newest first, with links to the older ones.
LESSONS_PER_PAGE = 50
# A lesson's events and transcript pages list this many of them a page, in order, with links to the others.
EVENTS_PER_PAGE = 500
TURNS_PER_PAGE = 500
# A student's page also gives what their lessons of this many last days cost.
RECENT_COST_DAYS = 30
ExportFormat = Annotated[Literal["md", "json"], Query(alias="format")]


def not_found(what: str) -> DeskError:
    return DeskError(404, f"No such {what}", f"There is no {what} with that id. It may have been deleted.")


async def students_context(db: AsyncSession, request: Request, *, page: int = 1, find: str = "",
                           archived_page: int = 1) -> dict[str, Any]:
    """What the students page shows (its `page` of current students, by name, those whose name holds `find` when
    given, with their links; its `archived_page` of archived students); also re-rendered with form errors by a
    refused add-student form. A page past the last is a 404 page. However many students there are, a view reads
    (and signs the links of) a page of them."""
    now = datetime.now(UTC)
    recent_since = now - timedelta(days=RECENT_COST_DAYS)
    find = " ".join(find.split())
    count = await queries.student_count(db, name_contains=find)
    pages = max(1, math.ceil(count / STUDENTS_PER_PAGE))
    if page > pages:
        raise DeskError(404, "No such page", f"There are {count} students: {pages} page{'s' if pages != 1 else ''} "
                        "of them.")
    first = (page - 1) * STUDENTS_PER_PAGE
    students = await queries.student_summaries(db, recent_since=recent_since, name_contains=find,
                                               limit=STUDENTS_PER_PAGE, offset=first)
    archived_count = await queries.student_count(db, archived=True)
    archived_pages = max(1, math.ceil(archived_count / ARCHIVED_PER_PAGE))
    if archived_page > archived_pages:
        raise DeskError(404, "No such page", f"There are {archived_count} archived students: {archived_pages} "
                        f"page{'s' if archived_pages != 1 else ''} of them.")
    first_archived = (archived_page - 1) * ARCHIVED_PER_PAGE
    archived = await queries.student_summaries(db, archived=True, limit=ARCHIVED_PER_PAGE, offset=first_archived)
    links = await queries.newest_links(db, [summary.student.id for summary in students], now=now)
    return {
        "section": "students",
        "levels": LEVELS,
        "students": students,
        "find": find,
        "student_count": count,
        "student_pages": {"page": page, "pages": pages, "first": first + 1, "last": first + len(students)},
        "totals": await queries.all_students_totals(db, recent_since=recent_since),
        "recent_cost_days": RECENT_COST_DAYS,
        "archived": archived,
        "archived_count": archived_count,
        "archived_pages": {"page": archived_page, "pages": archived_pages, "first": first_archived + 1,
                           "last": first_archived + len(archived)},
        "links": {student_id: link_view(request, link) for student_id, link in links.items()},
        "errors": {},
        "values": {},
    }


@router.get(DESK_PATH, response_class=HTMLResponse)
async def students_page(request: Request, teacher: Teacher, page: Annotated[int, Query(ge=1)] = 1,
                        find: Annotated[str, Query(max_length=MAX_NAME_LENGTH)] = "",
                        archived_page: Annotated[int, Query(ge=1)] = 1) -> Response:
    async with database(request) as db:
        return render(request, "students.html", teacher,
                      await students_context(db, request, page=page, find=find, archived_page=archived_page))


async def student_context(db: AsyncSession, request: Request, student_id: str, *, page: int = 1) -> dict[str, Any]:
    """What one student's page shows (its `page` of lessons, newest first); also re-rendered with form errors by a
    refused make-a-link form. An unknown student, or a page past their last, is a 404 page."""
    student = await queries.get_student(db, student_id)
    if student is None:
        raise not_found("student")
    now = datetime.now(UTC)
    totals = await queries.student_totals(db, student_id, recent_since=now - timedelta(days=RECENT_COST_DAYS))
    pages = max(1, math.ceil(totals.lesson_count / LESSONS_PER_PAGE))
    if page > pages:
        raise DeskError(404, "No such page", f"{student.name} has {totals.lesson_count} lessons: "
                        f"{pages} page{'s' if pages != 1 else ''} of them.", back=f"{DESK_PATH}/students/{student_id}")
    first = (page - 1) * LESSONS_PER_PAGE
    lessons = await queries.student_lessons(db, student_id, limit=LESSONS_PER_PAGE, offset=first)
    links = [link_view(request, link) for link in await queries.active_links(db, student_id, now=now)]
    # Chosen and trimmed by the code that writes the next lesson's instructions: the page shows what they will hold.
    remembered = await remembered_lessons(request.app.state.db, LessonStudent(student_id=student_id))
    return {
        "section": "students", "levels": LEVELS, "student": student, "lessons": lessons, "links": links,
        "totals": totals, "recent_cost_days": RECENT_COST_DAYS, "memory": tutor_memory(remembered),
        "lesson_pages": {"page": page, "pages": pages, "first": first + 1, "last": first + len(lessons)},
        "errors": {}, "values": {},
    }


@router.get(f"{DESK_PATH}/students/{{student_id}}", response_class=HTMLResponse)
async def student_page(request: Request, teacher: Teacher, student_id: str,
                       page: Annotated[int, Query(ge=1)] = 1) -> Response:
    async with database(request) as db:
        return render(request, "student.html", teacher, await student_context(db, request, student_id, page=page))


# How often the lessons under way page reads its list again while it is shown.
LIVE_UPDATE_SECONDS = 10


async def live_context(request: Request) -> dict[str, Any]:
    now = datetime.now(UTC)
    async with database(request) as db:
        lessons = await queries.lessons_under_way(db, now=now, timing=request.app.state.instance_timing)
    return {"section": "live", "lessons": lessons, "now": now, "update_seconds": LIVE_UPDATE_SECONDS}


@router.get(f"{DESK_PATH}/live", response_class=HTMLResponse)
async def live_page(request: Request, teacher: Teacher) -> Response:
    """The lessons under way now, on every instance: who, since when, what they cost so far; open or end one. Its
    script keeps the list current with `live_list`."""
    return render(request, "live.html", teacher, await live_context(request))


@router.get(f"{DESK_PATH}/live/list", response_class=HTMLResponse)
async def live_list(request: Request, teacher: TeacherForScript) -> Response:
    """The list of the lessons under way alone, from the template the page includes it with: what the page's script
    reads every LIVE_UPDATE_SECONDS to update the page in place. Signed out: 401, for the script to reload the page."""
    return render(request, "_live_lessons.html", teacher, await live_context(request))


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}", response_class=HTMLResponse)
async def lesson_page(request: Request, teacher: Teacher, lesson_id: str) -> Response:
    """The lesson with its newest turns and events (`queries.LessonRecord`); when some are left out, links to the
    page of its transcript or events that holds the newest of those."""
    now = datetime.now(UTC)
    async with database(request) as db:
        record = await queries.lesson_record(db, lesson_id)
        if record is None:
            raise not_found("lesson")
        lesson = record.lesson
        timing = request.app.state.instance_timing
        under_way = await queries.is_under_way(db, lesson, now=now, timing=timing)
        lost_at = None if under_way else await queries.server_lost_at(db, lesson, now=now, timing=timing)
        return render(request, "lesson.html", teacher, {
            "section": "students", "lesson": lesson, "usage_fields": exports.USAGE_FIELDS,
            "under_way": under_way, "server_lost_at": lost_at, "now": now,
            "events_left_out": exports.events_left_out_note(len(lesson.events), record.events_left_out),
            "older_events_page": math.ceil(record.events_left_out / EVENTS_PER_PAGE),
            "turns_left_out": exports.turns_left_out_note(len(lesson.turns), record.turns_left_out),
            "earlier_turns_page": math.ceil(record.turns_left_out / TURNS_PER_PAGE),
        })


def _page_span(count: int, page: int, per_page: int, *, what: str, back: str) -> dict[str, int]:
    """Where `page` of a list of `count` lies (page, pages, first, last: counted from 1); past the last page, a 404
    page."""
    pages = max(1, math.ceil(count / per_page))
    if page > pages:
        raise DeskError(404, "No such page", f"There are {count} {what}: {pages} page{'s' if pages != 1 else ''} of "
                        "them.", back=back)
    first = (page - 1) * per_page
    return {"page": page, "pages": pages, "first": first + 1, "last": min(count, first + per_page)}


@dataclass(frozen=True, slots=True)
class _LessonList:
    """One of a lesson's long lists, shown a page at a time."""

    what: str  # its name in the template and in the words of a page past the last
    template: str
    count: Callable[[AsyncSession, str], Awaitable[int]]
    rows: Callable[..., Awaitable[Sequence[Any]]]  # (db, lesson_id, *, limit, offset)


_EVENTS = _LessonList("events", "lesson_events.html", queries.event_count, queries.lesson_events)
_TURNS = _LessonList("turns", "lesson_transcript.html", queries.turn_count, queries.lesson_turns)


async def _lesson_list_page(request: Request, teacher: Teacher, lesson_id: str, page: int, listed: _LessonList, *,
                            per_page: int) -> Response:
    async with database(request) as db:
        lesson = await queries.get_lesson(db, lesson_id)
        if lesson is None:
            raise not_found("lesson")
        span = _page_span(await listed.count(db, lesson_id), page, per_page, what=listed.what,
                          back=f"{DESK_PATH}/lessons/{lesson_id}")
        rows = await listed.rows(db, lesson_id, limit=per_page, offset=span["first"] - 1)
        return render(request, listed.template, teacher, {
            "section": "students", "lesson": lesson, listed.what: rows, "span": span})


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}/events", response_class=HTMLResponse)
async def lesson_events_page(request: Request, teacher: Teacher, lesson_id: str,
                             page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """Every event of the lesson, in the order they happened, EVENTS_PER_PAGE a page."""
    return await _lesson_list_page(request, teacher, lesson_id, page, _EVENTS, per_page=EVENTS_PER_PAGE)


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}/transcript", response_class=HTMLResponse)
async def lesson_transcript_page(request: Request, teacher: Teacher, lesson_id: str,
                                 page: Annotated[int, Query(ge=1)] = 1) -> Response:
    """The lesson's whole transcript, in order, TURNS_PER_PAGE turns a page."""
    return await _lesson_list_page(request, teacher, lesson_id, page, _TURNS, per_page=TURNS_PER_PAGE)


@router.get(f"{DESK_PATH}/failures", response_class=HTMLResponse)
async def failures_page(request: Request, teacher: Teacher, days: int = 30) -> Response:
    if days not in FAILURE_WINDOWS_DAYS:
        raise DeskError(400, "No such period", f"Failures can be shown for the last "
                        f"{', '.join(map(str, FAILURE_WINDOWS_DAYS))} days.", back=f"{DESK_PATH}/failures")
    since = datetime.now(UTC) - timedelta(days=days)
    async with database(request) as db:
        failure_days = await queries.failures_since(db, since, listed=FAILURES_LISTED)
        return render(request, "failures.html", teacher, {
            "section": "failures", "days": days, "windows": FAILURE_WINDOWS_DAYS, "failure_days": failure_days,
            "kinds": sorted({kind for day in failure_days for kind in day.by_kind}),
            "failure_count": sum(day.count for day in failure_days), "listed": FAILURES_LISTED,
        })


@router.get(f"{DESK_PATH}/api", response_class=HTMLResponse)
async def api_page(request: Request, teacher: Teacher) -> Response:
    """The API token for the teacher's scripts, and how to use it (docs/api.md)."""
    return render(request, "api.html", teacher, {
        "section": "api", "api_token": teacher_auth(request).api_token,
        "api_url": public_base_url(request).rstrip("/") + "/api/students"})


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}/export")
async def lesson_export(request: Request, teacher: Teacher, lesson_id: str,
                        export_format: ExportFormat = "md") -> Response:
    async with database(request) as db:
        record = await queries.lesson_record(db, lesson_id)
        if record is None:
            raise not_found("lesson")
        return export_response(record, export_format)


def export_response(record: queries.LessonRecord, export_format: Literal["md", "json"]) -> Response:
    """The lesson as a download: Markdown or JSON (the API's lesson object), with the newest of its turns and events
    as its page shows them: a whole download of a lesson's every event would hold the worker's event loop as its page
    did."""
    lesson, left_out = record.lesson, {"events_left_out": record.events_left_out,
                                       "turns_left_out": record.turns_left_out}
    if export_format == "md":
        body, media_type = exports.lesson_markdown(lesson, **left_out), "text/markdown; charset=utf-8"
    else:
        body, media_type = exports.lesson_json_text(lesson, **left_out), "application/json"
    return PlainTextResponse(body, media_type=media_type, headers={
        "Content-Disposition": f'attachment; filename="lesson-{lesson.id}.{export_format}"',
        "Cache-Control": "no-store",
    })


@router.get(f"{DESK_PATH}/lessons.csv")
async def lessons_csv(request: Request, teacher: Teacher) -> Response:
    sessions = request.app.state.db

    async def rows() -> Any:
        yield exports.csv_header()
        async with sessions() as db:
            async for lesson, student_name, refused_start in queries.lessons_for_export(db):
                yield exports.csv_row(lesson, student_name, refused_start)

    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="lessons-{stamp}.csv"',
        "Cache-Control": "no-store",
    })
