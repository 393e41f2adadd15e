"""Signing in to the desk and out of it.

The sign-in form is itself CSRF-protected: its GET sets a signed, not-yet-signed-in session cookie
holding the token the form carries. A good password replaces it with a signed-in session and a new
token; a wrong one counts against the address (`SignInLimiter`, in the store) and is logged without the
password. When the store cannot count the attempt, the form is refused (503), never let through unchecked.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.teacher.auth import DeskSession, TeacherAuth
from app.teacher.sign_in_limit import SignInLimiter, SignInUnavailable
from app.teacher.web import (
    DESK_PATH,
    DeskError,
    checked_form,
    clear_session_cookie,
    client_address,
    current_session,
    redirect,
    render,
    safe_next,
    set_session_cookie,
    teacher_auth,
)

router = APIRouter()
log = structlog.get_logger("lesson_relay")

Auth = Annotated[TeacherAuth, Depends(teacher_auth)]


@router.get(f"{DESK_PATH}/signin", response_class=HTMLResponse)
async def sign_in_page(request: Request, auth: Auth, next: str = DESK_PATH) -> Response:
    session = current_session(request, auth)
    if session is not None and session.signed_in:
        return redirect(safe_next(next))
    if session is None:
        session = DeskSession.new(signed_in=False, now=time.time())
    response = render(request, "signin.html", session, {"next": safe_next(next)})
    set_session_cookie(request, response, auth, session)
    return response


@router.post(f"{DESK_PATH}/signin", response_class=HTMLResponse)
async def sign_in(request: Request, auth: Auth) -> Response:
    session = current_session(request, auth)
    form = await checked_form(request, session)
    assert session is not None  # checked_form refuses a form without a session
    client = client_address(request)
    limiter: SignInLimiter = request.app.state.sign_in_limiter
    try:
        attempt = await limiter.attempt(request.app.state.db, client, datetime.now(UTC))
    except SignInUnavailable as exc:
        raise DeskError(503, "Sign-in unavailable",
                        "The desk cannot check sign-in attempts because its database is not answering. "
                        "Try again in a minute.", back=f"{DESK_PATH}/signin") from exc
    if attempt.refused:
        log.warning("teacher_sign_in_refused", client=client, reason="too_many_failures",
                    retry_after_s=attempt.wait_s)
        minutes = math.ceil(attempt.wait_s / 60)
        raise DeskError(429, "Too many attempts",
                        f"Too many wrong passwords from your address. Try again in {minutes} minute"
                        f"{'s' if minutes != 1 else ''}.", back=f"{DESK_PATH}/signin",
                        headers={"Retry-After": attempt.retry_after})
    next_path = safe_next(form.get("next"))
    if not auth.password_matches(form.get("password", "")):
        log.warning("teacher_sign_in_failed", client=client)
        return render(request, "signin.html", session, {"next": next_path, "problem": "That password is not right."},
                      status_code=401)
    await limiter.passed(request.app.state.db, attempt)
    log.info("teacher_signed_in", client=client)
    response: Response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, auth, DeskSession.new(signed_in=True, now=time.time()))
    return response


@router.post(f"{DESK_PATH}/signout")
async def sign_out(request: Request, auth: Auth) -> Response:
    await checked_form(request, current_session(request, auth))
    response = redirect(f"{DESK_PATH}/signin")
    clear_session_cookie(request, response)
    return response
