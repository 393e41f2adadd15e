"""The desk and API under test: the app served on a real port, an httpx client for it, and form helpers."""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from harness import AppServer, relay_settings, serve_app

# Obviously fake: tests only.
PASSWORD = "desk-test-password-not-real"
# Lessons are not started by these tests; the upstream is never dialled.
UNUSED_UPSTREAM = "ws://127.0.0.1:9/v1/realtime"

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "the page has no CSRF field"
    return match.group(1)


@dataclass
class Desk:
    server: AppServer
    client: httpx.AsyncClient
    log: io.StringIO

    async def sign_in(self, password: str = PASSWORD) -> httpx.Response:
        page = await self.client.get("/teacher/signin")
        return await self.client.post("/teacher/signin", data={
            "csrf_token": csrf_token(page.text), "password": password, "next": "/teacher"})

    @property
    def app(self) -> Any:
        return self.server.app

    async def form_token(self, path: str = "/teacher") -> str:
        """The CSRF token of the forms on the page at `path`."""
        page = await self.client.get(path)
        assert page.status_code == 200, page.text
        return csrf_token(page.text)

    async def submit(self, action: str, fields: dict[str, str] | None = None, *,
                     page: str = "/teacher") -> httpx.Response:
        """POST a desk form to `action` as the page at `page` would, with its CSRF token."""
        return await self.client.post(action, data={"csrf_token": await self.form_token(page)} | (fields or {}))


@asynccontextmanager
async def serve_desk(log: io.StringIO, **overrides: Any) -> AsyncIterator[Desk]:
    """The app with the desk on (TEACHER_PASSWORD set) unless `overrides` say otherwise, and a client."""
    settings = relay_settings(UNUSED_UPSTREAM, **({"teacher_password": PASSWORD} | overrides))
    async with serve_app(settings, log) as server, httpx.AsyncClient(base_url=server.base_url) as client:
        yield Desk(server, client, log)
