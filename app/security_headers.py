"""Security headers on every HTTP response: the page may load only its own scripts, styles and worklets,
talk only to its own origin, never be framed, and only its own origin may ask for the microphone. A response
over https (the platform's proxy says so in X-Forwarded-Proto, believed from FORWARDED_ALLOW_IPS) also tells
the browser to come back over https only, so the desk's cookie and the lesson links never travel in clear.

The templates therefore hold no inline script, style or event handler: everything the page runs is
under /static, which the policy allows as 'self'.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Audio worklets are governed by script-src; 'self' in connect-src also covers ws(s):// of the same host.
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "worker-src 'self'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Permissions-Policy", "microphone=(self)"),
    # For browsers without CSP frame-ancestors.
    ("X-Frame-Options", "DENY"),
)
# A year: what browsers' preload lists ask for; without includeSubDomains, other sites of the domain are theirs.
HTTPS_ONLY = ("Strict-Transport-Security", "max-age=31536000")


async def server_error(request: Request, exc: Exception) -> Response:
    """The 500 answer to an unhandled exception, with the security headers: Starlette sends it from its
    outermost middleware, which no middleware of the app's wraps. The exception is still logged, with its
    traceback, by the server."""
    return PlainTextResponse("Internal Server Error", status_code=500,
                             headers=dict(SECURITY_HEADERS) | {"Cache-Control": "no-store"})


class SecurityHeaders:
    """ASGI middleware adding `SECURITY_HEADERS` to every HTTP response (WebSocket traffic passes through)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers[name] = value
                if scope.get("scheme") == "https":
                    headers[HTTPS_ONLY[0]] = HTTPS_ONLY[1]
            await send(message)

        await self.app(scope, receive, send_with_headers)
