"""Signing in to the desk and out of it.

The sign-in form is itself CSRF-protected: its GET sets a signed, not-yet-signed-in session cookie
holding the token the form carries. A good password records a new session in the store (desk_sessions.py)
and replaces the cookie with one naming it, with a new token, and marks the browser as known (a signed
cookie sent only to this form); a wrong one counts against the known browser or else the address
(`SignInLimiter`, in the store) and is logged without the password. Signing out ends this browser's session
in the store, so no copy of its cookie opens the desk again; other browsers stay signed in, unless the teacher
signs out everywhere. When the store does not answer, the form is refused (503), never let through unchecked.
"""

from __future__ import annotations

import math
import secrets
import time
from datetime import UTC, datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from app.teacher import desk_sessions
from app.teacher.auth import KNOWN_BROWSER_COOKIE, DeskSession, TeacherAuth
from app.teacher.sign_in_limit import SignInLimiter, SignInUnavailable
from app.teacher.web import (
    DESK_PATH,
    SIGN_IN_PATH,
    DeskError,
    Teacher,
    checked_form,
    clear_session_cookie,
    client_address,
    cookie_session,
    current_session,
    redirect,
    render,
    safe_next,
    set_known_browser_cookie,
    set_session_cookie,
    store_unavailable,
    teacher_auth,
)

router = APIRouter()
log = structlog.get_logger("lesson_relay")

Auth = Annotated[TeacherAuth, Depends(teacher_auth)]


@router.get(SIGN_IN_PATH, response_class=HTMLResponse)
async def sign_in_page(request: Request, auth: Auth, next: str = DESK_PATH) -> Response:
    session = await current_session(request, auth)
    if session is not None and session.signed_in:
        return redirect(safe_next(next))
    if session is None:
        session = DeskSession.new(signed_in=False, now=time.time())
    response = render(request, "signin.html", session, {"next": safe_next(next)})
    set_session_cookie(request, response, auth, session)
    return response


@router.post(SIGN_IN_PATH, response_class=HTMLResponse)
async def sign_in(request: Request, auth: Auth) -> Response:
    # The form's token is checked against the cookie as signed: a session signed out since still proves the
    # form came from the desk, and the sign-in replaces it.
    session = cookie_session(request, auth)
    form = await checked_form(request, session)
    assert session is not None  # checked_form refuses a form without a session
    client = client_address(request)
    known_browser = auth.decode_known_browser(request.cookies.get(KNOWN_BROWSER_COOKIE), now=time.time())
    limiter: SignInLimiter = request.app.state.sign_in_limiter
    try:
        attempt = await limiter.attempt(request.app.state.db, client, datetime.now(UTC), known_browser=known_browser)
    except SignInUnavailable as exc:
        raise DeskError(503, "Sign-in unavailable",
                        "The desk cannot check sign-in attempts because its database is not answering. "
                        "Try again in a minute.", back=SIGN_IN_PATH) from exc
    if attempt.refused:
        log.warning("teacher_sign_in_refused", client=client, known_browser=known_browser is not None,
                    reason="too_many_failures", retry_after_s=attempt.wait_s)
        minutes = math.ceil(attempt.wait_s / 60)
        wait = f"Try again in {minutes} minute{'s' if minutes != 1 else ''}."
        problem = (f"Too many wrong passwords from this browser. {wait}" if known_browser else
                   f"Too many wrong passwords from your address. {wait} "
                   "A browser that has signed in to the desk before can sign in now.")
        raise DeskError(429, "Too many attempts", problem, back=SIGN_IN_PATH,
                        headers={"Retry-After": attempt.retry_after})
    next_path = safe_next(form.get("next"))
    if not auth.password_matches(form.get("password", "")):
        log.warning("teacher_sign_in_failed", client=client, known_browser=known_browser is not None)
        return render(request, "signin.html", session, {"next": next_path, "problem": "That password is not right."},
                      status_code=401)
    await limiter.passed(request.app.state.db, attempt)
    signed_in = DeskSession.new(signed_in=True, now=time.time())
    assert signed_in.session_id is not None
    try:
        await desk_sessions.start(request.app.state.db, signed_in.session_id, datetime.fromtimestamp(
            signed_in.issued_at, UTC))
    except desk_sessions.DeskSessionsUnavailable as exc:
        raise store_unavailable("sign you in") from exc
    log.info("teacher_signed_in", client=client, known_browser=known_browser is not None)
    response: Response = RedirectResponse(next_path, status_code=303)
    set_session_cookie(request, response, auth, signed_in)
    set_known_browser_cookie(request, response, auth, known_browser or secrets.token_urlsafe(16))
    return response


@router.post(f"{DESK_PATH}/signout")
async def sign_out(request: Request, auth: Auth) -> Response:
    """End this browser's session on the server and drop its cookie; a store that does not answer leaves both
    as they were (503), so the teacher can try again rather than believe a copied cookie dead."""
    session = cookie_session(request, auth)
    await checked_form(request, session)
    assert session is not None  # checked_form refuses a form without a session
    if session.session_id is not None:
        try:
            await desk_sessions.end(request.app.state.db, session.session_id)
        except desk_sessions.DeskSessionsUnavailable as exc:
            raise store_unavailable("sign you out") from exc
        log.info("teacher_signed_out", client=client_address(request))
    response = redirect(SIGN_IN_PATH, notice="signed_out")
    clear_session_cookie(request, response)
    return response


@router.post(f"{DESK_PATH}/signout/everywhere")
async def sign_out_everywhere(request: Request, teacher: Teacher) -> Response:
    """End every desk session, this one included: for a browser left signed in elsewhere (a school computer),
    without changing TEACHER_PASSWORD. Known browsers stay known."""
    await checked_form(request, teacher)
    try:
        ended = await desk_sessions.end_all(request.app.state.db)
    except desk_sessions.DeskSessionsUnavailable as exc:
        raise store_unavailable("sign every browser out") from exc
    log.info("teacher_signed_out_everywhere", client=client_address(request), sessions_ended=ended)
    response = redirect(SIGN_IN_PATH, notice="signed_out_everywhere")
    clear_session_cookie(request, response)
    return response
