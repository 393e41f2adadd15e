"""Security headers on every page response, over a real socket."""

from __future__ import annotations

import httpx
import pytest
from harness import AppServer, relay_settings

from app.main import create_app

EXPECTED = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "permissions-policy": "microphone=(self)",
}


@pytest.mark.parametrize("path", ["/", "/static/lesson.js", "/static/audio/capture-processor.js", "/healthz",
                                  "/no-such-page"])
async def test_every_response_carries_the_security_headers(relay: AppServer, path: str) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{relay.base_url}{path}")
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, name
    directives = response.headers["content-security-policy"].split(";")
    policy = dict(directive.strip().split(" ", 1) for directive in directives)
    assert policy["default-src"] == "'none'"
    for directive in ("script-src", "style-src", "connect-src", "worker-src"):
        assert policy[directive] == "'self'", directive
    assert policy["frame-ancestors"] == "'none'"


async def test_the_page_has_no_inline_script_style_or_handler(relay: AppServer) -> None:
    async with httpx.AsyncClient() as http:
        page = (await http.get(f"{relay.base_url}/")).text
    assert "<style" not in page
    assert " style=" not in page
    assert "<script>" not in page
    assert all(f" on{event}=" not in page for event in ("click", "load", "submit", "error"))
    assert "data:" not in page


async def test_a_server_error_carries_the_security_headers_too() -> None:
    # Starlette answers an unhandled exception from its outermost middleware, outside SecurityHeaders.
    app = create_app(relay_settings("ws://127.0.0.1:9/unused"))

    @app.get("/fails")
    async def fails() -> None:
        raise RuntimeError("a bug")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        response = await http.get("/fails")
    assert response.status_code == 500
    assert response.text == "Internal Server Error"
    for name, value in EXPECTED.items():
        assert response.headers[name] == value, name
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(("base_url", "https_only"), [("https://lessons.example", True),
                                                      ("http://lessons.example", False)])
async def test_a_response_over_https_tells_the_browser_to_use_https_only(base_url: str, https_only: bool) -> None:
    app = create_app(relay_settings("ws://127.0.0.1:9/unused"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as http:
        response = await http.get("/teacher/signin")
    # Over plain http the header would be ignored by the browser, and would lock out a local http server.
    assert response.headers.get("strict-transport-security") == ("max-age=31536000" if https_only else None)
