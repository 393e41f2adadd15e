"""The plumbing every desk page shares: who is signed in, checked forms, rendering, and error pages.

Pages depend on `signed_in` (a signed cookie whose session the store still holds, else a redirect to the
sign-in page; a store that does not answer is a 503 page, never an open desk); what their scripts fetch depends
on `signed_in_for_script` (the same check, answering 401 instead of redirecting). Pages read POST bodies only
through `checked_form`, which refuses an oversized body (413) and a missing or wrong CSRF token (403) before
a field is looked at, so a refused form writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import structlog
from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.links import lesson_url, make_lesson_token
from app.live_lessons import LiveLessons
from app.settings import Settings
from app.store.database import STORE_ERRORS, error_reason
from app.store.models import Link
from app.teacher import desk_sessions
from app.teacher.auth import (
    CSRF_FIELD,
    KNOWN_BROWSER_COOKIE,
    KNOWN_BROWSER_MAX_AGE_S,
    SESSION_COOKIE,
    SESSION_MAX_AGE_S,
    DeskSession,
    TeacherAuth,
    csrf_matches,
)
from app.teacher.inputs import BodyTooLarge, InvalidInput, read_form
from app.withdrawal import Withdrawal

log = structlog.get_logger("lesson_relay")

DESK_PATH = "/teacher"
SIGN_IN_PATH = f"{DESK_PATH}/signin"
_UNCHECKED = object()

# What a page may announce after a redirect; the query carries only the key, never text to reflect.
NOTICES = {
    "student_added": "Student added. Their lesson link is below.",
    "level_changed": "Level changed.",
    "archived": "Student archived: their links open no lesson, and a lesson under way ends within seconds.",
    "restored": "Student restored.",
    "deleted": "Student and all their records deleted; a lesson of theirs under way ends within seconds.",
    "link_created": "New lesson link made.",
    "link_revoked": "Lesson link revoked: it no longer opens a lesson, and a lesson under way ends within seconds.",
    "lesson_ended": ("Lesson ended: the student was told that you ended it, and gets the lesson's feedback if the "
                     "tutor had greeted them."),
    "lesson_ending": "Lesson ending: the server running it ends it within seconds; the student is told that you ended "
                     "it, and gets the lesson's feedback if the tutor had greeted them.",
    "lesson_ending_already": "This lesson was already ending (the student pressed End, or its time was up): it ends "
                             "with its feedback as it was going to.",
    "lesson_ended_moving": "Lesson ended: it was moving to another server, and will not go on there.",
    "lesson_ended_lost": "Lesson ended: the server running it had stopped answering, and it will not go on on "
                         "another.",
    "lesson_already_ended": "This lesson had already ended: nothing was changed.",
    "correction_deleted": "Correction deleted: it no longer follows the student into their next lessons.",
    "word_deleted": "Word deleted: it no longer follows the student into their next lessons.",
    "signed_out": "Signed out on this browser. Any other browser signed in to the desk stays signed in.",
    "signed_out_everywhere": "Signed out on every browser.",
}


class DeskError(Exception):
    """A page-level refusal: shown as the error page with `status`, `heading`, `problem` and `headers`."""

    def __init__(self, status: int, heading: str, problem: str, *, back: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {heading}: {problem}")
        self.status = status
        self.heading = heading
        self.problem = problem
        self.back = back
        self.headers = headers or {}


class DeskOff(Exception):
    """`TEACHER_PASSWORD` is unset: every desk page says how to turn the desk on."""


class SignInRequired(Exception):
    """No signed-in session: the page redirects to the sign-in form, coming back to `next_path` after."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def teacher_auth(request: Request) -> TeacherAuth:
    auth: TeacherAuth | None = request.app.state.teacher_auth
    if auth is None:
        raise DeskOff()
    return auth


def cookie_session(request: Request, auth: TeacherAuth) -> DeskSession | None:
    """The session the cookie holds, as signed: whether a signed-in one was signed out since, it does not say."""
    return auth.decode(request.cookies.get(SESSION_COOKIE), now=time.time())


async def current_session(request: Request, auth: TeacherAuth) -> DeskSession | None:
    """The cookie's session, or None when it is signed in and the store no longer holds it (signed out, expired).

    Read once per request. `DeskError` 503 when the store does not answer (the rest of the request, its error
    page included, then takes it as signed out)."""
    checked = getattr(request.state, "desk_session", _UNCHECKED)
    if checked is not _UNCHECKED:
        assert checked is None or isinstance(checked, DeskSession)
        return checked
    session = cookie_session(request, auth)
    request.state.desk_session = None  # what the rest of the request sees if the store does not answer
    if session is not None and session.session_id is not None:
        try:
            still_open = await desk_sessions.is_open(request.app.state.db, session.session_id, datetime.now(UTC))
        except desk_sessions.DeskSessionsUnavailable as exc:
            raise store_unavailable("check who is signed in") from exc
        session = session if still_open else None
    request.state.desk_session = session
    return session


async def signed_in(request: Request, auth: Annotated[TeacherAuth, Depends(teacher_auth)]) -> DeskSession:
    """The signed-in session, or `SignInRequired` (a redirect to the sign-in page)."""
    session = await current_session(request, auth)
    if session is None or not session.signed_in:
        raise SignInRequired(request.url.path)
    return session


def store_unavailable(doing: str) -> DeskError:
    """The 503 page of a desk request whose session the store did not answer for."""
    return DeskError(503, "Desk unavailable", f"The desk cannot {doing} because its database is not answering. "
                     "Try again in a minute.")


async def signed_in_for_script(request: Request,
                               auth: Annotated[TeacherAuth, Depends(teacher_auth)]) -> DeskSession:
    """The signed-in session of a request a desk page's script makes, or `DeskError` 401: a redirect would hand the
    script the sign-in form as its answer, where the 401 tells it to reload its page (which asks to sign in)."""
    session = await current_session(request, auth)
    if session is None or not session.signed_in:
        raise DeskError(401, "Signed out", "You are not signed in to the desk, or your session has expired. "
                        "Sign in again.", back=SIGN_IN_PATH)
    return session


Teacher = Annotated[DeskSession, Depends(signed_in)]
TeacherForScript = Annotated[DeskSession, Depends(signed_in_for_script)]


async def checked_form(request: Request, session: DeskSession | None) -> dict[str, str]:
    """The POSTed form once its size and CSRF token are good; `DeskError` otherwise, nothing read further."""
    try:
        form = await read_form(request)
    except BodyTooLarge as exc:
        raise DeskError(413, "Form too large", "That form was larger than the desk accepts.") from exc
    except InvalidInput as exc:
        raise DeskError(400, "Form not readable", "That form could not be read. Reload the page and try again.") \
            from exc
    if not csrf_matches(session, form.get(CSRF_FIELD)):
        raise DeskError(403, "Form refused", "This form expired or did not come from the desk. "
                        "Reload the page and send it again.")
    form.pop(CSRF_FIELD)
    return form


@dataclass(frozen=True)
class LinkView:
    """A lesson link as the desk shows it: the full URL to send the student."""

    id: str
    url: str
    expires_at: datetime | None
    topic: str | None
    support_language: str | None


def lesson_link_url(request: Request, link: Link) -> str:
    """The full lesson URL for `link`: PUBLIC_URL when set, else the address this request came to.

    Starlette takes the request's address from a Host header only when it is a valid host; the pages
    show the URL autoescaped all the same.
    """
    base = public_base_url(request)
    expires_at = int(link.expires_at.timestamp()) if link.expires_at is not None else None
    token = make_lesson_token(request.app.state.link_secret, student_id=link.student_id, link_id=link.id,
                              expires_at=expires_at)
    return lesson_url(base, token)


def public_base_url(request: Request) -> str:
    """PUBLIC_URL when set, else the address this request came to."""
    settings: Settings = request.app.state.settings
    return str(settings.public_url) if settings.public_url else str(request.base_url)


def link_view(request: Request, link: Link) -> LinkView:
    return LinkView(id=link.id, url=lesson_link_url(request, link), expires_at=link.expires_at, topic=link.topic,
                    support_language=link.support_language)


def end_withdrawn_here(request: Request, withdrawal: Withdrawal, *, student_id: str,
                       link_id: str | None = None) -> None:
    """End at once the lessons this worker runs of the withdrawn link (or of every link of the student); those
    running elsewhere end at their worker's next check (`app.link_check`)."""
    live: LiveLessons = request.app.state.live_lessons
    live.withdraw(withdrawal, link_id=link_id, student_id=None if link_id is not None else student_id)


def end_lesson_here(request: Request, lesson_id: str) -> Literal["told", "ending_already"] | None:
    """End at once the lesson `lesson_id` if this worker runs it (a teacher ended it): "told" when it does,
    "ending_already" when it runs here but is already ending on its own (its feedback on its way), None when it runs
    elsewhere, where it ends at its worker's next check (`app.link_check`)."""
    live: LiveLessons = request.app.state.live_lessons
    if live.withdraw(Withdrawal.TEACHER_ENDED, lesson_id=lesson_id):
        return "told"
    return "ending_already" if live.get(lesson_id) is not None else None


class RecordsUnavailable(Exception):
    """A desk or API request could not read or change the lesson records: the database did not answer (logged as
    `teacher_records_unavailable`); answered with 503, nothing changed."""


def database(request: Request) -> AbstractAsyncContextManager[AsyncSession]:
    """One transaction on the lesson records: committed when the block ends, rolled back if it raises;
    `RecordsUnavailable` when the database does not answer."""
    return _transaction(request.app.state.db, request.url.path)


@asynccontextmanager
async def _transaction(sessions: async_sessionmaker[AsyncSession], path: str) -> AsyncIterator[AsyncSession]:
    try:
        async with sessions() as db, db.begin():
            yield db
    except STORE_ERRORS as exc:
        log.error("teacher_records_unavailable", path=path, error=error_reason(exc))
        raise RecordsUnavailable(path) from exc


def render(request: Request, template: str, session: DeskSession | None, context: dict[str, Any] | None = None,
           *, status_code: int = 200) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    notice = NOTICES.get(request.query_params.get("notice", ""))
    base = {
        "signed_in": session is not None and session.signed_in,
        "csrf_token": session.csrf_token if session else "",
        "notice": notice,
    }
    response = templates.TemplateResponse(request, f"teacher/{template}", base | (context or {}),
                                          status_code=status_code)
    # Desk pages hold students' names and links: never kept by a shared cache or the back-forward cache.
    response.headers["Cache-Control"] = "no-store"
    return response


def redirect(path: str, *, notice: str | None = None, page: int | None = None,
             find: str | None = None) -> RedirectResponse:
    """A 303 to `path` (a desk path), at its `page` of a list when given, of the names holding `find` when given,
    announcing `notice` (a key of NOTICES)."""
    assert notice is None or notice in NOTICES
    query = {key: value for key, value in (("page", page), ("find", find or None), ("notice", notice))
             if value is not None}
    return RedirectResponse(f"{path}?{urlencode(query)}" if query else path, status_code=303)


def set_session_cookie(request: Request, response: Response, auth: TeacherAuth, session: DeskSession) -> None:
    response.set_cookie(
        SESSION_COOKIE, auth.encode(session), max_age=SESSION_MAX_AGE_S, path=DESK_PATH,
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )


def set_known_browser_cookie(request: Request, response: Response, auth: TeacherAuth, browser_id: str) -> None:
    # Sent only with the sign-in form: all it does is let its sign-ins be counted by themselves.
    response.set_cookie(
        KNOWN_BROWSER_COOKIE, auth.encode_known_browser(browser_id, now=time.time()),
        max_age=KNOWN_BROWSER_MAX_AGE_S, path=SIGN_IN_PATH, httponly=True, samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path=DESK_PATH, httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")


def safe_next(path: str | None) -> str:
    """Where to go after signing in: a desk path only, so the sign-in form cannot redirect off-site."""
    if path and (path == DESK_PATH or path.startswith(DESK_PATH + "/")) and "//" not in path and "\\" not in path:
        return path
    return DESK_PATH


async def error_page(request: Request, error: DeskError) -> HTMLResponse:
    auth: TeacherAuth | None = request.app.state.teacher_auth
    session: DeskSession | None = None
    # The desk's 503s all mean the store is not answering: not asked again, the page is shown as to a visitor.
    if auth is not None and error.status != 503:
        try:
            session = await current_session(request, auth)
        except DeskError:
            session = None
    page = render(request, "error.html", session, {
        "heading": error.heading, "problem": error.problem, "back": error.back,
    }, status_code=error.status)
    page.headers.update(error.headers)
    return page


def off_page(request: Request) -> HTMLResponse:
    return render(request, "off.html", None, status_code=503)


def sign_in_redirect(error: SignInRequired) -> RedirectResponse:
    return RedirectResponse(f"{DESK_PATH}/signin?{urlencode({'next': safe_next(error.next_path)})}", status_code=303)
