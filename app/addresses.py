"""The key a client address is counted under by the per-address limits (lesson starts, wrong passwords).

An IPv4 address is one key. An IPv6 address counts as its /64: a home, a phone or a rented server is given
a whole /64 (2^64 addresses) and may use any of them, so counting single IPv6 addresses would let one
client start lessons or guess the desk's password without any limit. Logs keep the full address.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from app.logging import quoted

IPV6_NETWORK_PREFIX = 64


def limit_key(address: str) -> str:
    """`address` (an IPv4 or IPv6 address, or anything else a server may report) as the limits count it: an
    IPv4 address (IPv4-mapped IPv6 included) as it is, an IPv6 address as its /64, anything else unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_NETWORK_PREFIX), strict=False))
    return str(ip)


class BoundedClientAddress:
    """ASGI middleware: the client address of every request and WebSocket, as the log lines, the limits and the
    records see it, is at most `MAX_QUOTED_CHARS`. A real address always fits; with FORWARDED_ALLOW_IPS = * the
    client writes its own in X-Forwarded-For, up to the 8 KiB of a header line. uvicorn's own access lines
    read the same scope, so they quote the bounded address too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if client is not None:
            scope["client"] = (quoted(client[0]), client[1])
        await self.app(scope, receive, send)
