"""The desk's forms (POST): add a student, change their level, archive, restore, delete, make and revoke links,
end a lesson under way, and delete a wrong correction or word from a lesson's feedback.

Each reads its form through `checked_form` (size and CSRF first), validates it, writes in one
transaction and redirects (303) to the page that shows the result. A refused form writes nothing: a bad
field re-renders the page with the field named (422), an unknown id is a 404 page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from app.logging import quoted
from app.messages import MAX_NAME_LENGTH
from app.teacher import queries
from app.teacher.inputs import MAX_LINK_DAYS, InvalidInput, LevelChange, NewLink, NewStudent, validate, whole_number
from app.teacher.pages import STUDENTS_PER_PAGE, not_found, student_context, students_context
from app.teacher.web import (
    DESK_PATH,
    DeskError,
    Teacher,
    checked_form,
    database,
    end_lesson_here,
    end_withdrawn_here,
    redirect,
    render,
)
from app.withdrawal import Withdrawal

router = APIRouter()
log = structlog.get_logger("lesson_relay")

# Past any feedback list's length: such an entry is one that changed since the page was shown.
_MAX_FEEDBACK_INDEX = 999


# More pages of students than any school has: a longer number is no page the list showed.
_MOST_LIST_PAGES = 999_999


def _student_path(student_id: str) -> str:
    return f"{DESK_PATH}/students/{student_id}"


def _error_text(exc: InvalidInput, form: type[BaseModel]) -> str:
    """What the page says of a refused field of `form`: by its label, shown under it; of a field the form does
    not have (a hand-made request), that it does not, in the summary above the form."""
    if exc.field in form.model_fields:
        return f"{exc.field.replace('_', ' ').capitalize()} {exc.problem}."
    return f"The form held a field it does not have ({quoted(exc.field)!r}): reload the page and send it again."


@dataclass(frozen=True)
class ListPosition:
    """The page of the students list a form was sent from, and the search (`find`) that page showed."""

    page: int
    find: str


def list_position(form: dict[str, str], *, refused: str, back: str) -> ListPosition | None:
    """Where on the students list `form` was sent from (its `list_page` and `list_find`), or None when not from the
    list. A bad value is a 422 page headed `refused` that names the field, raised before anything is written."""
    if "list_page" not in form and "list_find" not in form:
        return None
    page_text = form.get("list_page", "1")
    page = whole_number(page_text, most=_MOST_LIST_PAGES)
    if page is None or page < 1:
        raise DeskError(422, refused, f"list_page must be a page number of the students list, from 1 to "
                        f"{_MOST_LIST_PAGES}, not {quoted(page_text)!r}. Go back to the list and try again.",
                        back=back)
    find = form.get("list_find", "")
    if len(find) > MAX_NAME_LENGTH:
        raise DeskError(422, refused, f"list_find must be at most {MAX_NAME_LENGTH} characters, as the list's "
                        "search is. Go back to the list and try again.", back=back)
    return ListPosition(page, " ".join(find.split()))


async def back_to_list(db: AsyncSession, position: ListPosition | None, notice: str) -> Response | None:
    """A redirect to the students list at `position` (its last page instead when the action left fewer pages),
    announcing `notice`; None when the form was not sent from the list."""
    if position is None:
        return None
    return redirect(DESK_PATH, notice=notice, page=await _shown_page(db, position), find=position.find)


async def _shown_page(db: AsyncSession, position: ListPosition) -> int:
    """`position`'s page of the list, or its last page when there are fewer now."""
    count = await queries.student_count(db, name_contains=position.find)
    return min(position.page, max(1, math.ceil(count / STUDENTS_PER_PAGE)))


@router.post(f"{DESK_PATH}/students")
async def add_student(request: Request, teacher: Teacher) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="The student was not added", back=DESK_PATH)
    fields = {key: value for key, value in form.items()
              if value.strip() != "" and key not in ("list_page", "list_find")}
    async with database(request) as db:
        try:
            new = validate(NewStudent, fields)
        except InvalidInput as exc:
            # Shown again on the page of the list, of the search, it was sent from.
            page, find = (await _shown_page(db, from_list), from_list.find) if from_list else (1, "")
            context = await students_context(db, request, page=page, find=find)
            context |= {"errors": {exc.field: _error_text(exc, NewStudent)}, "values": form}
            return render(request, "students.html", teacher, context, status_code=422)
        student = await queries.add_student(db, name=new.name, level=new.level,
                                            target_language=new.target_language)
        await queries.create_link(db, student.id, expires_at=None)
    log.info("teacher_student_added", student_id=student.id, cefr_level=student.level)
    return redirect(_student_path(student.id), notice="student_added")


@router.post(f"{DESK_PATH}/students/{{student_id}}/level")
async def change_level(request: Request, teacher: Teacher, student_id: str) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="Level not changed", back=_student_path(student_id))
    try:
        change = validate(LevelChange, {"level": form.get("level", "")})
    except InvalidInput as exc:
        raise DeskError(422, "Level not changed", f"The level {exc.problem}.", back=_student_path(student_id)) \
            from None
    async with database(request) as db:
        if not await queries.set_level(db, student_id, change.level):
            raise not_found("student")
        # Changed from the students list: back to the same page of it, of the same search.
        back = await back_to_list(db, from_list, "level_changed")
    log.info("teacher_level_changed", student_id=student_id, cefr_level=change.level)
    return back or redirect(_student_path(student_id), notice="level_changed")


@router.post(f"{DESK_PATH}/students/{{student_id}}/archive")
async def archive_student(request: Request, teacher: Teacher, student_id: str) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="Not archived", back=_student_path(student_id))
    async with database(request) as db:
        if not await queries.set_archived(db, student_id, archived_at=datetime.now(UTC)):
            raise not_found("student")
        back = await back_to_list(db, from_list, "archived")
    log.info("teacher_student_archived", student_id=student_id)
    end_withdrawn_here(request, Withdrawal.STUDENT_REMOVED, student_id=student_id)
    return back or redirect(DESK_PATH, notice="archived")


@router.post(f"{DESK_PATH}/students/{{student_id}}/restore")
async def restore_student(request: Request, teacher: Teacher, student_id: str) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="Not restored", back=_student_path(student_id))
    async with database(request) as db:
        if not await queries.set_archived(db, student_id, archived_at=None):
            raise not_found("student")
        back = await back_to_list(db, from_list, "restored")
    return back or redirect(_student_path(student_id), notice="restored")


@router.post(f"{DESK_PATH}/students/{{student_id}}/delete")
async def delete_student(request: Request, teacher: Teacher, student_id: str) -> Response:
    form = await checked_form(request, teacher)
    if form.get("confirm") != "yes":
        raise DeskError(422, "Not deleted", "Tick the box that confirms the deletion, then press Delete again.",
                        back=_student_path(student_id))
    async with database(request) as db:
        if not await queries.delete_student(db, student_id):
            raise not_found("student")
    log.info("teacher_student_deleted", student_id=student_id)
    end_withdrawn_here(request, Withdrawal.STUDENT_REMOVED, student_id=student_id)
    return redirect(DESK_PATH, notice="deleted")


@router.post(f"{DESK_PATH}/students/{{student_id}}/links")
async def make_link(request: Request, teacher: Teacher, student_id: str) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="No link made", back=_student_path(student_id))
    fields = {key: value for key, value in form.items()
              if value.strip() != "" and key not in ("list_page", "list_find")}
    valid_days = fields.pop("valid_days", "").strip()
    async with database(request) as db:
        if await queries.get_student(db, student_id) is None:
            raise not_found("student")
        errors: dict[str, str] = {}
        days = whole_number(valid_days, most=MAX_LINK_DAYS) if valid_days else None
        if valid_days and not (days is not None and days >= 1):
            errors["valid_days"] = (f"Valid for (days) must be a whole number from 1 to {MAX_LINK_DAYS}, "
                                    "or blank for a link that works until you revoke it.")
        try:
            new = validate(NewLink, fields)
        except InvalidInput as exc:
            errors[exc.field] = _error_text(exc, NewLink)
        if errors:
            context = await student_context(db, request, student_id)
            context |= {"errors": errors, "values": form}
            return render(request, "student.html", teacher, context, status_code=422)
        expires_at = datetime.now(UTC) + timedelta(days=days) if days is not None else None
        await queries.create_link(db, student_id, expires_at=expires_at, topic=new.topic,
                                  support_language=new.support_language)
        back = await back_to_list(db, from_list, "link_created")
    return back or redirect(_student_path(student_id), notice="link_created")


@router.post(f"{DESK_PATH}/students/{{student_id}}/links/{{link_id}}/revoke")
async def revoke_link(request: Request, teacher: Teacher, student_id: str, link_id: str) -> Response:
    form = await checked_form(request, teacher)
    from_list = list_position(form, refused="Link not revoked", back=_student_path(student_id))
    async with database(request) as db:
        if not await queries.revoke_link(db, student_id, link_id, now=datetime.now(UTC)):
            raise not_found("lesson link")
        back = await back_to_list(db, from_list, "link_revoked")
    log.info("teacher_link_revoked", student_id=student_id, link_id=link_id)
    end_withdrawn_here(request, Withdrawal.LINK_REVOKED, student_id=student_id, link_id=link_id)
    return back or redirect(_student_path(student_id), notice="link_revoked")


@router.post(f"{DESK_PATH}/lessons/{{lesson_id}}/end")
async def end_lesson(request: Request, teacher: Teacher, lesson_id: str) -> Response:
    """End a lesson under way: at once when this worker runs it, or in the records when it was moving to another
    server or its server was lost, at its worker's next check otherwise. The form comes from the lessons under way
    (`back` = "live", where it goes back to) or from the lesson's page."""
    form = await checked_form(request, teacher)
    back = f"{DESK_PATH}/live" if form.get("back") == "live" else f"{DESK_PATH}/lessons/{lesson_id}"
    async with database(request) as db:
        outcome = await queries.request_end(db, lesson_id, now=datetime.now(UTC),
                                            timing=request.app.state.instance_timing)
    if outcome is None:
        raise not_found("lesson")
    if outcome == "already_ended":
        return redirect(f"{DESK_PATH}/lessons/{lesson_id}", notice="lesson_already_ended")
    log.info("teacher_lesson_ended", lesson_id=lesson_id, moving=outcome == "ended", lost=outcome == "ended_lost")
    if outcome == "ended":
        return redirect(back, notice="lesson_ended_moving")
    if outcome == "ended_lost":
        return redirect(back, notice="lesson_ended_lost")
    here = end_lesson_here(request, lesson_id)
    notice = {"told": "lesson_ended", "ending_already": "lesson_ending_already", None: "lesson_ending"}[here]
    return redirect(back, notice=notice)


@router.post(f"{DESK_PATH}/lessons/{{lesson_id}}/feedback/{{kind}}/{{index}}/delete")
async def delete_feedback_entry(request: Request, teacher: Teacher, lesson_id: str, kind: str, index: str) -> Response:
    """Delete a correction or a word the model got wrong, so it does not follow the student into memory."""
    form = await checked_form(request, teacher)
    position = whole_number(index, most=_MAX_FEEDBACK_INDEX)
    if kind not in queries.FEEDBACK_LISTS or position is None:
        raise not_found("feedback entry")
    lesson_path = f"{DESK_PATH}/lessons/{lesson_id}"
    async with database(request) as db:
        outcome = await queries.delete_feedback_entry(db, lesson_id, kind, position,
                                                      form.get(queries.FEEDBACK_LISTS[kind], ""))
    if outcome is None:
        raise not_found("lesson")
    if outcome == "changed":
        raise DeskError(409, "Not deleted", "This feedback changed since the page was shown. "
                        "Reload the lesson and delete the entry again.", back=lesson_path)
    log.info("teacher_feedback_entry_deleted", lesson_id=lesson_id, kind=kind, index=position)
    return redirect(lesson_path, notice="correction_deleted" if kind == "corrections" else "word_deleted")
