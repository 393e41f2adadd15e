"""RealtimeClient: one WebSocket session with the OpenAI Realtime API (GA interface).

It knows the URL, headers, frame limits, keepalive and timeouts, and translates every foreign failure
(websockets, OSError, timeouts) into the project's `UpstreamError` tree. It knows nothing of lessons.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK, InvalidHandshake, InvalidStatus, InvalidURI

from app.errors import UpstreamClosed, UpstreamRefused, UpstreamUnavailable

# Keepalive: a ping every 20 s keeps idle proxies from cutting a lesson during a long pause.
PING_INTERVAL_S = 20.0
PING_TIMEOUT_S = 20.0


def realtime_url(base_url: str, model: str) -> str:
    """`base_url` with `model=` added to its query (Azure's deployment name goes there too)."""
    parts = urlsplit(base_url)
    query = f"{parts.query}&{urlencode({'model': model})}" if parts.query else urlencode({"model": model})
    return urlunsplit(parts._replace(query=query))


def auth_headers(api_key: str, scheme: Literal["bearer", "api-key"]) -> dict[str, str]:
    # GA interface: no OpenAI-Beta header (the beta shape is switched off and answers with close 4000).
    return {"api-key": api_key} if scheme == "api-key" else {"Authorization": f"Bearer {api_key}"}


class RealtimeClient:
    """An open Realtime session. Iterate it for decoded server events; `send` serialised client events."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    @classmethod
    async def connect(
        cls,
        *,
        url: str,
        api_key: str,
        auth_scheme: Literal["bearer", "api-key"],
        open_timeout_s: float,
    ) -> RealtimeClient:
        """Open the session or raise `UpstreamRefused` (HTTP status) / `UpstreamUnavailable`."""
        try:
            connection = await connect(
                url,
                additional_headers=auth_headers(api_key, auth_scheme),
                open_timeout=open_timeout_s,
                ping_interval=PING_INTERVAL_S,
                ping_timeout=PING_TIMEOUT_S,
                close_timeout=2,
                # Some server events (session.updated with long instructions, big deltas) exceed 1 MiB.
                max_size=None,
                compression=None,
                user_agent_header="lesson-relay",
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            upstream_code, message = _error_body(exc.response.body)
            raise UpstreamRefused(
                f"upstream refused the handshake with HTTP {status}: {message or exc.response.reason_phrase!r}",
                status=status, upstream_code=upstream_code,
            ) from exc
        except InvalidURI as exc:
            raise UpstreamUnavailable(f"upstream URL {url!r} is not a WebSocket URL") from exc
        except (InvalidHandshake, OSError, TimeoutError) as exc:
            raise UpstreamUnavailable(
                f"upstream {_safe_origin(url)!r} unreachable: {type(exc).__name__}: {exc}") from exc
        return cls(connection)

    async def send(self, text: str) -> None:
        try:
            await self._connection.send(text)
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Decoded server events until the session closes; an unexpected close raises `UpstreamClosed`."""
        try:
            async for message in self._connection:
                yield orjson.loads(message)
        except ConnectionClosedOK:
            return
        except ConnectionClosed as exc:
            raise _closed(exc) from exc

    @property
    def close_code(self) -> int | None:
        return self._connection.close_code

    @property
    def close_reason(self) -> str:
        return self._connection.close_reason or ""

    async def close(self) -> None:
        await self._connection.close()


def _closed(exc: ConnectionClosed) -> UpstreamClosed:
    received = exc.rcvd
    code = received.code if received else None
    reason = received.reason if received else "no close frame"
    return UpstreamClosed(f"upstream closed the session: code {code}, reason {reason!r}",
                          received_code=code, received_reason=reason)


def _error_body(body: bytes | bytearray | None) -> tuple[str | None, str | None]:
    """The `error.code` and `error.message` of an OpenAI-style JSON error body, when there is one."""
    try:
        error = orjson.loads(body or b"").get("error") or {}
        return error.get("code"), error.get("message")
    except (orjson.JSONDecodeError, AttributeError):
        return None, None


def _safe_origin(url: str) -> str:
    # Only scheme and host reach the log: an Azure URL may carry a key in its query.
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"
