"""A WebSocket client on a bare socket, as an adversary writes one: it reads only the handshake's answer.

After the handshake nothing is read unless asked for, so the server's frames pile up in the socket's
receive buffer (set it small with `receive_buffer`) and then in the server. Frames are masked with the
all-zero key: valid (a client must mask) and the payload goes out as written, so a flood costs no XOR.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping

TEXT, BINARY, CLOSE, PING = 0x1, 0x2, 0x8, 0x9
# RFC 6455's example key: the server's answer is checked only for its status here.
HANDSHAKE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """One final, masked client frame."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + length.to_bytes(8, "big")
    return header + b"\0\0\0\0" + payload


def handshake_request(host: str, port: int, path: str, headers: Mapping[str, str] | None = None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {HANDSHAKE_KEY}", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def open_socket(receive_buffer: int | None = None) -> socket.socket:
    """A non-blocking TCP socket; `receive_buffer` (SO_RCVBUF) is set before connecting, so it holds."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    return sock


class RawWebSocket:
    """An open WebSocket whose server frames are left unread."""

    def __init__(self, sock: socket.socket, status: int) -> None:
        self.sock = sock
        self.status = status

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, *, receive_buffer: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> RawWebSocket:
        """Connect and send the handshake; read the server's answer up to its blank line, nothing more."""
        loop = asyncio.get_running_loop()
        sock = open_socket(receive_buffer)
        await loop.sock_connect(sock, (host, port))
        await loop.sock_sendall(sock, handshake_request(host, port, path, headers))
        answer = b""
        while b"\r\n\r\n" not in answer:
            # One byte at a time: the frames that follow the answer stay in the receive buffer.
            byte = await loop.sock_recv(sock, 1)
            if not byte:
                raise ConnectionError(f"the server closed the connection during the handshake: {answer!r}")
            answer += byte
        return cls(sock, int(answer.split(b" ", 2)[1]))

    async def send(self, opcode: int, payload: bytes = b"") -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, client_frame(opcode, payload))

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def until_closed(self) -> bytes:
        """Read until the server ends the connection, by closing or dropping it; everything it sent."""
        loop = asyncio.get_running_loop()
        received = bytearray()
        with contextlib.suppress(ConnectionResetError):
            while chunk := await loop.sock_recv(self.sock, 65_536):
                received += chunk
        return bytes(received)

    def close(self) -> None:
        self.sock.close()


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The complete (unmasked) server frames in `data`, as (opcode, payload), in order."""
    frames, position = [], 0
    while position + 2 <= len(data):
        opcode, length, position = data[position] & 0x0F, data[position + 1] & 0x7F, position + 2
        if length >= 126:
            size = 2 if length == 126 else 8
            length, position = int.from_bytes(data[position:position + size], "big"), position + size
        if position + length > len(data):
            break
        frames.append((opcode, data[position:position + length]))
        position += length
    return frames
