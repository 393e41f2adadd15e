"""The teacher's desk (/teacher, server-rendered pages) and its JSON API (/api), both behind TEACHER_PASSWORD.

    auth.py           the password, the signed session and known-browser cookies, CSRF tokens
    desk_sessions.py  signed-in sessions kept in the store, so that sign-out ends one on the server
    sign_in_limit.py  wrong passwords per address or known browser, counted in the store across workers and replicas
    inputs.py         size-limited bodies and the validated fields both accept
    queries.py        what both read and write in the lesson records
    exports.py        a lesson as JSON, Markdown and CSV rows; the formatters the templates use
    web.py            what every desk page shares: the signed-in dependency, checked forms, rendering, errors
    signin.py         signing in and out
    pages.py          the desk's pages and downloads (GET)
    actions.py        the desk's forms (POST)
    api.py            the JSON API
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from app.settings import Settings
from app.teacher import actions, api, pages, signin
from app.teacher.auth import TeacherAuth
from app.teacher.exports import TEMPLATE_FILTERS
from app.teacher.sign_in_limit import SignInLimiter
from app.teacher.web import (
    DESK_PATH,
    DeskError,
    DeskOff,
    RecordsUnavailable,
    SignInRequired,
    error_page,
    off_page,
    sign_in_redirect,
    store_unavailable,
)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the desk and the API to `app`; with no TEACHER_PASSWORD they answer that they are off."""
    app.state.teacher_auth = TeacherAuth(settings.teacher_password) if settings.teacher_password else None
    app.state.sign_in_limiter = SignInLimiter()
    templates: Jinja2Templates = app.state.templates
    templates.env.filters.update(TEMPLATE_FILTERS)
    for module in (signin, pages, actions, api):
        app.include_router(module.router)

    async def on_desk_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DeskError)
        return await error_page(request, exc)

    async def on_desk_off(request: Request, exc: Exception) -> Response:
        return off_page(request)

    async def on_sign_in_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequired)
        return sign_in_redirect(exc)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, api.ApiError)
        return exc.response()

    async def on_records_unavailable(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return api.ApiError(503, "the lesson records cannot be read or changed: the database is not answering; "
                                     "try again later").response()
        return await error_page(request, store_unavailable("read or change the lesson records"))

    async def on_invalid_parameters(request: Request, exc: Exception) -> Response:
        # A bad path or query parameter (e.g. ?format=xml): named, in the API's or the desk's own form.
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0]
        field = str(first["loc"][-1])
        problem = f"{field}: {first['msg']}"
        if request.url.path.startswith("/api/"):
            return api.ApiError(422, problem, field=field).response()
        if request.url.path.startswith(DESK_PATH):
            return await error_page(request, DeskError(422, "Not understood", problem))
        return await request_validation_exception_handler(request, exc)

    app.add_exception_handler(DeskError, on_desk_error)
    app.add_exception_handler(DeskOff, on_desk_off)
    app.add_exception_handler(SignInRequired, on_sign_in_required)
    app.add_exception_handler(api.ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_invalid_parameters)
    app.add_exception_handler(RecordsUnavailable, on_records_unavailable)
