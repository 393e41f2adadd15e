"""The desk's sign-in limit holds for the whole deployment: two apps on one database (SQLite, PostgreSQL) and
`python -m app` with two workers count the same wrong passwords; a database out of reach refuses sign-in
(503, with the reason logged) instead of letting it through unchecked; a browser that signed in before is
counted by itself, so others at its address cannot lock it out."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

import httpx
from databases import CuttableProxy
from desk_client import PASSWORD, UNUSED_UPSTREAM, Desk, csrf_token, serve_desk
from harness import app_process, logged
from pydantic import SecretStr

from app.teacher.auth import KNOWN_BROWSER_MAX_AGE_S, DeskSession, TeacherAuth
from app.teacher.sign_in_limit import SignInLimiter

BEARER = {"Authorization": f"Bearer {PASSWORD}"}
WRONG_TOKEN = {"Authorization": "Bearer guess-guess"}


async def test_wrong_passwords_on_one_app_count_on_another_on_the_same_database(
        store_url: str, log_stream: io.StringIO) -> None:
    async with serve_desk(log_stream, database_url=store_url) as first:
        # Started once the first has migrated the database: two first starts at once would both migrate it.
        assert (await first.client.get("/healthz")).status_code == 200
        async with serve_desk(log_stream, database_url=store_url) as second:
            limit = first.app.state.sign_in_limiter.max_failures
            for index in range(limit):
                assert (await (first, second)[index % 2].sign_in("guess-guess")).status_code == 401

            locked_form = await second.sign_in()
            locked_api = await first.client.get("/api/students", headers=BEARER)

    assert locked_form.status_code == 429
    assert "Too many wrong passwords" in locked_form.text
    assert int(locked_form.headers["retry-after"]) > 0
    assert locked_api.status_code == 429
    assert int(locked_api.headers["retry-after"]) > 0


async def test_with_two_workers_the_limit_counts_the_wrong_tokens_of_both(tmp_path: Path) -> None:
    async with app_process(UNUSED_UPSTREAM, f"sqlite:///{tmp_path / 'lessons.db'}", WEB_CONCURRENCY="2",
                           TEACHER_PASSWORD=PASSWORD) as served:
        await served.until_workers_started(2)
        statuses: list[int] = []

        def refusals() -> list[dict[str, object]]:
            return served.output.of("teacher_api_refused")

        try:
            # Each request on a new connection, which either worker may take, until both have refused one.
            for _ in range(60):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
                    statuses.append((await client.get("/api/students", headers=WRONG_TOKEN)).status_code)
                await served.output.until(lambda lines: len(refusals()) == len(statuses))
                if {line["worker"] for line in refusals() if line["reason"] == "too_many_failures"} == {0, 1}:
                    break
        finally:
            # The workers hold the output open: the replica is stopped as a platform stops it, not killed.
            served.process.send_signal(signal.SIGTERM)
            assert await served.exited(timeout_s=30) == 0

    limit = SignInLimiter().max_failures  # the limit python -m app runs with
    assert statuses[:limit] == [401] * limit
    assert set(statuses[limit:]) == {429}, statuses
    assert {line["worker"] for line in refusals() if line["reason"] == "too_many_failures"} == {0, 1}


async def test_a_database_out_of_reach_refuses_sign_in_with_503_and_logs_why(
        postgres_behind_proxy: tuple[str, CuttableProxy], log_stream: io.StringIO) -> None:
    url, proxy = postgres_behind_proxy
    async with serve_desk(log_stream, database_url=url) as desk:
        token = csrf_token((await desk.client.get("/teacher/signin")).text)
        proxy.cut()
        refused_form = await desk.client.post("/teacher/signin", data={"csrf_token": token, "password": PASSWORD})
        refused_api = await desk.client.get("/api/students", headers=BEARER)
        proxy.restore()
        signed_in = await desk.sign_in()

    assert refused_form.status_code == 503
    assert "its database is not answering" in refused_form.text
    assert "set-cookie" not in refused_form.headers
    assert refused_api.status_code == 503
    assert "the database is not answering" in refused_api.json()["error"]
    assert signed_in.status_code == 303
    unavailable = logged(log_stream, "sign_in_limit_unavailable")
    assert len(unavailable) == 2
    assert all(line["level"] == "error" and line["client"] == "127.0.0.1" and line["error"] for line in unavailable)
    assert "teacher_signed_in" in log_stream.getvalue()
    assert PASSWORD not in log_stream.getvalue()


async def test_wrong_passwords_from_one_ipv6_network_count_together_whichever_of_its_addresses(
        store_url: str, log_stream: io.StringIO) -> None:
    # Loopback is the trusted proxy by default: the header names the client, as a platform's proxy would.
    def from_address(address: str) -> dict[str, str]:
        return {"X-Forwarded-For": address}

    async with serve_desk(log_stream, database_url=store_url) as desk:
        limit = desk.app.state.sign_in_limiter.max_failures
        wrong = [(await desk.client.get("/api/students", headers=WRONG_TOKEN | from_address(f"2001:db8:1:2::{n}")))
                 .status_code for n in range(1, limit + 1)]
        same_network = await desk.client.get("/api/students", headers=BEARER | from_address("2001:db8:1:2::ff"))
        other_network = await desk.client.get("/api/students", headers=BEARER | from_address("2001:db8:1:3::1"))
    assert wrong == [401] * limit
    assert same_network.status_code == 429
    assert other_network.status_code == 200


async def test_a_browser_that_signed_in_before_is_not_locked_out_by_others_at_its_address(
        store_url: str, log_stream: io.StringIO) -> None:
    # The teacher, a student and a newcomer all behind the school's one address (127.0.0.1 here).
    async with serve_desk(log_stream, database_url=store_url) as teacher:
        await teacher.sign_in()
        await teacher.submit("/teacher/signout")
        async with (httpx.AsyncClient(base_url=teacher.server.base_url) as student_client,
                    httpx.AsyncClient(base_url=teacher.server.base_url) as newcomer_client):
            student = Desk(teacher.server, student_client, log_stream)
            newcomer = Desk(teacher.server, newcomer_client, log_stream)
            limit = teacher.app.state.sign_in_limiter.max_failures
            guesses = [(await student.sign_in("guess-guess")).status_code for _ in range(limit + 1)]

            teacher_back = await teacher.sign_in()
            newcomer_locked = await newcomer.sign_in()
            api_locked = await student.client.get("/api/students", headers=BEARER)

    assert guesses == [401] * limit + [429]
    assert teacher_back.status_code == 303
    assert newcomer_locked.status_code == 429
    assert "from your address" in newcomer_locked.text
    assert "A browser that has signed in to the desk before can sign in now." in newcomer_locked.text
    assert api_locked.status_code == 429  # scripts have no known-browser cookie: they are counted by address
    signed_in = logged(log_stream, "teacher_signed_in")
    assert [line["known_browser"] for line in signed_in] == [False, True]


async def test_a_known_browser_is_limited_on_its_own_without_locking_its_address(desk: Desk) -> None:
    await desk.sign_in()
    await desk.submit("/teacher/signout")
    limit = desk.app.state.sign_in_limiter.max_failures
    guesses = [(await desk.sign_in("guess-guess")).status_code for _ in range(limit + 1)]
    async with httpx.AsyncClient(base_url=desk.server.base_url) as other_client:
        other = await Desk(desk.server, other_client, desk.log).sign_in()
    locked = await desk.sign_in()

    assert guesses == [401] * limit + [429]
    assert other.status_code == 303
    assert locked.status_code == 429
    assert "from this browser" in locked.text
    refused = logged(desk.log, "teacher_sign_in_refused")
    assert all(line["known_browser"] is True for line in refused)


async def test_a_known_browser_cookie_not_signed_with_the_password_counts_by_address(desk: Desk) -> None:
    limit = desk.app.state.sign_in_limiter.max_failures
    for _ in range(limit):
        assert (await desk.sign_in("guess-guess")).status_code == 401
    for forged in (TeacherAuth(SecretStr("another-password")).encode_known_browser("b", now=time.time()),
                   "bm90LXNpZ25lZA.c2ln", "garbage"):
        desk.client.cookies.set("teacher_browser", forged, domain="127.0.0.1", path="/teacher/signin")

        assert (await desk.sign_in()).status_code == 429


def test_a_known_browser_cookie_expires_and_is_bound_to_the_password() -> None:
    auth = TeacherAuth(SecretStr(PASSWORD))
    cookie = auth.encode_known_browser("browser-1", now=1_000)

    assert auth.decode_known_browser(cookie, now=1_000 + KNOWN_BROWSER_MAX_AGE_S) == "browser-1"
    assert auth.decode_known_browser(cookie, now=1_001 + KNOWN_BROWSER_MAX_AGE_S) is None
    assert TeacherAuth(SecretStr("another-password")).decode_known_browser(cookie, now=1_000) is None
    # Neither cookie passes for the other: they are signed with keys of their own.
    assert auth.decode(cookie, now=1_000) is None
    assert auth.decode_known_browser(auth.encode(DeskSession.new(signed_in=True, now=1_000)), now=1_000) is None
