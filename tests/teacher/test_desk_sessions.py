"""Desk sessions the server can end: sign-out ends this browser's session (a copy of its cookie no longer opens
the desk) and no other; a cookie whose session the store does not hold is not signed in; a new password ends
them all; a store that does not answer is a 503 page, never an open desk."""

from __future__ import annotations

import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from databases import CuttableProxy
from desk_client import PASSWORD, Desk, serve_desk
from harness import logged

from app.teacher.auth import DeskSession, TeacherAuth


@asynccontextmanager
async def another_browser(desk: Desk) -> AsyncIterator[Desk]:
    async with httpx.AsyncClient(base_url=desk.server.base_url) as client:
        yield Desk(desk.server, client, desk.log)


def with_cookie(cookie: str) -> dict[str, str]:
    return {"Cookie": f"teacher_session={cookie}"}


async def sign_out(desk: Desk) -> httpx.Response:
    return await desk.submit("/teacher/signout")


async def test_after_sign_out_a_copy_of_the_cookie_no_longer_opens_the_desk(desk: Desk) -> None:
    await desk.sign_in()
    copied = desk.client.cookies["teacher_session"]
    token = await desk.form_token()
    async with another_browser(desk) as thief:
        assert (await thief.client.get("/teacher", headers=with_cookie(copied))).status_code == 200

        assert (await sign_out(desk)).status_code == 303

        page = await thief.client.get("/teacher", headers=with_cookie(copied))
        form = await thief.client.post("/teacher/students", headers=with_cookie(copied),
                                       data={"csrf_token": token, "name": "Ana", "level": "A2"})
    assert page.status_code == 303
    assert page.headers["location"] == "/teacher/signin?next=%2Fteacher"
    assert form.status_code == 303  # to the sign-in page: nothing was added
    assert "Ana" not in (await desk.client.get("/teacher", follow_redirects=True)).text
    assert "teacher_signed_out" in desk.log.getvalue()


async def test_sign_out_ends_only_this_browsers_session_and_says_so(desk: Desk) -> None:
    async with another_browser(desk) as phone:
        await desk.sign_in()
        await phone.sign_in()

        signed_out = await sign_out(desk)

        assert (await desk.client.get("/teacher")).status_code == 303
        assert (await phone.client.get("/teacher")).status_code == 200
    notice = await desk.client.get(signed_out.headers["location"])
    assert "Signed out on this browser. Any other browser signed in to the desk stays signed in." in notice.text


async def test_sign_out_everywhere_ends_every_session_but_keeps_browsers_known(desk: Desk) -> None:
    async with another_browser(desk) as school_computer:
        await school_computer.sign_in()
        await desk.sign_in()

        assert (await desk.client.post("/teacher/signout/everywhere", data={})).status_code == 403
        signed_out = await desk.submit("/teacher/signout/everywhere")

        assert signed_out.status_code == 303
        assert "teacher_session=" in signed_out.headers["set-cookie"]
        assert (await school_computer.client.get("/teacher")).status_code == 303
        assert (await desk.client.get("/teacher")).status_code == 303
        assert "Signed out on every browser." in (await desk.client.get(signed_out.headers["location"])).text
        assert "teacher_browser" in desk.client.cookies  # still known: not held up by others' wrong passwords
        assert (await desk.sign_in()).status_code == 303
    [line] = logged(desk.log, "teacher_signed_out_everywhere")
    assert line["sessions_ended"] == 2


async def test_a_signed_out_browser_gets_a_fresh_sign_in_form_and_can_sign_in_again(desk: Desk) -> None:
    await desk.sign_in()
    copied = desk.client.cookies["teacher_session"]
    await sign_out(desk)
    desk.client.cookies.set("teacher_session", copied, domain="127.0.0.1", path="/teacher")

    form = await desk.client.get("/teacher/signin")
    assert form.status_code == 200
    assert "teacher_session=" in form.headers["set-cookie"]
    assert (await desk.sign_in()).status_code == 303
    assert (await desk.client.get("/teacher")).status_code == 200


async def test_a_validly_signed_cookie_without_its_session_in_the_store_is_not_signed_in(desk: Desk) -> None:
    auth: TeacherAuth = desk.app.state.teacher_auth
    never_started = auth.encode(DeskSession.new(signed_in=True, now=time.time()))

    assert (await desk.client.get("/teacher", headers=with_cookie(never_started))).status_code == 303


async def test_a_new_password_ends_every_session(store_url: str, log_stream: io.StringIO) -> None:
    async with serve_desk(log_stream, database_url=store_url) as desk:
        await desk.sign_in()
        cookie = desk.client.cookies["teacher_session"]
        assert (await desk.client.get("/teacher", headers=with_cookie(cookie))).status_code == 200
    async with serve_desk(log_stream, database_url=store_url, teacher_password="a-new-desk-password") as desk:
        refused = await desk.client.get("/teacher", headers=with_cookie(cookie))
        signed_in = await desk.sign_in("a-new-desk-password")
    assert refused.status_code == 303
    assert signed_in.status_code == 303


async def test_a_store_out_of_reach_shows_503_and_keeps_the_desk_closed(
        postgres_behind_proxy: tuple[str, CuttableProxy], log_stream: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    async with serve_desk(log_stream, database_url=url) as desk:
        await desk.sign_in()
        token = await desk.form_token()
        proxy.cut()
        page = await desk.client.get("/teacher")
        signed_out = await desk.client.post("/teacher/signout", data={"csrf_token": token})
        proxy.restore()
        after = await desk.client.get("/teacher")

    assert page.status_code == 503
    assert "its database is not answering" in page.text
    assert 'action="/teacher/signout"' not in page.text
    # Sign-out could not end the session: it says so and keeps the cookie, so the teacher can try again.
    assert signed_out.status_code == 503
    assert "cannot sign you out" in signed_out.text
    assert "set-cookie" not in signed_out.headers
    assert after.status_code == 200
    lines = logged(log_stream, "desk_session_unavailable")
    assert [line["action"] for line in lines] == ["check", "end"]
    assert PASSWORD not in log_stream.getvalue()

