"""The desk's pages (GET): students, one student, one lesson, failures by day, and the exports.

Every page needs a signed-in teacher (`Teacher`); an unknown id is a 404 page. Pages only read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from app.messages import LEVELS
from app.store.models import Lesson
from app.teacher import exports, queries
from app.teacher.web import DESK_PATH, DeskError, Teacher, database, link_view, render

router = APIRouter()

FAILURE_WINDOWS_DAYS = (7, 30, 90, 365)
ExportFormat = Annotated[Literal["md", "json"], Query(alias="format")]


def not_found(what: str) -> DeskError:
    return DeskError(404, f"No such {what}", f"There is no {what} with that id. It may have been deleted.")


async def students_context(db: AsyncSession, request: Request) -> dict[str, Any]:
    """What the students page shows; also re-rendered with form errors by a refused add-student form."""
    return {
        "section": "students",
        "levels": LEVELS,
        "students": await queries.student_summaries(db),
        "archived": await queries.student_summaries(db, archived=True),
        "links": {student_id: link_view(request, link)
                  for student_id, link in (await queries.newest_links(db, now=datetime.now(UTC))).items()},
        "errors": {},
        "values": {},
    }


@router.get(DESK_PATH, response_class=HTMLResponse)
async def students_page(request: Request, teacher: Teacher) -> Response:
    async with database(request) as db:
        return render(request, "students.html", teacher, await students_context(db, request))


@router.get(f"{DESK_PATH}/students/{{student_id}}", response_class=HTMLResponse)
async def student_page(request: Request, teacher: Teacher, student_id: str) -> Response:
    async with database(request) as db:
        student = await queries.get_student(db, student_id)
        if student is None:
            raise not_found("student")
        lessons = await queries.student_lessons(db, student_id)
        links = [link_view(request, link) for link in await queries.active_links(db, student_id, now=datetime.now(UTC))]
        return render(request, "student.html", teacher, {
            "section": "students", "levels": LEVELS, "student": student, "lessons": lessons, "links": links,
            "totals": {
                "minutes": sum((summary.lesson.duration_s or 0) for summary in lessons) / 60,
                "cost_usd": sum(summary.lesson.estimated_cost_usd for summary in lessons),
            },
        })


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}", response_class=HTMLResponse)
async def lesson_page(request: Request, teacher: Teacher, lesson_id: str) -> Response:
    async with database(request) as db:
        lesson = await queries.get_lesson(db, lesson_id)
        if lesson is None:
            raise not_found("lesson")
        return render(request, "lesson.html", teacher, {
            "section": "students", "lesson": lesson, "usage_fields": exports.USAGE_FIELDS,
        })


@router.get(f"{DESK_PATH}/failures", response_class=HTMLResponse)
async def failures_page(request: Request, teacher: Teacher, days: int = 30) -> Response:
    if days not in FAILURE_WINDOWS_DAYS:
        raise DeskError(400, "No such period", f"Failures can be shown for the last "
                        f"{', '.join(map(str, FAILURE_WINDOWS_DAYS))} days.", back=f"{DESK_PATH}/failures")
    since = datetime.now(UTC) - timedelta(days=days)
    async with database(request) as db:
        failure_days = await queries.failures_since(db, since)
        return render(request, "failures.html", teacher, {
            "section": "failures", "days": days, "windows": FAILURE_WINDOWS_DAYS, "failure_days": failure_days,
            "kinds": sorted({kind for day in failure_days for kind in day.by_kind}),
        })


@router.get(f"{DESK_PATH}/lessons/{{lesson_id}}/export")
async def lesson_export(request: Request, teacher: Teacher, lesson_id: str,
                        export_format: ExportFormat = "md") -> Response:
    async with database(request) as db:
        lesson = await queries.get_lesson(db, lesson_id)
        if lesson is None:
            raise not_found("lesson")
        return export_response(lesson, export_format)


def export_response(lesson: Lesson, export_format: Literal["md", "json"]) -> Response:
    """The lesson as a download: Markdown or JSON (the API's lesson object)."""
    if export_format == "md":
        body, media_type = exports.lesson_markdown(lesson), "text/markdown; charset=utf-8"
    else:
        body, media_type = exports.lesson_json_text(lesson), "application/json"
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
            async for lesson, student_name in queries.lessons_for_export(db):
                yield exports.csv_row(lesson, student_name)

    stamp = datetime.now(UTC).strftime("%Y%m%d")
    return StreamingResponse(rows(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="lessons-{stamp}.csv"',
        "Cache-Control": "no-store",
    })
