"""A TCP forwarder: what moving a relay's messages costs when nothing else is done to them.

Target ``proxy`` puts it between the direct students and the echo upstream. Each 20 ms frame crosses it
as two messages (the append up, the echoed delta down), each one socket read and one socket write —
the same four syscalls per frame as the relay (page in, upstream out, upstream in, page out) — but with
no WebSocket framing, no JSON, no base64 and no ASGI: its CPU per frame round trip is the floor that the
event loop and the kernel set for any relay written on asyncio.

``python -m bench.tcp_proxy --upstream-port N --port 0`` prints ``{"port": M}`` on stdout and forwards
every connection to 127.0.0.1:N until SIGTERM.
"""

from __future__ import annotations

import asyncio
from typing import cast

from bench import listener_main


class _Pipe(asyncio.Protocol):
    """One side of a forwarded connection: what it reads is written to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self._early: list[bytes] = []  # read before the peer's connection was open

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports don't subclass asyncio's

    def connect_peer(self, peer: _Pipe) -> None:
        self.peer = peer
        if self._early and peer.transport is not None:
            peer.transport.write(b"".join(self._early))
        self._early.clear()

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.write(data)
        else:
            self._early.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Flow control: a peer that cannot keep up stops the reading of this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def _forward(student: _Pipe, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        _, upstream = await loop.create_connection(_Pipe, "127.0.0.1", upstream_port)
    except OSError:
        if student.transport is not None:
            student.transport.close()
        return
    upstream.peer = student
    if student.transport is None or student.transport.is_closing():
        if upstream.transport is not None:
            upstream.transport.close()
        return
    student.connect_peer(upstream)


async def open_proxy(upstream_port: int, port: int = 0) -> asyncio.Server:
    """A listening forwarder to 127.0.0.1:`upstream_port` (`port` 0: any free port)."""
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()

    def accept() -> _Pipe:
        student = _Pipe()
        task = loop.create_task(_forward(student, upstream_port))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return student

    return await loop.create_server(accept, "127.0.0.1", port)


def main() -> None:
    listener_main("python -m bench.tcp_proxy", __doc__, open_proxy)


if __name__ == "__main__":
    main()
