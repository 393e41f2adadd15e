"""Signing in to the desk: the password, the session cookie's flags, CSRF on every form, the limit."""

from __future__ import annotations

import io
from http.cookies import Morsel, SimpleCookie

import httpx
import pytest
from desk_client import PASSWORD, Desk, csrf_token, serve_desk
from pydantic import SecretStr

from app.settings import ConfigurationError, load_settings
from app.teacher.auth import KNOWN_BROWSER_MAX_AGE_S, SESSION_MAX_AGE_S, DeskSession, TeacherAuth
from app.teacher.sign_in_limit import SignInLimiter


def set_cookie(response: httpx.Response, name: str = "teacher_session") -> Morsel[str]:
    """The response's Set-Cookie for `name`."""
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        if name in cookie:
            return cookie[name]
    raise AssertionError(f"no Set-Cookie for {name!r}")


async def test_without_a_password_the_desk_says_how_to_turn_it_on(log_stream: io.StringIO) -> None:
    async with serve_desk(log_stream, teacher_password=None) as desk:
        for path in ("/teacher", "/teacher/signin"):
            page = await desk.client.get(path)
            assert page.status_code == 503
            assert "TEACHER_PASSWORD" in page.text
        refused = await desk.client.post("/teacher/signin", data={"password": "anything"})
        assert refused.status_code == 503


async def test_the_right_password_signs_in_with_a_strict_http_only_cookie(desk: Desk) -> None:
    signed_in = await desk.sign_in()

    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/teacher"
    morsel = set_cookie(signed_in)
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "strict"
    assert morsel["path"] == "/teacher"
    assert not morsel["secure"]  # served over plain http here
    assert int(morsel["max-age"]) == SESSION_MAX_AGE_S
    known = set_cookie(signed_in, "teacher_browser")
    assert (known["httponly"], known["samesite"], known["path"]) == (True, "strict", "/teacher/signin")
    assert int(known["max-age"]) == KNOWN_BROWSER_MAX_AGE_S
    assert (await desk.client.get("/teacher/signin")).headers["location"] == "/teacher"


async def test_over_https_the_cookie_is_secure(desk: Desk) -> None:
    # Behind Railway's proxy: uvicorn takes the scheme from X-Forwarded-Proto.
    page = await desk.client.get("/teacher/signin", headers={"x-forwarded-proto": "https"})

    assert set_cookie(page)["secure"] is True


async def test_a_wrong_password_is_refused_logged_without_it_and_signs_nothing_in(desk: Desk) -> None:
    refused = await desk.sign_in("wrong-password-guess")

    assert refused.status_code == 401
    assert "That password is not right." in refused.text
    assert (await desk.client.get("/teacher/students/x")).status_code == 303
    log = desk.log.getvalue()
    assert "teacher_sign_in_failed" in log
    assert "wrong-password-guess" not in log


async def test_the_password_is_never_logged(desk: Desk) -> None:
    await desk.sign_in()
    assert "teacher_signed_in" in desk.log.getvalue()
    assert PASSWORD not in desk.log.getvalue()


@pytest.mark.parametrize("token", [None, "", "forged-token"])
async def test_sign_in_without_the_forms_csrf_token_is_refused(desk: Desk, token: str | None) -> None:
    await desk.client.get("/teacher/signin")
    form = {"password": PASSWORD} | ({"csrf_token": token} if token is not None else {})

    refused = await desk.client.post("/teacher/signin", data=form)

    assert refused.status_code == 403
    assert "did not come from the desk" in refused.text
    assert "set-cookie" not in refused.headers
    assert "teacher_signed_in" not in desk.log.getvalue()


async def test_sign_in_without_the_session_cookie_is_refused(desk: Desk) -> None:
    token = csrf_token((await desk.client.get("/teacher/signin")).text)
    desk.client.cookies.clear()

    refused = await desk.client.post("/teacher/signin", data={"csrf_token": token, "password": PASSWORD})

    assert refused.status_code == 403


async def test_a_tampered_session_cookie_is_not_signed_in(desk: Desk) -> None:
    await desk.sign_in()
    value = desk.client.cookies["teacher_session"]
    payload, signature = value.split(".")
    desk.client.cookies.clear()
    forged = DeskSession(session_id="x", csrf_token="x", issued_at=0)
    desk.client.cookies.set("teacher_session", TeacherAuth(SecretStr("another-password")).encode(forged),
                            domain="127.0.0.1", path="/teacher")

    assert (await desk.client.get("/teacher/failures")).status_code == 303
    desk.client.cookies.set("teacher_session", f"{payload}x.{signature}", domain="127.0.0.1", path="/teacher")
    assert (await desk.client.get("/teacher/failures")).status_code == 303


async def test_repeated_wrong_passwords_lock_the_address_out_even_for_the_right_one(desk: Desk) -> None:
    limiter: SignInLimiter = desk.server.app.state.sign_in_limiter
    for _ in range(limiter.max_failures):
        assert (await desk.sign_in("guess-guess")).status_code == 401

    locked = await desk.sign_in()

    assert locked.status_code == 429
    assert int(locked.headers["retry-after"]) > 0
    assert "Too many wrong passwords" in locked.text
    assert "set-cookie" not in locked.headers or "teacher_session" not in locked.headers.get("set-cookie", "")
    assert '"reason": "too_many_failures"' in desk.log.getvalue()


async def test_sign_out_needs_the_token_and_ends_the_session(desk: Desk) -> None:
    await desk.sign_in()
    token = csrf_token((await desk.client.get("/teacher/signin?next=/teacher/failures", follow_redirects=True)).text)

    assert (await desk.client.post("/teacher/signout", data={})).status_code == 403
    signed_out = await desk.client.post("/teacher/signout", data={"csrf_token": token})

    assert signed_out.status_code == 303
    assert "teacher_session=" in signed_out.headers["set-cookie"]
    assert (await desk.client.get("/teacher/failures")).status_code == 303


@pytest.mark.parametrize("next_path", ["https://evil.example/", "//evil.example/teacher", "/teacherx", "/api/students"])
async def test_sign_in_only_returns_to_desk_pages(desk: Desk, next_path: str) -> None:
    page = await desk.client.get("/teacher/signin", params={"next": next_path})
    signed_in = await desk.client.post("/teacher/signin", data={
        "csrf_token": csrf_token(page.text), "password": PASSWORD, "next": next_path})

    assert signed_in.headers["location"] == "/teacher"


async def test_an_oversized_form_is_refused_before_it_is_read(desk: Desk) -> None:
    token = csrf_token((await desk.client.get("/teacher/signin")).text)

    refused = await desk.client.post("/teacher/signin", data={"csrf_token": token, "password": "x" * 20_000})

    assert refused.status_code == 413
    assert "teacher_sign_in_failed" not in desk.log.getvalue()


def test_a_session_expires_after_its_max_age() -> None:
    auth = TeacherAuth(SecretStr(PASSWORD))
    cookie = auth.encode(DeskSession.new(signed_in=True, now=1_000))

    assert auth.decode(cookie, now=1_000 + SESSION_MAX_AGE_S) is not None
    assert auth.decode(cookie, now=1_001 + SESSION_MAX_AGE_S) is None
    assert TeacherAuth(SecretStr("another-password")).decode(cookie, now=1_000) is None


def test_password_comparison_is_exact() -> None:
    auth = TeacherAuth(SecretStr(PASSWORD))
    assert auth.password_matches(PASSWORD)
    assert not auth.password_matches(PASSWORD + " ")
    assert not auth.password_matches(PASSWORD[:-1])
    assert not auth.password_matches("")


def test_a_short_teacher_password_stops_the_start_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEACHER_PASSWORD", "hunter2")
    monkeypatch.setenv("PUBLIC_URL", "ftp://lessons.example.org")
    with pytest.raises(ConfigurationError) as stopped:
        load_settings()
    message = str(stopped.value)
    assert "TEACHER_PASSWORD: must be at least 8 characters" in message
    assert "hunter2" not in message
    assert "PUBLIC_URL='ftp://lessons.example.org'" in message
